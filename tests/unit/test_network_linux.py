"""From the forwarding and neighbour entries a VXLAN device has to those it
should have: what to set and what to delete."""

import ipaddress

from flotilla.agent.network.linux import (FdbEntry, NeighEntry, fdb_changes, neigh_changes,
                                          remote_entries)

A, B = "192.0.2.11", "192.0.2.12"
MAC5, MAC6, MAC7 = "02:42:0a:00:01:05", "02:42:0a:00:01:06", "02:42:0a:00:01:07"


def remotes(**kw):
    return {ipaddress.IPv4Address(k.replace("_", ".")): ipaddress.IPv4Address(v)
            for k, v in kw.items()}


def test_wanted_entries_are_derived_from_addresses():
    fdb, neigh = remote_entries(remotes(**{"10_0_1_5": A, "10_0_1_6": B}))
    assert fdb == {FdbEntry(MAC5, A), FdbEntry(MAC6, B)}
    assert neigh == {NeighEntry("10.0.1.5", MAC5), NeighEntry("10.0.1.6", MAC6)}


def test_nothing_to_do_when_present_is_wanted():
    fdb = {FdbEntry(MAC5, A), FdbEntry(MAC6, B)}
    assert fdb_changes(fdb, set(fdb)) == ([], [])
    neigh = {NeighEntry("10.0.1.5", MAC5)}
    assert neigh_changes(neigh, set(neigh)) == ([], [])


def test_missing_entries_are_set_and_gone_endpoints_deleted():
    present = {FdbEntry(MAC5, A), FdbEntry(MAC7, B)}
    wanted = {FdbEntry(MAC5, A), FdbEntry(MAC6, B)}
    assert fdb_changes(present, wanted) == ([FdbEntry(MAC6, B)], [FdbEntry(MAC7, B)])


def test_an_endpoint_that_moved_is_replaced_not_deleted_first():
    # the MAC keeps a destination throughout: the set replaces it
    assert fdb_changes({FdbEntry(MAC5, A)}, {FdbEntry(MAC5, B)}) == ([FdbEntry(MAC5, B)], [])


def test_flooding_entries_are_removed():
    zero = FdbEntry("00:00:00:00:00:00", B)
    assert fdb_changes({zero, FdbEntry(MAC5, A)}, {FdbEntry(MAC5, A)}) == ([], [zero])


def test_everything_goes_when_nothing_is_wanted():
    present = {FdbEntry(MAC5, A), FdbEntry(MAC6, B)}
    assert fdb_changes(present, set()) == ([], sorted(present))
    neigh = {NeighEntry("10.0.1.5", MAC5), NeighEntry("10.0.1.6", MAC6)}
    assert neigh_changes(neigh, set()) == ([], sorted(neigh))


def test_neighbours_with_a_wrong_mac_or_not_permanent_are_set_again():
    present = {NeighEntry("10.0.1.5", MAC6), NeighEntry("10.0.1.6", MAC6, permanent=False),
               NeighEntry("10.0.1.7", MAC7)}
    wanted = {NeighEntry("10.0.1.5", MAC5), NeighEntry("10.0.1.6", MAC6)}
    to_set, to_delete = neigh_changes(present, wanted)
    assert to_set == [NeighEntry("10.0.1.5", MAC5), NeighEntry("10.0.1.6", MAC6)]
    assert to_delete == [NeighEntry("10.0.1.7", MAC7)]
