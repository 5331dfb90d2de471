"""Pure logic of rolling updates: which task stands for a slot while a
replacement is under way, what the orchestrator keeps, and rollback."""

import pytest

from flotilla.manager.orchestrator import replicated, updater
from flotilla.manager.orchestrator import tasks as T


def service(image="web:2", version=2, previous="web:1"):
    spec = {"name": "web", "mode": "replicated", "replicas": 1, "endpoint": {"ports": []},
            "task": {"container": {"image": image}}}
    prev = dict(spec, task={"container": {"image": previous}}) if previous else None
    return {"id": "s1", "name": "web", "spec": spec, "spec_version": version,
            "previous_spec": prev}


def task(tid, image, state="running", desired="running", created=0.0, **extra):
    t = {"id": tid, "service_id": "s1", "service_name": "web", "slot": 1, "node_id": "n1",
         "spec": {"container": {"image": image}}, "spec_version": 1, "ports": [],
         "desired_state": desired, "status": {"state": state}, "created_at": created,
         "version": 1}
    t.update(extra)
    return t


class NoRestarts:
    def restart(self, *a, **k):
        return []


NODES = {"n1": {"id": "n1", "status": {"state": "ready"}, "spec": {"availability": "active"}}}


def test_start_first_pair_keeps_both_until_the_new_task_runs():
    s = service()
    old = task("old", "web:1")
    new = task("new", "web:2", state="starting", created=1.0, replaces="old")
    assert updater.live_tasks(s, [old, new])[1]["id"] == "new"
    changes = replicated.reconcile(s, [old, new], NODES, NoRestarts(), now=2.0)
    assert not [c for c in changes if c[1]["desired_state"] == "shutdown"]


def test_failed_replacement_leaves_the_old_task_in_charge():
    s = service()
    old = task("old", "web:1")
    new = task("new", "web:2", state="failed", created=1.0, replaces="old")
    assert updater.live_tasks(s, [old, new])[1]["id"] == "old"
    changes = replicated.reconcile(s, [old, new], NODES, NoRestarts(), now=2.0)
    assert [(a, t["id"], t["desired_state"]) for a, t in changes] == [("update", "new", "shutdown")]


def test_after_a_rollback_the_untouched_task_wins_over_the_new_one():
    s = service(image="web:1", version=3, previous="web:2")
    old = task("old", "web:1")
    new = task("new", "web:2", state="running", created=1.0, replaces="old")
    assert updater.live_tasks(s, [old, new])[1]["id"] == "old"
    assert not updater.has_dirty(s, [old, new])


def test_dirty_tasks_are_left_to_the_updater():
    s = service()
    old = task("old", "web:1")
    assert replicated.reconcile(s, [old], NODES, NoRestarts(), now=2.0) == []
    assert updater.has_dirty(s, [old]) and T.is_dirty(old, s)


def test_rollback_swaps_specs_and_refuses_without_a_previous_one():
    s = service()
    back = updater.rollback(s, "manual rollback", 10.0)
    assert back["spec"]["task"]["container"]["image"] == "web:1"
    assert back["previous_spec"]["task"]["container"]["image"] == "web:2"
    assert back["spec_version"] == 3 and back["update_status"]["state"] == "rollback_started"
    with pytest.raises(ValueError, match="no previous spec"):
        updater.rollback(service(previous=None), "x", 1.0)


def test_settings_follow_the_phase():
    s = service()
    s["spec"]["update"] = {"parallelism": 2}
    s["spec"]["rollback"] = {"parallelism": 5}
    assert updater.settings(s)["parallelism"] == 2
    s["update_status"] = {"state": "rollback_started"}
    assert updater.settings(s)["parallelism"] == 5
    assert updater.settings(s)["order"] == "stop-first"      # Swarm's defaults fill the rest


def test_a_stop_first_replacement_waits_only_for_an_old_task_that_can_still_stop():
    up = NODES["n1"]
    down = dict(up, status={"state": "down"})
    drained = dict(up, spec={"availability": "drain"})
    running = task("old", "web:1", desired="shutdown")
    assert not updater.old_task_gone(running, up)
    assert not updater.old_task_gone(running, drained)     # its agent stops it
    assert updater.old_task_gone(running, down)
    assert updater.old_task_gone(running, None)            # node removed
    assert updater.old_task_gone(task("old", "web:1", state="shutdown"), up)
    assert updater.old_task_gone(task("old", "web:1", state="ready"), up)   # never started
    assert updater.old_task_gone(None, None)
    assert not updater.old_task_gone(task("old", "web:1", state="starting"), up)
