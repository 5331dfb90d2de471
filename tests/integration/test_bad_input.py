"""Bad input: every kind is refused clearly, the daemons keep serving, and
nothing in the store changes.

One cluster (3 managers, 1 worker) serves the whole module. Each test sends
its bad input (to the leader and, where it is forwarded, to a follower),
checks the refusal (a 4xx with the one error shape and the field path), that
the store is as before, that every manager still answers and takes a valid
write, and that no node logged a traceback.
"""

from __future__ import annotations

import base64
import http.client
import itertools
import json
import os
import re
import socket
import ssl
import threading
import time

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from flotilla.ca import certs
from flotilla.common import tls
from flotilla.common.httpclient import _TLSAdapter, tls_session
from tests.helpers.cluster import LocalCluster, wait_for
from tests.helpers.slowuploads import SlowUploads

IMAGE = "flotilla-test/busybox:1"
SERVICE = "bad-input-target"
MB = 1024 * 1024

_names = itertools.count(1)


def unique(prefix: str) -> str:
    return f"{prefix}-{os.getpid()}-{next(_names)}"


def service_spec(name, **extra) -> dict:
    spec = {"name": name, "replicas": 0,
            "task": {"container": {"image": IMAGE, "command": ["sleep", "3600"]}}}
    spec.update(extra)
    return spec


# -- the cluster ---------------------------------------------------------------------


class Env:
    def __init__(self, cluster: LocalCluster):
        self.c = cluster
        self.api = tls_session(cluster.admin_dir)
        self.leader = cluster.wait_leader_ready()
        self.managers = [n for n in cluster.nodes.values() if n.name.startswith("m")]
        self.follower = next(n for n in self.managers if n is not self.leader)
        self.worker = cluster.nodes["w1"]
        self.worker_id = self.worker.config()["node_id"]
        # The admin bundle, for raw connections: managers are checked by
        # their certificate name; agents carry their node id, so for them
        # the chain alone is checked.
        self.ctx = tls.client_context_from_dir(cluster.admin_dir)
        self.agent_ctx = tls.client_context_from_dir(cluster.admin_dir)
        self.agent_ctx.check_hostname = False

    def url(self, node, path):
        return f"https://{node.addr}{path}"

    def get(self, path, node=None):
        resp = self.api.get(self.url(node or self.leader, path), timeout=15)
        assert resp.status_code == 200, resp.text
        return resp.json()

    def send(self, method, path, body=None, *, node=None, raw=None, headers=None):
        """One request; ``body`` is sent as JSON, ``raw`` as the bytes given."""
        hdrs = {"Content-Type": "application/json"}
        hdrs.update(headers or {})
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else b"")
        return self.api.request(method, self.url(node or self.leader, path), data=data,
                                headers={k: v for k, v in hdrs.items() if v is not None},
                                timeout=30)

    def both(self):
        """The leader answers itself; a follower forwards to it."""
        return (self.leader, self.follower)


@pytest.fixture(scope="module")
def env(make_module_cluster):
    c = make_module_cluster()
    c.init("m1")
    for name in ("m2", "m3"):
        c.join(name, wait=False)
    c.join("w1", "worker", wait=False)
    for name in ("m2", "m3"):
        c.wait_node_ready(c.nodes[name], manager=True)
    c.wait_node_ready(c.nodes["w1"])
    e = Env(c)
    c.admin().post("/v1/services", service_spec(SERVICE))
    return e


@pytest.fixture(autouse=True)
def clean_logs(env):
    """No node logs a traceback or an unhandled error during a test."""
    offsets = {n.name: os.path.getsize(n.log_path) for n in env.c.nodes.values()}
    yield
    for node in env.c.nodes.values():
        with open(node.log_path, "rb") as f:
            f.seek(offsets[node.name])
            new = f.read().decode(errors="replace")
        for marker in ("Traceback", "unhandled error", "RecursionError"):
            assert marker not in new, f"{node.name} logged {marker!r}:\n{new[-4000:]}"


# -- what every test checks ---------------------------------------------------------------


def assert_refused(resp, status, field=None, *, code=None):
    """A refusal with the one error shape: {"error": {"code", "message", "field"?}}."""
    assert resp.status_code == status, (resp.status_code, resp.text[:500])
    assert resp.headers["Content-Type"].startswith("application/json"), resp.headers
    body = resp.json()
    assert set(body) == {"error"}, body
    err = body["error"]
    assert set(err) <= {"code", "message", "field"}, err
    assert isinstance(err["code"], str) and err["code"], err
    assert isinstance(err["message"], str) and err["message"], err
    if code is not None:
        assert err["code"] == code, err
    if field is not None:
        assert err.get("field") == field, err
    return err


def store_view(e: Env) -> dict:
    """What a request could change: nodes' status moves on its own, so of the
    nodes only their spec-like fields are compared."""
    node_keys = ("id", "hostname", "role", "desired_role", "availability", "labels")
    return {
        "services": [{k: s[k] for k in ("id", "name", "spec", "spec_version", "version",
                                         "update_status", "previous_spec")}
                     for s in e.get("/v1/services")],
        "configs": e.get("/v1/configs"),
        "nodes": [{k: n[k] for k in node_keys} for n in e.get("/v1/nodes")],
        "cluster": {k: v for k, v in e.get("/v1/cluster").items() if k != "updated_at"},
    }


def still_serving(e: Env):
    """Every manager answers, the leader is the same everywhere, a write works."""
    leaders = set()
    for node in e.managers:
        h = e.get("/v1/health", node)
        assert h["status"] == "ok" and h["raft"]["has_quorum"], h
        leaders.add(h["leader"]["node_id"])
    assert len(leaders) == 1, leaders
    name = unique("still-ok")
    resp = e.send("POST", "/v1/configs", {"name": name, "data": base64.b64encode(b"ok").decode()},
                  node=e.follower)
    assert resp.status_code == 201, resp.text
    assert resp.json()["name"] == name


