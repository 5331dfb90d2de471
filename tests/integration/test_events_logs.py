"""Cluster events and service logs on a real cluster with real containers.

One cluster for the module (two managers and two workers): the tests run
in order and the last one kills a worker.
"""

import json
import os
import re
import signal
import socket
import subprocess
import threading
import time

import pytest

from flotilla.common.httpclient import ApiError
from flotilla.model.task import STATE_VALUES
from flotilla.manager.api.events import EventList
from flotilla.manager.api.logs import ServiceLogs
from tests.helpers.cluster import PYTHON, wait_for

IMAGE = "flotilla-test/busybox:1"
# hello and oops first, then a counter every half second.
SCRIPT = ("echo hello-$HOSTNAME; echo oops >&2; i=0; "
          "while true; do i=$((i+1)); echo tick-$i; sleep 0.5; done")
PREFIX = r"web\.[12]\.[0-9a-z]{12}@w[12] +\| "


def spec(name, replicas, constraint, script=SCRIPT):
    return {"name": name, "replicas": replicas, "task": {
        "container": {"image": IMAGE, "command": ["sh", "-c", script]},
        "placement": {"constraints": [constraint], "max_replicas": 1},
        "restart": {"delay": 0}}}


@pytest.fixture(scope="module")
def c(make_module_cluster):
    return make_module_cluster().build(managers=2, workers=2)


def tasks(c, service):
    return c.admin().get(f"/v1/services/{service}/tasks")


def events(c, timeout=None, **params):
    return c.admin().get("/v1/events", params=params, timeout=timeout)


@pytest.fixture(scope="module")
def web(c):
    """Service web: one task on each worker, both running; returns the
    event index from before it was created."""
    start = events(c)["index"]
    c.admin().post("/v1/services", json=spec("web", 2, "node.role==worker"))
    wait_for(lambda: sorted(t["node"] for t in tasks(c, "web") if t["state"] == "running")
             == ["w1", "w2"], 60, what="web running on w1 and w2")
    return start


