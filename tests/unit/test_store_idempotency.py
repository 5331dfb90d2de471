"""Request ids (the API's Idempotency-Key) through the store's
read-modify-write: a late copy of a request never applies it again. The
Raft member is replaced by one that applies each entry at once."""

import pytest
from pysyncobj.config import FAIL_REASON

from flotilla.manager.store.store import Op, Store


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
