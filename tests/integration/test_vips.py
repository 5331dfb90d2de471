"""Virtual IPs on a real kernel, without IPVS: an engine namespace with the
network's bridge, three backend namespaces serving TCP and UDP (each answers
its name and the address it sees the client at) and a client namespace, all
on one subnet (:mod:`tests.helpers.viplab`). The VIP code runs against the
engine namespace, as the agent runs it against its engine.
"""

from __future__ import annotations

import collections
import socket

import pytest
from pyroute2 import IPRoute

from flotilla.agent.network.vips import ADDR_PROTO, VipError, VirtualIPs
from tests.helpers.viplab import BRIDGE, EMPTY_BRIDGE, VipLab

N = 60


@pytest.fixture(scope="module")
def lab():
    lab = VipLab()
    try:
        lab.create()
        yield lab
    finally:
        lab.destroy()


@pytest.fixture
def vips(lab):
    v = VirtualIPs(netns=lab.engine)
    yield v
    # Every test starts from an engine without VIPs (the lab's bridge has
    # containers: it leaves the table only when it is in the input).
    v.apply({BRIDGE: {}})


def vip(lab, n=100) -> str:
    return lab.addr(n)


def answers(results) -> collections.Counter:
    return collections.Counter(answer for _, answer in results)


def all_backends(lab, *names):
    return [lab.backend(n) for n in names]


def vip_addresses(lab, bridge=BRIDGE) -> dict[str, int | None]:
    """The /32 addresses on the bridge: address -> its address protocol
    (iproute2 6.1 does not show it)."""
    with IPRoute(netns=lab.engine, flags=0, groups=0) as ipr:
        index = ipr.link_lookup(ifname=bridge)[0]
        return {a.get("IFA_LOCAL"): a.get("IFA_PROTO")
                for a in ipr.get_addr(index=index, family=socket.AF_INET)
                if a["prefixlen"] == 32}


def test_connections_spread_over_every_backend_and_backends_see_the_client(lab, vips):
    v = vip(lab)
    vips.apply({BRIDGE: {v: all_backends(lab, "b1", "b2", "b3")}})
    assert vip_addresses(lab) == {v: ADDR_PROTO}

    results = lab.connect("c", v, N)
    counts = answers(results)
    # Every connection answered, by each backend, which saw the client's own
    # address (no SNAT); the client's socket was connected to the VIP, so
    # the answers came back as from the VIP.
    assert counts.keys() == {f"{b} {lab.client}" for b in ("b1", "b2", "b3")}, counts
    assert sum(counts.values()) == N


def test_udp_datagrams_spread_too(lab, vips):
    v = vip(lab)
    vips.apply({BRIDGE: {v: all_backends(lab, "b1", "b2", "b3")}})
    counts = answers(lab.connect("c", v, N, udp=True))
    assert counts.keys() == {f"{b} {lab.client}" for b in ("b1", "b2", "b3")}, counts


def test_a_removed_backend_gets_no_new_connection_once_apply_returns(lab, vips):
    v = vip(lab)
    vips.apply({BRIDGE: {v: all_backends(lab, "b1", "b2", "b3")}})
    assert f"b2 {lab.client}" in answers(lab.connect("c", v, 30))

    vips.apply({BRIDGE: {v: all_backends(lab, "b1", "b3")}})
    counts = answers(lab.connect("c", v, N)) + answers(lab.connect("c", v, N, udp=True))
    assert counts.keys() == {f"b1 {lab.client}", f"b3 {lab.client}"}, counts

    vips.apply({BRIDGE: {v: all_backends(lab, "b2")}})
    assert answers(lab.connect("c", v, 10)) == {f"b2 {lab.client}": 10}


def test_a_vip_without_backend_refuses_at_once(lab, vips):
    v = vip(lab)
    vips.apply({BRIDGE: {v: []}})
    # The engine itself listens on the port, on all its addresses: the VIP
    # must not lead there either.
    engine_server = lab.serve("engine", "engine")
    try:
        tcp = lab.connect("c", v, 3, timeout=5)
        udp = lab.connect("c", v, 3, udp=True, timeout=5)
        # The engine's own address does reach the engine's server (so the
        # refusals below are the VIP's doing).
        assert answers(lab.connect("c", lab.gateway, 1)) == {f"engine {lab.client}": 1}
    finally:
        engine_server.kill()
        engine_server.wait()
    assert [a for _, a in tcp] == ["ConnectionRefusedError"] * 3, tcp
    assert [a for _, a in udp] == ["ConnectionRefusedError"] * 3, udp
    assert max(t for t, _ in tcp + udp) < 1.0, (tcp, udp)

    vips.apply({BRIDGE: {v: all_backends(lab, "b3")}})
    assert answers(lab.connect("c", v, 3)) == {f"b3 {lab.client}": 3}