def test_events_show_service_then_ordered_task_states(c, web):
    start = web
    ids = {t["id"] for t in tasks(c, "web")}

    def all_running():
        evs = events(c, since=start, limit=1000)["events"]
        done = {e["id"] for e in evs if e["type"] == "task" and e["attributes"]["state"] == "running"}
        return evs if done >= ids else None

    evs = wait_for(all_running, 30, what="running events for both tasks")
    EventList.model_validate(events(c, since=start))      # the documented shape
    assert [e["index"] for e in evs] == sorted(e["index"] for e in evs)
    assert all(e["index"] > start for e in evs)
    first_web = [e for e in evs if e["type"] == "service" and e["name"] == "web"][0]
    assert first_web["action"] == "create" and first_web["attributes"]["replicas"] == 2
    task_events = [e for e in evs if e["type"] == "task"]
    assert task_events and all(e["index"] > first_web["index"] for e in task_events)
    for tid in ids:
        mine = [e for e in task_events if e["id"] == tid]
        assert mine[0]["action"] == "create" and mine[0]["attributes"]["state"] == "pending"
        states = [mine[0]["attributes"]["state"]]
        for e in mine[1:]:
            if e["action"] == "state":
                assert e["attributes"]["previous_state"] == states[-1]
                states.append(e["attributes"]["state"])
        assert states[-1] == "running" and "assigned" in states
        assert [STATE_VALUES[s] for s in states] == sorted(STATE_VALUES[s] for s in states)
        assert len(set(states)) == len(states)
        last = mine[-1]["attributes"]
        assert last["service"] == "web" and last["node"] in ("w1", "w2")
        assert mine[-1]["name"] == f"web.{last['slot']}"

    # Resuming gives only newer events; filters select.
    mark = events(c)["index"]
    c.admin().post("/v1/services", json=spec("other", 1, "node.role==manager", "sleep 3600"))
    wait_for(lambda: any(e["action"] == "state" and e["attributes"]["state"] == "running"
                         for e in events(c, since=mark, service="other")["events"]), 30,
             what="other running")
    newer = events(c, since=mark)
    assert newer["events"] and all(e["index"] > mark for e in newer["events"])
    assert not newer["truncated"]
    assert {e["name"] for e in newer["events"] if e["type"] == "service"} == {"other"}
    only = events(c, since=start, type="service")["events"]
    assert {e["type"] for e in only} == {"service"} and {e["name"] for e in only} == {"web", "other"}
    states = events(c, since=start, type="task", action="state", service="other")["events"]
    assert states and all(e["attributes"]["service"] == "other" and e["action"] == "state"
                          for e in states)
    on_w1 = events(c, since=start, node="w1")["events"]
    assert on_w1 and all(e["attributes"].get("node") == "w1" or e["name"] == "w1" for e in on_w1)
    assert events(c, since=newer["index"])["events"] == []
    # limit pages through the same events
    full = events(c, since=start)["events"]
    paged, cursor = [], start
    while True:
        page = events(c, since=cursor, limit=3)
        if not page["events"]:
            break
        paged += page["events"]
        cursor = page["index"]
    assert paged[:len(full)] == full

    # A long poll returns as soon as something happens, also through a
    # follower (which forwards it to the leader).
    got = {}
    now = events(c)["index"]
    follower = c.admin(nodes=[c.nodes["m2"]])
    assert not c.health(c.nodes["m2"])["is_leader"]
    poller = threading.Thread(target=lambda: got.update(follower.get(
        "/v1/events", params={"since": now, "wait": 20, "service": "other"}, timeout=30)))
    t0 = time.monotonic()
    poller.start()
    c.admin().patch("/v1/services/other", json={"replicas": 0})
    poller.join(25)
    assert got["events"] and got["events"][0]["type"] in ("service", "task")
    assert time.monotonic() - t0 < 10

    # Bad queries name the parameter.
    for params, field in (({"bogus": "1"}, "bogus"), ({"wait": "61"}, "wait"),
                          ({"type": "car"}, "type"), ({"limit": "0"}, "limit")):
        with pytest.raises(ApiError) as err:
            events(c, **params)
        assert err.value.status == 400 and err.value.field == field, params
    assert "/v1/events" in c.admin().get("/v1/openapi.json")["paths"]