def tls_connect(node, ctx, offset=0, timeout=30.0):
    host, port = node.addr.rsplit(":", 1)
    raw = socket.create_connection((host, int(port) + offset), timeout=timeout)
    return ctx.wrap_socket(raw, server_hostname=tls.MANAGER_SERVER_NAME)


def read_response(sock) -> tuple[int, dict, bytes]:
    """Status, headers and body of one HTTP/1.1 response."""
    resp = http.client.HTTPResponse(sock)
    resp.begin()
    return resp.status, dict(resp.getheaders()), resp.read()


@pytest.fixture
def unchanged(env):
    """The store is the same after the test's bad requests (call ``check``
    before any valid write), and the cluster keeps serving."""

    class Check:
        def __init__(self):
            self.before = store_view(env)

        def check(self):
            assert store_view(env) == self.before
            still_serving(env)

    return Check()


# -- 1. malformed JSON -------------------------------------------------------------------

MALFORMED = {
    "truncated": b'{"name": "x", "task": {"container": {"image": "a"',
    "trailing garbage": b'{"name": "x"} garbage',
    "two objects": b'{"name": "x"}{"name": "y"}',
    "NaN literal": b'{"replicas": NaN, "labels": {}}',
    "Infinity literal": b'{"replicas": Infinity}',
    "-Infinity literal": b'{"replicas": -Infinity}',
    "invalid UTF-8": b'{"name": "\xff\xfe\xfd"}',
    "UTF-16": '{"name": "x"}'.encode("utf-16"),
    "encoded surrogate": b'{"labels": {"a": "\xed\xa0\x80"}}',
    "array": b'[{"name": "x"}]',
    "string": b'"name"',
    "number": b"42",
    "null": b"null",
    "empty": b"",
    "whitespace only": b" \r\n\t ",
}


def body_endpoints(e: Env):
    return [("POST", "/v1/services"), ("PATCH", f"/v1/services/{SERVICE}"),
            ("POST", "/v1/configs"), ("PATCH", f"/v1/nodes/{e.worker_id}"),
            ("PATCH", "/v1/cluster")]


def test_malformed_json_bodies_are_refused(env, unchanged):
    for node in env.both():
        for method, path in body_endpoints(env):
            for what, raw in MALFORMED.items():
                resp = env.send(method, path, raw=raw, node=node)
                err = assert_refused(resp, 400, code="invalid_json")
                assert "field" not in err, (what, err)
            # The body must be declared as JSON.
            for ctype in ("text/plain", "application/x-www-form-urlencoded", None):
                resp = env.send(method, path, raw=b"{}", node=node, headers={"Content-Type": ctype})
                assert_refused(resp, 415, "Content-Type", code="unsupported_media_type")
    # A JSON escape for an unpaired surrogate is valid JSON but no text.
    raw = b'{"name": "c", "data": "", "labels": {"a": "\\ud800"}}'
    resp = env.send("POST", "/v1/configs", raw=raw)
    assert_refused(resp, 400, "labels.a")
    unchanged.check()


def test_malformed_http_gets_the_error_shape(env, unchanged):
    """What gunicorn refuses before the application sees a request is
    answered in the same shape."""
    long_path = "/v1/services/" + "a" * 10 * 1024
    many_headers = "".join(f"X-H{i}: v\r\n" for i in range(101))
    cases = [
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET /v1/health HTTP/9.9\r\nHost: x\r\n\r\n", 400),
        (b"GET /v1/health HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n", 400),
        (f"GET {long_path} HTTP/1.1\r\nHost: x\r\n\r\n".encode(), 414),
        (f"GET /v1/health HTTP/1.1\r\nHost: x\r\n{many_headers}\r\n".encode(), 431),
        (f"GET /v1/health HTTP/1.1\r\nHost: x\r\nX-Big: {'b' * 9000}\r\n\r\n".encode(), 431),
    ]
    for node in env.both():
        for request, status in cases:
            sock = tls_connect(node, env.ctx)
            try:
                sock.sendall(request)
                got, headers, body = read_response(sock)
            finally:
                sock.close()
            assert got == status, (request[:60], got, body[:200])
            assert headers["Content-Type"] == "application/json"
            err = json.loads(body)["error"]
            assert set(err) == {"code", "message"} and err["code"] and err["message"], err
    unchanged.check()


# -- 2. huge bodies -----------------------------------------------------------------------


