"""The agent's status reporter: what it sends, and to which session."""

import threading

from flotilla.agent.reporter import Reporter
from flotilla.common.httpclient import ApiError


class Link:
    """Records posts; ``hold`` makes the next post wait until released."""

    def __init__(self):
        self.posts = []
        self.hold = None
        self.arrived = threading.Event()
        self.fail = None

    def post(self, path, body, **_kw):
        self.posts.append((path, body))
        self.arrived.set()
        if self.hold is not None:
            hold, self.hold = self.hold, None
            assert hold.wait(5)
        if self.fail is not None:
            raise self.fail
        return {"accepted": len(body["updates"])}


def sent(link):
    return [(b["session_id"], [(u["task_id"], u["status"]["state"]) for u in b["updates"]])
            for _, b in link.posts]


def test_a_status_is_sent_once_per_session():
    link = Link()
    r = Reporter(link)
    r.new_session("s1", {})
    r.report("t1", {"state": "running"})
    assert r.flush() is False
    assert r.flush() is False
    assert sent(link) == [("s1", [("t1", "running")])]


def test_nothing_is_sent_without_a_session():
    link = Link()
    r = Reporter(link)
    r.report("t1", {"state": "running"})
    assert r.flush() is False
    assert link.posts == []
    r.new_session("s1", {})
    r.flush()
    assert sent(link) == [("s1", [("t1", "running")])]


def test_a_batch_in_flight_during_a_registration_goes_to_the_new_session_too():
    link = Link()
    r = Reporter(link)
    r.new_session("s1", {})
    r.report("t1", {"state": "shutdown"})
    release = threading.Event()
    link.hold = release
    flusher = threading.Thread(target=r.flush)
    flusher.start()
    assert link.arrived.wait(5)
    # the agent registers with a new leader while the old one has the batch
    r.new_session("s2", {"t1": {"state": "shutdown"}})
    release.set()
    flusher.join(5)
    r.flush()
    assert sent(link) == [("s1", [("t1", "shutdown")]), ("s2", [("t1", "shutdown")])]
    assert r.flush() is False
    assert len(link.posts) == 2


def test_an_unknown_session_waits_for_the_next_registration():
    link = Link()
    r = Reporter(link)
    r.new_session("s1", {})
    r.report("t1", {"state": "running"})
    link.fail = ApiError(404, "session_invalid", "unknown session")
    assert r.flush() is False
    link.fail = None
    assert r.flush() is False
    assert len(link.posts) == 1
    r.new_session("s2", {})
    r.flush()
    assert sent(link)[-1] == ("s2", [("t1", "running")])
