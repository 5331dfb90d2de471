"""How long the scheduler gathers changes before it decides (pure logic: the
watch is a list of event batches)."""

from flotilla.manager.scheduler.scheduler import Scheduler
from flotilla.manager.store.state import Event


def task(tid, state="pending", node_id=None, version=1):
    return {"id": tid, "service_id": "s1", "slot": 1, "node_id": node_id,
            "desired_state": "running", "version": version, "spec_version": 1,
            "status": {"state": state, "message": ""},
            "spec": {"resources": {"reservations": {"cpus": 0.0, "memory": 0}},
                     "placement": {"constraints": []}}}


def created(*tasks):
    return [Event(1, "create", "task", t["id"], t, None) for t in tasks]


def running(tid, version):
    new = task(tid, "running", "n1", version)
    return [Event(1, "update", "task", tid, new, task(tid, "starting", "n1", version - 1))]


class Watch:
    """Hands out the given batches, one per call, then nothing."""

    def __init__(self, *batches):
        self.batches = list(batches)
        self.waits = 0

    def next(self, timeout=None):
        self.waits += 1
        return self.batches.pop(0) if self.batches else []


def scheduler():
    return Scheduler(store=None)


def test_new_tasks_do_not_wait_for_a_stream_of_status_reports():
    s = scheduler()
    stream = [running(f"r{i}", i + 2) for i in range(50)]
    watch = Watch(*stream)
    assert s._gather(watch, created(task("a"), task("b")))
    # The first batch that brings nothing to place ends the gathering.
    assert watch.waits == 1
    assert sorted(s._pending) == ["a", "b"]


def test_tasks_arriving_right_behind_are_gathered_with_them():
    s = scheduler()
    watch = Watch(created(task("b")), created(task("c")), running("r", 3), created(task("d")))
    assert s._gather(watch, created(task("a")))
    assert watch.waits == 3
    assert sorted(s._pending) == ["a", "b", "c"]


def test_other_changes_are_gathered_until_quiet():
    s = scheduler()
    watch = Watch(running("r1", 3), running("r2", 3), created(task("a")), running("r3", 3))
    assert s._gather(watch, running("r0", 3))
    # Status changes alone keep it gathering; once a task to place came,
    # the next batch without one ends it.
    assert watch.waits == 4
    assert sorted(s._pending) == ["a"]


def test_a_task_already_waiting_is_not_new():
    s = scheduler()
    s._gather(Watch(), created(task("a")))
    again = [Event(2, "update", "task", "a", task("a", version=2), task("a"))]
    assert s._apply(again) == (True, 0)
    assert s._apply(created(task("b"))) == (True, 1)


def test_nothing_changed_means_no_gathering():
    s = scheduler()
    watch = Watch(created(task("a")))
    assert not s._gather(watch, [])
    assert watch.waits == 0
