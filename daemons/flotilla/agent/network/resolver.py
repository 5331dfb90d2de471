"""The node's resolver: service discovery on overlay networks.

One resolver per node answers DNS over UDP and TCP on the node's addresses
on its networks (its engine bridge's address on each, port 53). Containers
reach it through Docker's embedded resolver (127.0.0.11 inside a container
on a user network), which forwards every name it does not know to the
``dns=`` servers the agent gave the container: ours.

Who asks decides what is answered. The agent replaces the whole table with
:meth:`Resolver.update`: per network id, the services on it and the tasks on
it (:class:`NetworkEntry`, :class:`ServiceEntry`). A query from source
address S is answered from the networks of the task whose address is S (all
of that task's networks, whichever the query came in on):

- ``NAME`` or an alias of a service on one of those networks: the service's
  virtual IP (``vip`` mode) or its running, healthy tasks' addresses
  (``dnsrr``);
- ``tasks.NAME`` (and ``tasks.ALIAS``): every running, healthy task's address;
- names are compared without regard to case; a trailing dot and one of the
  node's search domains (``search`` in its resolv.conf) may follow the name.

Anything else is forwarded to the node's own resolvers (the ``nameserver``
lines of its /etc/resolv.conf, loopback ones included, at most 3, unless
configured), as is every query from an address that is no task's: the names
of services on networks the asker is not on are not ours to give. No
upstream, or none answering within the forwarding deadline: SERVFAIL, well
within the 4 s Docker's embedded resolver waits for us, never silence.

Answers, and why:

- TTL 0 on every cluster answer (Swarm answers with 600 s, Consul's DNS
  interface with 0 by default): a task that stops or turns unhealthy must
  leave the answers within 1 s, and a TTL of 0 means no cache between the
  container and us keeps an answer at all; Docker's embedded resolver does
  not cache either. Negative answers carry no SOA, so they are not cached.
- A known name with no address (``dnsrr`` or ``tasks.NAME`` with no running,
  healthy task, a ``vip`` service not allocated yet): NXDOMAIN, for every
  query type. Swarm drops such a name from its table and forwards the
  query, so its users get the upstream's NXDOMAIN: we give that same answer
  ourselves, without sending the cluster's names outside and without
  resolving them to some unrelated outside host.
- A ``vip`` service keeps resolving to its VIP while it has no task: the VIP
  then refuses connections at once (the dataplane rejects them), so a client
  such as a proxy that resolves its backends when it starts still starts.
  This is where we differ from Swarm, which drops the name with the last task
  (moby/moby#37623, reported as a bug there).
- AAAA (or any type but A) for a known name with an address: an empty
  NOERROR answer, as Swarm does, so a client asking A and AAAA together does
  not wait or give up on the name.
- Several addresses (``dnsrr``, ``tasks.NAME``, a name on two of the asker's
  networks): all of them, in a new random order for each answer.

Hardened: a packet that does not parse, is not a query, or is over 4 KB is
dropped and counted, never answered with a traceback; a query with other than
one question gets FORMERR, another opcode NOTIMP. UDP answers over 512 bytes
(or the asker's EDNS size, at most 1232) are truncated with TC set, so the
asker retries over TCP. At most ``max_forwards`` queries are being forwarded
at once (more get SERVFAIL at once), each from a fresh socket with a random
query id, and only an answer to that very question from that upstream is
taken; at most ``max_tcp`` TCP connections are served at once, each closed
after ``tcp_idle`` seconds without a query. An upstream that is one of our
own addresses is never asked (no forwarding loop). Memory stays bounded:
queries being forwarded, TCP connections and the packed answers kept (at
most 4096, 8 MB in all) are all counted.

Several nodes sharing one engine (``make cluster``) each run a resolver on
the same addresses (every engine's bridge holds its network's gateway):
with ``reuse_port`` their sockets share the address (``SO_REUSEPORT``) and
the kernel hands each query to one of them. Each node is told the whole
picture of the networks its tasks are on, so any of them answers a task of
such a network alike; only a task on several networks whose node shares
the engine with nodes that are not on all of them may get an answer
from a node that knows fewer of its networks.

Each answer is packed by dnslib once per table, question and asker's
networks (:class:`Answers`), then sent again with the asker's id and its
records in a new order. The resolver runs on a thread of its own, an
asyncio loop; to keep the agent's other threads from delaying lookups (the
interpreter lock), run it in a process of its own with
:class:`~.resolverproc.ResolverProcess`.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import random
import secrets
import socket
import struct
import threading
from typing import Any, Coroutine, Iterable, Mapping, Sequence, TypedDict

from dnslib import A, RCODE, DNSHeader, DNSRecord, EDNS0, RR

from ...common.component import Component
from ...common.ratelog import RateLimitedLog

log = logging.getLogger(__name__)

DNS_PORT = 53
RESOLV_CONF = "/etc/resolv.conf"
CLUSTER_TTL = 0
UDP_DEFAULT = 512               # RFC 1035: the most a UDP answer may hold without EDNS
UDP_MAX = 1232                  # the most we send over UDP with EDNS (DNS flag day 2020)
TCP_MAX = 65535
MAX_QUERY = 4096                # a query is a few dozen bytes: more is dropped
MAX_UPSTREAMS = 3               # as many as the C library reads from resolv.conf
ATTEMPT_TIMEOUT = 1.5           # one upstream's time to answer
FORWARD_TIMEOUT = 3.0           # all upstreams' time, then SERVFAIL (Docker waits 4 s)
MAX_FORWARDS = 256
MAX_TCP = 64
TCP_IDLE = 5.0
TICK = 1.0                      # retry binds, re-read resolv.conf, flush the log
UDP_BURST = 64                  # datagrams read at most per wakeup of the loop
_IP_FREEBIND = getattr(socket, "IP_FREEBIND", 15)
_IPV6_FREEBIND = getattr(socket, "IPV6_FREEBIND", 78)
_A_RECORD = 16                  # an A record whose name points at the question's
QTYPE_A, QTYPE_OPT, QTYPE_ANY = 1, 41, 255
CLASS_IN, CLASS_ANY = 1, 255
_OPT = EDNS0(udp_len=UDP_MAX)   # in every answer to a query with EDNS (never changed)

Pair = tuple[str, int]
Name = tuple[bytes, ...]        # a name's labels, lower case, without the root


class ServiceEntry(TypedDict):
    """A service on one network, as the agent hands it over."""
    name: str
    aliases: list[str]
    mode: str                   # "vip" or "dnsrr"
    vip: str | None             # "10.0.1.2" or "10.0.1.2/24"; None: not allocated yet
    task_addrs: list[str]       # its running, healthy tasks' addresses on the network


class NetworkEntry(TypedDict):
    """One network's part of the table."""
    services: list[ServiceEntry]
    tasks: dict[str, list[str]]     # a task's address here -> the ids of the task's networks