def test_events_cli(c, web):
    res = c.cli("events", "--once", "--since", str(web), "--filter", "service=web",
                "--filter", "type=task")
    lines = res.stdout.splitlines()
    assert lines and all(re.match(r"^\d{4}-\d\d-\d\dT[\d:.]+ task ", ln) for ln in lines)
    assert any(re.search(r" task state web\.[12] \([0-9a-z]{12}\) \w+ -> running node=w[12]", ln)
               for ln in lines), lines
    js = c.cli("--format", "json", "events", "--once", "--since", str(web), "-f", "type=service")
    objs = [json.loads(ln) for ln in js.stdout.splitlines()]
    assert objs and {o["type"] for o in objs} == {"service"}
    bad = c.cli("events", "--once", "--filter", "colour=red", check=False)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr

    # Following: a new event shows up, Ctrl-C exits 130 without a traceback.
    mark = events(c)["index"]
    proc = subprocess.Popen(
        [PYTHON, "-m", "flotilla.cli.main", "--host", c.first.addr, "--tls-dir", c.admin_dir,
         "events", "--since", str(mark), "--filter", "service=other"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=c.env,
        preexec_fn=_interruptible)
    out = []
    reader = threading.Thread(target=lambda: out.extend(proc.stdout), daemon=True)
    reader.start()
    try:
        c.admin().patch("/v1/services/other", json={"replicas": 1})
        wait_for(lambda: any(" service update other " in ln for ln in out), 20,
                 what="the update in the followed stream")
    finally:
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(60)
    assert rc == 130 and "Traceback" not in proc.stderr.read()


def logs(c, service="web", **params):
    return c.admin().get(f"/v1/services/{service}/logs", params=params)


def test_service_logs(c, web):
    ids = {t["id"] for t in tasks(c, "web") if t["state"] == "running"}

    def both_ticking():
        got = logs(c)
        mine = {e["task_id"] for e in got["entries"] if e["line"] == "tick-3"}
        return got if mine >= ids else None

    got = wait_for(both_ticking, 30, what="three ticks from both tasks")
    ServiceLogs.model_validate(got)
    assert got["unreachable"] == []
    for tid in ids:
        mine = [e for e in got["entries"] if e["task_id"] == tid]
        # (the engine stamps each stream as it reads it: oops may come first)
        out = [e["line"] for e in mine if e["stream"] == "stdout"]
        assert out[0].startswith("hello-") and out[1:4] == ["tick-1", "tick-2", "tick-3"]
        assert {"oops"} == {e["line"] for e in mine if e["stream"] == "stderr"}
        assert mine[0]["service"] == "web" and mine[0]["node"] in ("w1", "w2")
    assert [e["timestamp"] for e in got["entries"]] == sorted(e["timestamp"] for e in got["entries"])

    res = c.cli("service", "logs", "web")
    assert len(re.findall(rf"(?m)^{PREFIX}hello-", res.stdout)) == 2, res.stdout
    assert len(re.findall(rf"(?m)^{PREFIX}oops$", res.stderr)) == 2, res.stderr
    assert "oops" not in res.stdout and "hello" not in res.stderr

    res = c.cli("service", "logs", "--no-task-ids", "-t", "web")
    assert re.search(r"(?m)^web\.[12]@w[12] +\| \d{4}-\d\d-\d\dT[\d:]+\.\d{9}Z hello-", res.stdout)

    res = c.cli("service", "logs", "--tail", "1", "web")
    lines = res.stdout.splitlines() + res.stderr.splitlines()
    assert len(lines) == 2 and all(re.match(rf"^{PREFIX}tick-\d+$", ln) for ln in lines), lines
    assert {ln.split(".")[1] for ln in lines} == {"1", "2"}
    last_tick = max(int(ln.rsplit("-", 1)[1]) for ln in lines)

    tail = logs(c, tail=1, since=got["entries"][-1]["time"])
    assert len(tail["entries"]) == 2

    # Follow: a line written after the command started shows up.
    proc = subprocess.Popen(
        [PYTHON, "-m", "flotilla.cli.main", "--host", c.first.addr, "--tls-dir", c.admin_dir,
         "service", "logs", "-f", "--tail", "1", "web"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=c.env,
        preexec_fn=_interruptible)
    out = []
    threading.Thread(target=lambda: out.extend(proc.stdout), daemon=True).start()
    try:
        def newer_ticks():
            ticks = [int(m.group(1)) for ln in list(out) for m in [re.search(r"\| tick-(\d+)$", ln)] if m]
            return ticks if max(ticks, default=0) > last_tick + 2 else None

        ticks = wait_for(newer_ticks, 20, what="new lines while following")
        # every line once: no line repeated across polls
        seen = [ln for ln in list(out) if "tick-" in ln]
        assert len(seen) == len(set(seen)), seen
        assert ticks
    finally:
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(60)
    assert rc == 130 and "Traceback" not in proc.stderr.read()

    missing = c.cli("service", "logs", "nosuch", check=False)
    assert missing.returncode == 1 and "not found" in missing.stderr
    with pytest.raises(ApiError) as err:
        logs(c, tail="-1")
    assert err.value.status == 400 and err.value.field == "tail"
    with pytest.raises(ApiError) as err:
        logs(c, follow="1")
    assert err.value.status == 400 and err.value.field == "follow"


def test_agent_serves_only_its_own_containers_to_managers(c, web):
    import urllib3

    from flotilla.common import tls

    by_node = {t["node"]: t for t in tasks(c, "web") if t["state"] == "running"}
    w2 = c.nodes["w2"]
    port = w2.port + 20000

    def get(container_id, bundle=None):
        ctx = (tls.client_context(bundle, w2.ca()) if bundle
               else tls.client_context_from_dir(c.admin_dir))
        pool = urllib3.HTTPSConnectionPool("127.0.0.1", port, ssl_context=ctx,
                                           server_hostname=w2.node_id, assert_hostname=w2.node_id,
                                           retries=False, timeout=5)
        return pool.request("GET", f"/v1/containers/{container_id}/logs?tail=1")

    manager_bundle = c.nodes["m1"].bundle()
    own = get(by_node["w2"]["container_id"], manager_bundle)
    assert own.status == 200 and json.loads(own.data)["entries"]
    other = get(by_node["w1"]["container_id"], manager_bundle)    # w1's, on the same dockerd
    assert other.status == 404 and json.loads(other.data)["error"]["code"] == "not_found"
    assert get(by_node["w2"]["container_id"]).status == 403        # an admin is not a manager


def test_logs_with_a_dead_node(c, web):
    by_node = {t["node"]: t for t in tasks(c, "web") if t["state"] == "running"}
    assert set(by_node) == {"w1", "w2"}
    c.nodes["w1"].kill()        # kill -9 of the node's process group; containers stay
    # The task on w1 stays recorded there (desired state aside) whatever the
    # dispatcher has noticed yet, so w1 is always asked, and fails.
    got = logs(c)
    assert [u["node"] for u in got["unreachable"]] == ["w1"]
    assert got["unreachable"][0]["error"]
    assert {e["node"] for e in got["entries"]} == {"w2"}
    assert any(e["task_id"] == by_node["w2"]["id"] and e["line"].startswith("hello-")
               for e in got["entries"])
    res = c.cli("service", "logs", "web")
    assert res.returncode == 0
    assert re.search(rf"(?m)^{PREFIX}hello-", res.stdout)
    warnings = [ln for ln in res.stderr.splitlines() if ln.startswith("warning:")]
    assert len(warnings) == 1 and warnings[0].startswith("warning: logs from node w1 unavailable: ")


class HostileAgent:
    """A fake agent listener on a dead node's agent address, with that
    node's own certificate: it answers every logs request with a 200 whose
    body never ends, either at full speed (``flood``, stopping by itself
    after ``FLOOD_CAP`` bytes) or one byte at a time (``trickle``), or with
    entries that are not log lines (``malformed``). It notes when the
    leader hangs up on it."""

    FLOOD_CAP = 256 * 1024 * 1024
    ENTRY = json.dumps({"timestamp": "2026-01-01T00:00:00.000000000Z", "time": 1767225600.0,
                        "stream": "stdout", "line": "x" * 1000}).encode() + b","

    def __init__(self, node, port):
        from flotilla.common import tls

        self.ctx = tls.server_context(node.bundle(), node.ca(), client_cert="required")
        self.sock = socket.create_server(("127.0.0.1", port), reuse_port=False)
        self.sock.settimeout(0.2)
        self.mode = "flood"
        self.requests = 0
        self.hangups: list[tuple[str, float, int]] = []   # (mode, when, bytes sent)
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while not self.stopping.is_set():
            try:
                raw, _ = self.sock.accept()
            except (socket.timeout, OSError):
                continue
            threading.Thread(target=self._answer, args=(raw,), daemon=True).start()

    def _answer(self, raw):
        mode, sent = self.mode, 0
        try:
            conn = self.ctx.wrap_socket(raw, server_side=True)
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                head += chunk
            if not head.startswith(b"GET /v1/containers/"):
                conn.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
                return
            self.requests += 1
            if mode == "malformed":
                body = b'{"entries": [1, {"line": 5}]}'
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                             b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
                return
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                         b"Connection: close\r\n\r\n{\"entries\": [")
            block = self.ENTRY * 64
            while not self.stopping.is_set():
                if mode == "flood":
                    if sent >= self.FLOOD_CAP:
                        return
                    conn.sendall(block)
                    sent += len(block)
                else:
                    conn.sendall(self.ENTRY[sent % len(self.ENTRY):][:1])
                    sent += 1
                    time.sleep(0.1)
        except OSError:
            self.hangups.append((mode, time.monotonic(), sent))
        finally:
            raw.close()

    def stop(self):
        self.stopping.set()
        self.sock.close()
        self.thread.join(5)


def _interruptible() -> None:
    """In the child: Ctrl-C does what it does at a terminal, even when this
    run was started with SIGINT ignored (e.g. in the background)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _manager_rss(node) -> int:
    """Resident bytes of a node's manager processes (the gunicorn arbiter and
    its worker, which reads the logs)."""
    total = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().split(b"\0")
            if b"flotilla.manager.server" not in cmd or node.data_dir.encode() not in cmd:
                continue
            with open(f"/proc/{pid}/status") as f:
                total += next(int(ln.split()[1]) * 1024 for ln in f if ln.startswith("VmRSS:"))
        except (OSError, StopIteration):
            continue
    return total


def test_a_hostile_agent_costs_the_leader_a_bounded_amount(c, web):
    """w1 is dead (previous test); on its agent address, with its certificate,
    an agent answers logs requests with bodies that never end. The leader
    answers in time, says w1's logs were cut short, hangs up on it, and its
    memory does not follow what the agent sends."""
    from flotilla.manager import logs as collector

    w1, leader = c.nodes["w1"], c.leader()
    agent = HostileAgent(w1, w1.port + 20000)
    peak = [0]
    sampling = threading.Event()

    def sample():
        while not sampling.wait(0.02):
            peak[0] = max(peak[0], _manager_rss(leader))

    try:
        for mode in ("flood", "trickle"):
            agent.mode = mode
            before = _manager_rss(leader)
            peak[0], hung_up = before, len(agent.hangups)
            sampling.clear()
            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            t0 = time.monotonic()
            got = logs(c)
            took = time.monotonic() - t0
            sampling.set()
            sampler.join(5)
            answered = time.monotonic()
            assert took < collector.DEADLINE + 3, (mode, took)
            [u] = got["unreachable"]
            assert u["node"] == "w1", got["unreachable"]
            if mode == "flood":
                assert u["truncated"] is True and "8 MiB per node" in u["error"], u
            else:
                assert u["truncated"] is False and u["error"].startswith("timed out"), u
            assert {e["node"] for e in got["entries"]} == {"w2"}
            ServiceLogs.model_validate(got)
            # The leader hung up on the agent; it does not keep reading.
            wait_for(lambda: len(agent.hangups) > hung_up, 5, what=f"the leader to hang up ({mode})")
            mode_seen, when, sent = agent.hangups[-1]
            print(f"{mode}: answered in {took:.2f} s; leader RSS +{(peak[0] - before) / 2**20:.1f} "
                  f"MiB at the most; the agent had sent {sent / 2**20:.1f} MiB when it was hung up on")
            assert when < answered + 2, (mode, when - answered)
            if mode == "flood":
                assert sent < agent.FLOOD_CAP
            # What the leader read cost it a bounded amount (16 MiB in all at
            # the most), not what the agent sent.
            assert peak[0] - before < 64 * 1024 * 1024, (mode, before, peak[0], sent)
        assert agent.requests == 2

        # Lines that are not lines fail that node, not the request.
        agent.mode = "malformed"
        got = logs(c)
        assert [(u["node"], u["error"], u["truncated"]) for u in got["unreachable"]] == [
            ("w1", "the agent's answer is malformed", False)]
        assert {e["node"] for e in got["entries"]} == {"w2"}

        # The CLI says which node's logs were cut short, and prints the rest.
        agent.mode = "flood"
        res = c.cli("service", "logs", "web")
        assert res.returncode == 0 and re.search(rf"(?m)^{PREFIX}hello-", res.stdout)
        warnings = [ln for ln in res.stderr.splitlines() if ln.startswith("warning:")]
        assert len(warnings) == 1, res.stderr
        assert warnings[0].startswith("warning: logs from node w1 truncated: answer over the limit")
        assert warnings[0].endswith("(ask for fewer lines with --tail or --since)")
    finally:
        agent.stop()
