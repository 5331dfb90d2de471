import os
import sqlite3
import stat
import threading

import pytest

from flotilla.agent.storage import SCHEMA_VERSION, TaskStore


def task(tid, desired="running", image="busybox:1"):
    return {"id": tid, "service_id": "s1", "service_name": "web", "slot": 1,
            "spec": {"container": {"image": image}}, "desired_state": desired,
            "status": {"state": "assigned"}}


def status(state, cid=None):
    return {"state": state, "message": state, "err": None, "exit_code": None,
            "container_id": cid, "timestamp": 1.0}


def test_tasks_and_statuses_survive_reopen(tmp_path):
    s = TaskStore(str(tmp_path / "agent")).open()
    s.save_tasks([task("a"), task("b")])
    s.save_status("a", status("running", "c1"))
    s.close()

    records = TaskStore(str(tmp_path / "agent")).open().load()
    assert set(records) == {"a", "b"}
    assert records["a"].task == task("a")
    assert records["a"].status == status("running", "c1")
    assert records["b"].status is None
    assert not records["a"].dropped and not records["b"].dropped


def test_database_is_private_and_uses_wal(tmp_path):
    state_dir = tmp_path / "agent"
    s = TaskStore(str(state_dir)).open()
    s.save_tasks([task("a")])
    assert s.path == str(state_dir / "agent.db")
    assert stat.S_IMODE(os.stat(state_dir).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(s.path).st_mode) == 0o600
    db = sqlite3.connect(s.path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    db.close()
    s.close()


def test_saving_a_task_again_keeps_its_status(tmp_path):
    s = TaskStore(str(tmp_path)).open()
    s.save_tasks([task("a")])
    s.save_status("a", status("ready", "c1"))
    s.save_tasks([task("a", desired="shutdown")])
    rec = s.load()["a"]
    assert rec.task["desired_state"] == "shutdown"
    assert rec.status["state"] == "ready"
    s.close()


def test_status_of_an_unknown_task_is_ignored(tmp_path):
    s = TaskStore(str(tmp_path)).open()
    s.save_status("ghost", status("running"))
    assert s.load() == {}
    s.close()


def test_dropped_tasks_until_deleted_or_assigned_again(tmp_path):
    s = TaskStore(str(tmp_path)).open()
    s.save_tasks([task("a"), task("b"), task("c")])
    s.mark_dropped(["a", "b"])
    s.close()
    s = TaskStore(str(tmp_path)).open()
    records = s.load()
    assert records["a"].dropped and records["b"].dropped and not records["c"].dropped
    s.save_tasks([task("b")])          # assigned again
    s.delete(["a"])                    # its container is gone
    records = s.load()
    assert set(records) == {"b", "c"}
    assert not records["b"].dropped
    s.close()


def test_empty_writes_are_no_ops(tmp_path):
    s = TaskStore(str(tmp_path)).open()
    s.save_tasks([])
    s.mark_dropped([])
    s.delete([])
    assert s.load() == {}
    s.close()


def test_concurrent_status_writes(tmp_path):
    s = TaskStore(str(tmp_path)).open()
    ids = [f"t{i}" for i in range(20)]
    s.save_tasks([task(t) for t in ids])
    states = ["accepted", "preparing", "ready", "starting", "running"]

    def writer(tid):
        for st in states:
            s.save_status(tid, status(st))

    threads = [threading.Thread(target=writer, args=(t,)) for t in ids]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert {tid: r.status["state"] for tid, r in s.load().items()} == dict.fromkeys(ids, "running")
    s.close()


def test_use_before_open_or_after_close_fails(tmp_path):
    s = TaskStore(str(tmp_path))
    assert not s.is_open
    with pytest.raises(RuntimeError):
        s.load()
    s.open()
    s.open()                    # idempotent
    s.close()
    s.close()                   # idempotent
    with pytest.raises(RuntimeError):
        s.save_tasks([task("a")])


def test_newer_schema_is_refused(tmp_path):
    path = tmp_path / "agent.db"
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    db.commit()
    db.close()
    with pytest.raises(RuntimeError, match="newer"):
        TaskStore(str(tmp_path)).open()
