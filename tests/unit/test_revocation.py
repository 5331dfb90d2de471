"""The revocation list: node ids and certificate serials in one map."""

from flotilla.ca import revocation


def test_node_ids_and_serials_share_one_list():
    revoked = revocation.with_entries({}, [("node1", 100.0),
                                           (revocation.serial_key(0xABC), 200.0)])
    assert revoked == {"node1": 100.0, "serial:abc": 200.0}
    assert revocation.is_revoked(revoked, "node1", None)
    assert revocation.is_revoked(revoked, "node2", 0xABC)
    assert revocation.is_revoked(revoked, None, "0ABC")         # hex text, any case
    assert not revocation.is_revoked(revoked, "node2", 0xABD)
    assert not revocation.is_revoked(revoked, None, None)
    assert not revocation.is_revoked(None, "node1", 0xABC)
    assert revocation.serial_revoked(revoked, 0xABC)
    assert not revocation.serial_revoked(revoked, None)
    assert revocation.split(revoked) == (["node1"], ["abc"])


def test_adding_keeps_the_later_expiry_and_purge_drops_old_entries():
    revoked = revocation.with_entries({"a": 500.0}, [("a", 100.0), ("b", 100.0)])
    assert revoked == {"a": 500.0, "b": 100.0}
    assert revocation.purge(revoked, now=100.0 + revocation.GRACE + 1) == {"a": 500.0}
    assert revocation.purge(revoked, now=0.0) is None           # nothing to drop


def test_garbage_serials_are_not_revoked():
    assert not revocation.is_revoked({"serial:abc": 1.0}, None, "not-hex")
