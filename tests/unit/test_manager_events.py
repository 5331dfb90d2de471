"""The manager's ring of user events, fed by a real store state machine."""

import threading
import time

from flotilla.manager.events import EventLog, Filter
from flotilla.manager.raft import codec
from flotilla.manager.store.store import Store


def apply(store, *txns):
    store.sm.apply(codec.pack({"txns": [{"ts": time.time(), "ops": list(ops)} for ops in txns]}))


def task(tid, state="pending", desired="running", node=None, msg=""):
    return {"id": tid, "service_id": "s1", "service_name": "web", "slot": int(tid[-1]),
            "node_id": node, "desired_state": desired,
            "status": {"state": state, "message": msg, "err": None}}


def op(action, kind, obj):
    return {"op": action, "kind": kind, "obj": obj}


def started(size=10_000):
    store = Store()
    log = EventLog(store, size=size)
    log.start()
    return store, log


def settle(log, store):
    deadline = time.monotonic() + 5
    while log.index < store.index and time.monotonic() < deadline:
        time.sleep(0.01)
    assert log.index == store.index


def test_task_states_in_order_and_quiet_updates_skipped():
    store, log = started()
    try:
        apply(store, [op("create", "node", {"id": "n1", "hostname": "host1",
                                             "status": {"state": "ready"}, "spec": {}})])
        apply(store, [op("create", "service", {"id": "s1", "name": "web", "spec_version": 1,
                                                "spec": {"mode": "replicated", "replicas": 1}})],
              [op("create", "task", task("t1"))])
        apply(store, [op("upsert", "task", task("t1", msg="no suitable node"))])  # quiet
        apply(store, [op("upsert", "task", task("t1", "assigned", node="n1"))])
        apply(store, [op("upsert", "task", task("t1", "running", node="n1"))])
        settle(log, store)
        got = log.query(since=0)
        assert [(e["type"], e["action"]) for e in got["events"]] == [
            ("node", "create"), ("service", "create"), ("task", "create"),
            ("task", "state"), ("task", "state")]
        states = [(e["attributes"]["previous_state"], e["attributes"]["state"])
                  for e in got["events"] if e["action"] == "state"]
        assert states == [("pending", "assigned"), ("assigned", "running")]
        last = got["events"][-1]
        assert last["name"] == "web.1" and last["attributes"]["node"] == "host1"
        assert got["index"] == store.index and not got["truncated"]
        # resuming gives only what follows
        assert log.query(since=got["index"])["events"] == []
        middle = got["events"][2]["index"]
        assert [e["action"] for e in log.query(since=middle)["events"]] == ["state", "state"]
        # filters
        only = log.query(since=0, match=Filter(types=["task"], actions=["state"]))
        assert len(only["events"]) == 2
        assert len(log.query(since=0, match=Filter(node="host1"))["events"]) == 3
        assert len(log.query(since=0, match=Filter(service="web"))["events"]) == 4
    finally:
        log.stop()


def test_limit_never_splits_a_transaction_and_old_since_is_truncated():
    store, log = started(size=4)
    try:
        apply(store, [op("create", "task", task("t1")), op("create", "task", task("t2"))])
        apply(store, [op("create", "task", task("t3"))])
        settle(log, store)
        first = log.query(since=0, limit=1)
        assert [e["id"] for e in first["events"]] == ["t1", "t2"]      # one txn, kept whole
        second = log.query(since=first["index"], limit=1)
        assert [e["id"] for e in second["events"]] == ["t3"]
        apply(store, *[[op("create", "task", task(f"u{i}"))] for i in range(5)])
        settle(log, store)
        old = log.query(since=0)
        assert old["truncated"] and len(old["events"]) == 4
        assert not log.query(since=old["index"])["truncated"]
    finally:
        log.stop()


def test_long_poll_wakes_on_a_new_event():
    store, log = started()
    try:
        start = log.query()["index"]
        threading.Timer(0.2, apply, (store, [op("create", "task", task("t1"))])).start()
        t0 = time.monotonic()
        got = log.query(since=start, wait=5)
        assert [e["id"] for e in got["events"]] == ["t1"]
        assert time.monotonic() - t0 < 3
        t0 = time.monotonic()
        assert log.query(wait=0.2)["events"] == []
        assert time.monotonic() - t0 >= 0.15
    finally:
        log.stop()
        log.stop()   # idempotent


def test_the_api_documents_every_type_of_event():
    import typing

    from flotilla.manager import events as eventlog
    from flotilla.manager.api.events import Event

    assert set(typing.get_args(Event.model_fields["type"].annotation)) == set(eventlog.TYPES)
