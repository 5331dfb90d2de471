"""The node's resolver on real sockets on loopback.

127.0.0.x addresses stand in for tasks' addresses: the resolver listens on
127.0.0.53 and queries are sent from sockets bound to 127.0.0.21 (a task on
``front``), 127.0.0.22 (a task on ``back``) and 127.0.0.99 (no task). Names
it does not answer go to a small dnslib server on loopback, which answers
every A query with 192.0.2.53.
"""

import logging
import os
import random
import signal
import socket
import struct
import threading
import time

import pytest
from dnslib import QTYPE, RCODE, DNSRecord

from flotilla.agent.network.resolver import Resolver
from flotilla.agent.network.resolverproc import ResolverProcess
from tests.helpers.cluster import wait_for
from tests.helpers.dns import (
    UPSTREAM_ANSWER, FakeUpstream, addresses, ask, ask_raw, closed_port, question)

FRONT, BACK = "net-front", "net-back"
ON_FRONT, ON_BACK, STRANGER = "127.0.0.21", "127.0.0.22", "127.0.0.99"


def table(web_tasks=("10.0.1.5", "10.0.1.6"), big=0):
    front = {
        "services": [
            {"name": "web", "aliases": [], "mode": "vip", "vip": "10.0.1.2/24",
             "task_addrs": list(web_tasks)},
            {"name": "api", "aliases": ["rest"], "mode": "dnsrr", "vip": None,
             "task_addrs": ["10.0.1.8", "10.0.1.9"]},
        ],
        "tasks": {ON_FRONT: [FRONT]},
    }
    if big:
        front["services"].append({"name": "big", "aliases": [], "mode": "dnsrr", "vip": None,
                                  "task_addrs": [f"10.0.3.{i}" for i in range(1, big + 1)]})
    back = {
        "services": [{"name": "db", "aliases": [], "mode": "vip", "vip": "10.0.2.2/24",
                      "task_addrs": ["10.0.2.5"]}],
        "tasks": {ON_BACK: [BACK]},
    }
    return {FRONT: front, BACK: back}


@pytest.fixture(scope="module")
def upstream():
    server = FakeUpstream()
    yield server
    server.close()


@pytest.fixture
def make_resolver():
    made = []

    def make(upstreams, listen=(("127.0.0.53", 0),), **kw):
        r = Resolver(listen=listen, upstreams=upstreams, search=kw.pop("search", []), **kw)
        r.update(table())
        r.start()
        made.append(r)
        wait_for(lambda: len(r.listening()) == len(listen), 10, 0.01, "the resolver to listen")
        return r, r.listening()[0]

    yield make
    for r in made:
        r.stop()