def ipv4_of(addr: object) -> str | None:
    """``10.0.1.5`` from ``10.0.1.5`` or ``10.0.1.5/24``; None if it is no IPv4 address."""
    if not isinstance(addr, str):
        return None
    try:
        return str(ipaddress.IPv4Address(addr.split("/", 1)[0]))
    except ValueError:
        return None


def name_key(name: str) -> Name:
    """The lookup key of a name: its labels in lower case."""
    return tuple(label.encode("ascii", "replace").lower()
                 for label in name.strip(".").split(".") if label)


class Table:
    """What the resolver answers from, compiled from the agent's table;
    never changed once built (the resolver swaps a whole new one in)."""

    def __init__(self, networks: Mapping[str, NetworkEntry] | None = None) -> None:
        self.skipped = 0            # entries left out: not an IPv4 address, not a mode
        askers: dict[str, set[str]] = {}
        names: dict[str, dict[Name, tuple[str, ...]]] = {}
        for net_id, net in (networks or {}).items():
            for addr, task_nets in (net.get("tasks") or {}).items():
                ip = ipv4_of(addr)
                if ip is None:
                    self.skipped += 1
                    continue
                askers.setdefault(ip, set()).update([net_id, *task_nets])
            found: dict[Name, dict[str, None]] = {}
            for svc in net.get("services") or []:
                tasks = self._addresses(svc.get("task_addrs") or [])
                mode = svc.get("mode")
                if mode == "vip":
                    vip = ipv4_of(svc.get("vip"))
                    front = [vip] if vip is not None else []
                elif mode == "dnsrr":
                    front = tasks
                else:
                    self.skipped += 1
                    continue
                for label in [svc.get("name", ""), *(svc.get("aliases") or [])]:
                    key = name_key(label)
                    if not key:
                        continue
                    found.setdefault(key, {}).update(dict.fromkeys(front))
                    found.setdefault((b"tasks",) + key, {}).update(dict.fromkeys(tasks))
            names[net_id] = {key: tuple(addrs) for key, addrs in found.items()}
        self._askers = {ip: frozenset(nets) for ip, nets in askers.items()}
        # the answers' data, made once (each asker's answer packs the same)
        self.rdata = {ip: A(ip) for addrs in names.values() for ips in addrs.values()
                      for ip in ips}
        self._names = names
        self._merged: dict[frozenset[str], dict[Name, tuple[str, ...]]] = {}

    def _addresses(self, addrs: Iterable[object]) -> list[str]:
        out: dict[str, None] = {}
        for addr in addrs:
            ip = ipv4_of(addr)
            if ip is None:
                self.skipped += 1
            else:
                out[ip] = None
        return list(out)

    def networks_of(self, source: str) -> frozenset[str] | None:
        """The networks of the task whose address is ``source``; None if none is."""
        return self._askers.get(source)

    def _names_on(self, nets: frozenset[str]) -> dict[Name, tuple[str, ...]]:
        merged = self._merged.get(nets)
        if merged is None:
            if len(nets) == 1:
                merged = self._names.get(next(iter(nets)), {})
            else:
                union: dict[Name, dict[str, None]] = {}
                for net_id in sorted(nets):
                    for key, addrs in self._names.get(net_id, {}).items():
                        union.setdefault(key, {}).update(dict.fromkeys(addrs))
                merged = {key: tuple(addrs) for key, addrs in union.items()}
            self._merged[nets] = merged   # at most one per distinct set of networks
        return merged

    def lookup(self, source: str, name: Name,
               search: Sequence[Name] = ()) -> tuple[str, ...] | None:
        """The addresses ``name`` has for an asker at ``source`` (empty: a known
        name without one); None when it is not a name of ours for that asker."""
        nets = self._askers.get(source)
        if nets is None:
            return None
        names = self._names_on(nets)
        hit = names.get(name)
        if hit is None:
            for suffix in search:
                n = len(suffix)
                if 0 < n < len(name) and name[-n:] == suffix:
                    hit = names.get(name[:-n])
                    if hit is not None:
                        break
        return hit


