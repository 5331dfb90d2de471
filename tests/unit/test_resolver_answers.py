"""The node resolver's answers, from the table and the asker's address alone."""

import random

from dnslib import EDNS0, QTYPE, RCODE, DNSRecord

from flotilla.agent.network.resolver import (
    Answers, Table, answer, name_key, pack, read_resolv_conf, udp_limit)

FRONT, BACK = "net-front", "net-back"
WEB_TASKS = ["10.0.1.5", "10.0.1.6", "10.0.1.7"]


def table(**changes):
    """web (vip, alias www) and api (dnsrr) on front; db (vip) on back.
    10.0.1.5-7: web's tasks (front); 10.0.1.9: api's (front and back);
    10.0.2.5: db's (back)."""
    front = {
        "services": [
            {"name": "web", "aliases": ["www"], "mode": "vip", "vip": "10.0.1.2/24",
             "task_addrs": [a + "/24" for a in WEB_TASKS]},
            {"name": "api", "aliases": [], "mode": "dnsrr", "vip": None,
             "task_addrs": ["10.0.1.9"]},
        ],
        "tasks": {**{a: [FRONT] for a in WEB_TASKS}, "10.0.1.9": [FRONT, BACK]},
    }
    back = {
        "services": [{"name": "db", "aliases": [], "mode": "vip", "vip": "10.0.2.2/24",
                      "task_addrs": ["10.0.2.5"]}],
        "tasks": {"10.0.2.5": [BACK], "10.0.2.9": [FRONT, BACK]},
    }
    nets = {FRONT: front, BACK: back}
    for name, value in changes.items():
        nets[name] = value
    return Table(nets)


def ask(t, source, name, qtype="A", **kw):
    return answer(t, source, DNSRecord.question(name, qtype), **kw)


def addrs(reply):
    return sorted(str(rr.rdata) for rr in reply.rr)


def test_a_task_gets_the_services_of_its_networks_only():
    t = table()
    assert addrs(ask(t, "10.0.1.5", "web")) == ["10.0.1.2"]
    assert ask(t, "10.0.1.5", "db") is None, "db is on back only: forwarded, not answered"
    assert ask(t, "10.0.1.5", "tasks.db") is None
    assert addrs(ask(t, "10.0.2.5", "db")) == ["10.0.2.2"]
    assert ask(t, "10.0.2.5", "web") is None
    # on both networks (listed on front, or only under back's tasks): both networks' names
    for both in ("10.0.1.9", "10.0.2.9"):
        assert addrs(ask(t, both, "web")) == ["10.0.1.2"]
        assert addrs(ask(t, both, "db")) == ["10.0.2.2"]


def test_an_address_that_is_no_task_gets_no_cluster_name():
    t = table()
    for source in ("10.0.1.2", "10.0.1.100", "127.0.0.1"):   # the VIP, a stranger, the node
        assert ask(t, source, "web") is None
        assert ask(t, source, "tasks.web") is None


def test_vip_dnsrr_tasks_and_aliases():
    t = table()
    reply = ask(t, "10.0.1.5", "web")
    assert reply.header.rcode == RCODE.NOERROR and reply.header.aa and reply.header.ra
    assert addrs(reply) == ["10.0.1.2"]
    assert addrs(ask(t, "10.0.1.5", "www")) == ["10.0.1.2"]
    assert addrs(ask(t, "10.0.1.5", "tasks.web")) == sorted(WEB_TASKS)
    assert addrs(ask(t, "10.0.1.5", "tasks.www")) == sorted(WEB_TASKS)
    assert addrs(ask(t, "10.0.1.5", "api")) == ["10.0.1.9"]
    assert addrs(ask(t, "10.0.1.5", "tasks.api")) == ["10.0.1.9"]
    assert ask(t, "10.0.1.5", "tasks") is None
    assert ask(t, "10.0.1.5", "web.tasks") is None


