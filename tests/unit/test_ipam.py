"""Address management: subnets cut from the pool, VXLAN ids, addresses in a
subnet (pure logic)."""

import ipaddress

import pytest

from flotilla.manager.allocator import ipam

N = ipaddress.IPv4Network


def test_subnets_are_cut_in_order_around_the_taken_ones():
    pool = [N("10.0.0.0/8")]
    assert ipam.choose_subnet(pool, 24, []) == N("10.0.0.0/24")
    assert ipam.choose_subnet(pool, 24, [N("10.0.0.0/24")]) == N("10.0.1.0/24")
    # a larger taken range is stepped over in one go
    assert ipam.choose_subnet(pool, 24, [N("10.0.0.0/16"), N("10.1.0.0/24")]) == N("10.1.1.0/24")
    # a small taken range inside a candidate makes the whole candidate taken
    assert ipam.choose_subnet(pool, 24, [N("10.0.0.128/29")]) == N("10.0.1.0/24")
    # the next pool when the first is full
    assert ipam.choose_subnet([N("10.0.0.0/23"), N("172.20.0.0/16")], 24,
                              [N("10.0.0.0/24"), N("10.0.1.0/24")]) == N("172.20.0.0/24")
    with pytest.raises(ipam.Exhausted):
        ipam.choose_subnet([N("10.0.0.0/23")], 24, [N("10.0.0.0/23")])
    # a pool smaller than one subnet gives none
    with pytest.raises(ipam.Exhausted):
        ipam.choose_subnet([N("10.0.0.0/25")], 24, [])


def test_a_full_pool_of_65536_subnets_is_searched_quickly():
    taken = [N((i << 8 | 10 << 24, 24)) for i in range(65535)]
    assert ipam.choose_subnet([N("10.0.0.0/8")], 24, taken) == N("10.255.255.0/24")


def test_vxlan_ids_skip_the_taken_ones():
    assert ipam.choose_vni([]) == 4096
    assert ipam.choose_vni([4096, 4097, 4099]) == 4098


def test_each_cluster_starts_its_vxlan_ids_elsewhere():
    """Two clusters sharing a namespace (a local cluster beside a test
    cluster) must not both give their first network the same id: the
    kernel holds one VXLAN device per id and port in a namespace."""
    starts = {ipam.vni_start(f"cluster-{i}") for i in range(50)}
    assert len(starts) == 50
    assert all(4096 <= s <= 2 ** 24 - 1 for s in starts)
    assert ipam.vni_start("cluster-1") == ipam.vni_start("cluster-1")   # any leader, any time
    assert ipam.choose_vni([5000, 5001], start=5000) == 5002
    # past the top: round to the first id
    top = 2 ** 24 - 1
    assert ipam.choose_vni([top], start=top) == 4096


def test_addresses_go_round_the_subnet_and_skip_network_broadcast_and_gateway():
    pool = ipam.AddressPool("10.0.0.0/29", "10.0.0.1")
    given = [pool.allocate() for _ in range(5)]
    assert given == ["10.0.0.2/29", "10.0.0.3/29", "10.0.0.4/29", "10.0.0.5/29", "10.0.0.6/29"]
    with pytest.raises(ipam.Exhausted):
        pool.allocate()
    pool.release("10.0.0.3/29")
    pool.release("10.0.0.5")
    # the ring goes on from the last given: 10.0.0.3 comes back first only
    # after 10.0.0.5 would have
    assert pool.allocate() == "10.0.0.3/29"
    assert pool.allocate() == "10.0.0.5/29"
    assert pool.free == 0


def test_addresses_recorded_from_the_store_are_not_given_again():
    pool = ipam.AddressPool("10.0.0.0/24", "10.0.0.1")
    assert pool.mark("10.0.0.2/24") and pool.mark("10.0.0.3")
    assert not pool.mark("10.0.0.2/24")         # held already
    assert not pool.mark("10.0.1.9/24")         # not in the subnet
    assert not pool.mark("10.0.0.255/24")       # broadcast
    assert pool.allocate() == "10.0.0.4/24"