def no_tracebacks(caplog):
    bad = [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert not bad, [r.getMessage() for r in bad]


def test_a_task_resolves_the_names_of_its_networks_and_the_rest_is_forwarded(
        make_resolver, upstream):
    r, server = make_resolver([upstream.address])
    reply = ask(server, "web", source=ON_FRONT)
    assert reply.header.rcode == RCODE.NOERROR and addresses(reply) == ["10.0.1.2"]
    assert [rr.ttl for rr in reply.rr] == [0]
    assert sorted(addresses(ask(server, "tasks.web", source=ON_FRONT))) == ["10.0.1.5",
                                                                           "10.0.1.6"]
    # dnsrr: the tasks' addresses, in a new order now and then; an alias is the same
    orders = {tuple(addresses(ask(server, "api", source=ON_FRONT))) for _ in range(30)}
    assert {tuple(sorted(o)) for o in orders} == {("10.0.1.8", "10.0.1.9")} and len(orders) == 2
    assert sorted(addresses(ask(server, "REST.", source=ON_FRONT))) == ["10.0.1.8", "10.0.1.9"]
    assert ask(server, "web", "AAAA", source=ON_FRONT).header.rcode == RCODE.NOERROR
    assert not ask(server, "web", "AAAA", source=ON_FRONT).rr
    # db is on back only: the front task's query goes upstream like any other name
    before = len(upstream.names())
    assert addresses(ask(server, "db", source=ON_FRONT)) == [UPSTREAM_ANSWER]
    assert addresses(ask(server, "db", source=ON_BACK)) == ["10.0.2.2"]
    assert addresses(ask(server, "web", source=ON_BACK)) == [UPSTREAM_ANSWER]
    assert addresses(ask(server, "www.example.org", source=ON_FRONT)) == [UPSTREAM_ANSWER]
    # an address that is no task's gets forwarded answers only
    for name in ("web", "tasks.web", "api", "db"):
        assert addresses(ask(server, name, source=STRANGER)) == [UPSTREAM_ANSWER], name
    assert upstream.names()[before:] == ["db.", "web.", "www.example.org.", "web.",
                                         "tasks.web.", "api.", "db."]
    # a forwarded answer carries the asker's id and question, whatever id went upstream
    q = question("Mixed.Example.COM")
    q.header.id = 4242
    reply = DNSRecord.parse(ask_raw(server, q.pack(), source=STRANGER))
    assert reply.header.id == 4242 and str(reply.q.qname) == "Mixed.Example.COM."
    c = r.counters()
    assert c["forwarded"] == 8 and c["servfail"] == 0 and c["malformed"] == 0


def test_tcp_and_truncation(make_resolver, upstream):
    r, server = make_resolver([upstream.address])
    r.update(table(big=100))
    everyone = {f"10.0.3.{i}" for i in range(1, 101)}
    udp = ask(server, "big", source=ON_FRONT)
    raw = ask_raw(server, question("big").pack(), source=ON_FRONT)
    assert len(raw) <= 512
    assert udp.header.tc and 0 < len(udp.rr) < 100 and set(addresses(udp)) <= everyone
    edns = ask(server, "big", source=ON_FRONT, edns=4096)
    assert edns.header.tc and len(udp.rr) < len(edns.rr) < 100
    tcp = ask(server, "big", source=ON_FRONT, tcp=True)
    assert not tcp.header.tc and set(addresses(tcp)) == everyone
    # the same scoping over TCP, and forwarding over TCP
    assert addresses(ask(server, "web", source=ON_FRONT, tcp=True)) == ["10.0.1.2"]
    assert addresses(ask(server, "web", source=STRANGER, tcp=True)) == [UPSTREAM_ANSWER]
    assert upstream.asked[-1] == ("web.", "tcp")
    # several queries on one connection
    with socket.create_connection(server, timeout=3) as s:
        for name in ("web", "api", "db"):
            packet = question(name).pack()
            s.sendall(struct.pack("!H", len(packet)) + packet)
            size = struct.unpack("!H", s.recv(2, socket.MSG_WAITALL))[0]
            assert DNSRecord.parse(s.recv(size, socket.MSG_WAITALL)).header.rcode == 0
    assert r.counters()["truncated"] == 3


def test_no_upstream_answering_is_servfail_within_a_bounded_time(make_resolver):
    # nothing listens there: refused at once
    _, server = make_resolver([closed_port()])
    started = time.monotonic()
    assert ask(server, "www.example.org", source=ON_FRONT).header.rcode == RCODE.SERVFAIL
    assert ask(server, "www.example.org", tcp=True).header.rcode == RCODE.SERVFAIL
    assert time.monotonic() - started < 1.5
    assert addresses(ask(server, "web", source=ON_FRONT)) == ["10.0.1.2"]    # ours still
    # no upstream at all
    _, server = make_resolver([])
    started = time.monotonic()
    assert ask(server, "www.example.org").header.rcode == RCODE.SERVFAIL
    assert time.monotonic() - started < 0.5
    # an upstream that never answers: SERVFAIL when the forwarding time is up
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        r, server = make_resolver([silent.getsockname()], attempt_timeout=0.3,
                                  forward_timeout=0.8)
        started = time.monotonic()
        assert ask(server, "www.example.org").header.rcode == RCODE.SERVFAIL
        took = time.monotonic() - started
        assert 0.55 <= took < 2.0, took          # two attempts of 0.3 s, then SERVFAIL
        assert r.counters()["servfail"] == 1


def test_forwarding_is_bounded(make_resolver):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        r, server = make_resolver([silent.getsockname()], attempt_timeout=1.0,
                                  forward_timeout=1.0, max_forwards=4)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((ON_FRONT, 0))
            s.settimeout(3)
            started = time.monotonic()
            for i in range(20):
                q = question(f"n{i}.example.org")
                q.header.id = i
                s.sendto(q.pack(), server)
            replies = {}
            for _ in range(20):
                reply = DNSRecord.parse(s.recvfrom(65535)[0])
                replies[reply.header.id] = (reply.header.rcode, time.monotonic() - started)
        assert sorted(replies) == list(range(20))
        assert {rcode for rcode, _ in replies.values()} == {RCODE.SERVFAIL}
        at_once = [took for _, took in replies.values() if took < 0.5]
        assert len(at_once) == 16
        assert r.counters()["overload"] == 16


def test_forged_upstream_answers_are_ignored(make_resolver):
    """Only an answer with the id we sent, to the question we asked, from the
    upstream we asked, is taken."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as fake:
        fake.bind(("127.0.0.1", 0))
        fake.settimeout(5)

        def serve():
            data, peer = fake.recvfrom(65535)
            query = DNSRecord.parse(data)
            wrong_id = query.reply()
            wrong_id.header.id = (query.header.id + 1) % 65536
            wrong_id.add_answer(*DNSRecord.question("x").replyZone("x 0 A 6.6.6.6").rr)
            wrong_name = DNSRecord.question("other.example").reply()
            wrong_name.header.id = query.header.id
            wrong_name.add_answer(*wrong_name.replyZone("other.example 0 A 6.6.6.7").rr)
            right = query.replyZone(f"{query.q.qname} 30 A 192.0.2.77")
            for packet in (wrong_id, wrong_name, right):
                fake.sendto(packet.pack(), peer)

        t = threading.Thread(target=serve, daemon=True)
        t.start()
        r, server = make_resolver([fake.getsockname()])
        assert addresses(ask(server, "www.example.org")) == ["192.0.2.77"]
        t.join(5)
        assert r.counters()["upstream_errors"] == 2


def test_garbage_is_dropped_and_counted(make_resolver, upstream, caplog):
    caplog.set_level(logging.DEBUG)
    r, server = make_resolver([upstream.address], tcp_idle=0.5)
    rng = random.Random(1)
    header = struct.pack("!HHHHHH", 1, 0x0100, 1, 0, 0, 0)
    garbage = [
        b"", b"\x00", os.urandom(11),                               # shorter than a header
        header,                                                     # a question that is not there
        header + b"\xc0\x0c\x00\x01\x00\x01",                       # a name that points at itself
        header + b"\x3fabc",                                        # a label past the end
        header + b"\x03web\x00\x00\x01",                            # no class
        bytes(question("web").reply().pack()),                      # an answer, not a query
        question("web").pack() + os.urandom(5000),                  # too long
        *(bytes(rng.getrandbits(8) for _ in range(rng.randint(12, 300))) for _ in range(40)),
    ]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((ON_FRONT, 0))
        for packet in garbage:
            s.sendto(packet, server)
    wait_for(lambda: r.counters()["queries"] == len(garbage), 10, 0.05, "every packet read")
    c = r.counters()
    assert c["malformed"] == len(garbage), c      # (the random ones are seeded: none is a query)
    assert c["answered"] == c["nxdomain"] == c["forwarded"] == 0
    # over TCP: garbage, a length with too little after it, and silence end the connection
    for payload in (struct.pack("!H", 40) + os.urandom(40), struct.pack("!H", 300) + b"abc", b""):
        with socket.create_connection(server, timeout=3) as conn:
            conn.sendall(payload)
            started = time.monotonic()
            assert conn.recv(100) == b""        # closed by the resolver
            assert time.monotonic() - started < 2
    assert addresses(ask(server, "web", source=ON_FRONT)) == ["10.0.1.2"]
    assert addresses(ask(server, "web", source=ON_FRONT, tcp=True)) == ["10.0.1.2"]
    no_tracebacks(caplog)


def test_update_while_queries_fly(make_resolver, upstream):
    r, server = make_resolver([upstream.address])
    a = table(web_tasks=("10.0.1.5", "10.0.1.6"))
    b = table(web_tasks=("10.0.1.7",))
    seen, errors, stop = [], [], threading.Event()

    def hammer():
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((ON_FRONT, 0))
            s.settimeout(2)
            packet = question("tasks.web").pack()
            while not stop.is_set():
                try:
                    s.sendto(packet, server)
                    seen.append(tuple(sorted(addresses(DNSRecord.parse(s.recvfrom(65535)[0])))))
                except Exception as exc:
                    errors.append(repr(exc))

    threads = [threading.Thread(target=hammer) for _ in range(2)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 1.5
    flips = 0
    while time.monotonic() < deadline:
        r.update(a if flips % 2 else b)
        flips += 1
        time.sleep(0.003)
    stop.set()
    for t in threads:
        t.join(5)
    assert not errors
    assert set(seen) == {("10.0.1.5", "10.0.1.6"), ("10.0.1.7",)}, set(seen)
    assert len(seen) > 100 and flips > 50
    # a task that goes is out of the very next answer
    r.update(table(web_tasks=("10.0.1.5", "10.0.1.6")))
    assert sorted(addresses(ask(server, "tasks.web", source=ON_FRONT))) == ["10.0.1.5",
                                                                           "10.0.1.6"]
    r.update(table(web_tasks=("10.0.1.5",)))
    assert addresses(ask(server, "tasks.web", source=ON_FRONT)) == ["10.0.1.5"]
    r.update(table(web_tasks=()))
    assert ask(server, "tasks.web", source=ON_FRONT).header.rcode == RCODE.NXDOMAIN


def test_listen_addresses_change_at_run_time(make_resolver, upstream):
    r, first = make_resolver([upstream.address])
    assert addresses(ask(first, "web", source=ON_FRONT)) == ["10.0.1.2"]
    r.listen([("127.0.0.54", 0), ("127.0.0.55", 0)])
    wait_for(lambda: sorted(h for h, _ in r.listening()) == ["127.0.0.54", "127.0.0.55"],
             10, 0.01, "the new addresses")
    for server in r.listening():
        assert addresses(ask(server, "web", source=ON_FRONT)) == ["10.0.1.2"]
        assert addresses(ask(server, "web", source=ON_FRONT, tcp=True)) == ["10.0.1.2"]
    with pytest.raises(OSError):            # the first address is served no more
        ask(first, "web", source=ON_FRONT, timeout=0.5)
    with pytest.raises(OSError):
        ask(first, "web", source=ON_FRONT, tcp=True, timeout=0.5)
    # stop is idempotent; started again, it serves the same addresses
    r.stop()
    r.stop()
    assert r.listening() == []
    r.start()
    wait_for(lambda: len(r.listening()) == 2, 10, 0.01, "the resolver to listen again")
    assert addresses(ask(r.listening()[0], "web", source=ON_FRONT)) == ["10.0.1.2"]


def test_nodes_sharing_an_engine_serve_the_same_address(make_resolver, upstream):
    # Every engine's bridge holds the network's gateway: the resolvers of
    # the nodes sharing an engine all serve it, the kernel spreading queries.
    addr = closed_port("127.0.0.54")
    first, _ = make_resolver([upstream.address], listen=(addr,), reuse_port=True)
    second, _ = make_resolver([upstream.address], listen=(addr,), reuse_port=True)
    assert first.listening() == second.listening() == [addr]
    for _ in range(40):
        assert addresses(ask(addr, "web", source=ON_FRONT)) == ["10.0.1.2"]
        assert addresses(ask(addr, "web", source=ON_FRONT, tcp=True)) == ["10.0.1.2"]
    assert first.counters()["answered"] > 0 and second.counters()["answered"] > 0


def test_the_nodes_resolv_conf_is_followed(make_resolver, tmp_path):
    conf = tmp_path / "resolv.conf"
    conf.write_text("nameserver 10.9.0.1\nsearch corp.example\n")
    r = Resolver(listen=[("127.0.0.53", 0)], resolv_conf=str(conf))
    r.update(table())
    r.start()
    try:
        wait_for(lambda: r.listening() and r.upstreams() == [("10.9.0.1", 53)], 10, 0.01,
                 "the upstreams read")
        server = r.listening()[0]
        assert addresses(ask(server, "web.corp.example", source=ON_FRONT)) == ["10.0.1.2"]
        conf.write_text("nameserver 10.9.0.2\nnameserver 10.9.0.3\nsearch lab.example\n")
        wait_for(lambda: r.upstreams() == [("10.9.0.2", 53), ("10.9.0.3", 53)], 10, 0.05,
                 "the new upstreams")
        assert addresses(ask(server, "web.lab.example", source=ON_FRONT)) == ["10.0.1.2"]
    finally:
        r.stop()


def test_an_upstream_that_is_the_resolver_itself_is_not_asked(make_resolver):
    r, server = make_resolver([])
    r.stop()
    loop = Resolver(listen=[server], upstreams=[server], search=[])
    loop.start()
    try:
        wait_for(lambda: loop.listening() == [server], 10, 0.01, "the resolver to listen")
        assert ask(server, "www.example.org").header.rcode == RCODE.SERVFAIL
        assert loop.counters()["forwarded"] == 1 and loop.counters()["queries"] == 1
    finally:
        loop.stop()


def test_queries_of_other_types_and_classes(make_resolver, upstream):
    _, server = make_resolver([upstream.address])
    reply = ask(server, "api", "ANY", source=ON_FRONT)
    assert sorted(addresses(reply)) == ["10.0.1.8", "10.0.1.9"]
    reply = ask(server, "web", "MX", source=ON_FRONT)
    assert reply.header.rcode == RCODE.NOERROR and not reply.rr and reply.header.aa
    q = question("web")
    q.header.opcode = 4                                     # NOTIFY
    assert DNSRecord.parse(ask_raw(server, q.pack())).header.rcode == RCODE.NOTIMP
    reply = ask(server, "web", "TXT", source=ON_FRONT)
    assert not any(rr.rtype == QTYPE.A for rr in reply.rr)


def test_the_resolver_in_a_process_of_its_own(upstream):
    """The same service from a child process: the table and the addresses
    reach it, a change is in the next answers within 1 s, and a child that
    dies is started again with both."""
    r = ResolverProcess(listen=[("127.0.0.53", 0)], upstreams=[upstream.address], search=[])
    r.update(table())
    r.start()
    try:
        server = wait_for(lambda: r.listening() and r.listening()[0], 15, 0.02,
                          "the child to listen")
        assert addresses(ask(server, "web", source=ON_FRONT)) == ["10.0.1.2"]
        assert addresses(ask(server, "web", source=STRANGER)) == [UPSTREAM_ANSWER]
        started = time.monotonic()
        r.update(table(web_tasks=("10.0.1.5",)))
        wait_for(lambda: addresses(ask(server, "tasks.web", source=ON_FRONT)) == ["10.0.1.5"],
                 1, 0.01, "the new table")
        assert time.monotonic() - started < 1
        wait_for(lambda: r.counters().get("answered", 0) >= 2, 5, 0.05, "the child's counters")
        # the child dies: another one serves the same table
        child = children_of(os.getpid(), "resolverproc")
        assert len(child) == 1
        os.kill(child[0], signal.SIGKILL)
        wait_for(lambda: children_of(os.getpid(), "resolverproc") not in ([], child), 15, 0.05,
                 "a new child")
        server = wait_for(lambda: r.listening() and r.listening()[0], 15, 0.02,
                          "the new child to listen")
        assert addresses(ask(server, "tasks.web", source=ON_FRONT)) == ["10.0.1.5"]
    finally:
        r.stop()
        r.stop()
    assert children_of(os.getpid(), "resolverproc") == []


def children_of(pid, marker):
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            continue
        if ppid == pid and marker.encode() in cmdline:
            found.append(int(entry))
    return found