def post_body(e: Env, node, length: int, *, send: int | None = None, chunked=False):
    """POST /v1/configs announcing ``length`` bytes and sending ``send`` of
    them (all by default); returns the response, or None when ``send`` is
    short (the connection is then closed at once)."""
    sock = tls_connect(node, e.ctx)
    try:
        head = "POST /v1/configs HTTP/1.1\r\nHost: flotilla\r\nContent-Type: application/json\r\n"
        head += "Transfer-Encoding: chunked\r\n" if chunked else f"Content-Length: {length}\r\n"
        sock.sendall((head + "\r\n").encode())
        block = b"x" * (256 * 1024)
        left = length if send is None else send
        try:
            while left > 0:
                piece = block[:min(left, len(block))]
                sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
                left -= len(piece)
            if chunked:
                sock.sendall(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
            # The server answered and closed before the end of the body: the
            # answer is still there to read.
            pass
        if send is not None:
            return None
        return read_response(sock)
    finally:
        sock.close()


def test_huge_bodies_are_refused_with_413(env, unchanged):
    for node in env.both():
        for size in (5 * MB, 50 * MB):
            t0 = time.monotonic()
            status, headers, body = post_body(env, node, size)
            assert status == 413, (status, body[:300])
            err = json.loads(body)["error"]
            assert err["code"] == "too_large" and "too large" in err["message"], err
            assert time.monotonic() - t0 < 30
        # No length announced: the limit holds all the same. (Just over it,
        # so that the server can drain the rest and the answer is not lost
        # to a reset.)
        status, _, body = post_body(env, node, 4 * MB + 32 * 1024, chunked=True)
        assert status == 413, (status, body[:300])
        # 200 MB announced (and 20 MB, which would be drained), then the
        # client goes away after a few bytes: nothing hangs.
        for announced in (200 * MB, 20 * MB):
            assert post_body(env, node, announced, send=10) is None
            t0 = time.monotonic()
            assert env.get("/v1/health", node)["status"] == "ok"
            assert time.monotonic() - t0 < 5
    unchanged.check()


# -- 3. deep nesting ---------------------------------------------------------------------


def test_deep_nesting_is_refused_without_a_traceback(env, unchanged):
    deep_array = b"[" * 100_000 + b"]" * 100_000
    deep_object = b'{"a":' * 100_000 + b"1" + b"}" * 100_000
    # Deep, but within what the parser takes: the models refuse it.
    nested_label = (b'{"name": "x", "data": "", "labels": {"a": ' + b"[" * 900 + b"]" * 900 + b"}}")
    for node in env.both():
        for raw in (deep_array, deep_object):
            for method, path in body_endpoints(env):
                assert_refused(env.send(method, path, raw=raw, node=node), 400, code="invalid_json")
        assert_refused(env.send("POST", "/v1/configs", raw=nested_label, node=node), 400,
                       "labels.a")
    unchanged.check()
    for node in env.c.nodes.values():
        log = node.log()
        assert "RecursionError" not in log and "Traceback" not in log, node.name


# -- 4. wrong types ----------------------------------------------------------------------


def _with(path: str, value, base=None):
    """A valid service spec with the dotted ``path`` set to ``value`` (or
    removed, for ``...``)."""
    spec = base or service_spec(unique("typed"))
    keys = path.split(".")
    cur = spec
    for k in keys[:-1]:
        cur = cur.setdefault(k, {})
    if value is ...:
        del cur[keys[-1]]
    else:
        cur[keys[-1]] = value
    return spec


WRONG_TYPES = [
    ("replicas", "3", "replicas"),
    ("replicas", 3.5, "replicas"),
    ("replicas", 3.0, "replicas"),
    ("replicas", True, "replicas"),
    ("replicas", [3], "replicas"),
    ("task.container.env", "A=1", "task.container.env"),
    ("task.container.env", ["A=1", 2], "task.container.env.1"),
    ("task.container.command", "sleep 1", "task.container.command"),
    ("task.container.image", 5, "task.container.image"),
    ("labels", ["a=b"], "labels"),
    ("labels", {"a": 1}, "labels.a"),
    ("endpoint.ports", [{"target": "80", "published": "8080"}], "endpoint.ports.0.target"),
    ("endpoint.ports", [{"target": 80, "published": 8080.0}], "endpoint.ports.0.published"),
    ("endpoint.ports", {"target": 80}, "endpoint.ports"),
    ("task.restart.max_attempts", "3", "task.restart.max_attempts"),
    ("task.resources.limits.memory", 64.5, "task.resources.limits.memory"),
    ("task.container.init", "yes", "task.container.init"),
    ("mode", 1, "mode"),
    ("depends_on", {"service": "db"}, "depends_on"),
    ("task", ..., "task"),
    ("task", None, "task"),
    ("task.container", ..., "task.container"),
    ("name", ..., "name"),
]


def test_wrong_types_name_the_field(env, unchanged):
    for path, value, field in WRONG_TYPES:
        resp = env.send("POST", "/v1/services", _with(path, value))
        assert_refused(resp, 400, field, code="invalid")
    # The same through an update, nested under "spec".
    for body, field in (({"replicas": "3"}, "replicas"),
                        ({"replicas": None, "version": "1"}, "version"),
                        ({"spec": _with("replicas", "2", service_spec(SERVICE))}, "spec.replicas")):
        for node in env.both():
            resp = env.send("PATCH", f"/v1/services/{SERVICE}", body, node=node)
            assert_refused(resp, 400, field)
    for body, field in (({"labels": {"a": 1}}, "labels.a"), ({"availability": 1}, "availability"),
                        ({"labels_rm": "a"}, "labels_rm")):
        assert_refused(env.send("PATCH", f"/v1/nodes/{env.worker_id}", body), 400, field)
    for body, field in (({"name": 5, "data": ""}, "name"), ({"name": "c", "data": 5}, "data"),
                        ({"name": "c", "data": "", "labels": []}, "labels")):
        assert_refused(env.send("POST", "/v1/configs", body), 400, field)
    for body, field in (({"task_history_limit": "5"}, "task_history_limit"),
                        ({"heartbeat_period": [1]}, "heartbeat_period")):
        assert_refused(env.send("PATCH", "/v1/cluster", body), 400, field)
    unchanged.check()


# -- 5. unicode --------------------------------------------------------------------------

BAD_NAMES = ["web😀", "web\u200f", "\u202eweb", "w\u200beb", "web\x00", "we\x07b", "web\nx",
             "ｗｅｂ", "wéb", "a" * 10 * 1024, "", "-web", "web/x"]

# Legal text: kept exactly, surrounding spaces included.
UNICODE_TEXT = [" 😀 naïve café ", "مرحبا بالعالم \u200f(rtl)\u202b", "中文 日本語 한국어",
                "e\u0301 👩\u200d👩\u200d👧 𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "tab\there\nnewline", "\u00a0nbsp\u3000"]


def test_unicode_names_are_refused_and_unicode_values_round_trip(env, unchanged):
    for name in BAD_NAMES:
        for node in env.both():
            assert_refused(env.send("POST", "/v1/services", service_spec(name), node=node),
                           400, "name")
            assert_refused(env.send("POST", "/v1/configs", {"name": name, "data": ""}, node=node),
                           400, "name")
    # Refused in environment entries and arguments: the kernel cannot take NUL.
    assert_refused(env.send("POST", "/v1/services", _with("task.container.env", ["A=x\x00y"])),
                   400, "task.container.env")
    assert_refused(env.send("POST", "/v1/services", _with("task.container.command", ["a\x00"])),
                   400, "task.container.command")
    unchanged.check()

    labels = {f"k{i}": v for i, v in enumerate(UNICODE_TEXT)}
    env_vars = [f"V{i}={v}" for i, v in enumerate(UNICODE_TEXT)]
    name = unique("unicode")
    spec = service_spec(name, labels=labels)
    spec["task"]["container"].update(env=env_vars, labels=labels,
                                     command=["printf", "%s\n", UNICODE_TEXT[0]])
    resp = env.send("POST", "/v1/services", spec, node=env.follower)
    assert resp.status_code == 201, resp.text
    for got in (resp.json()["spec"], env.get(f"/v1/services/{name}")["spec"]):
        assert got["labels"] == labels
        assert got["task"]["container"]["env"] == env_vars
        assert got["task"]["container"]["labels"] == labels
        assert got["task"]["container"]["command"] == ["printf", "%s\n", UNICODE_TEXT[0]]

    cname = unique("unicode")
    resp = env.send("POST", "/v1/configs", {"name": cname, "data": "", "labels": labels})
    assert resp.status_code == 201, resp.text
    assert env.get(f"/v1/configs/{cname}")["labels"] == labels

    resp = env.send("PATCH", f"/v1/nodes/{env.worker_id}", {"labels_add": labels})
    assert resp.status_code == 200, resp.text
    assert env.get(f"/v1/nodes/{env.worker_id}")["labels"] == labels
    resp = env.send("PATCH", f"/v1/nodes/{env.worker_id}", {"labels_rm": sorted(labels)})
    assert resp.status_code == 200 and resp.json()["labels"] == {}, resp.text


# -- 6. constraints ----------------------------------------------------------------------

BAD_CONSTRAINTS = ["node.labels.x=y", "foo==bar", "node.colour==red", "node.role==",
                   "node.labels.a==" + "x" * 10 * 1024, "node.labels.==x", "==x", "node.role",
                   "node.role=~manager", "node.ip==not-an-address", "node.labels.a==b\tc"]


def test_invalid_constraints_are_refused(env, unchanged):
    for expr in BAD_CONSTRAINTS:
        spec = _with("task.placement.constraints", [expr])
        assert_refused(env.send("POST", "/v1/services", spec), 400, "task.placement.constraints")
        update = {"spec": _with("task.placement.constraints", ["node.role==worker", expr],
                                service_spec(SERVICE))}
        assert_refused(env.send("PATCH", f"/v1/services/{SERVICE}", update, node=env.follower),
                       400, "spec.task.placement.constraints")
    assert_refused(env.send("POST", "/v1/services",
                            _with("task.placement.constraints", "node.role==worker")),
                   400, "task.placement.constraints")
    unchanged.check()


# -- 7. negative and huge numbers -------------------------------------------------------


NUMBERS = [
    ("replicas", -1), ("replicas", 10 ** 9), ("replicas", 10 ** 30), ("replicas", 1e308),
    ("replicas", -(10 ** 19)),
    ("task.resources.limits.cpus", -1), ("task.resources.limits.cpus", 1e308),
    ("task.resources.reservations.cpus", -0.5),
    ("task.resources.limits.memory", "-5M"), ("task.resources.limits.memory", -1),
    ("task.resources.limits.memory", 10 ** 19), ("task.resources.limits.memory", 10 ** 30),
    ("task.resources.limits.memory", "9" * 400 + "T"),
    ("task.resources.limits.memory", "99999999999999999999T"),
    ("task.restart.delay", -1), ("task.restart.delay", 1e308), ("task.restart.delay", "nan"),
    ("task.restart.delay", "inf"), ("task.restart.delay", "1e400s"),
    ("task.restart.max_attempts", -1), ("task.restart.max_attempts", 10 ** 30),
    ("task.container.stop_grace_period", -1), ("task.container.stop_grace_period", "nan"),
    ("task.force_update", -1), ("task.force_update", 10 ** 30),
    ("update.max_failure_ratio", 1e308), ("update.parallelism", -1),
]


def test_negative_and_huge_numbers_are_refused(env, unchanged):
    for path, value in NUMBERS:
        resp = env.send("POST", "/v1/services", _with(path, value))
        assert_refused(resp, 400, path, code="invalid")
    for port, field in (({"target": 0, "published": 8080}, "endpoint.ports.0.target"),
                        ({"target": 80, "published": 70000}, "endpoint.ports.0.published")):
        resp = env.send("POST", "/v1/services", _with("endpoint.ports", [port]))
        assert_refused(resp, 400, field, code="invalid")
    # JSON numbers beyond a double (parsed as infinity) and beyond 64 bits.
    for raw, field in ((b'{"replicas": 1e400}', "replicas"),
                       (b'{"replicas": -1e400}', "replicas"),
                       (b'{"replicas": 123456789012345678901234567890}', "replicas")):
        for node in env.both():
            assert_refused(env.send("PATCH", f"/v1/services/{SERVICE}", raw=raw, node=node),
                           400, field)
    for body, field in (({"heartbeat_period": 0}, "heartbeat_period"),
                        ({"heartbeat_period": -1}, "heartbeat_period"),
                        ({"heartbeat_period": 1e308}, "heartbeat_period"),
                        ({"heartbeat_period": "nan"}, "heartbeat_period"),
                        ({"heartbeat_period": "infinity"}, "heartbeat_period"),
                        ({"heartbeat_period": "0s"}, "heartbeat_period"),
                        ({"heartbeat_period": 10 ** 30}, "heartbeat_period"),
                        ({"cert_expiry": 1e308}, "cert_expiry"),
                        ({"cert_expiry": "1s"}, "cert_expiry"),
                        ({"task_history_limit": 10 ** 20}, "task_history_limit"),
                        ({"task_history_limit": -2}, "task_history_limit")):
        for node in env.both():
            assert_refused(env.send("PATCH", "/v1/cluster", body, node=node), 400, field)
    for body, field in (({"replicas": -1}, "replicas"), ({"replicas": 10 ** 9}, "replicas")):
        assert_refused(env.send("PATCH", f"/v1/services/{SERVICE}", body), 400, field)
    unchanged.check()


# -- 8. oversized labels -----------------------------------------------------------------

OVERSIZED_LABELS = {
    "65 labels": {f"k{i}": "v" for i in range(65)},
    "key of 200 characters": {"k" * 200: "v"},
    "value of 2 KB": {"k": "v" * 2048},
    "key with a space": {"a b": "v"},
}


def test_oversized_labels_are_refused(env, unchanged):
    for labels in OVERSIZED_LABELS.values():
        for node in env.both():
            spec = service_spec(unique("l"), labels=labels)
            assert_refused(env.send("POST", "/v1/services", spec, node=node), 400, "labels")
            assert_refused(env.send("POST", "/v1/services",
                                    _with("task.container.labels", labels), node=node),
                           400, "task.container.labels")
            assert_refused(env.send("POST", "/v1/configs",
                                    {"name": unique("l"), "data": "", "labels": labels}, node=node),
                           400, "labels")
            for key in ("labels", "labels_add"):
                assert_refused(env.send("PATCH", f"/v1/nodes/{env.worker_id}", {key: labels},
                                        node=node), 400, key)
    assert_refused(env.send("PATCH", f"/v1/nodes/{env.worker_id}", {"labels_rm": ["k" * 200]}),
                   400, "labels_rm")
    assert_refused(env.send("PATCH", f"/v1/nodes/{env.worker_id}",
                            {"labels_rm": [f"k{i}" for i in range(65)]}), 400, "labels_rm")
    unchanged.check()


# -- 9. unknown fields and parameters -----------------------------------------------------


def test_unknown_fields_and_parameters_are_named(env, unchanged):
    spec = service_spec(unique("u"))
    cases = [
        (dict(spec, replica=2), "replica"),
        (_with("task.container.imgae", "x"), "task.container.imgae"),
        (_with("endpoint.ports", [{"target": 80, "published": 8080, "mode2": "host"}]),
         "endpoint.ports.0.mode2"),
        (_with("task.restart.conditon", "any"), "task.restart.conditon"),
        (_with("task.resources.limits.gpus", 1), "task.resources.limits.gpus"),
        (_with("update.paralelism", 2), "update.paralelism"),
        (_with("task.container.healthcheck", {"test": ["CMD", "true"], "intervall": 1}),
         "task.container.healthcheck.intervall"),
    ]
    for body, field in cases:
        err = assert_refused(env.send("POST", "/v1/services", body), 400, field)
        assert "unknown field" in err["message"], err
    for method, path, body, field in (
            ("PATCH", f"/v1/services/{SERVICE}", {"replicas": 1, "force": True}, "force"),
            ("POST", "/v1/configs", {"name": "c", "data": "", "mode": 1}, "mode"),
            ("PATCH", f"/v1/nodes/{env.worker_id}", {"avail": "drain"}, "avail"),
            ("PATCH", "/v1/cluster", {"heartbeat": 1}, "heartbeat")):
        for node in env.both():
            assert_refused(env.send(method, path, body, node=node), 400, field)
    for path, param in (("/v1/tasks?servce=x", "servce"), ("/v1/events?foo=1", "foo"),
                        ("/v1/events?since=0&Wait=1", "Wait"),
                        ("/v1/services?verbose=1", "verbose"), ("/v1/nodes?x=1", "x"),
                        ("/v1/configs?name=a", "name"), (f"/v1/services/{SERVICE}?x=", "x"),
                        ("/v1/cluster?x=1", "x")):
        for node in env.both():
            resp = env.api.get(env.url(node, path), timeout=15)
            err = assert_refused(resp, 400, param)
            assert "unknown parameter" in err["message"], err
    unchanged.check()


# -- 10. slow clients ----------------------------------------------------------------------


class SlowClients:
    """``count`` connections to ``port`` that never finish a request: a third
    complete the TLS handshake and send nothing, a third send a request a
    byte every half second, a third connect without a word of TLS."""

    def __init__(self, host, port, ctx, count=200):
        self.host, self.port, self.ctx = host, port, ctx
        self.idle: list = []
        self.trickling: list = []
        self.silent: list = []
        self.refused: set = set()       # trickling sockets the server closed
        self.stop = threading.Event()
        self._errors: list = []
        self._lock = threading.Lock()
        per = count // 3
        kinds = ["idle"] * per + ["trickling"] * per + ["silent"] * (count - 2 * per)
        threads = [threading.Thread(target=self._open, args=(k,)) for k in kinds]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not self._errors, self._errors[:3]
        self.sender = threading.Thread(target=self._trickle, daemon=True)
        self.sender.start()

    def _open(self, kind):
        try:
            raw = socket.create_connection((self.host, self.port), timeout=30)
            sock = raw if kind == "silent" else self.ctx.wrap_socket(
                raw, server_hostname=tls.MANAGER_SERVER_NAME)
            with self._lock:
                getattr(self, kind).append(sock)
        except OSError as exc:
            with self._lock:
                self._errors.append(exc)

    def _trickle(self):
        # Only this thread touches these sockets (TLS objects are not for
        # two threads at once); a send that fails means the server closed.
        data = b"GET /v1/health HTTP/1.1\r\nHost: flotilla\r\nX-Slow: " + b"a" * 4096
        pos = 0
        while not self.stop.is_set():
            for sock in self.trickling:
                if sock in self.refused:
                    continue
                try:
                    sock.send(data[pos:pos + 1])
                except OSError:
                    with self._lock:
                        self.refused.add(sock)
            pos = (pos + 1) % len(data)
            self.stop.wait(0.5)   # slow on purpose: that is the attack

    @staticmethod
    def closed_by_peer(sock) -> bool:
        try:
            sock.setblocking(False)
            return sock.recv(1) == b""
        except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return False
        except OSError:
            return True

    def all_closed(self) -> bool:
        with self._lock:
            if len(self.refused) < len(self.trickling):
                return False
        return all(self.closed_by_peer(s) for s in self.idle + self.silent)

    def wait_closed(self, timeout):
        return wait_for(self.all_closed, timeout, interval=0.5,
                        what="the server to close every slow connection")

    def close(self):
        self.stop.set()
        self.sender.join(5)
        for s in self.idle + self.trickling + self.silent:
            try:
                s.close()
            except OSError:
                pass


def latencies(fn, n=20):
    out = []
    for _ in range(n):
        t0 = time.monotonic()
        fn()
        out.append(time.monotonic() - t0)
    return sorted(out)


def test_slow_clients_do_not_exhaust_the_api(env, unchanged):
    node = env.leader
    host, port = node.addr.rsplit(":", 1)
    before = env.get("/v1/health", node)["refused"]
    slow = SlowClients(host, int(port), ctx=env.ctx)
    try:
        def one():
            # A new connection each time: accept and handshake are what a
            # slow client could starve.
            resp = env.api.get(env.url(node, "/v1/services"), headers={"Connection": "close"},
                               timeout=10)
            assert resp.status_code == 200, resp.text

        times = latencies(one)
        assert times[-1] < 2.0, times
        # Handshake and request head are due 10 s after the first byte.
        slow.wait_closed(25)
    finally:
        slow.close()
    after = env.get("/v1/health", node)["refused"]
    handshaken = len(slow.idle) + len(slow.trickling)
    assert after.get("api.slow_request", 0) - before.get("api.slow_request", 0) >= handshaken
    assert after.get("tls.timeout", 0) - before.get("tls.timeout", 0) >= len(slow.silent)
    unchanged.check()


def service_ls_times(e: Env, node, n=20) -> list[float]:
    def one():
        resp = e.api.get(e.url(node, "/v1/services"), timeout=10)
        assert resp.status_code == 200, resp.text
    return latencies(one, n)


def anonymous_session(node):
    session = requests.Session()
    session.trust_env = False
    session.mount("https://", _TLSAdapter(tls.client_context(None, node.ca())))
    return session


def test_slow_uploads_hold_no_slot(env, unchanged):
    """Bodies sent a byte a second, 50 without a client certificate (and 6
    with one), hold neither a thread nor an admission slot: listing services
    is as fast as when idle, a join is still answered, and a request without
    a certificate is answered 401 or 413 before its body is sent."""
    node = env.leader
    host, port = node.addr.rsplit(":", 1)
    idle = service_ls_times(env, node)
    counts = {"join": 40, "control": 5, "oversized": 5, "certified": 6}
    slow = SlowUploads(host, int(port), counts=counts, ca_path=node.ca(),
                       tls_dir=env.c.admin_dir, interval=1.0).start()
    try:
        assert not slow.errors, slow.errors[:3]
        early = wait_for(lambda: (lambda a: a if len(a) >= 10 else None)(
            [a for a in slow.snapshot() if a[0] in ("control", "oversized")]),
            10, what="the requests without a certificate to be answered")
        for kind, status, _, sent in early:
            assert status == (401 if kind == "control" else 413), early
            assert sent < 100, early
        busy = service_ls_times(env, node)
        assert busy[-1] <= 2 * idle[-1] + 0.25, (idle, busy)
        # A join of its own is answered (a bad token here: refused, and
        # nothing changes), beside 40 joins still being sent.
        t0 = time.monotonic()
        resp = anonymous_session(node).post(
            env.url(node, "/v1/join"), timeout=10,
            json={"token": "FLTKN-1-nope-nope", "csr": "x", "addr": "127.0.0.1:1"})
        assert_refused(resp, 400, code="invalid_token")
        assert time.monotonic() - t0 < 2
        # The slow ones are all still open, and none has been answered.
        assert slow.open_now() == {"join": 40, "certified": 6}
        assert [a for a in slow.snapshot() if a[0] in ("join", "certified")] == []
    finally:
        slow.stop()
    unchanged.check()


def test_clients_that_never_close_cost_no_time(env, unchanged):
    """After an answer that ends the connection, the manager half-closes it
    and reads what the client still sends for up to 2 s, without a thread
    and without holding up the other connections, however many clients
    never close their end."""
    node = env.leader
    socks = []
    try:
        ctx = tls.client_context(None, node.ca())
        for _ in range(10):
            socks.append(tls_connect(node, ctx, timeout=30))
        for sock in socks:
            sock.sendall(b"GET /v1/join/ca HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        for sock in socks:
            status, _, body = read_response(sock)
            assert status == 200 and body.startswith(b"-----BEGIN CERTIFICATE-----")
        times = service_ls_times(env, node, 10)
        assert times[-1] < 1.0, times
    finally:
        for sock in socks:
            sock.close()
    unchanged.check()


def agent_get(node, path, ctx) -> tuple[int, bytes]:
    sock = tls_connect(node, ctx, 20000, timeout=10)
    try:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n\r\n".encode())
        status, _, body = read_response(sock)
        return status, body
    finally:
        sock.close()


def agent_refused(e: Env, node) -> dict:
    status, body = agent_get(node, "/metrics", e.agent_ctx)
    assert status == 200, body
    out = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            if s.name == "flotilla_agent_refused_total":
                out[s.labels["reason"]] = s.value
    return out


def test_slow_clients_do_not_exhaust_the_agent_listener(env, unchanged):
    node = env.worker
    host, port = node.addr.rsplit(":", 1)
    ctx = env.agent_ctx
    slow = SlowClients(host, int(port) + 20000, ctx=ctx)
    try:
        def one():
            status, body = agent_get(node, "/metrics", ctx)
            assert status == 200, body[:300]

        times = latencies(one)
        assert times[-1] < 2.0, times
        # Handshake and idle: 10 s; the whole request: within 15 s.
        slow.wait_closed(30)
    finally:
        slow.close()
    assert agent_get(node, "/metrics", ctx)[0] == 200
    unchanged.check()


# -- 11. TLS garbage on every port -------------------------------------------------------


def client_hello() -> bytes:
    """The first flight of a real TLS client."""
    ctx = ssl.create_default_context()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=tls.MANAGER_SERVER_NAME)
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


def exchange(host, port, payload: bytes, ctx=None):
    """Send ``payload`` (after a TLS handshake with ``ctx``); what came back
    before the server closed: bytes, or the exception that ended it."""
    raw = socket.create_connection((host, port), timeout=15)
    try:
        sock = raw
        if ctx is not None:
            sock = ctx.wrap_socket(raw, server_hostname=tls.MANAGER_SERVER_NAME)
        sock.sendall(payload)
        data = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return data
            data += chunk
    except socket.timeout:
        raise AssertionError(f"port {port} kept a connection open after {payload[:40]!r}")
    except (ssl.SSLError, ConnectionError) as exc:
        return exc
    finally:
        raw.close()


def refused_http(result) -> bool:
    return isinstance(result, Exception) or not result.startswith(b"HTTP/")


def manager_refused_metric(e: Env, node) -> dict:
    resp = e.api.get(e.url(node, "/metrics"), timeout=10)
    assert resp.status_code == 200
    out = {}
    for family in text_string_to_metric_families(resp.text):
        for s in family.samples:
            if s.name == "flotilla_refused_total":
                out[s.labels["reason"]] = s.value
    return out


def delta(before, after, prefix):
    return sum(v - before.get(k, 0) for k, v in after.items() if k.startswith(prefix))


def test_tls_garbage_is_refused_on_every_port(env, unchanged, tmp_path):
    node = env.follower
    host, port = node.addr.rsplit(":", 1)
    api, raft, agent = int(port), int(port) + 10000, int(port) + 20000
    leader_before = env.get("/v1/health", env.leader)["leader"]["node_id"]
    health_before = env.get("/v1/health", node)["refused"]
    metric_before = manager_refused_metric(env, node)
    agent_before = agent_refused(env, node)

    other = certs.RootCA.create("othercluster")
    key, cert = other.issue(certs.ROLE_MANAGER, "intruder", "othercluster", 3600)
    bundle = tmp_path / "other.pem"
    bundle.write_bytes(certs.node_bundle_pem(key, cert))
    other_ctx = tls.client_context(str(bundle), None)
    no_cert_ctx = tls.client_context(None, None)

    garbage = b"\x00" + os.urandom(4095)
    plain = b"GET /v1/health HTTP/1.1\r\nHost: flotilla\r\n\r\n"
    hello_then_garbage = client_hello() + b"\x17\x03\x03\x00\x10" + os.urandom(16) + garbage
    for p in (api, raft, agent):
        for payload in (garbage, plain, hello_then_garbage):
            result = exchange(host, p, payload)
            assert refused_http(result), (p, payload[:20], result)
        # A certificate from another CA: the handshake fails.
        result = exchange(host, p, plain, ctx=other_ctx)
        assert refused_http(result), (p, result)
    # No client certificate: Raft and agent refuse the handshake; the API
    # answers 401 (its join endpoints need no certificate).
    for p in (raft, agent):
        assert refused_http(exchange(host, p, plain, ctx=no_cert_ctx)), p
    result = exchange(host, api, b"GET /v1/nodes HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                      ctx=no_cert_ctx)
    assert result.startswith(b"HTTP/1.1 401"), result[:200]
    body = json.loads(result.partition(b"\r\n\r\n")[2])
    assert body["error"]["code"] == "unauthenticated", result[:300]

    def counted():
        h = env.get("/v1/health", node)["refused"]
        m = manager_refused_metric(env, node)
        a = agent_refused(env, node)
        ok = (h.get("tls.protocol", 0) - health_before.get("tls.protocol", 0) >= 3
              and h.get("tls.unknown_ca", 0) - health_before.get("tls.unknown_ca", 0) >= 1
              and h.get("api.no_client_cert", 0) - health_before.get("api.no_client_cert", 0) >= 1
              and delta(health_before, h, "raft.") >= 5
              and m.get("tls.unknown_ca", 0) > metric_before.get("tls.unknown_ca", 0)
              and delta(metric_before, m, "raft.") >= 5
              and a.get("tls.unknown_ca", 0) > agent_before.get("tls.unknown_ca", 0)
              and a.get("tls.no_client_cert", 0) > agent_before.get("tls.no_client_cert", 0)
              and delta(agent_before, a, "tls.") >= 5)
        return (h, m, a) if ok else None

    wait_for(counted, 10, what="every refusal counted")
    # Raft kept its leader; the agent still serves and its node is ready.
    assert env.get("/v1/health", env.leader)["leader"]["node_id"] == leader_before
    assert agent_get(node, "/metrics", env.agent_ctx)[0] == 200
    assert env.get(f"/v1/nodes/{node.config()['node_id']}")["state"] == "ready"
    unchanged.check()


# -- 12. the dispatcher port --------------------------------------------------------------
# The leader takes agents' heartbeats and status reports on a port of its
# own (API port + 30000), served by its push process.


def dispatcher_session(e: Env):
    """A requests session presenting the worker's node certificate."""
    session = requests.Session()
    session.trust_env = False
    session.mount("https://", _TLSAdapter(tls.client_context(e.worker.bundle(), e.worker.ca())))
    return session


def dispatcher_addr(e: Env) -> str:
    host, port = e.leader.addr.rsplit(":", 1)
    return f"{host}:{int(port) + 30000}"


def test_dispatcher_port_refuses_bad_requests(env, unchanged):
    addr = dispatcher_addr(env)
    worker = dispatcher_session(env)
    heartbeat = f"https://{addr}/v1/dispatcher/heartbeat"
    status = f"https://{addr}/v1/dispatcher/status"

    def post(url, raw, session=worker, **headers):
        return session.post(url, data=raw, timeout=15,
                            headers={"Content-Type": "application/json", **headers})

    # The worker's own session goes on: a made-up one is refused as unknown,
    # and the connection stays open for the next request.
    host, port = addr.rsplit(":", 1)
    kept = http.client.HTTPSConnection(host, int(port), timeout=15, context=tls.client_context(
        env.worker.bundle(), env.worker.ca(), server_name_check=False))
    try:
        for _ in range(3):
            kept.request("POST", "/v1/dispatcher/heartbeat", body=b'{"session_id": "nope"}',
                         headers={"Content-Type": "application/json"})
            resp = kept.getresponse()
            assert resp.status == 409 and b"session_invalid" in resp.read()
            assert resp.getheader("Connection") is None
            if _ == 0:
                sock = kept.sock
            assert kept.sock is sock        # not reconnected
    finally:
        kept.close()
    for raw in MALFORMED.values():
        assert_refused(post(heartbeat, raw), 400)
    assert_refused(post(heartbeat, b'{"session_id": 7}'), 400, "session_id")
    assert_refused(post(heartbeat, b'{"session_id": "x", "extra": 1}'), 400, "extra")
    assert_refused(post(status, json.dumps({"session_id": "x", "updates": [
        {"task_id": "t", "status": {"state": "exploded"}}]}).encode()), 400,
        "updates.0.status.state")
    assert_refused(post(status, json.dumps({"session_id": "x", "updates": [
        {"task_id": "t", "status": {"state": "running"}}] * 1001}).encode()), 400, "updates")
    assert_refused(post(heartbeat, b"{" + b'"a": 1, ' * 200_000 + b'"b": 2}'), 413,
                   code="too_large")
    assert_refused(post(f"https://{addr}/v1/services", b"{}"), 404, code="not_found")
    assert_refused(worker.get(heartbeat, timeout=15), 405)
    # An admin certificate is not an agent's.
    assert_refused(post(heartbeat, b'{"session_id": "x"}', session=env.api), 403,
                   code="forbidden")
    # Garbage, plain HTTP, another CA, no certificate: no HTTP answer at all.
    plain = b"POST /v1/dispatcher/heartbeat HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}"
    for payload in (b"\x00" + os.urandom(4095), plain,
                    client_hello() + b"\x17\x03\x03\x00\x10" + os.urandom(16)):
        assert refused_http(exchange(host, int(port), payload)), payload[:20]
    assert refused_http(exchange(host, int(port), plain, ctx=tls.client_context(None, None)))
    # The worker is still ready, its session alive, and it reports through here.
    assert env.get(f"/v1/nodes/{env.worker_id}")["state"] == "ready"
    served = manager_metric(env, env.leader, "flotilla_dispatcher_front_requests_total")
    wait_for(lambda: manager_metric(env, env.leader,
                                    "flotilla_dispatcher_front_requests_total") > served,
             15, what="an agent's heartbeat on the dispatcher port")
    unchanged.check()


def test_dispatcher_port_frames_requests_like_http_1_1(env, unchanged):
    """Two requests sent at once are answered in order on the same
    connection; a request that asks to close, or speaks HTTP/1.0, is
    answered and closed; an over-long target or head is refused."""
    host, port = dispatcher_addr(env).rsplit(":", 1)
    ctx = tls.client_context(env.worker.bundle(), env.worker.ca(), server_name_check=False)

    def post(path="/v1/dispatcher/heartbeat", version="1.1", extra=""):
        body = b'{"session_id": "nope"}'
        return (f"POST {path} HTTP/{version}\r\nHost: x\r\nContent-Type: application/json\r\n"
                f"{extra}Content-Length: {len(body)}\r\n\r\n").encode() + body

    def answers(data: bytes) -> list[tuple[int, bytes]]:
        out = []
        while data:
            head, _, rest = data.partition(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            length = int(re.search(rb"Content-Length: (\d+)", head).group(1))
            out.append((status, head))
            data = rest[length:]
        return out

    # Pipelined: both answered, in order, then the client's close ends it.
    got = answers(exchange(host, int(port), post() + post(extra="Connection: close\r\n"),
                           ctx))
    assert [s for s, _ in got] == [409, 409], got
    assert b"Connection: close" not in got[0][1] and b"Connection: close" in got[1][1]
    # HTTP/1.0: answered and closed (exchange returns once the server closes).
    got = answers(exchange(host, int(port), post(version="1.0"), ctx))
    assert [s for s, _ in got] == [409] and b"Connection: close" in got[0][1]
    # Over-long target, over-long head, garbage: refused with the error shape, then closed.
    for payload, status in ((post(path="/v1/" + "a" * 20_000), 414),
                            (post(extra="X-Big: " + "b" * 20_000 + "\r\n"), 431),
                            (b"GARBAGE\r\n\r\n", 400)):
        result = exchange(host, int(port), payload, ctx)
        assert not isinstance(result, Exception), (payload[:40], result)
        got = answers(result)
        assert [s for s, _ in got] == [status], (payload[:40], got)
        body = result.partition(b"\r\n\r\n")[2]
        assert set(json.loads(body)["error"]) >= {"code", "message"}
    unchanged.check()


def manager_metric(e: Env, node, name) -> float:
    resp = e.api.get(e.url(node, "/metrics"), timeout=10)
    assert resp.status_code == 200
    for family in text_string_to_metric_families(resp.text):
        for s in family.samples:
            if s.name == name:
                return s.value
    return 0.0


def test_slow_clients_do_not_exhaust_the_dispatcher_port(env, unchanged):
    addr = dispatcher_addr(env)
    host, port = addr.rsplit(":", 1)
    ctx = tls.client_context(env.worker.bundle(), env.worker.ca(), server_name_check=True)
    slow = SlowClients(host, int(port), ctx=ctx)
    worker = dispatcher_session(env)
    try:
        def one():
            resp = worker.post(f"https://{addr}/v1/dispatcher/heartbeat",
                               json={"session_id": "nope"}, timeout=10,
                               headers={"Connection": "close"})
            assert resp.status_code == 409, resp.text

        times = latencies(one)
        assert times[-1] < 2.0, times
        # Handshake and each request are due 10 s after they begin.
        slow.wait_closed(30)
    finally:
        slow.close()
    assert env.get(f"/v1/nodes/{env.worker_id}")["state"] == "ready"
    unchanged.check()
