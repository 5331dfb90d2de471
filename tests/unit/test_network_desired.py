"""The desired networks of an engine: checked before anything changes."""

import ipaddress

import pytest

from flotilla.agent.network.desired import DesiredStateError, parse_desired, parse_network

UNDERLAY_A, UNDERLAY_B = "192.0.2.11", "192.0.2.12"


def net(**kw):
    base = {"id": "n1abcdefghijklmn", "name": "web", "subnet": "10.0.1.0/24", "vni": 4097,
            "internal": False, "attachment": "10.0.1.254/24",
            "endpoints": [{"addr": "10.0.1.5/24", "node_underlay_ip": UNDERLAY_A},
                          {"addr": "10.0.1.6/24", "node_underlay_ip": UNDERLAY_B,
                           "task_id": "t2", "service_name": "web"}]}
    base.update(kw)
    return base


def test_a_network_as_the_dispatcher_sends_it():
    n = parse_network(net(peers=[{"node_id": "x", "underlay_ip": UNDERLAY_B,
                                  "attachment": "10.0.1.253/24"},
                                 {"node_id": "me", "underlay_ip": UNDERLAY_A,
                                  "attachment": "10.0.1.254/24"}]))
    assert n.short_id == "n1abcdefgh"
    assert n.subnet == ipaddress.IPv4Network("10.0.1.0/24")
    assert n.attachment == ipaddress.IPv4Interface("10.0.1.254/24")
    # the peer's bridge is one more endpoint; the ones on this engine are not remote
    remote = n.remote(ipaddress.IPv4Address(UNDERLAY_A))
    assert [(str(e.addr), str(e.underlay_ip), e.mac) for e in remote] == [
        ("10.0.1.6", UNDERLAY_B, "02:42:0a:00:01:06"),
        ("10.0.1.253", UNDERLAY_B, "02:42:0a:00:01:fd"),
    ]


def test_an_encrypted_network_goes_from_tunnel_address_to_tunnel_address():
    here, there = "fd66:6c6f:7469:6c61::c000:20b", "fd66:6c6f:7469:6c61::c000:20c"
    n = parse_network(net(encrypted=True, local=here,
                          endpoints=[{"addr": "10.0.1.5", "node_underlay_ip": here},
                                     {"addr": "10.0.1.6", "node_underlay_ip": there}]))
    assert n.encrypted and n.local == ipaddress.IPv6Address(here)
    # this engine is where its VXLAN comes from, whatever the underlay
    assert [(str(e.addr), str(e.underlay_ip))
            for e in n.remote(ipaddress.IPv4Address(UNDERLAY_A))] == [("10.0.1.6", there)]
    assert not parse_network(net()).encrypted and parse_network(net()).local is None
    # an endpoint of the other family cannot be sent to
    with pytest.raises(DesiredStateError, match=r"endpoints\[0\]\.node_underlay_ip: 192\.0\.2"
                                                r"\.11 is not of the family"):
        parse_network(net(encrypted=True, local=here))
    with pytest.raises(DesiredStateError, match=r"endpoints\[0\]\.node_underlay_ip: fd66.* is "
                                                r"not of the family"):
        parse_network(net(endpoints=[{"addr": "10.0.1.5", "node_underlay_ip": there}]))
    with pytest.raises(DesiredStateError, match=r"network\.local: 'x' is not an IP address"):
        parse_network(net(local="x"))


def test_attachment_without_prefix_takes_the_subnets():
    assert str(parse_network(net(attachment="10.0.1.254")).attachment) == "10.0.1.254/24"


def test_internal_defaults_to_false_and_endpoints_to_none():
    n = parse_network({k: v for k, v in net().items() if k not in ("internal", "endpoints")})
    assert n.internal is False and n.endpoints == ()


