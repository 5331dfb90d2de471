"""Request ids (the API's Idempotency-Key) through the store's
read-modify-write: a late copy of a request never applies it again. The
Raft member is replaced by one that applies each entry at once."""

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


def store():
    s = Store()
    raft = ApplyingRaft(s.sm)
    s.attach(raft)
    s.start()
    s.commit([Op.create("config", {"id": "a", "name": "a", "data": "x"})])
    return s, raft


def set_data(value):
    return lambda current: dict(current, data=value)


def test_a_late_copy_of_a_request_that_changed_nothing_is_not_applied():
    s, _ = store()
    try:
        # Asks for what is already there: nothing to write.
        assert s.update("config", "a", set_data("x"), rid="R")["data"] == "x"
        assert s.update("config", "a", set_data("y"), rid="S")["data"] == "y"
        # The first request again (a forward held up by a partition).
        again = s.update("config", "a", set_data("x"), rid="R")
        assert again["data"] == "y"
        assert s.get("config", "a")["data"] == "y"
    finally:
        s.stop()


def test_a_late_copy_of_a_request_that_wrote_is_not_applied_again():
    s, _ = store()
    try:
        assert s.update("config", "a", set_data("y"), rid="R")["data"] == "y"
        assert s.update("config", "a", set_data("z"), rid="S")["data"] == "z"
        assert s.update("config", "a", set_data("y"), rid="R")["data"] == "z"
        assert s.get("config", "a")["data"] == "z"
    finally:
        s.stop()


def test_nothing_is_proposed_for_a_change_of_nothing_without_a_request_id():
    s, raft = store()
    try:
        before = raft.entries
        s.update("config", "a", set_data("x"))
        assert raft.entries == before
    finally:
        s.stop()
