"""Service dependencies: conditions over task lists, gating, the graph."""

import itertools
import time

import click
import pytest

from flotilla.cli.service import parse_dependency
from flotilla.model import specs
from flotilla.manager.orchestrator import dependencies as D
from flotilla.manager.orchestrator.orchestrator import Orchestrator
from flotilla.manager.raft import codec
from flotilla.manager.store.store import Op, Store, TxnFailed

TASK_SPEC = {"container": {"image": "db:1"}}
_ids = itertools.count(1)


def service(name="db", replicas=1, mode="replicated", depends_on=(), task_spec=TASK_SPEC):
    return {"id": f"id-{name}", "name": name, "spec_version": 1,
            "spec": {"name": name, "mode": mode,
                     "replicas": replicas if mode == "replicated" else None,
                     "task": task_spec, "endpoint": {"ports": []},
                     "depends_on": [dict(service=d, condition="started") if isinstance(d, str)
                                    else d for d in depends_on]}}


def task(state, desired="running", spec=TASK_SPEC, message="", **extra):
    return dict({"id": f"t{next(_ids)}", "service_id": "id-db", "service_name": "db", "slot": 1,
                 "node_id": "n1", "spec": spec, "ports": [], "desired_state": desired,
                 "status": {"state": state, "message": message, "err": None}}, **extra)


# -- conditions --------------------------------------------------------------------------
@pytest.mark.parametrize("condition,states,met,text", [
    ("started", ["starting", "running"], True, "2/2 tasks started"),
    ("started", ["complete", "running"], True, "2/2 tasks started"),
    ("started", ["ready", "running"], False, "1/2 tasks started"),
    ("started", ["running", "failed"], False, "1/2 tasks started, 1 failed"),
    ("started", ["running", "rejected"], False, "1/2 tasks started, 1 failed"),
    ("healthy", ["running", "starting"], False, "1/2 tasks running"),
    ("healthy", ["running", "running"], True, "2/2 tasks running"),
    ("completed", ["complete", "running"], False, "1/2 tasks complete"),
    ("completed", ["complete", "complete"], True, "2/2 tasks complete"),
    ("completed", ["complete", "failed"], False, "1/2 tasks complete, 1 failed"),
])
def test_conditions(condition, states, met, text):
    assert D.progress(condition, service(replicas=2), [task(s) for s in states]) == (met, text)


def test_only_current_runnable_tasks_count_and_replicas_must_be_there():
    svc = service(replicas=2)
    old_spec = {"container": {"image": "db:0"}}
    tasks = [task("running"),
             task("failed", desired="shutdown"),               # replaced: not current
             task("running", spec=old_spec)]                    # older spec: not current
    assert D.progress("healthy", svc, tasks) == (False, "1/2 tasks running")
    assert D.progress("started", svc, tasks + [task("starting")]) == (True, "2/2 tasks started")
    # a task waiting in ready (restart delay, or gated itself) is not started
    assert D.progress("started", svc, tasks + [task("ready", desired="ready")]) == \
        (False, "1/2 tasks started")


def test_zero_replicas_holds_for_every_condition_and_global_needs_a_task():
    for condition in D.CONDITIONS:
        assert D.progress(condition, service(replicas=0), []) == (True, f"0/0 tasks "
                                                                   f"{D._WORD[condition]}")
    glob = service(mode="global")
    assert D.progress("started", glob, [])[0] is False
    assert D.progress("healthy", glob, [task("running", slot=None)]) == (True, "1/1 tasks running")


def test_waiting_message_names_the_first_unmet_dependency():
    db, cache = service("db", replicas=2), service("cache")
    stored = {"db": (db, [task("running"), task("starting")]),
              "cache": (cache, [task("running")])}
    lookup = lambda name: stored.get(name, (None, []))   # noqa: E731
    deps = [{"service": "cache", "condition": "started"},
            {"service": "db", "condition": "healthy"}]
    assert D.waiting(deps, lookup) == "waiting for dependency db (healthy): 1/2 tasks running"
    assert D.waiting(deps[:1], lookup) is None
    assert D.waiting([], lookup) is None
    deps.append({"service": "queue", "condition": "started"})
    assert D.waiting(deps, lookup) == \
        "waiting for dependency db (healthy): 1/2 tasks running (and 1 more)"
    assert D.waiting(deps[2:], lookup) == \
        "waiting for dependency queue (started): service queue does not exist"


# -- gating --------------------------------------------------------------------------------
MSG = "waiting for dependency db (healthy): 0/1 tasks running"