def test_names_are_matched_without_case_trailing_dot_or_search_domain():
    t = table()
    search = (name_key("corp.example.com"),)
    for name in ("WEB", "web.", "Tasks.Web.", "web.corp.example.com", "WEB.Corp.Example.Com."):
        reply = ask(t, "10.0.1.5", name, search=search)
        assert reply is not None and reply.rr, name
        assert reply.rr[0].rname == reply.q.qname     # the name as asked
        assert str(reply.rr[0].rname).rstrip(".") == name.rstrip(".")
    assert ask(t, "10.0.1.5", "web.other.example", search=search) is None
    assert ask(t, "10.0.1.5", "web.corp.example.com") is None      # not a search domain
    assert ask(t, "10.0.1.5", "corp.example.com", search=search) is None


def test_cluster_answers_have_ttl_0():
    t = table()
    for name in ("web", "tasks.web", "api"):
        ttls = [rr.ttl for rr in ask(t, "10.0.1.5", name).rr]
        assert ttls and set(ttls) == {0}, name


def test_a_known_name_without_address_is_nxdomain():
    # no service on front has a running task; "new" has no VIP yet
    empty = table(**{FRONT: {"tasks": {a: [FRONT] for a in WEB_TASKS}, "services": [
        {"name": "api", "aliases": ["rest"], "mode": "dnsrr", "vip": None, "task_addrs": []},
        {"name": "web", "aliases": [], "mode": "vip", "vip": "10.0.1.2", "task_addrs": []},
        {"name": "new", "aliases": [], "mode": "vip", "vip": None, "task_addrs": []},
    ]}})
    for name in ("api", "rest", "tasks.api", "tasks.web", "new"):
        for qtype in ("A", "AAAA", "MX"):
            reply = ask(empty, "10.0.1.5", name, qtype)
            assert reply is not None and reply.header.rcode == RCODE.NXDOMAIN, (name, qtype)
            assert not reply.rr and not reply.auth   # no SOA: not cached
    # a vip service keeps its VIP while it has no task (connections are refused there)
    assert addrs(ask(empty, "10.0.1.5", "web")) == ["10.0.1.2"]


def test_aaaa_and_other_types_of_a_known_name_are_empty_answers():
    t = table()
    for qtype in ("AAAA", "MX", "TXT", "SRV"):
        reply = ask(t, "10.0.1.5", "web", qtype)
        assert reply.header.rcode == RCODE.NOERROR and not reply.rr, qtype
    assert addrs(ask(t, "10.0.1.5", "tasks.web", "ANY")) == sorted(WEB_TASKS)


def test_several_addresses_come_in_a_new_order_each_time():
    t = table()
    rng = random.Random(7)
    orders = set()
    for _ in range(40):
        reply = ask(t, "10.0.1.5", "tasks.web", rng=rng)
        got = [str(rr.rdata) for rr in reply.rr]
        assert sorted(got) == sorted(WEB_TASKS)
        orders.add(tuple(got))
    assert len(orders) > 1


def test_a_name_on_two_of_the_askers_networks_gets_both():
    t = table(**{BACK: {"services": [{"name": "web", "aliases": [], "mode": "vip",
                                      "vip": "10.0.2.3", "task_addrs": ["10.0.2.7"]}],
                        "tasks": {"10.0.2.7": [BACK]}}})
    assert addrs(ask(t, "10.0.1.9", "web")) == ["10.0.1.2", "10.0.2.3"]
    assert addrs(ask(t, "10.0.1.9", "tasks.web")) == sorted(WEB_TASKS + ["10.0.2.7"])
    assert addrs(ask(t, "10.0.1.5", "web")) == ["10.0.1.2"]


def test_bad_entries_are_left_out_not_fatal():
    t = Table({FRONT: {"services": [
        {"name": "web", "aliases": [], "mode": "dnsrr", "vip": None,
         "task_addrs": ["10.0.1.5", "not-an-address", "fe80::1", "10.0.1.6"]},
        {"name": "odd", "aliases": [], "mode": "weird", "vip": "10.0.1.3", "task_addrs": []},
    ], "tasks": {"10.0.1.5": [FRONT], "bogus": [FRONT]}}})
    assert t.skipped == 4
    assert addrs(ask(t, "10.0.1.5", "web")) == ["10.0.1.5", "10.0.1.6"]
    assert ask(t, "10.0.1.5", "odd") is None
    assert Table().lookup("10.0.1.5", name_key("web")) is None


