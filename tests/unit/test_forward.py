"""Which answer a follower gives when the leader it forwards to refuses a
request or cannot tell its outcome (the routing decisions only: the
leader's answers are canned)."""

import json
import threading
import types

import flask
import pytest

from flotilla.manager.api import forward
from flotilla.model.validation import error_body


class _Answer:
    def __init__(self, status, body):
        self.status_code = status
        self.content = json.dumps(body).encode()
        self.headers = {"Content-Type": "application/json"}


class _Leader:
    """Answers forwarded requests from a script, and counts them."""

    def __init__(self, *answers):
        self.answers = list(answers)
        self.calls = 0

    def request(self, method, url, **kw):
        self.calls += 1
        return self.answers[min(self.calls, len(self.answers)) - 1]


def _forwarder(leader, wait=0.2):
    manager = types.SimpleNamespace(
        is_leader=False, leader_ready=threading.Event(),
        leader_api_addr=lambda: "127.0.0.1:1",
        cfg=types.SimpleNamespace(advertise="127.0.0.1:2", node_id="m2",
                                  bundle_path="/nonexistent", ca_path="/nonexistent"))
    fw = forward.Forwarder(manager, leader_wait=wait)
    fw._client = lambda: leader
    return fw


@pytest.fixture
def app():
    app = flask.Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = 1 << 20
    return app


def _post(app, fw, headers):
    with app.test_request_context("/v1/configs", method="POST", data=b"{}",
                                  headers={"Content-Type": "application/json", **headers}):
        resp = fw.route(None)
        return resp.status_code, json.loads(resp.get_data())


UNKNOWN = _Answer(503, error_body("outcome_unknown", "write outcome unknown: leader stepped down"))


def test_an_unknown_outcome_with_an_idempotency_key_is_sent_again_and_then_reported(app):
    leader = _Leader(UNKNOWN)
    status, body = _post(app, _forwarder(leader), {"Idempotency-Key": "k1"})
    assert leader.calls > 1                     # sent again within the wait
    assert status == 503
    assert body["error"]["code"] == "outcome_unknown"
    assert body["error"]["message"] == "write outcome unknown: leader stepped down"


def test_an_unknown_outcome_without_an_idempotency_key_is_not_sent_again(app):
    leader = _Leader(UNKNOWN)
    status, body = _post(app, _forwarder(leader), {})
    assert leader.calls == 1
    assert (status, body["error"]["code"]) == (503, "outcome_unknown")


def test_a_refusal_by_a_former_leader_is_sent_to_the_next_one(app):
    leader = _Leader(_Answer(503, error_body("not_leader", "this manager is not the leader")),
                     _Answer(201, {"id": "c1"}))
    status, body = _post(app, _forwarder(leader), {})
    assert (status, body, leader.calls) == (201, {"id": "c1"}, 2)


class _PausedLeader(_Leader):
    """A leader that was paused while the request reached it: it answers
    only after longer than the whole wait, refusing as it is no longer the
    leader; the next leader accepts."""

    def __init__(self, paused_for, *answers):
        super().__init__(*answers)
        self.paused_for = paused_for

    def request(self, method, url, **kw):
        if self.calls == 0:
            threading.Event().wait(self.paused_for)
        return super().request(method, url, **kw)


def test_time_spent_with_a_paused_leader_does_not_use_up_the_wait(app):
    leader = _PausedLeader(0.5, _Answer(503, error_body("not_leader", "not the leader")),
                           _Answer(503, error_body("no_leader", "no leader yet")),
                           _Answer(201, {"id": "c1"}))
    status, body = _post(app, _forwarder(leader, wait=0.2), {})
    assert (status, body, leader.calls) == (201, {"id": "c1"}, 3)


def test_a_leader_that_keeps_refusing_is_reported_once_the_wait_is_over(app):
    leader = _Leader(_Answer(503, error_body("not_leader", "not the leader")))
    status, body = _post(app, _forwarder(leader, wait=0.2), {})
    assert (status, body["error"]["code"]) == (503, "no_leader")
    assert 1 < leader.calls < 20