def test_gate_holds_new_tasks_and_leaves_restart_delays_alone():
    new = task("pending", message="pending task scheduling")
    delayed = task("pending", desired="ready", message="restarted (task failed)")
    old = task("failed", desired="shutdown")
    out = D.gate([("update", old), ("create", new), ("create", delayed)], [old], MSG)
    assert out[0] == ("update", old)
    held = out[1][1]
    assert held["desired_state"] == "ready" and held["gated"] is True
    assert held["status"]["message"] == MSG and held["id"] == new["id"]
    assert out[2] == ("create", delayed) and not D.gated(delayed)
    # dependencies met: nothing to hold
    assert D.gate([("create", new)], [], None) == [("create", new)]


def test_gate_releases_exactly_the_gated_tasks_once_met():
    gated = D.hold(task("ready"), MSG)
    gated["status"]["message"] = "prepared"                   # the agent's, since
    delayed = task("ready", desired="ready", message="restarted (task failed)")
    after = task("ready", desired="ready", after="t0")       # an update's replacement
    out = D.gate([], [gated, delayed, after, task("running")], None)
    assert len(out) == 1
    action, raised = out[0]
    assert action == "update" and raised["id"] == gated["id"]
    assert raised["desired_state"] == "running" and "gated" not in raised
    assert raised["status"]["message"] == "prepared"      # not ours: kept
    raised = D.release(D.hold(task("ready"), MSG))
    assert raised["status"]["message"] == D.RELEASED


def test_gate_leaves_tasks_the_reconciliation_changes():
    gated = D.hold(task("ready"), MSG)
    stop = dict(gated, desired_state="remove")
    assert D.gate([("update", stop)], [gated], None) == [("update", stop)]


def test_refresh_restores_the_message_but_keeps_the_schedulers_reason():
    msg2 = "waiting for dependency db (healthy): 1/1 tasks running"
    gated = D.hold(task("ready"), MSG)
    assert D.gate([], [gated], MSG) == []                     # unchanged: no write
    [(_, fresh)] = D.gate([], [gated], msg2)
    assert fresh["status"]["message"] == msg2 and D.gated(fresh)
    prepared = dict(gated, status=dict(gated["status"], message="prepared"))
    assert D.refresh(prepared, MSG)["status"]["message"] == MSG
    pending = D.hold(task("pending"), MSG)
    unschedulable = dict(pending, status=dict(pending["status"], message="no suitable node"))
    assert D.refresh(pending, msg2)["status"]["message"] == msg2
    assert D.refresh(unschedulable, msg2) is None
    assert D.refresh(dict(gated, status=dict(gated["status"], state="rejected")), msg2) is None


# -- the graph -------------------------------------------------------------------------------
def test_find_cycle_names_it_from_the_start():
    deps = {"app": ["db", "cache"], "db": ["disk"], "cache": ["app"], "disk": []}
    assert D.find_cycle(deps, "app") == ["app", "cache", "app"]
    assert D.find_cycle(deps, "db") is None
    assert D.find_cycle({"a": ["a"]}, "a") == ["a", "a"]
    assert D.find_cycle({"a": ["b"], "b": ["c"], "c": ["b"]}, "a") is None   # not through a
    long = {f"s{i}": [f"s{i + 1}"] for i in range(5000)}
    long["s5000"] = ["s0"]
    assert len(D.find_cycle(long, "s0")) == 5002                              # no recursion


def test_cycle_error_over_stored_services_and_the_new_spec():
    stored = [service("a", depends_on=["b"]), service("b"), service("c", depends_on=["a"])]
    b2 = service("b", depends_on=["c"])["spec"]
    assert D.cycle_error(b2, stored) == "dependency cycle b -> c -> a -> b"
    assert D.cycle_error(service("b", depends_on=["ghost"])["spec"], stored) is None
    assert D.cycle_error(service("d", depends_on=["a"])["spec"], stored) is None
    # the stored spec of the service being changed does not count
    stored[1] = service("b", depends_on=["a"])
    assert D.cycle_error(service("b")["spec"], stored) is None


def test_dependents_map():
    svcs = [service("a", depends_on=["db"]), service("b", depends_on=["db", "cache"]),
            service("db")]
    assert D.dependents(svcs) == {"db": {"id-a", "id-b"}, "cache": {"id-b"}}


# -- the CLI's flags ---------------------------------------------------------------------------
def test_cli_dependency_flags():
    assert parse_dependency("db") == {"service": "db", "condition": "started"}
    assert parse_dependency("db:healthy") == {"service": "db", "condition": "healthy"}
    for bad in ("db:ready", ":healthy", ""):
        with pytest.raises(click.BadParameter):
            parse_dependency(bad)


