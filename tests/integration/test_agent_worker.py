"""The worker runs its tasks as real containers on the local Docker engine.

Every test uses its own random node id (several nodes may share one engine)
and removes the containers of that node at the end.
"""

from __future__ import annotations

import io
import os
import socket
import threading
import time
import urllib.request
import uuid

import docker
import pytest

from flotilla.agent.executor import DockerExecutor
from flotilla.agent.worker import Worker
from flotilla.model import task as taskmodel
from tests.helpers.cluster import wait_for

IMAGE = "flotilla-test/busybox:1"
MISSING_IMAGE = "127.0.0.1:5999/nope/missing:1"
CHAIN = ["accepted", "preparing", "ready", "starting", "running"]


@pytest.fixture(scope="module")
def engine():
    try:
        client = docker.from_env()
        client.ping()
        client.images.get(IMAGE)
    except Exception as exc:  # pragma: no cover - depends on the machine
        pytest.skip(f"needs a Docker engine with {IMAGE}: {exc}")
    yield client
    client.close()


class Reports:
    """Collects what the worker reports, per task, thread-safely."""

    def __init__(self):
        self._lock = threading.Lock()
        self.by_task: dict[str, list[dict]] = {}

    def __call__(self, task_id: str, status: dict):
        assert set(status) == {"state", "message", "err", "exit_code", "container_id", "timestamp"}
        with self._lock:
            self.by_task.setdefault(task_id, []).append(dict(status))

    def states(self, task_id: str) -> list[str]:
        with self._lock:
            return [s["state"] for s in self.by_task.get(task_id, [])]

    def last(self, task_id: str) -> dict | None:
        with self._lock:
            history = self.by_task.get(task_id)
            return dict(history[-1]) if history else None

    def state(self, task_id: str) -> str | None:
        last = self.last(task_id)
        return last["state"] if last else None


class Node:
    """One node id on the shared engine: its workers, its tasks, its containers."""

    def __init__(self, engine, state_dir: str):
        self.engine = engine
        self.id = "test" + uuid.uuid4().hex[:21]
        self.state_dir = state_dir
        self.reports = Reports()
        self.workers: list[Worker] = []

    def worker(self, reconcile_interval: float | None = None, concurrency: int = 16) -> Worker:
        w = Worker(self.id, self.state_dir, DockerExecutor(self.id), self.reports,
                   concurrency=concurrency)
        if reconcile_interval is not None:
            w.reconcile_interval = reconcile_interval
        self.workers.append(w)
        w.start()
        return w

    def task(self, args=None, *, slot=1, desired="running", image=IMAGE, service="web",
             ports=(), resources=None, **container) -> dict:
        container.setdefault("stop_grace_period", 1.0)
        return {
            "id": uuid.uuid4().hex[:25],
            "service_id": "svc" + uuid.uuid4().hex[:8],
            "service_name": service,
            "slot": slot,
            "node_id": self.id,
            "spec": {"container": {"image": image, "args": args, **container},
                     "resources": resources or {}},
            "spec_version": 1,
            "ports": list(ports),
            "desired_state": desired,
            "status": {"state": "assigned", "message": "", "err": None, "exit_code": None,
                       "container_id": None, "timestamp": time.time()},
        }

    def containers(self, task_id: str | None = None):
        flt = [f"{taskmodel.LABEL_NODE}={self.id}"]
        if task_id:
            flt.append(f"{taskmodel.LABEL_TASK}={task_id}")
        return self.engine.containers.list(all=True, filters={"label": flt})

    def container(self, task_id: str):
        found = self.containers(task_id)
        assert len(found) <= 1, f"{len(found)} containers for task {task_id}"
        return found[0] if found else None

    def wait_state(self, worker: Worker, task_id: str, state: str, timeout: float = 15.0) -> dict:
        def reached():
            st = worker.statuses().get(task_id)
            return st if st and st["state"] == state else None
        try:
            return wait_for(reached, timeout, interval=0.05, what=f"task {task_id} {state}")
        except AssertionError:
            raise AssertionError(f"task {task_id} did not reach {state}: reported "
                                 f"{self.reports.states(task_id)}, last {self.reports.last(task_id)}")

    def cleanup(self):
        for w in self.workers:
            w.stop()
        for c in self.containers():
            try:
                c.remove(force=True, v=True)
            except docker.errors.NotFound:
                pass