def test_odd_queries():
    t = table()
    q = DNSRecord.question("web")
    q.header.opcode = 2                                     # STATUS
    assert answer(t, "10.0.1.5", q).header.rcode == RCODE.NOTIMP
    two = DNSRecord.question("web")
    two.add_question(*DNSRecord.question("api").questions)
    assert answer(t, "10.0.1.5", two).header.rcode == RCODE.FORMERR
    none = DNSRecord()
    assert answer(t, "10.0.1.5", none).header.rcode == RCODE.FORMERR
    chaos = DNSRecord.question("web", "TXT", "CH")
    assert answer(t, "10.0.1.5", chaos) is None             # not ours: forwarded


def many_tasks(n):
    addrs_ = [f"10.0.{i // 200 + 1}.{i % 200 + 10}" for i in range(n)]
    return Table({FRONT: {"services": [{"name": "big", "aliases": [], "mode": "dnsrr",
                                        "vip": None, "task_addrs": addrs_}],
                          "tasks": {"10.0.1.5": [FRONT]}}}), addrs_


def test_udp_answers_are_truncated_with_tc_and_tcp_ones_are_whole():
    t, all_addrs = many_tasks(100)
    q = DNSRecord.question("big")
    data, truncated = pack(answer(t, "10.0.1.5", q), udp_limit(q))
    assert truncated and len(data) <= 512
    reply = DNSRecord.parse(data)
    assert reply.header.tc and 0 < len(reply.rr) < 100
    assert set(addrs(reply)) <= set(all_addrs)
    # with EDNS, up to the asker's size (at most 1232)
    e = DNSRecord.question("big")
    e.add_ar(EDNS0(udp_len=4096))
    assert udp_limit(e) == 1232
    data, truncated = pack(answer(t, "10.0.1.5", e), udp_limit(e))
    big = DNSRecord.parse(data)
    assert truncated and len(data) <= 1232 and len(big.rr) > len(reply.rr)
    assert [rr.rtype for rr in big.ar] == [QTYPE.OPT]
    # TCP: all of them
    data, truncated = pack(answer(t, "10.0.1.5", q), 65535)
    assert not truncated and sorted(addrs(DNSRecord.parse(data))) == sorted(all_addrs)
    # a small answer is not touched
    small = DNSRecord.question("web")
    assert pack(answer(table(), "10.0.1.5", small), 512)[1] is False
    tiny = DNSRecord.question("big")
    tiny.add_ar(EDNS0(udp_len=100))
    assert udp_limit(tiny) == 512


def test_resolv_conf(tmp_path):
    conf = tmp_path / "resolv.conf"
    conf.write_text("# generated\n"
                    "domain old.example\n"
                    "nameserver 10.9.0.1\n"
                    "nameserver fe80::1%eth0   # link-local\n"
                    "nameserver not-an-address\n"
                    "nameserver 127.0.0.53\n"
                    "nameserver 10.9.0.4\n"
                    "search corp.example.com lab.example.com ; trailing\n"
                    "options ndots:2\n")
    servers, search = read_resolv_conf(str(conf))
    assert servers == [("10.9.0.1", 53), ("fe80::1", 53), ("127.0.0.53", 53)]
    assert search == ["corp.example.com", "lab.example.com"]
    assert read_resolv_conf(str(tmp_path / "missing")) == ([], [])


def same(a, b):
    """Two answers say the same (the records in any order)."""
    a, b = DNSRecord.parse(a), DNSRecord.parse(b)
    assert a.header == b.header and a.header.id == b.header.id
    assert [str(q) for q in a.questions] == [str(q) for q in b.questions]
    assert sorted(map(str, a.rr)) == sorted(map(str, b.rr))
    assert not a.auth and not b.auth
    assert [repr(rr) for rr in a.ar] == [repr(rr) for rr in b.ar]