# -- the orchestrator with a real state machine -------------------------------------------------
class LocalStore(Store):
    """Applies transactions at once, without Raft."""

    def commit_many(self, transactions, timeout=10.0):
        out = []
        for ops in transactions:
            [res] = self.sm.apply(codec.pack({"txns": [{"ts": time.time(), "ops": list(ops)}]}))
            out.append(res if res["ok"] else TxnFailed(res["error"]))
        return out


def test_orchestrator_gates_refreshes_and_releases():
    def spec(name, replicas, deps=()):
        return specs.canonical(specs.ServiceSpec.model_validate({
            "name": name, "replicas": replicas, "depends_on": list(deps),
            "task": {"container": {"image": "busybox"}, "restart": {"delay": 0}}}))

    store = LocalStore()
    orch = Orchestrator(store, lambda constraints, node: True)
    watcher = store.watch()

    def create_service(name, replicas, deps=()):
        obj = {"id": f"id-{name}", "name": name, "spec": spec(name, replicas, deps),
               "spec_version": 1}
        store.commit_many([[Op.create("service", obj)]])
        return obj["id"]

    def pass_():
        dirty = set()
        for e in watcher.next(timeout=0):
            dirty |= orch._affected(e)
        orch._reconcile(dirty)
        return dirty

    def of(name):
        return sorted((t for t in store.by_index("task", "service_id", f"id-{name}")
                       if t["desired_state"] in ("ready", "running")), key=lambda t: t["slot"])

    def set_status(t, state, message=None, **kw):
        st = dict(t["status"], state=state, message=message or state)
        store.commit_many([[Op.update("task", dict(t, status=st, **kw), version=t["version"])]])

    node = {"id": "n1", "hostname": "n1", "status": {"state": "ready"},
            "spec": {"availability": "active", "role": "worker"}}
    store.commit_many([[Op.create("node", node)]])
    pass_()
    app = create_service("app", 2, [{"service": "db", "condition": "healthy"}])
    assert pass_() == {app}
    tasks = of("app")
    assert [(t["desired_state"], t["gated"]) for t in tasks] == [("ready", True)] * 2
    assert {t["status"]["message"] for t in tasks} == {
        "waiting for dependency db (healthy): service db does not exist"}

    # the agent's report replaces the message; the orchestrator puts it back
    set_status(tasks[0], "ready", "prepared", node_id="n1")
    assert pass_() == {app}
    assert of("app")[0]["status"]["message"].startswith("waiting for dependency db")

    db = create_service("db", 1)
    assert pass_() == {db, app}            # db's tasks are created, app checks again
    pass_()
    assert {t["status"]["message"] for t in of("app")} == {
        "waiting for dependency db (healthy): 0/1 tasks running"}
    [db_task] = of("db")
    set_status(db_task, "starting")
    assert app in pass_()
    assert all(t["desired_state"] == "ready" for t in of("app"))
    set_status(of("db")[0], "running")
    pass_()
    assert [(t["desired_state"], "gated" in t) for t in of("app")] == [("running", False)] * 2

    # a restarted task whose delay is over waits while the dependency is down
    set_status(of("db")[0], "failed")
    app_task = of("app")[0]
    store.commit_many([[Op.update("task", dict(app_task, desired_state="ready"),
                                  version=app_task["version"])]])
    orch.restarts.resume([store.get("task", app_task["id"])])
    orch._start_due()
    held = store.get("task", app_task["id"])
    assert held["desired_state"] == "ready" and held["gated"] is True
    assert held["status"]["message"] == \
        "waiting for dependency db (healthy): 0/1 tasks running, 1 failed"
    assert of("app")[1]["desired_state"] == "running"      # a started task keeps running
    pass_()                                                  # db's task is replaced ...
    set_status(of("db")[-1], "running")                      # ... and runs
    pass_()
    assert store.get("task", app_task["id"])["desired_state"] == "running"

    # with the dependency removed, new tasks wait (started ones keep running) ...
    store.commit_many([[Op.delete("service", db)]])
    assert app in pass_()

    def update_app(new_spec, version):
        current = store.get("service", app)
        store.commit_many([[Op.update("service", dict(current, spec=new_spec, spec_version=version),
                                      version=current["version"])]])
        pass_()
        return {t["slot"]: t for t in of("app")}

    by_slot = update_app(spec("app", 3, [{"service": "db", "condition": "healthy"}]), 2)
    assert [by_slot[n]["desired_state"] for n in (1, 2, 3)] == ["running", "running", "ready"]
    assert by_slot[3]["status"]["message"] == \
        "waiting for dependency db (healthy): service db does not exist"
    # ... until the service no longer depends on it
    assert update_app(spec("app", 3), 3)[3]["desired_state"] == "running"