def edns_size(query: DNSRecord) -> int | None:
    """The UDP size the asker announced with EDNS, or None without EDNS."""
    for rr in query.ar:
        if rr.rtype == QTYPE_OPT:
            return int(rr.rclass)
    return None


def udp_limit(query: DNSRecord) -> int:
    """The most a UDP answer to ``query`` may hold."""
    size = edns_size(query)
    return UDP_DEFAULT if size is None else max(UDP_DEFAULT, min(size, UDP_MAX))


def reply_to(query: DNSRecord, rcode: int = RCODE.NOERROR, authoritative: bool = True) -> DNSRecord:
    """An empty answer to ``query`` (its id, opcode, RD flag, question and EDNS
    echoed; recursion available)."""
    asked = query.header.bitmap
    bitmap = (0x8000 | asked & 0x7800 | (0x400 if authoritative else 0) | asked & 0x100
              | 0x80 | rcode & 0xF)         # QR, opcode, AA, RD, RA, rcode
    reply = DNSRecord(DNSHeader(query.header.id, bitmap), questions=query.questions[:1])
    if edns_size(query) is not None:
        reply.ar.append(_OPT)
    return reply


def answer(table: Table, source: str, query: DNSRecord, search: Sequence[Name] = (),
           ttl: int = CLUSTER_TTL, rng: random.Random | None = None) -> DNSRecord | None:
    """The answer to ``query`` from ``source`` out of ``table``; None when the
    query is to be forwarded upstream."""
    if query.header.opcode != 0:
        return reply_to(query, RCODE.NOTIMP, authoritative=False)
    if len(query.questions) != 1:
        return reply_to(query, RCODE.FORMERR, authoritative=False)
    question = query.questions[0]
    if question.qclass not in (CLASS_IN, CLASS_ANY):
        return None
    addrs = table.lookup(source, tuple(label.lower() for label in question.qname.label), search)
    if addrs is None:
        return None
    if not addrs:
        return reply_to(query, RCODE.NXDOMAIN)
    reply = reply_to(query)
    if question.qtype in (QTYPE_A, QTYPE_ANY):
        if len(addrs) > 1:
            shuffled = list(addrs)
            (rng or random).shuffle(shuffled)
            addrs = tuple(shuffled)
        rdata = table.rdata
        reply.rr = [RR(question.qname, QTYPE_A, CLASS_IN, ttl, rdata[ip]) for ip in addrs]
    return reply