def test_packed_answers_are_reused_and_say_what_dnslib_packs():
    t, _ = many_tasks(40)       # over 512 bytes, within 1232
    tables = {"small": table(), "big": t}
    search = (name_key("corp.example"),)
    rng = random.Random(3)
    for which, tbl in tables.items():
        answers = Answers(tbl, search)
        for name in ("web", "WeB.", "tasks.web", "api", "big", "Tasks.Big", "web.corp.example",
                     "db", "tasks"):
            for qtype in ("A", "AAAA", "ANY"):
                for edns in (None, 1232, 4096):
                    for limit_of in ("udp", "tcp"):
                        for rd in (0, 1):
                            for qid in (1, 2):      # the first packs, the second reuses
                                q = DNSRecord.question(name, qtype)
                                q.header.id, q.header.rd = qid, rd
                                if edns:
                                    q.add_ar(EDNS0(udp_len=edns))
                                limit = udp_limit(q) if limit_of == "udp" else 65535
                                expected = answer(tbl, "10.0.1.5", q, search)
                                reply, data, truncated = answers.reply("10.0.1.5", q, limit, rng)
                                if expected is None:
                                    assert (reply, data) == (None, b""), (which, name)
                                    continue
                                whole, _ = pack(expected, 65535)
                                assert len(data) <= limit
                                if not truncated:
                                    same(data, whole)
                                    continue
                                got = DNSRecord.parse(data)
                                assert got.header.tc and len(data) > limit - 16
                                assert set(map(str, got.rr)) < set(map(str, expected.rr))
                                assert len(got.rr) == len(DNSRecord.parse(
                                    pack(expected, limit)[0]).rr)
    # the truncated answers over UDP are not always the same part of the whole
    answers = Answers(t)
    seen = {tuple(sorted(str(rr.rdata) for rr in DNSRecord.parse(
        answers.reply("10.0.1.5", DNSRecord.question("big"), 512, rng)[1]).rr))
        for _ in range(5)}
    assert len(seen) > 1
    # a stranger's queries are not ours
    assert answers.reply("10.9.9.9", DNSRecord.question("big"), 512, rng) == (None, b"", False)


def test_an_upstream_answer_is_taken_only_for_our_id_and_question():
    from flotilla.agent.network.resolver import _matches, question_wire
    q = DNSRecord.question("Www.Example.org", "AAAA")
    q.header.id = 999
    ours = question_wire(q)
    good = q.reply()
    assert _matches(good.pack(), 999, ours)
    upper = DNSRecord.question("WWW.EXAMPLE.ORG", "AAAA").reply()
    upper.header.id = 999
    assert _matches(upper.pack(), 999, ours)                     # case is the upstream's
    assert not _matches(good.pack(), 998, ours)                  # another id
    assert not _matches(q.pack(), 999, ours)                     # a query, not an answer
    for other in (DNSRecord.question("www.example.org", "A"),
                  DNSRecord.question("www.example.com", "AAAA"), DNSRecord()):
        reply = other.reply()
        reply.header.id = 999
        assert not _matches(reply.pack(), 999, ours)
    assert not _matches(good.pack()[:20], 999, ours)             # cut short


def test_the_packed_answers_kept_are_bounded():
    t, _ = many_tasks(200)
    answers = Answers(t)
    answers.MAX_BYTES = 20_000          # about five answers of 200 records
    rng = random.Random(5)
    for i in range(40):                 # the same name in 40 spellings
        name = "".join(c.upper() if i >> k & 1 else c for k, c in enumerate("tasks.big"))
        reply = DNSRecord.parse(answers.reply("10.0.1.5", DNSRecord.question(name), 65535,
                                              rng)[1])
        assert len(reply.rr) == 200
        assert answers._bytes <= 20_000 and len(answers._packed) <= 6
