"""Request ids (the API's Idempotency-Key) through the store's
read-modify-write: a late copy of a request never applies it again, and an
id bound to one request is refused with another. The Raft member is
replaced by one that applies each entry at once."""

import io

import msgpack
import pytest
from pysyncobj.config import FAIL_REASON

from flotilla.manager.raft import codec
from flotilla.manager.store.state import StateMachine
from flotilla.manager.store.store import Op, RequestId, Store, TxnFailed


class _Journal:
    def sync(self):
        pass


class ApplyingRaft:
    is_leader = True

    def __init__(self, sm):
        self.sm = sm
        self.journal = _Journal()
        self.entries = 0

    def propose(self, payload, callback):
        self.entries += 1
        callback(self.sm.apply(payload), FAIL_REASON.SUCCESS)


@pytest.fixture
def stored():
    """A store holding one config, with data "x"; and its Raft stand-in."""
    s = Store()
    raft = ApplyingRaft(s.sm)
    s.attach(raft)
    s.start()
    s.commit([Op.create("config", {"id": "a", "name": "a", "data": "x"})])
    yield s, raft
    s.stop()


def set_data(value):
    return lambda current: dict(current, data=value)


@pytest.mark.parametrize("first", ["x", "y"], ids=["changed-nothing", "wrote"])
def test_a_late_copy_of_a_request_is_not_applied_again(stored, first):
    s, _ = stored
    # "x" is what is already there: that request has nothing to write.
    assert s.update("config", "a", set_data(first), rid="R")["data"] == first
    assert s.update("config", "a", set_data("z"), rid="S")["data"] == "z"
    # The first request again (a forward held up by a partition).
    assert s.update("config", "a", set_data(first), rid="R")["data"] == "z"
    assert s.get("config", "a")["data"] == "z"


def test_nothing_is_proposed_for_a_change_of_nothing_without_a_request_id(stored):
    s, raft = stored
    before = raft.entries
    s.update("config", "a", set_data("x"))
    assert raft.entries == before


# -- a request id is bound to its request --------------------------------------------

DELETE_A = RequestId("K", b"digest-of-delete-a")
CREATE_B = RequestId("K", b"digest-of-create-b")


def test_a_request_id_with_another_request_is_refused_and_changes_nothing(stored):
    s, _ = stored
    s.commit([Op.create("config", {"id": "b", "name": "b", "data": "y"})], rid=CREATE_B)
    index = s.index
    with pytest.raises(TxnFailed) as err:
        s.commit([Op.delete("config", "a")], rid=DELETE_A)
    assert err.value.code == "key_reused" and err.value.status == 422
    assert err.value.field == "Idempotency-Key"
    assert "'K' was already used for a different request" in str(err.value)
    assert s.get("config", "a") is not None and s.index == index
    # read-modify-write too, and the check before it
    with pytest.raises(TxnFailed) as err:
        s.update("config", "a", set_data("z"), rid=RequestId("K", b"digest-of-set-z"))
    assert err.value.code == "key_reused" and s.get("config", "a")["data"] == "x"
    # the first request keeps its id: its retry is answered as the first time
    again = s.commit([Op.create("config", {"id": "b", "name": "b", "data": "y"})], rid=CREATE_B)
    assert again["objects"][0]["id"] == "b" and s.index == index


def test_a_retried_removal_is_answered_from_what_it_removed(stored):
    s, _ = stored
    assert s.remembered(DELETE_A) is None
    s.commit([Op.delete("config", "a")], rid=DELETE_A)
    assert s.remembered(DELETE_A)["removed"] == [("config", "a")]
    with pytest.raises(TxnFailed) as err:
        s.remembered(CREATE_B)
    assert err.value.code == "key_reused"


def test_a_request_id_applied_before_is_not_evaluated_again(stored):
    s, _ = stored
    rid = RequestId("P", b"digest-of-pause")

    def pause(current):
        if current.get("paused"):
            raise AssertionError("evaluated again")
        return dict(current, paused=True)

    assert s.update("config", "a", pause, rid=rid)["paused"]
    assert s.update("config", "a", pause, rid=rid)["paused"]      # the retry: same answer


def _snapshot(sm) -> bytes:
    buf = io.BytesIO()
    sm.snapshot_write(sm.snapshot_capture(), buf)
    return buf.getvalue()


def _load(data: bytes) -> StateMachine:
    sm = StateMachine()
    sm.snapshot_load(msgpack.Unpacker(io.BytesIO(data), raw=False, strict_map_key=False))
    return sm


def _apply(sm, ops, rid=None, digest=None):
    txn = {"rid": rid, "ts": 1.0, "ops": ops}
    if digest is not None:
        txn["rd"] = digest
    return sm.apply(codec.pack({"txns": [txn]}))[0]


def test_the_binding_survives_a_snapshot_and_old_snapshots_still_load():
    sm = StateMachine()
    _apply(sm, [Op.create("config", {"id": "a", "name": "a"})], "K", b"create-a")
    _apply(sm, [Op.delete("config", "a")], "D", b"delete-a")
    restored = _load(_snapshot(sm))
    refused = _apply(restored, [Op.create("config", {"id": "c", "name": "c"})], "K", b"create-c")
    assert refused["error"]["code"] == "key_reused" and restored.get("config", "c") is None
    assert _apply(restored, [Op.create("config", {"id": "a", "name": "a"})], "K", b"create-a")["ok"]
    assert restored.remembered("D")["gone"] == [("config", "a")]

    # A snapshot written before requests were bound: its ids load, and
    # are answered as before (for any request: nothing says what it was).
    packer = msgpack.Packer(use_bin_type=True)
    old = b"".join([packer.pack({"index": 1, "kinds": ["config"], "bytes": 10}),
                    packer.pack(["o", "config", {"id": "a", "name": "a", "version": 1}]),
                    packer.pack(["d", "K", {"ok": True, "index": 1, "refs": [["config", "a"]]}]),
                    packer.pack(["end"])])
    restored = _load(old)
    again = _apply(restored, [Op.create("config", {"id": "a", "name": "a"})], "K", b"create-a")
    assert again["ok"] and again["index"] == 1 and restored.index == 1