def pack(reply: DNSRecord, limit: int) -> tuple[bytes, bool]:
    """``reply`` in wire format within ``limit`` bytes, and whether it had to be
    truncated (as many answers as fit, TC set)."""
    data: bytes = reply.pack()
    if len(data) <= limit:
        return data, False
    answers = list(reply.rr)
    fits = max(0, (limit - (len(data) - _A_RECORD * len(answers))) // _A_RECORD)
    reply.header.tc = 1
    reply.rr = answers[:fits]
    reply.auth = []
    data = reply.pack()
    while len(data) > limit and reply.rr:
        reply.rr = reply.rr[:-1]
        data = reply.pack()
    return data, True


class _Packed:
    """One answer packed by dnslib, in pieces: the records are shuffled and,
    over UDP, cut to what fits for each asker."""
    __slots__ = ("flags", "question", "records", "arcount", "tail")

    def __init__(self, flags: int, question: bytes, records: tuple[bytes, ...], arcount: int,
                 tail: bytes) -> None:
        self.flags = flags
        self.question = question
        self.records = records
        self.arcount = arcount
        self.tail = tail

    @classmethod
    def split(cls, data: bytes, qname: Name, answers: int) -> _Packed | None:
        """``data`` in pieces, if it is laid out as expected: the question,
        then ``answers`` A records of 16 bytes that name the question's name
        by a pointer, then the additional section."""
        qlen = sum(len(label) + 1 for label in qname) + 1 + 4
        start, end = 12 + qlen, 12 + qlen + _A_RECORD * answers
        records = tuple(data[i:i + _A_RECORD] for i in range(start, end, _A_RECORD))
        if len(data) < end or any(r[:4] != b"\xc0\x0c\x00\x01" for r in records):
            return None
        return cls(int.from_bytes(data[2:4], "big"), data[12:start], records,
                   int.from_bytes(data[10:12], "big"), data[end:])

    def join(self, qid: int, limit: int, rng: random.Random) -> tuple[bytes, bool]:
        records = self.records
        fits = len(records)
        room = limit - 12 - len(self.question) - len(self.tail)
        truncated = _A_RECORD * fits > room
        if truncated:
            fits = max(0, room // _A_RECORD)
        if len(records) > 1:
            shuffled = list(records)
            rng.shuffle(shuffled)
            records = tuple(shuffled[:fits])
        else:
            records = records[:fits]
        header = struct.pack("!HHHHHH", qid, self.flags | (0x200 if truncated else 0), 1,
                             len(records), 0, self.arcount)
        return header + self.question + b"".join(records) + self.tail, truncated


class Answers:
    """The answers of one table, each packed once (by dnslib, with
    :func:`answer` and :func:`pack`) for a question and the asker's networks,
    then reused with the asker's id, the records in a new order, and cut to
    the asker's size."""

    MAX = 4096                  # packed answers kept, and their bytes in all: past
    MAX_BYTES = 8 * 1024 * 1024 # either, they are made anew

    def __init__(self, table: Table, search: Sequence[Name] = (), ttl: int = CLUSTER_TTL) -> None:
        self.table = table
        self.search = tuple(search)
        self.ttl = ttl
        self._packed: dict[tuple[object, ...], _Packed] = {}
        self._bytes = 0

    def reply(self, source: str, query: DNSRecord, limit: int,
              rng: random.Random) -> tuple[DNSRecord | None, bytes, bool]:
        """(the answer, packed within ``limit`` bytes, whether it was
        truncated); (None, b"", False) to forward the query. The answer is
        None too when a packed one was reused."""
        nets = self.table.networks_of(source)
        questions = query.questions
        if nets is None or len(questions) != 1 or query.header.opcode != 0:
            reply = answer(self.table, source, query, self.search, self.ttl, rng)
            if reply is None:
                return None, b"", False
            data, truncated = pack(reply, limit)
            return reply, data, truncated
        q = questions[0]
        key = (nets, q.qname.label, q.qtype, q.qclass, query.header.bitmap & 0x100,
               edns_size(query) is not None)
        packed = self._packed.get(key)
        if packed is not None:
            data, truncated = packed.join(query.header.id, limit, rng)
            return None, data, truncated
        reply = answer(self.table, source, query, self.search, self.ttl, rng)
        if reply is None:
            return None, b"", False
        whole, _ = pack(reply, TCP_MAX)
        packed = _Packed.split(whole, q.qname.label, len(reply.rr))
        if packed is None:                  # not laid out as expected: pack each time
            data, truncated = pack(reply, limit)
            return reply, data, truncated
        if len(self._packed) >= self.MAX or self._bytes + len(whole) > self.MAX_BYTES:
            self._packed.clear()
            self._bytes = 0
        self._packed[key] = packed
        self._bytes += len(whole)
        data, truncated = packed.join(query.header.id, limit, rng)
        return reply, data, truncated


def read_resolv_conf(path: str = RESOLV_CONF) -> tuple[list[Pair], list[str]]:
    """The name servers (at most 3, port 53) and the search domains of a resolv.conf."""
    servers: list[Pair] = []
    search: list[str] = []
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read(65536)
    except OSError:
        return [], []
    for line in text.splitlines():
        fields = line.split("#", 1)[0].split(";", 1)[0].split()
        if len(fields) < 2:
            continue
        if fields[0] == "nameserver":
            try:
                ip = ipaddress.ip_address(fields[1].split("%", 1)[0])
            except ValueError:
                continue
            servers.append((str(ip), DNS_PORT))
        elif fields[0] in ("search", "domain"):
            search = fields[1:]     # the last of the two wins (resolv.conf(5))
    return servers[:MAX_UPSTREAMS], search


def question_wire(query: DNSRecord) -> bytes:
    """``query``'s question as it is on the wire (names in questions are not
    compressed), in lower case."""
    q = query.questions[0]
    name = b"".join(bytes((len(label),)) + label for label in q.qname.label) + b"\0"
    return name.lower() + struct.pack("!HH", q.qtype, q.qclass)


def _matches(data: bytes, qid: int, question: bytes) -> bool:
    """``data`` is an answer with id ``qid`` to one question, ``question``
    (lower case, as from :func:`question_wire`): what an upstream copies
    from the query into its answer."""
    end = 12 + len(question)
    return (len(data) >= end and data[:2] == qid.to_bytes(2, "big") and data[2] & 0x80 != 0
            and data[4:6] == b"\0\1" and data[12:end].lower() == question)


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _freebind(sock: socket.socket) -> None:
    """Bind even before the address is on an interface (the bridge that
    gets it may be set up after the resolver is told to listen there)."""
    try:
        if sock.family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, _IPV6_FREEBIND, 1)
        else:
            sock.setsockopt(socket.IPPROTO_IP, _IP_FREEBIND, 1)
    except OSError:
        pass


class _Listener:
    """One (address, port) served: a UDP socket read on the loop, a TCP server."""

    def __init__(self, loop: asyncio.AbstractEventLoop, udp: socket.socket, tcp: asyncio.Server,
                 bound: Pair) -> None:
        self.loop = loop
        self.udp = udp
        self.tcp = tcp
        self.bound = bound
        self.closed = False

    def send(self, payload: bytes, addr: Any) -> None:
        if self.closed:
            return
        try:
            self.udp.sendto(payload, addr)
        except OSError:
            pass        # the asker's buffer is full, or it is gone: it will ask again

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.loop.remove_reader(self.udp)
            self.udp.close()
            self.tcp.close()


class Resolver(Component):
    """Serves the node's DNS; see the module's description."""

    name = "agent-resolver"

    def __init__(self, listen: Iterable[Pair] = (), upstreams: Sequence[Pair] | None = None,
                 search: Sequence[str] | None = None, resolv_conf: str = RESOLV_CONF,
                 ttl: int = CLUSTER_TTL, attempt_timeout: float = ATTEMPT_TIMEOUT,
                 forward_timeout: float = FORWARD_TIMEOUT, max_forwards: int = MAX_FORWARDS,
                 max_tcp: int = MAX_TCP, tcp_idle: float = TCP_IDLE,
                 reuse_port: bool = False) -> None:
        super().__init__()
        self.ttl = ttl
        self.reuse_port = reuse_port
        self.attempt_timeout = attempt_timeout
        self.forward_timeout = forward_timeout
        self.max_forwards = max_forwards
        self.max_tcp = max_tcp
        self.tcp_idle = tcp_idle
        self._resolv_conf = resolv_conf
        self._fixed_upstreams = list(upstreams) if upstreams is not None else None
        self._fixed_search = list(search) if search is not None else None
        self._upstreams: list[Pair] = list(upstreams or [])
        self._search: tuple[Name, ...] = self._search_keys(search or [])
        self._conf_stamp: tuple[float, int] | None = None
        self._answers = Answers(Table(), self._search, ttl)
        self._state = threading.Lock()
        self._wanted: frozenset[Pair] = frozenset()
        self._bound: list[Pair] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wakeup: asyncio.Event | None = None
        self._listeners: dict[Pair, _Listener] = {}     # owned by the loop thread
        self._forwards = 0
        self._tcp_conns = 0
        self._jobs: set[asyncio.Task[None]] = set()
        self._rng = random.Random()
        self._counts = dict.fromkeys(
            ("queries", "answered", "nxdomain", "forwarded", "servfail", "malformed",
             "truncated", "overload", "upstream_errors"), 0)
        self._refused = RateLimitedLog(log, "resolver")
        self.listen(listen)

    # -- what the agent calls (any thread) -------------------------------------------------
    def update(self, networks: Mapping[str, NetworkEntry]) -> None:
        """Answer from ``networks`` from now on (the whole table, replaced at once)."""
        table = Table(networks)
        if table.skipped:
            self._refused.note("table", f"{table.skipped} entries without a valid address or mode")
        with self._state:
            self._answers = Answers(table, self._search, self.ttl)

    def listen(self, addresses: Iterable[Pair]) -> None:
        """Serve on exactly these (address, port) pairs from now on; port 0:
        any free port, the same for UDP and TCP (see :meth:`listening`). An
        address that is not an IP address is a ValueError; one that cannot be
        bound is tried again every second (and logged)."""
        wanted = frozenset((str(ipaddress.ip_address(host)), int(port)) for host, port in addresses)
        with self._state:
            self._wanted = wanted
        self.wake()

    def listening(self) -> list[Pair]:
        """The (address, port) pairs served now."""
        with self._state:
            return list(self._bound)

    def counters(self) -> dict[str, int]:
        return dict(self._counts)

    def upstreams(self) -> list[Pair]:
        return list(self._upstreams)

    # -- the loop ----------------------------------------------------------------------------
    def run(self) -> None:
        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(self._serve(loop))
        finally:
            with self._state:
                self._loop = None
                self._bound = []
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    def wake(self) -> None:
        with self._state:
            loop, wakeup = self._loop, self._wakeup
        if loop is not None and wakeup is not None:
            try:
                loop.call_soon_threadsafe(wakeup.set)
            except RuntimeError:        # the loop has closed: the resolver stopped
                pass

    async def _serve(self, loop: asyncio.AbstractEventLoop) -> None:
        wakeup = asyncio.Event()
        with self._state:
            self._loop, self._wakeup = loop, wakeup
        try:
            while not self.stopping.is_set():
                wakeup.clear()
                self._read_resolv_conf()
                await self._reconcile()
                self._refused.flush()
                try:
                    await asyncio.wait_for(wakeup.wait(), TICK)
                except TimeoutError:
                    pass
        finally:
            for listener in self._listeners.values():
                listener.close()
            self._listeners.clear()
            jobs = [t for t in asyncio.all_tasks(loop) if t is not asyncio.current_task()]
            for job in jobs:
                job.cancel()
            await asyncio.gather(*jobs, return_exceptions=True)

    def _read_resolv_conf(self) -> None:
        if self._fixed_upstreams is not None and self._fixed_search is not None:
            return
        try:
            st = os.stat(self._resolv_conf)
            stamp: tuple[float, int] | None = (st.st_mtime, st.st_size)
        except OSError:
            stamp = None
        if stamp == self._conf_stamp and stamp is not None:
            return
        self._conf_stamp = stamp
        servers, search = read_resolv_conf(self._resolv_conf)
        if self._fixed_upstreams is None:
            self._upstreams = servers
        if self._fixed_search is None:
            with self._state:
                self._search = self._search_keys(search)
                self._answers = Answers(self._answers.table, self._search, self.ttl)

    @staticmethod
    def _search_keys(domains: Iterable[str]) -> tuple[Name, ...]:
        return tuple(key for key in (name_key(d) for d in domains) if key)

    async def _reconcile(self) -> None:
        with self._state:
            wanted = self._wanted
        for pair in [p for p in self._listeners if p not in wanted]:
            self._listeners.pop(pair).close()
        for pair in sorted(wanted - self._listeners.keys()):
            try:
                self._listeners[pair] = await self._open(pair)
            except OSError as exc:
                self._refused.note("bind", f"cannot serve on {pair[0]}:{pair[1]}: {exc}")
        with self._state:
            self._bound = sorted(listener.bound for listener in self._listeners.values())

    async def _open(self, pair: Pair) -> _Listener:
        host, port = pair
        loop = asyncio.get_running_loop()
        udp = tcp = None
        for _ in range(20 if port == 0 else 1):
            udp = socket.socket(_family(host), socket.SOCK_DGRAM)
            tcp = socket.socket(_family(host), socket.SOCK_STREAM)
            try:
                for sock in (udp, tcp):
                    sock.setblocking(False)
                    _freebind(sock)
                    if self.reuse_port and port != 0:
                        # the other nodes sharing this engine serve the same
                        # address (each its copy of the same networks' table)
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                udp.bind((host, port))
                tcp.bind((host, udp.getsockname()[1]))
                tcp.listen(128)
                break
            except OSError:
                udp.close()
                tcp.close()
                udp = tcp = None
                if port != 0:
                    raise
        if udp is None or tcp is None:
            raise OSError(f"no port free for both UDP and TCP on {host}")
        bound = (host, int(udp.getsockname()[1]))
        try:
            server = await asyncio.start_server(self._serve_tcp, sock=tcp)
        except BaseException:
            udp.close()
            tcp.close()
            raise
        listener = _Listener(loop, udp, server, bound)
        loop.add_reader(udp, self._read_udp, listener)
        return listener

    # -- queries -------------------------------------------------------------------------------
    def _count(self, what: str) -> None:
        self._counts[what] += 1

    def _parse(self, data: bytes, source: str) -> DNSRecord | None:
        """The query in ``data``, or None (dropped and counted)."""
        self._count("queries")
        if len(data) > MAX_QUERY:
            self._malformed(source, f"{len(data)} bytes")
            return None
        try:
            query = DNSRecord.parse(data)
        except Exception as exc:
            self._malformed(source, str(exc)[:100])
            return None
        if query.header.qr:
            self._malformed(source, "not a query")
            return None
        return query

    def _malformed(self, source: str, detail: str) -> None:
        self._count("malformed")
        self._refused.note("malformed", f"from {source}: {detail}")

    def _local(self, query: DNSRecord, source: str, limit: int) -> bytes | None:
        """Our answer to ``query`` packed within ``limit`` bytes; None to forward it."""
        _, data, truncated = self._answers.reply(source, query, limit, self._rng)
        if not data:
            return None
        self._count("nxdomain" if data[3] & 0x0F == RCODE.NXDOMAIN else "answered")
        if truncated:
            self._count("truncated")
        return data

    def _read_udp(self, listener: _Listener) -> None:
        """On the loop: answer what has come in on ``listener``'s UDP socket
        (a burst at a time, so a busy resolver waits less on the loop)."""
        for _ in range(UDP_BURST):
            try:
                data, addr = listener.udp.recvfrom(MAX_QUERY + 1)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return          # an ICMP error for an earlier answer, or the socket closed
            self._on_udp(listener, data, addr)

    def _on_udp(self, listener: _Listener, data: bytes, addr: Any) -> None:
        source = str(addr[0])
        try:
            query = self._parse(data, source)
            if query is None:
                return
            limit = udp_limit(query)
            reply = self._local(query, source, limit)
        except Exception as exc:     # a query we cannot answer: as if malformed
            self._malformed(source, f"{type(exc).__name__}: {str(exc)[:100]}")
            return
        if reply is not None:
            listener.send(reply, addr)
            return

        async def forward() -> None:
            listener.send(await self._forward(query, data, False, limit), addr)

        self._spawn(forward())

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        job = asyncio.get_running_loop().create_task(coro)
        self._jobs.add(job)
        job.add_done_callback(self._jobs.discard)

    async def _forward(self, query: DNSRecord, data: bytes, tcp: bool, limit: int) -> bytes:
        """The upstreams' answer to ``query`` (whose wire form is ``data``), or SERVFAIL."""
        if self._forwards >= self.max_forwards:
            self._count("overload")
            self._refused.note("overload", f"{self._forwards} queries being forwarded already")
            return self._servfail(query, limit)
        self._count("forwarded")
        self._forwards += 1
        try:
            response = await self._ask_upstreams(query, data, tcp)
        except Exception as exc:        # a bug of ours: the asker still gets an answer
            self._refused.note("forward", f"{type(exc).__name__}: {exc}")
            response = None
        finally:
            self._forwards -= 1
        if response is None:
            return self._servfail(query, limit)
        response = data[:2] + response[2:]
        if len(response) > limit:
            self._count("truncated")
            short = reply_to(query, response[3] & 0x0F, authoritative=False)
            short.header.tc = 1
            return bytes(short.pack())
        return response

    def _servfail(self, query: DNSRecord, limit: int) -> bytes:
        self._count("servfail")
        return pack(reply_to(query, RCODE.SERVFAIL, authoritative=False), limit)[0]

    async def _ask_upstreams(self, query: DNSRecord, data: bytes, tcp: bool) -> bytes | None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.forward_timeout
        ours = set(self.listening())
        upstreams = [u for u in self._upstreams if u not in ours]
        failed: set[Pair] = set()
        for _ in range(2):          # a second round for the upstreams that were only slow
            for upstream in upstreams:
                if upstream in failed:
                    continue
                budget = min(self.attempt_timeout, deadline - loop.time())
                if budget <= 0:
                    return None
                ask = self._ask_tcp if tcp else self._ask_udp
                try:
                    async with asyncio.timeout(budget):
                        return await ask(upstream, query, data)
                except TimeoutError:
                    self._count("upstream_errors")
                except (OSError, EOFError, ValueError) as exc:
                    self._count("upstream_errors")
                    failed.add(upstream)
                    log.debug("upstream %s:%d: %s", upstream[0], upstream[1], exc)
        return None

    async def _ask_udp(self, upstream: Pair, query: DNSRecord, data: bytes) -> bytes:
        loop = asyncio.get_running_loop()
        qid = secrets.randbits(16)
        with socket.socket(_family(upstream[0]), socket.SOCK_DGRAM) as sock:
            sock.setblocking(False)
            sock.connect(upstream)
            await loop.sock_sendall(sock, qid.to_bytes(2, "big") + data[2:])
            while True:
                response = await loop.sock_recv(sock, TCP_MAX)
                if _matches(response, qid, question_wire(query)):
                    return response
                self._count("upstream_errors")      # stray or forged: wait on

    async def _ask_tcp(self, upstream: Pair, query: DNSRecord, data: bytes) -> bytes:
        qid = secrets.randbits(16)
        reader, writer = await asyncio.open_connection(upstream[0], upstream[1])
        try:
            packet = qid.to_bytes(2, "big") + data[2:]
            writer.write(len(packet).to_bytes(2, "big") + packet)
            await writer.drain()
            size = int.from_bytes(await reader.readexactly(2), "big")
            response = await reader.readexactly(size)
        finally:
            writer.close()
        if not _matches(response, qid, question_wire(query)):
            raise ValueError("the upstream's answer is not one to our question")
        return response

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        source = str(peer[0]) if peer else ""
        if self._tcp_conns >= self.max_tcp:
            self._count("overload")
            self._refused.note("overload", f"{self._tcp_conns} TCP connections already")
            writer.close()
            return
        self._tcp_conns += 1
        try:
            while True:
                try:
                    async with asyncio.timeout(self.tcp_idle):
                        size = int.from_bytes(await reader.readexactly(2), "big")
                        data = await reader.readexactly(size)
                except (asyncio.IncompleteReadError, TimeoutError, OSError):
                    return
                try:
                    query = self._parse(data, source)
                    if query is None:
                        return          # garbage on a stream: nothing after it can be trusted
                    reply = self._local(query, source, TCP_MAX)
                except Exception as exc:
                    self._malformed(source, f"{type(exc).__name__}: {str(exc)[:100]}")
                    return
                if reply is None:
                    reply = await self._forward(query, data, True, TCP_MAX)
                writer.write(len(reply).to_bytes(2, "big") + reply)
                try:
                    async with asyncio.timeout(self.tcp_idle):
                        await writer.drain()
                except (TimeoutError, OSError):
                    return
        finally:
            self._tcp_conns -= 1
            writer.close()
