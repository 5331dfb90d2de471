"""Whom the agent listener answers: the leader of its session for pushes
and logs; current managers and admins for metrics and health; nobody
revoked. The authorization logic alone, with made-up peer certificates."""

import json
import os
import stat

import pytest

from flotilla.agent.assignments import AssignmentStream
from flotilla.agent.server import create_agent_app
from flotilla.agent.trust import Trust

CLUSTER = "cluster1"


class FakeSocket:
    def __init__(self, cn, ou, o=CLUSTER, serial="AB12"):
        self._cert = {
            "subject": ((("commonName", cn),), (("organizationalUnitName", ou),),
                        (("organizationName", o),)),
            "notBefore": "Jan  1 00:00:00 2020 GMT",
            "notAfter": "Jan  1 00:00:00 2040 GMT",
            "serialNumber": serial,
        }

    def getpeercert(self):
        return self._cert


class FakeWorker:
    def assign(self, tasks, complete, removed=()):
        pass


def answer(leader="leader1", managers=("leader1", "follower1"), nodes=(), serials=(),
           version="v1"):
    return {"leader_id": leader,
            "trust": {"version": version, "managers": list(managers),
                      "revoked_nodes": list(nodes), "revoked_serials": list(serials)}}


@pytest.fixture
def agent():
    trust = Trust()
    stream = AssignmentStream(FakeWorker())
    counters = {}
    app = create_agent_app(stream, "node1", CLUSTER, counters, metrics=None, trust=trust)
    app.add_url_rule("/metrics", "metrics", lambda: "ok")     # as when metrics are on
    client = app.test_client()

    def call(sock, path="/v1/assignments", method="POST"):
        body = {"type": "incremental", "seq": 2, "applies_to": 1, "session_id": "s1"}
        resp = client.open(path, method=method, json=body if method == "POST" else None,
                           environ_base={"werkzeug.socket": sock})
        return resp.status_code, (resp.get_json(silent=True) or {}).get("error", {}).get("code")

    return trust, stream, counters, call


def test_nothing_is_answered_before_the_first_registration(agent):
    trust, _, counters, call = agent
    assert call(FakeSocket("leader1", "manager")) == (503, "no_session")
    assert call(FakeSocket("admin-x", "admin"), "/metrics", "GET") == (503, "no_session")
    assert counters["no_session"] == 2


def test_only_the_leader_of_the_session_pushes(agent):
    trust, stream, counters, call = agent
    trust.update(answer())
    stream.reset("s1", {"seq": 1, "tasks": []})
    assert call(FakeSocket("leader1", "manager")) == (200, None)
    assert call(FakeSocket("follower1", "manager")) == (403, "not_leader")
    assert call(FakeSocket("follower1", "manager"), "/v1/containers/c1/logs", "GET") == \
        (403, "not_leader")
    assert call(FakeSocket("admin-x", "admin")) == (403, "forbidden")
    assert call(FakeSocket("worker1", "worker")) == (403, "forbidden")
    assert call(FakeSocket("leader1", "manager", o="other")) == (403, "forbidden")
    assert counters["not_leader"] == 2


def test_metrics_and_health_for_current_managers_and_admins(agent):
    trust, stream, _, call = agent
    trust.update(answer())
    for who in (FakeSocket("leader1", "manager"), FakeSocket("follower1", "manager"),
                FakeSocket("admin-x", "admin")):
        assert call(who, "/metrics", "GET") == (200, None)
        assert call(who, "/v1/health", "GET") == (200, None)
    # a manager certificate of a node that is no manager any more
    assert call(FakeSocket("gone1", "manager"), "/metrics", "GET") == (403, "forbidden")


def test_health_reveals_no_session(agent):
    trust, stream, _, _ = agent
    trust.update(answer())
    stream.reset("secret-session", {"seq": 7, "tasks": []})
    app = create_agent_app(stream, "node1", CLUSTER, trust=trust)
    resp = app.test_client().get("/v1/health", environ_base={
        "werkzeug.socket": FakeSocket("follower1", "manager")})
    assert resp.get_json() == {"status": "ok", "node_id": "node1"}
    assert b"secret-session" not in resp.data


def test_revoked_nodes_and_serials_are_refused(agent):
    trust, stream, counters, call = agent
    trust.update(answer(nodes=["follower1"], serials=["ab12"], version="v2"))
    stream.reset("s1", {"seq": 1, "tasks": []})
    # the leader's current certificate has another serial
    assert call(FakeSocket("leader1", "manager", serial="CD34")) == (200, None)
    assert call(FakeSocket("leader1", "manager", serial="AB12")) == (403, "revoked")
    assert call(FakeSocket("follower1", "manager", serial="CD34"), "/metrics", "GET") == \
        (403, "revoked")
    assert call(FakeSocket("admin-x", "admin", serial="AB12"), "/metrics", "GET") == \
        (403, "revoked")
    assert counters["revoked"] == 3


def test_answers_carry_the_lists_only_when_they_change(tmp_path):
    path = str(tmp_path / "trust.json")
    trust = Trust(path)
    trust.update(answer(version="v1"))
    assert trust.version == "v1" and trust.leader == "leader1"
    # a heartbeat's answer names the version only: the lists are kept
    trust.update({"leader_id": "leader1", "trust": {"version": "v1"}})
    assert trust.known and trust.may_observe(_ident("follower1", "manager"))
    # kept on disk (0600) for the next start, without the leader
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    saved = json.loads(open(path).read())
    assert saved["managers"] == ["follower1", "leader1"] and "leader" not in saved
    again = Trust(path)
    assert again.known and again.version == "v1" and again.leader is None
    assert not again.is_leader(_ident("leader1", "manager"))


def test_a_leader_of_an_earlier_release_is_trusted_as_before():
    trust = Trust()
    trust.update({"session_id": "s1", "managers": []})        # no leader_id
    assert trust.legacy and trust.is_leader(_ident("any-manager", "manager"))
    assert not trust.is_leader(_ident("w", "worker"))
    trust.update(answer())
    assert not trust.legacy and not trust.is_leader(_ident("any-manager", "manager"))


def _ident(cn, ou):
    from flotilla.ca import certs
    return certs.identity_from_peercert(FakeSocket(cn, ou).getpeercert())