@pytest.fixture
def make_node(engine, tmp_path):
    nodes: list[Node] = []

    def factory() -> Node:
        n = Node(engine, str(tmp_path / f"node{len(nodes)}"))
        nodes.append(n)
        return n

    yield factory
    for n in nodes:
        n.cleanup()


@pytest.fixture
def node(make_node):
    return make_node()


def assert_forward_only(reports: Reports, task_id: str, through: list[str]):
    states = reports.states(task_id)
    values = [taskmodel.value(s) for s in states]
    assert values == sorted(set(values)), f"states not strictly increasing: {states}"
    for s in through:
        assert s in states, f"{s} never reported for {task_id}: {states}"


def stays(predicate, seconds: float) -> bool:
    """True if ``predicate`` holds during the whole window."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not predicate():
            return False
        time.sleep(0.05)
    return True


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- 1. the normal path ---------------------------------------------------------------------

def test_tasks_reach_running_with_labels(node):
    w = node.worker()
    tasks = [node.task(["sleep", "3600"], slot=i, labels={"team": "blue"}) for i in (1, 2, 3)]
    w.assign(tasks, complete=True)
    for t in tasks:
        node.wait_state(w, t["id"], "running")
    for t in tasks:
        assert_forward_only(node.reports, t["id"], CHAIN)
        c = node.container(t["id"])
        assert c.status == "running"
        assert w.statuses()[t["id"]]["container_id"] == c.id
        assert c.name == f"web.{t['slot']}.{t['id']}"
        assert c.labels[taskmodel.LABEL_NODE] == node.id
        assert c.labels[taskmodel.LABEL_TASK] == t["id"]
        assert c.labels[taskmodel.LABEL_SERVICE] == t["service_id"]
        assert c.labels[taskmodel.LABEL_SERVICE_NAME] == "web"
        assert c.labels[taskmodel.LABEL_SLOT] == str(t["slot"])
        assert c.labels["team"] == "blue"
        assert c.attrs["HostConfig"]["RestartPolicy"]["Name"] == "no"
    assert set(w.tasks()) == {t["id"] for t in tasks}
    assert len(node.containers()) == 3


# -- 2. removal, shutdown, delayed start ------------------------------------------------------

def test_complete_and_incremental_assignments_stop_and_remove(node):
    w = node.worker()
    t1, t2, t3 = (node.task(["sleep", "3600"], slot=i) for i in (1, 2, 3))
    w.assign([t1, t2, t3], complete=True)
    for t in (t1, t2, t3):
        node.wait_state(w, t["id"], "running")

    # a complete assignment without t3: its container is stopped and removed
    w.assign([t1, t2], complete=True)
    wait_for(lambda: node.container(t3["id"]) is None, 15, 0.05, "t3's container removed")
    assert node.reports.state(t3["id"]) == "shutdown"
    wait_for(lambda: t3["id"] not in w.statuses(), 5, 0.05, "t3 forgotten")
    assert t3["id"] not in w.tasks()

    # desired shutdown: stopped, kept, reported shutdown
    w.assign([dict(t1, desired_state="shutdown")], complete=False)
    node.wait_state(w, t1["id"], "shutdown")
    c1 = node.container(t1["id"])
    assert c1 is not None and c1.status == "exited"
    assert w.tasks()[t1["id"]]["desired_state"] == "shutdown"

    # desired remove: stopped and removed
    w.assign([dict(t2, desired_state="remove")], complete=False)
    wait_for(lambda: node.container(t2["id"]) is None, 15, 0.05, "t2's container removed")
    assert "shutdown" in node.reports.states(t2["id"])

    # dropped by id in an incremental assignment
    w.assign([], complete=False, removed=[t1["id"]])
    wait_for(lambda: node.container(t1["id"]) is None, 15, 0.05, "t1's container removed")
    wait_for(lambda: not w.statuses(), 5, 0.05, "every task forgotten")
    for t in (t1, t2, t3):
        assert_forward_only(node.reports, t["id"], CHAIN + ["shutdown"])


def test_desired_ready_creates_without_starting(node):
    w = node.worker()
    t = node.task(["sleep", "3600"], desired="ready")
    w.assign([t], complete=True)
    node.wait_state(w, t["id"], "ready")
    assert stays(lambda: w.statuses()[t["id"]]["state"] == "ready", 1.0)
    assert node.container(t["id"]).status == "created"

    w.assign([dict(t, desired_state="running")], complete=False)
    node.wait_state(w, t["id"], "running")
    assert node.container(t["id"]).status == "running"
    assert_forward_only(node.reports, t["id"], CHAIN)


# -- 3. exits -----------------------------------------------------------------------------

def test_exit_codes(node):
    w = node.worker()
    bad = node.task(["sh", "-c", "exit 3"], slot=1)
    good = node.task(["true"], slot=2)
    w.assign([bad, good], complete=True)
    st = node.wait_state(w, bad["id"], "failed")
    assert st["exit_code"] == 3
    assert st["err"] == "task: non-zero exit (3)"
    st = node.wait_state(w, good["id"], "complete")
    assert st["exit_code"] == 0 and st["err"] is None
    for t in (bad, good):
        assert_forward_only(node.reports, t["id"], ["accepted", "preparing", "ready", "starting"])
    # finished tasks are not restarted
    assert stays(lambda: node.container(good["id"]).status == "exited", 1.0)


def test_container_killed_from_outside_fails_at_once(node):
    # a long reconcile period: only the container events can notice the kill
    w = node.worker(reconcile_interval=60)
    t = node.task(["sleep", "3600"])
    w.assign([t], complete=True)
    node.wait_state(w, t["id"], "running")
    node.container(t["id"]).kill()
    started = time.monotonic()
    st = node.wait_state(w, t["id"], "failed", timeout=5)
    print(f"\nkill noticed in {time.monotonic() - started:.2f}s")
    assert st["exit_code"] == 137
    assert st["err"] == "task: non-zero exit (137)"


# -- 4. healthchecks ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def health_image(engine):
    tag = f"flotilla-test/health-{uuid.uuid4().hex[:8]}:1"
    dockerfile = (f"FROM {IMAGE}\n"
                  "HEALTHCHECK --interval=300ms --timeout=2s --start-period=10s --retries=2 CMD test -f /ok\n")
    engine.images.build(fileobj=io.BytesIO(dockerfile.encode()), tag=tag, rm=True,
                        forcerm=True, pull=False)
    yield tag
    engine.images.remove(tag, force=True)


def test_spec_healthcheck_gates_running(node):
    w = node.worker()
    t = node.task(["sh", "-c", "sleep 2; echo ok > /tmp/ok; exec sleep 3600"],
                  mounts=[{"type": "tmpfs", "source": "", "target": "/tmp", "readonly": False}],
                  healthcheck={"test": ["CMD-SHELL", "test -f /tmp/ok"], "interval": 0.3,
                               "timeout": 2, "retries": 3, "start_period": 10})
    w.assign([t], complete=True)
    node.wait_state(w, t["id"], "starting")
    c = node.container(t["id"])
    assert c.attrs["State"]["Health"]["Status"] == "starting"
    assert w.statuses()[t["id"]]["state"] == "starting"
    node.wait_state(w, t["id"], "running")
    c.reload()
    assert c.attrs["State"]["Health"]["Status"] == "healthy"
    assert_forward_only(node.reports, t["id"], CHAIN)
    history = {s["state"]: s["timestamp"] for s in node.reports.by_task[t["id"]]}
    assert history["running"] - history["starting"] > 1.0


def test_failing_healthcheck_fails_the_task(node):
    w = node.worker()
    t = node.task(["sleep", "3600"],
                  healthcheck={"test": ["CMD", "false"], "interval": 0.3, "timeout": 1,
                               "retries": 2, "start_period": 0})
    w.assign([t], complete=True)
    st = node.wait_state(w, t["id"], "failed")
    assert "unhealthy" in st["err"]
    assert "running" not in node.reports.states(t["id"])
    wait_for(lambda: node.container(t["id"]).status == "exited", 10, 0.05, "container stopped")


def test_image_healthcheck_is_honoured(node, health_image):
    w = node.worker()
    t = node.task(["sh", "-c", "sleep 1; echo ok > /ok; exec sleep 3600"], image=health_image,
                  slot=1)
    off = node.task(["sleep", "3600"], image=health_image, slot=2,
                    healthcheck={"test": ["NONE"]})
    w.assign([t, off], complete=True)
    node.wait_state(w, t["id"], "starting")
    node.wait_state(w, off["id"], "running")
    assert "Health" not in node.container(off["id"]).attrs["State"]
    node.wait_state(w, t["id"], "running")
    assert node.container(t["id"]).attrs["State"]["Health"]["Status"] == "healthy"
    assert_forward_only(node.reports, t["id"], CHAIN)


# -- 5. rejections --------------------------------------------------------------------------

def test_missing_image_and_bad_mount_are_rejected(node, tmp_path):
    w = node.worker()
    missing = node.task(["true"], image=MISSING_IMAGE, slot=1)
    bad_mount = node.task(["true"], slot=2, mounts=[
        {"type": "bind", "source": str(tmp_path / "does-not-exist"), "target": "/data",
         "readonly": True}])
    w.assign([missing, bad_mount], complete=True)
    st = node.wait_state(w, missing["id"], "rejected", timeout=20)
    print(f"\nmissing image: {st['message']} / {st['err']}")
    assert MISSING_IMAGE in st["message"] and MISSING_IMAGE in st["err"]
    st = node.wait_state(w, bad_mount["id"], "rejected")
    print(f"bad mount: {st['message']} / {st['err']}")
    assert "does-not-exist" in st["err"]
    assert node.container(missing["id"]) is None
    assert node.container(bad_mount["id"]) is None
    for t in (missing, bad_mount):
        assert "starting" not in node.reports.states(t["id"])


# -- 6. agent restart ---------------------------------------------------------------------

def test_restart_adopts_running_containers(node):
    w = node.worker()
    tasks = [node.task(["sleep", "3600"], slot=i) for i in (1, 2)]
    w.assign(tasks, complete=True)
    ids = {t["id"]: node.wait_state(w, t["id"], "running")["container_id"] for t in tasks}
    w.stop()
    # the node going down leaves its containers running
    assert all(node.container(tid).status == "running" for tid in ids)
    reported = {tid: len(node.reports.states(tid)) for tid in ids}

    w2 = node.worker()
    wait_for(lambda: set(w2.statuses()) == set(ids), 10, 0.05, "tasks loaded")
    for tid, cid in ids.items():
        st = w2.statuses()[tid]
        assert st["state"] == "running" and st["container_id"] == cid
    assert w2.tasks() == {t["id"]: t for t in tasks}

    w2.assign(tasks, complete=True)

    def unchanged():
        found = node.containers()
        return (len(found) == 2 and {c.id for c in found} == set(ids.values())
                and all(c.status == "running" for c in found)
                and all(w2.statuses()[tid]["state"] == "running" for tid in ids))
    assert stays(unchanged, 1.5)
    # nothing was reported again: no state went backwards, none repeated
    assert {tid: len(node.reports.states(tid)) for tid in ids} == reported


def test_container_killed_while_the_agent_is_down_is_failed(node):
    w = node.worker()
    t = node.task(["sleep", "3600"])
    w.assign([t], complete=True)
    cid = node.wait_state(w, t["id"], "running")["container_id"]
    w.stop()
    node.container(t["id"]).kill()
    w2 = node.worker()
    st = node.wait_state(w2, t["id"], "failed")
    assert st["exit_code"] == 137 and st["container_id"] == cid
    assert_forward_only(node.reports, t["id"], CHAIN + ["failed"])
    assert len(node.containers()) == 1


def test_unknown_containers_wait_for_a_complete_assignment(node):
    w = node.worker()
    keep, gone = node.task(["sleep", "3600"], slot=1), node.task(["sleep", "3600"], slot=2)
    w.assign([keep, gone], complete=True)
    cids = {t["id"]: node.wait_state(w, t["id"], "running")["container_id"]
            for t in (keep, gone)}
    w.stop()
    os.remove(os.path.join(node.state_dir, "agent.db"))   # the agent lost its state

    w2 = node.worker()
    wait_for(lambda: w2.statuses() == {}, 5, 0.05, "worker started")
    assert stays(lambda: len(node.containers()) == 2, 1.0)
    w2.assign([keep], complete=True)
    wait_for(lambda: node.container(gone["id"]) is None, 15, 0.05, "unknown container removed")
    st = node.wait_state(w2, keep["id"], "running")
    assert st["container_id"] == cids[keep["id"]]          # adopted, not recreated
    assert [c.id for c in node.containers()] == [cids[keep["id"]]]


# -- 7. nodes sharing one engine -----------------------------------------------------------

def test_nodes_on_one_engine_keep_to_their_own_containers(make_node):
    a, b = make_node(), make_node()
    wa, wb = a.worker(), b.worker()
    ta, tb = a.task(["sleep", "3600"]), b.task(["sleep", "3600"])
    wa.assign([ta], complete=True)
    wb.assign([tb], complete=True)
    node_a_cid = a.wait_state(wa, ta["id"], "running")["container_id"]
    b.wait_state(wb, tb["id"], "running")

    wb.assign([], complete=True)
    wait_for(lambda: not b.containers(), 15, 0.05, "node b's container removed")
    assert stays(lambda: [c.id for c in a.containers()] == [node_a_cid]
                 and a.container(ta["id"]).status == "running", 1.0)
    assert set(wa.statuses()) == {ta["id"]} and set(wb.statuses()) == set()
    assert ta["id"] not in b.reports.by_task and tb["id"] not in a.reports.by_task


# -- 8. parallel starts ----------------------------------------------------------------------

def _instant(stamp: str) -> str:
    """Docker's RFC 3339 time (UTC, fraction of varying length) as a string
    that sorts as the time does."""
    whole, _, frac = stamp.rstrip("Z").partition(".")
    return f"{whole}.{frac:0<9}"


def test_twenty_tasks_start_in_parallel(node):
    w = node.worker()
    tasks = [node.task(["sleep", "3600"], slot=i) for i in range(1, 21)]
    started = time.monotonic()
    w.assign(tasks, complete=True)
    wait_for(lambda: all(s["state"] == "running" for s in w.statuses().values())
             and len(w.statuses()) == 20, 120, 0.05, "20 tasks running")
    elapsed = time.monotonic() - started
    print(f"\n20 tasks running in {elapsed:.2f}s")
    ctrs = node.containers()
    assert len(ctrs) == 20
    # In parallel: containers were created while others were still starting
    # (one after the other, each would be started before the next is created).
    spans = sorted((_instant(c.attrs["Created"]), _instant(c.attrs["State"]["StartedAt"]))
                   for c in ctrs)
    overlaps = sum(1 for (_c1, s1), (c2, _s2) in zip(spans, spans[1:]) if c2 < s1)
    assert overlaps >= 5, spans
    for t in tasks:
        assert_forward_only(node.reports, t["id"], CHAIN)


# -- 9. container settings -----------------------------------------------------------------

def test_limits_ports_mounts_and_settings(node, tmp_path):
    www = tmp_path / "www"
    www.mkdir()
    (www / "index.html").write_text("hello from flotilla\n")
    port = free_port()
    w = node.worker()
    t = node.task(
        None, command=["httpd", "-f", "-p", "80", "-h", "/www"],
        resources={"limits": {"cpus": 0.5, "memory": 64 * 1024 * 1024},
                   "reservations": {"cpus": 0, "memory": 0}},
        ports=[{"target": 80, "published": port, "protocol": "tcp"}],
        mounts=[{"type": "bind", "source": str(www), "target": "/www", "readonly": True},
                {"type": "volume", "source": "", "target": "/cache", "readonly": False}],
        env=["GREETING=hi"], workdir="/www", hostname="web-1", stop_signal="SIGTERM",
        init=True, user="0")
    w.assign([t], complete=True)
    node.wait_state(w, t["id"], "running")
    c = node.container(t["id"])
    host = c.attrs["HostConfig"]
    assert host["NanoCpus"] == 500_000_000
    assert host["Memory"] == 64 * 1024 * 1024
    assert host["Init"] is True
    assert host["PortBindings"]["80/tcp"][0]["HostPort"] == str(port)
    cfg = c.attrs["Config"]
    assert cfg["Entrypoint"] == ["httpd", "-f", "-p", "80", "-h", "/www"]
    assert "GREETING=hi" in cfg["Env"]
    assert cfg["WorkingDir"] == "/www" and cfg["Hostname"] == "web-1" and cfg["User"] == "0"
    assert cfg["StopSignal"] == "SIGTERM"
    mounts = {m["Destination"]: m for m in c.attrs["Mounts"]}
    assert mounts["/www"]["RW"] is False and mounts["/cache"]["Type"] == "volume"

    def fetch():
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/index.html", timeout=2) as r:
            return r.read().decode()
    assert wait_for(fetch, 10, 0.1, f"httpd on 127.0.0.1:{port}") == "hello from flotilla\n"

    # removing the task removes its anonymous volume too
    volume = mounts["/cache"]["Name"]
    w.assign([], complete=True)
    wait_for(lambda: node.container(t["id"]) is None, 15, 0.05, "container removed")
    with pytest.raises(docker.errors.NotFound):
        node.engine.volumes.get(volume)
