import pytest

from flotilla.manager.scheduler.constraint import match_all, matches
from flotilla.model.constraint import (
    ConstraintError, parse_constraint, parse_constraints, parse_spread, spread_levels,
    validate_placement)


def node(**kw):
    n = {
        "id": "n1abc",
        "hostname": "web-01",
        "addr": "10.1.2.3:4242",
        "role": "manager",
        "spec": {"availability": "active", "role": "manager",
                 "labels": {"zone": "East", "Disk": "ssd"}},
        "status": {"state": "ready", "addr": "10.1.2.3"},
        "description": {"platform": {"os": "linux", "arch": "x86_64"},
                        "engine": {"labels": {"gpu": "nvidia"}}},
    }
    n.update(kw)
    return n


def seen_at(ip, **kw):
    """A node whose agent registered from ``ip``."""
    return node(status={"state": "ready", "addr": ip}, **kw)


def ok(expr, n=None):
    return matches(parse_constraint(expr), n or node())


# -- parsing ----------------------------------------------------------------

def test_parse_basic_forms():
    c = parse_constraint("node.labels.zone==east")
    assert (c.key, c.op, c.value) == ("node.labels.zone", "==", "east")
    c = parse_constraint("  node.role != worker ")
    assert (c.key, c.op, c.value) == ("node.role", "!=", "worker")
    assert c.expr == "node.role!=worker" and str(c) == "node.role!=worker"
    assert parse_constraint("node.labels.a==b") == parse_constraint("node.labels.a == b")
    assert parse_constraints(None) == [] and parse_constraints([]) == []
    assert len(parse_constraints(["node.id==x", "node.role==worker"])) == 2


@pytest.mark.parametrize("expr", [
    "node.labels.zone=east",        # no operator
    "node.labels.zone",             # no operator
    "==east",                       # no key
    "9zone==east",                  # key must start with a letter or _
    "node labels==x",               # space in key
    "node.labels.zone==",           # empty value
    "node.labels.zone==a<b",        # forbidden characters in value
    "node.labels.zone==a>b",
    "node.labels.zone==~a",
    "node.labels.zone==a==b",
    "node.labels.zone==a!=b",
    "node.labels.zone!=!a",
    "node.ip==not-an-ip",
    "node.ip==10.0.0.0/33",
])
def test_parse_errors_name_the_expression(expr):
    with pytest.raises(ConstraintError) as e:
        parse_constraints(["node.role==worker", expr])
    msg = str(e.value)
    assert repr(expr) in msg and "\n" not in msg
    assert isinstance(e.value, ValueError)


def test_parse_rejects_non_lists_and_non_strings():
    with pytest.raises(ConstraintError):
        parse_constraints("node.role==worker")
    with pytest.raises(ConstraintError):
        parse_constraints([42])


def test_unknown_key_parses_but_never_matches():
    c = parse_constraint("node.colour==red")
    assert not matches(c, node())
    assert not matches(parse_constraint("node.colour!=red"), node())
    assert not matches(parse_constraint("zone!=x"), node())


def test_known_keys():
    # Service specs refuse constraints on keys that name nothing.
    for expr in ("node.colour==red", "zone!=x", "node.labels.==x", "engine.labels.!=x"):
        assert not parse_constraint(expr).known, expr
    for expr in ("node.role==worker", "NODE.ID!=x", "node.labels.disk==ssd",
                 "engine.labels.os==linux", "node.ip==10.0.0.0/8"):
        assert parse_constraint(expr).known, expr


# -- evaluation ---------------------------------------------------------------

def test_simple_attributes_and_case():
    assert ok("node.id==n1abc") and ok("node.id==N1ABC") and not ok("node.id==n1")
    assert ok("node.hostname==WEB-01") and ok("node.hostname!=web-02")
    assert ok("node.role==manager") and ok("node.role==MANAGER") and not ok("node.role==worker")
    assert ok("node.role!=worker")
    assert ok("node.platform.os==Linux") and ok("node.platform.arch==x86_64")
    assert ok("NODE.Platform.OS==linux")       # key names ignore case