def test_apply_twice_changes_nothing(lab, vips):
    v1, v2 = vip(lab, 100), vip(lab, 101)
    spec = {BRIDGE: {v1: all_backends(lab, "b1", "b2", "b3"), v2: []},
            EMPTY_BRIDGE: {"10.200.0.2": ["10.200.0.5"]}}
    vips.apply(spec)
    table, addrs = vips.listing(), vip_addresses(lab)
    assert f"numgen random mod 3 map {{ 0 : {lab.backend('b1')}" in table
    assert addrs == {v1: ADDR_PROTO, v2: ADDR_PROTO}

    vips.apply(spec)
    assert vips.listing() == table and vip_addresses(lab) == addrs
    # The same input in another form (the allocator's "addr/prefix", another
    # order, a backend twice) is the same input.
    vips.apply({EMPTY_BRIDGE: {"10.200.0.2/24": ["10.200.0.5/24"]},
                BRIDGE: {f"{v2}/24": [], v1: all_backends(lab, "b3", "b1", "b2", "b1")}})
    assert vips.listing() == table and vip_addresses(lab) == addrs


def test_a_task_reaches_its_own_service_through_the_vip(lab, vips):
    """The hairpin case: the client is one of the backends."""
    v = vip(lab)
    vips.apply({BRIDGE: {v: all_backends(lab, "b1", "b2", "b3")}})
    b1 = lab.backend("b1")
    for udp in (False, True):
        counts = answers(lab.connect("b1", v, N, udp=udp, timeout=3))
        # Every connection answered: the ones b1 made to itself (it sees the
        # VIP as the client: the one SNAT), the others with b1's address.
        assert counts.keys() == {f"b1 {v}", f"b2 {b1}", f"b3 {b1}"}, (udp, counts)
    modes = lab.sh("engine", "bridge", "-d", "link", "show", "master", BRIDGE).stdout
    assert modes.count("hairpin on") == 4, modes


def test_vips_go_with_the_input(lab, vips):
    v1, v2 = vip(lab, 100), vip(lab, 101)
    foreign = vip(lab, 150)     # a /32 someone else put on the bridge
    lab.sh("engine", "ip", "addr", "add", f"{foreign}/32", "dev", BRIDGE)
    try:
        vips.apply({BRIDGE: {v1: all_backends(lab, "b1"), v2: all_backends(lab, "b2")},
                    EMPTY_BRIDGE: {"10.200.0.2": ["10.200.0.5"]}})
        assert set(vip_addresses(lab)) == {v1, v2, foreign}
        assert set(vip_addresses(lab, EMPTY_BRIDGE)) == {"10.200.0.2"}

        # v1 goes; the bridge without containers leaves the input.
        vips.apply({BRIDGE: {v2: all_backends(lab, "b2")}})
        assert set(vip_addresses(lab)) == {v2, foreign}
        assert vip_addresses(lab, EMPTY_BRIDGE) == {}
        table = vips.listing()
        assert EMPTY_BRIDGE not in table and v1 not in table
        assert not [a for _, a in lab.connect("c", v1, 2, timeout=1) if a.startswith("b")]
        assert answers(lab.connect("c", v2, 2)) == {f"b2 {lab.client}": 2}

        # A bridge that still has containers keeps its VIPs when it leaves
        # one agent's input: another node's agent on this engine serves it.
        vips.apply({EMPTY_BRIDGE: {}})
        assert set(vip_addresses(lab)) == {v2, foreign}
        assert answers(lab.connect("c", v2, 2)) == {f"b2 {lab.client}": 2}
    finally:
        lab.sh("engine", "ip", "addr", "del", f"{foreign}/32", "dev", BRIDGE, check=False)


def test_refuses_bad_input_and_an_engine_without_br_netfilter(lab, vips):
    v = vip(lab)
    vips.apply({BRIDGE: {v: all_backends(lab, "b1")}})
    table = vips.listing()
    with pytest.raises(VipError, match="no such bridge: flb-nothere"):
        vips.apply({"flb-nothere": {vip(lab, 102): []}})
    with pytest.raises(VipError, match="is not an IPv4 address"):
        vips.apply({BRIDGE: {"10.1.2": []}})
    sysctl = "net.bridge.bridge-nf-call-iptables"
    lab.sh("engine", "sysctl", "-w", f"{sysctl}=0")
    try:
        with pytest.raises(VipError, match="bridge-nf-call-iptables=1"):
            vips.apply({BRIDGE: {v: all_backends(lab, "b2")}})
    finally:
        lab.sh("engine", "sysctl", "-w", f"{sysctl}=1")
    # Nothing changed.
    assert vips.listing() == table
    assert answers(lab.connect("c", v, 2)) == {f"b1 {lab.client}": 2}