@pytest.mark.parametrize("change,path", [
    ({"id": "-bad"}, r"networks\[0\]\.id: network id"),
    ({"id": 5}, r"networks\[0\]\.id: expected str"),
    ({"name": "a b"}, r"networks\[0\]\.name"),
    ({"subnet": "10.0.1.1/24"}, r"networks\[0\]\.subnet"),
    ({"subnet": "fd00::/64"}, r"networks\[0\]\.subnet"),
    ({"vni": 0}, r"networks\[0\]\.vni: 0 is not a VXLAN id"),
    ({"vni": 1 << 24}, r"networks\[0\]\.vni"),
    ({"vni": True}, r"networks\[0\]\.vni: expected int, got bool"),
    ({"vni": "4097"}, r"networks\[0\]\.vni: expected int"),
    ({"internal": "yes"}, r"networks\[0\]\.internal"),
    ({"attachment": "10.0.2.1/24"}, r"networks\[0\]\.attachment: 10\.0\.2\.1 is not a host"),
    ({"attachment": "10.0.1.0/24"}, r"networks\[0\]\.attachment: 10\.0\.1\.0 is not a host"),
    ({"attachment": "10.0.1.254/16"}, r"networks\[0\]\.attachment: .*prefix length /24"),
    ({"endpoints": {"addr": "10.0.1.5"}}, r"networks\[0\]\.endpoints: expected list"),
    ({"endpoints": ["10.0.1.5"]}, r"networks\[0\]\.endpoints\[0\]: expected an object"),
    ({"endpoints": [{"addr": "10.0.1.5"}]},
     r"networks\[0\]\.endpoints\[0\]\.node_underlay_ip: missing"),
    ({"endpoints": [{"addr": "10.9.1.5", "node_underlay_ip": UNDERLAY_B}]},
     r"networks\[0\]\.endpoints\[0\]: 10\.9\.1\.5 is not a host address"),
    ({"endpoints": [{"addr": "10.0.1.5", "node_underlay_ip": "nowhere"}]},
     r"networks\[0\]\.endpoints\[0\]\.node_underlay_ip: 'nowhere' is not an IP "),
    ({"endpoints": [{"addr": "10.0.1.254", "node_underlay_ip": UNDERLAY_B}]},
     r"networks\[0\]\.endpoints\[0\]: 10\.0\.1\.254 is this node's own attachment"),
    ({"endpoints": [{"addr": "10.0.1.5", "node_underlay_ip": UNDERLAY_A},
                    {"addr": "10.0.1.5", "node_underlay_ip": UNDERLAY_B}]},
     r"networks\[0\]\.endpoints\[1\]: 10\.0\.1\.5 is on 192\.0\.2\.12 and on 192\.0\.2\.11"),
    ({"peers": [{"underlay_ip": UNDERLAY_B}]}, r"networks\[0\]\.peers\[0\]\.attachment: missing"),
])
def test_bad_fields_are_named(change, path):
    with pytest.raises(DesiredStateError, match=path):
        parse_desired([net(**change)])


def test_the_same_endpoint_twice_on_one_engine_is_one_endpoint():
    n = parse_network(net(endpoints=[{"addr": "10.0.1.5", "node_underlay_ip": UNDERLAY_B},
                                     {"addr": "10.0.1.5/24", "node_underlay_ip": UNDERLAY_B}]))
    assert len(n.endpoints) == 1


@pytest.mark.parametrize("second,field", [
    ({"id": "n1abcdefghXYZ", "name": "api", "vni": 4098}, "id"),
    ({"id": "n2", "name": "web", "vni": 4098}, "name"),
    ({"id": "n2", "name": "api", "vni": 4097}, "vni"),
])
def test_networks_clashing_with_each_other_are_refused(second, field):
    with pytest.raises(DesiredStateError, match=rf"networks\[1\]\.{field}: .*networks\[0\]"):
        parse_desired([net(), net(**second)])


def test_a_single_network_instead_of_a_list_is_refused():
    with pytest.raises(DesiredStateError, match="expected a list"):
        parse_desired(net())