def test_labels_keys_are_case_sensitive_values_are_not():
    assert ok("node.labels.zone==east") and ok("node.labels.zone==EAST")
    assert not ok("node.labels.Zone==east")    # no label "Zone": value ""
    assert ok("node.labels.Zone!=east")
    assert ok("node.labels.Disk==SSD") and not ok("node.labels.disk==ssd")
    assert ok("Node.Labels.zone==east")        # the prefix ignores case
    assert ok("engine.labels.gpu==NVIDIA") and not ok("engine.labels.zone==east")
    assert not ok("node.labels.gpu==nvidia")   # engine labels are not node labels


def test_missing_attributes_are_empty():
    bare = {"id": "x"}
    assert matches(parse_constraint("node.labels.zone!=east"), bare)
    assert not matches(parse_constraint("node.labels.zone==east"), bare)
    assert matches(parse_constraint("node.platform.os!=linux"), bare)
    assert matches(parse_constraint("node.role!=manager"), bare)
    assert matches(parse_constraint("engine.labels.gpu!=x"), bare)


def test_node_ip():
    assert ok("node.ip==10.1.2.3") and not ok("node.ip==10.1.2.4")
    assert ok("node.ip!=10.1.2.4")
    assert ok("node.ip==10.1.0.0/16") and not ok("node.ip==10.2.0.0/16")
    assert ok("node.ip!=192.168.0.0/24")
    v6 = seen_at("fd00::5")
    assert ok("node.ip==fd00::5", v6) and ok("node.ip==fd00::/64", v6)
    assert not ok("node.ip==10.0.0.0/8", v6)
    # without a usable address neither operator matches
    for n in (seen_at(None), seen_at("host.example")):
        assert not ok("node.ip==10.1.2.3", n) and not ok("node.ip!=10.1.2.3", n)


def test_node_ip_is_the_observed_address_not_the_reported_one():
    # The node reports 10.9.9.9 as its address, but its agent connected
    # from 10.1.2.3: constraints see only the latter.
    spoofed = node(addr="10.9.9.9:4242", description={"addr": "10.9.9.9"})
    assert ok("node.ip==10.1.2.3", spoofed) and not ok("node.ip==10.9.9.9", spoofed)
    never_registered = node(addr="10.9.9.9:4242", status={"state": "unknown"})
    assert not ok("node.ip==10.9.9.9", never_registered)


def test_match_all_returns_first_failure():
    cs = parse_constraints(["node.role==manager", "node.labels.zone==west", "node.id==zz"])
    assert match_all(cs, node()).expr == "node.labels.zone==west"
    assert match_all(cs[:1], node()) is None
    assert match_all([], node()) is None


# -- spread descriptors and placement validation -------------------------------

def test_spread_descriptors():
    assert parse_spread("node.labels.zone") == ("node", "zone")
    assert parse_spread("Engine.Labels.Rack") == ("engine", "Rack")
    assert parse_spread("node.labels.") is None and parse_spread("node.role") is None
    assert parse_spread(None) is None
    assert spread_levels([{"spread": "node.labels.zone"}, {"spread": "bogus"},
                          {"spread": "engine.labels.rack"}, "x"]) == (
        ("node", "zone"), ("engine", "rack"))


def test_validate_placement():
    validate_placement(None)
    validate_placement({"constraints": ["node.role==worker"],
                        "preferences": [{"spread": "node.labels.zone"}], "max_replicas": 2})
    for bad in ({"constraints": ["node.role=worker"]},
                {"preferences": [{"spread": "node.role"}]},
                {"preferences": "node.labels.zone"},
                {"max_replicas": -1},
                {"max_replicas": "2"},
                "constraints"):
        with pytest.raises(ConstraintError):
            validate_placement(bad)
