"""A write that cannot be applied is refused on every member, and the
members go on applying what comes after it.

Three real Raft members (mutual TLS on loopback, journals on disk) in this
process, written to through the store as the API does.
"""

import pytest

from flotilla.manager.store.store import Op, TxnFailed, new_id
from tests.helpers.cluster import wait_for
from tests.helpers.raftmembers import raft_members


@pytest.fixture
def members(tmp_path):
    with raft_members(tmp_path, "applycluster") as out:
        yield out


def _config(name):
    return Op.create("config", {"id": new_id(), "name": name, "data": "eA==", "labels": {}})


def test_a_write_that_cannot_be_applied_is_refused_everywhere_and_later_writes_apply(members):
    leader = wait_for(lambda: next((m for m in members if m[0].raft.is_leader), None), 30,
                      what="a leader")
    store = leader[0]
    store.barrier()
    # A name that is a list cannot be indexed: applying this entry used to
    # raise on every member, which then applied nothing after it, ever.
    with pytest.raises(TxnFailed) as refused:
        store.commit([_config(["not", "a", "name"])],
                     timeout=5)
    assert refused.value.status == 400 and "transaction refused" in str(refused.value)
    # A whole entry that does not decode is refused as such.
    outcome = {}
    done = []
    store.raft.propose(b"\xc1not msgpack", lambda res, err: (outcome.update(res=res),
                                                            done.append(err)))
    wait_for(lambda: done, 5, what="an answer for the undecodable entry")
    assert outcome["res"]["ok"] is False and outcome["res"]["error"]["code"] == "refused"
    # Later writes are applied on every member, which all hold the same state.
    for i in range(3):
        store.commit([_config(f"after-{i}")], timeout=10)
    for s, raft in members:
        wait_for(lambda s=s: {f"after-{i}" for i in range(3)}
                 <= {c["name"] for c in s.list("config")}, 15,
                 what=f"the later writes on {raft.self_address}")
    states = [(s.sm.index, sorted(c["name"] for c in s.list("config"))) for s, _ in members]
    assert states[0] == states[1] == states[2]
    assert states[0][0] == leader[0].sm.index


class _Failing:
    """A state machine whose apply raises for entries holding ``marker``
    (a fault the state machine's own checks would have missed)."""

    def __init__(self, sm, marker):
        self._sm, self._marker = sm, marker

    def apply(self, payload):
        if self._marker in payload:
            raise RuntimeError("a fault in the state machine")
        return self._sm.apply(payload)

    def __getattr__(self, name):
        return getattr(self._sm, name)


def test_an_entry_whose_apply_raises_is_refused_and_the_members_go_on(members):
    for _, raft in members:
        raft.flotilla_sm = _Failing(raft.flotilla_sm, b"poison")
    leader = wait_for(lambda: next((m for m in members if m[0].raft.is_leader), None), 30,
                      what="a leader")
    store = leader[0]
    with pytest.raises(TxnFailed) as refused:
        store.commit([_config("poison")], timeout=5)
    assert refused.value.status == 500 and refused.value.code == "refused"
    store.commit([_config("after")], timeout=10)
    for s, raft in members:
        wait_for(lambda s=s: "after" in {c["name"] for c in s.list("config")}, 15,
                 what=f"the later write on {raft.self_address}")
        assert "poison" not in {c["name"] for c in s.list("config")}
