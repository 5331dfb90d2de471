import io

import msgpack
import pytest

from flotilla.manager.raft import codec
from flotilla.manager.store.state import StateMachine
from flotilla.manager.store.store import Op, as_patch
from flotilla.manager.store.watch import EventHub


def apply(sm, *txns):
    return sm.apply(codec.pack({"txns": list(txns)}))


def txn(*ops, rid=None, ts=1.0):
    return {"rid": rid, "ts": ts, "ops": list(ops)}


def test_create_update_delete_versions():
    sm = StateMachine()
    [r] = apply(sm, txn(Op.create("config", {"id": "a", "name": "one"})))
    assert r["ok"] and r["index"] == 1 and r["objects"][0]["version"] == 1
    [r] = apply(sm, txn(Op.update("config", {"id": "a", "name": "uno"}, version=1), ts=2.0))
    obj = r["objects"][0]
    assert obj["version"] == 2 and obj["created_at"] == 1.0 and obj["updated_at"] == 2.0
    [r] = apply(sm, txn(Op.update("config", {"id": "a", "name": "x"}, version=1)))
    assert not r["ok"] and r["error"]["code"] == "conflict"
    [r] = apply(sm, txn(Op.delete("config", "a", version=2)))
    assert r["ok"] and sm.get("config", "a") is None


def test_transaction_is_all_or_nothing():
    sm = StateMachine()
    apply(sm, txn(Op.create("config", {"id": "a", "name": "one"})))
    [r] = apply(sm, txn(Op.create("config", {"id": "b", "name": "two"}),
                        Op.create("config", {"id": "a", "name": "dup"})))
    assert not r["ok"] and r["error"]["code"] == "exists"
    assert sm.get("config", "b") is None
    assert sm.index == 1


def test_unique_names():
    sm = StateMachine()
    apply(sm, txn(Op.create("config", {"id": "a", "name": "one"})))
    [r] = apply(sm, txn(Op.create("config", {"id": "b", "name": "one"})))
    assert r["error"]["code"] == "exists"
    apply(sm, txn(Op.delete("config", "a")))
    [r] = apply(sm, txn(Op.create("config", {"id": "b", "name": "one"})))
    assert r["ok"]
    assert sm.by_unique("config", "name", "one")["id"] == "b"


def test_request_id_dedupes():
    sm = StateMachine()
    [r1] = apply(sm, txn(Op.create("config", {"id": "a", "name": "one"}), rid="r1"))
    [r2] = apply(sm, txn(Op.create("config", {"id": "a", "name": "one"}), rid="r1"))
    assert r1["ok"] and r2["ok"] and r1["index"] == r2["index"] == 1
    assert sm.index == 1


def test_snapshot_round_trip_and_reset_event():
    hub = EventHub()
    sm = StateMachine(hub)
    for i in range(50):
        apply(sm, txn(Op.create("config", {"id": f"c{i}", "name": f"n{i}"}), rid=f"r{i}"))
    buf = io.BytesIO()
    sm.snapshot_write(sm.snapshot_capture(), buf)
    buf.seek(0)
    sm2 = StateMachine(hub)
    w = hub.watch()
    sm2.snapshot_load(msgpack.Unpacker(buf, raw=False, strict_map_key=False))
    assert sm2.index == 50 and len(sm2.list("config")) == 50
    assert sm2.applied_bytes == sm.applied_bytes > 0     # where snapshots are placed
    assert sm2.by_unique("config", "name", "n7")["id"] == "c7"
    [r] = apply(sm2, txn(Op.create("config", {"id": "c3", "name": "n3"}), rid="r3"))
    assert r["ok"] and r["index"] == 4          # deduped against the restored table
    assert [e.action for e in w.next(0)] == ["reset"]


def test_truncated_snapshot_is_refused():
    sm = StateMachine()
    apply(sm, txn(Op.create("config", {"id": "a", "name": "one"})))
    buf = io.BytesIO()
    sm.snapshot_write(sm.snapshot_capture(), buf)
    data = buf.getvalue()[:-3]
    with pytest.raises(codec.CodecError):
        StateMachine().snapshot_load(msgpack.Unpacker(io.BytesIO(data), raw=False, strict_map_key=False))


def test_watch_sees_events_in_order_and_resets_when_behind():
    hub = EventHub(size=4)
    sm = StateMachine(hub)
    w = hub.watch()
    apply(sm, txn(Op.create("config", {"id": "a", "name": "1"})))
    apply(sm, txn(Op.update("config", {"id": "a", "name": "2"})))
    evs = w.next(0)
    assert [(e.action, e.id) for e in evs] == [("create", "a"), ("update", "a")]
    for i in range(10):
        apply(sm, txn(Op.create("config", {"id": f"x{i}", "name": f"x{i}"})))
    assert [e.action for e in w.next(0)] == ["reset"]
    assert w.next(0) == []


def test_watch_returns_a_long_tail_in_order():
    hub = EventHub(size=1000)
    sm = StateMachine(hub)
    apply(sm, txn(*[Op.create("config", {"id": f"p{i}", "name": f"p{i}"}) for i in range(300)]))
    w = hub.watch()
    apply(sm, txn(*[Op.create("config", {"id": f"c{i}", "name": f"c{i}"}) for i in range(500)]))
    assert [e.id for e in w.next(0)] == [f"c{i}" for i in range(500)]


def test_watch_ring_keeps_only_what_a_live_watcher_has_not_read():
    hub = EventHub(size=1000)
    sm = StateMachine(hub)
    fast, slow = hub.watch(), hub.watch()
    apply(sm, txn(*[Op.create("config", {"id": f"a{i}", "name": f"a{i}"}) for i in range(50)]))
    assert len(fast.next(0)) == 50
    assert len(hub._ring) == 50                 # the slow watcher has not read them
    apply(sm, txn(Op.create("config", {"id": "b", "name": "b"})))
    assert [e.id for e in slow.next(0)] == [f"a{i}" for i in range(50)] + ["b"]
    apply(sm, txn(Op.create("config", {"id": "c", "name": "c"})))
    assert len(hub._ring) == 2                  # "b" (fast has not read it) and "c"
    assert [e.id for e in fast.next(0)] == ["b", "c"]
    del slow                                    # a watcher that is gone holds nothing back
    apply(sm, txn(Op.create("config", {"id": "d", "name": "d"})))
    assert [e.id for e in hub._ring] == ["d"]
    assert [e.id for e in fast.next(0)] == ["d"]
    apply(sm, txn(Op.create("config", {"id": "e", "name": "e"})))
    assert [e.id for e in fast.next(0)] == ["e"]


def test_first_count_and_node_role_index():
    sm = StateMachine()
    assert sm.first("cluster") is None and sm.count("node") == 0
    apply(sm, txn(Op.create("cluster", {"id": "c", "name": "default"}),
                  Op.create("node", {"id": "m", "role": "manager"}),
                  Op.create("node", {"id": "w", "role": "worker"})))
    assert sm.first("cluster")["id"] == "c" and sm.count("node") == 2
    assert [n["id"] for n in sm.by_index("node", "role", "manager")] == ["m"]
    apply(sm, txn(Op.update("node", {"id": "w", "role": "manager"})))
    assert sorted(n["id"] for n in sm.by_index("node", "role", "manager")) == ["m", "w"]


def test_patch_sets_and_removes_fields_with_compare_and_set():
    sm = StateMachine()
    apply(sm, txn(Op.create("task", {"id": "t", "service_id": "s", "node_id": None,
                                     "desired_state": "running", "status": {"state": "new"},
                                     "note": "x"})))
    [r] = apply(sm, txn(Op.patch("task", "t", {"node_id": "n1", "status": {"state": "assigned"}},
                                 version=1, unset=["note"]), ts=2.0))
    task = r["objects"][0]
    assert r["ok"] and task["version"] == 2 and task["created_at"] == 1.0
    assert task["node_id"] == "n1" and task["status"] == {"state": "assigned"}
    assert "note" not in task and task["service_id"] == "s"
    assert [t["id"] for t in sm.by_index("task", "node_id", "n1")] == ["t"]
    [r] = apply(sm, txn(Op.patch("task", "t", {"node_id": "n2"}, version=1)))
    assert r["error"]["code"] == "conflict" and sm.get("task", "t")["node_id"] == "n1"
    [r] = apply(sm, txn(Op.patch("task", "missing", {"node_id": "n2"})))
    assert r["error"]["code"] == "not_found"
    for bad in (Op.patch("task", "t", {"version": 7}), Op.patch("task", "t", {"id": "u"}),
                Op.patch("nope", "t", {}), {"op": "patch", "kind": "task", "id": "t", "set": [1]}):
        [r] = apply(sm, txn(bad))
        assert r["error"]["code"] == "invalid", bad
    assert sm.get("task", "t")["version"] == 2


def test_patch_respects_unique_fields():
    sm = StateMachine()
    apply(sm, txn(Op.create("config", {"id": "a", "name": "one"}),
                  Op.create("config", {"id": "b", "name": "two"})))
    [r] = apply(sm, txn(Op.patch("config", "b", {"name": "one"})))
    assert r["error"]["code"] == "exists"
    [r] = apply(sm, txn(Op.patch("config", "b", {"name": "three"})))
    assert r["ok"] and sm.by_unique("config", "name", "three")["id"] == "b"


def test_an_update_and_its_patch_give_the_same_object():
    # Two members, one applying full updates and one the patches computed
    # from them, end with equal objects.
    full, patched = StateMachine(), StateMachine()
    base = {"id": "t", "service_id": "s", "node_id": None, "spec": {"image": "a", "args": [1]},
            "status": {"state": "new"}, "ports": [], "extra": 1}
    for sm in (full, patched):
        apply(sm, txn(Op.create("task", base)))
    current = full.get("task", "t")
    new = dict(current, node_id="n", status={"state": "assigned"}, spec={"image": "a", "args": [1]})
    del new["extra"]
    update = Op.update("task", new, version=current["version"])
    patch = as_patch(update, current)
    assert patch["set"] == {"node_id": "n", "status": {"state": "assigned"}}
    assert patch["unset"] == ["extra"]
    apply(full, txn(update, ts=5.0))
    apply(patched, txn(patch, ts=5.0))
    assert full.get("task", "t") == patched.get("task", "t")
    assert len(codec.pack(patch)) < len(codec.pack(update))


class _Nodes:
    def __init__(self, *versions):
        self._nodes = [{"id": f"m{i}", "role": "manager", "description": {"version": v}}
                       for i, v in enumerate(versions)]

    def by_index(self, kind, field, value):
        return [n for n in self._nodes if n.get(field) == value]


def test_patches_only_when_every_manager_applies_them():
    from flotilla.manager.store import queries
    assert queries.managers_apply_patches(_Nodes("0.2.0", "0.2.0.post1", "1.0.0"))
    assert not queries.managers_apply_patches(_Nodes("0.2.0", "0.1.0"))     # rolling upgrade
    assert not queries.managers_apply_patches(_Nodes("0.2.0", None))        # not yet reported
    assert not queries.managers_apply_patches(_Nodes())


def test_a_task_created_with_its_services_spec_by_reference():
    sm = StateMachine()
    spec = {"replicas": 2, "task": {"container": {"image": "a", "args": ["x"]}}}
    apply(sm, txn(Op.create("service", {"id": "s", "name": "web", "spec": spec,
                                        "spec_version": 3})))
    task = {"id": "t", "service_id": "s", "spec_version": 3, "node_id": None,
            "desired_state": "running", "status": {"state": "pending"}}
    [r] = apply(sm, txn({"op": "create", "kind": "task", "spec_of": "s", "obj": task}))
    stored = sm.get("task", "t")
    assert r["ok"] and stored["spec"] == spec["task"]
    assert stored["spec"] is sm.get("service", "s")["spec"]["task"]     # shared, not copied
    # the service moved on: the task is refused (the orchestrator builds it again)
    apply(sm, txn(Op.update("service", {"id": "s", "name": "web", "spec": spec,
                                        "spec_version": 4})))
    [r] = apply(sm, txn({"op": "create", "kind": "task", "spec_of": "s",
                         "obj": dict(task, id="u")}))
    assert r["error"]["code"] == "conflict" and sm.get("task", "u") is None
    for bad in ({"op": "create", "kind": "task", "spec_of": "other", "obj": dict(task, id="v")},
                {"op": "update", "kind": "task", "spec_of": "s", "obj": dict(task, id="v")},
                {"op": "create", "kind": "task", "spec_of": 5, "obj": dict(task, id="v")}):
        [r] = apply(sm, txn(bad))
        assert r["error"]["code"] == "invalid", bad


def test_the_store_sends_compact_operations_only_when_every_manager_applies_them():
    from flotilla.manager.store.store import Store
    store = Store()
    spec = {"replicas": 1, "task": {"container": {"image": "a"}}}
    store.sm.apply(codec.pack({"txns": [txn(Op.create("service", {
        "id": "s", "name": "web", "spec": spec, "spec_version": 1}))]}))
    service = store.get("service", "s")
    create = Op.create("task", {"id": "t", "service_id": "s", "spec": service["spec"]["task"],
                                "spec_version": 1, "status": {"state": "new"}})
    update = Op.update("service", dict(service, name="www"), version=service["version"])
    allowed = []
    store.patch_when(lambda _store: bool(allowed))
    assert not store._patches_allowed()         # e.g. a manager still runs 0.1
    allowed.append(True)
    store._patch_cache = (-1, False)            # (re-evaluated at the next index)
    assert store._patches_allowed()
    [by_ref, patch] = store._compact([create, update])
    assert by_ref["spec_of"] == "s" and "spec" not in by_ref["obj"]
    assert patch["op"] == "patch" and patch["set"] == {"name": "www"}


# -- applying is total: what cannot be applied is refused, the same everywhere ----------

def _good(i):
    return txn(Op.create("config", {"id": f"good{i}", "name": f"good-{i}"}))


MALFORMED = [
    "not a transaction",
    {"rid": ["a", "list"], "ts": 1.0, "ops": []},
    txn("not an operation"),
    txn(Op.delete("config", ["a", "list"])),
    txn(Op.create("config", {"id": "c1", "name": ["a", "list"]})),
    # Each of these used to fail half-way through changing the maps: the
    # config was stored, then the task's index or count raised.
    txn(Op.create("config", {"id": "c2", "name": "c2"}),
        Op.create("task", {"id": "t1", "node_id": {"a": "map"}})),
    txn(Op.create("config", {"id": "c3", "name": "c3"}),
        Op.create("task", {"id": "t2", "service_id": "s", "desired_state": "running",
                           "status": "up"})),
    # A task by reference to a service that has no spec.
    txn(Op.create("service", {"id": "s1", "name": "s1", "spec_version": 1}),
        {"op": "create", "kind": "task", "spec_of": "s1",
         "obj": {"id": "t3", "service_id": "s1", "spec_version": 1}}),
]


def test_a_transaction_that_cannot_be_applied_is_refused_and_changes_nothing():
    hub = EventHub()
    sm = StateMachine(hub)
    w = hub.watch()
    for i, bad in enumerate(MALFORMED):
        results = apply(sm, _good(2 * i), bad, _good(2 * i + 1))
        assert [r["ok"] for r in results] == [True, False, True], (bad, results)
        assert results[1]["error"]["code"] == "invalid"
        assert results[1]["error"]["message"].startswith("transaction refused")
    assert sm.index == 2 * len(MALFORMED)
    good = {f"good{i}" for i in range(2 * len(MALFORMED))}
    assert {c["id"] for c in sm.list("config")} == good
    assert sm.list("task") == [] and sm.list("service") == []
    assert sm.by_unique("config", "name", "c2") is None and sm.task_counts("s") == (0, 0)
    assert [e.id for e in w.next(0)] == [f"good{i}" for i in range(2 * len(MALFORMED))]


def test_a_failure_while_changing_the_maps_is_undone(monkeypatch):
    # Should changing the maps fail anyway (the checks before it missed
    # something), what the transaction had changed is put back.
    sm = StateMachine()
    apply(sm, txn(Op.create("config", {"id": "a", "name": "one"})),
          txn(Op.create("task", {"id": "t0", "service_id": "s", "node_id": "n",
                                 "desired_state": "running", "status": {"state": "running"}})))
    real_index = StateMachine._index

    def failing_index(self, kind, obj, old=None):
        if obj.get("id") == "t1":
            raise RuntimeError("index failed")
        return real_index(self, kind, obj, old)

    monkeypatch.setattr(StateMachine, "_index", failing_index)
    [r] = apply(sm, txn(Op.update("config", {"id": "a", "name": "renamed"}),
                        Op.delete("task", "t0"),
                        Op.create("task", {"id": "t1", "service_id": "s", "node_id": "n",
                                           "desired_state": "running",
                                           "status": {"state": "running"}})))
    assert not r["ok"] and "index failed" in r["error"]["message"]
    assert sm.index == 2
    assert sm.get("config", "a")["name"] == "one" and sm.get("task", "t1") is None
    assert sm.by_unique("config", "name", "one")["id"] == "a"
    assert sm.by_unique("config", "name", "renamed") is None
    assert [t["id"] for t in sm.by_index("task", "node_id", "n")] == ["t0"]
    assert sm.task_counts("s") == (1, 1)
    monkeypatch.setattr(StateMachine, "_index", real_index)
    [r] = apply(sm, txn(Op.update("config", {"id": "a", "name": "renamed"})))
    assert r["ok"] and r["index"] == 3


def test_an_entry_that_is_not_a_batch_is_refused_whole():
    sm = StateMachine()
    for payload in (b"\xc1", codec.pack(["txns"]), codec.pack({"txns": "x"}), b""):
        result = sm.apply(payload)
        assert result["ok"] is False and result["error"]["code"] == "refused", payload
    assert sm.index == 0
    [r] = apply(sm, _good(0))
    assert r["ok"]


def _scramble(rng, value, depth=0):
    """``value`` with a few parts replaced by values of other types."""
    pool = [None, 0, 7, 1.5, True, "", "x", "running", b"\x00", [], ["a"], {}, {"k": 1},
            {"state": "running"}]
    if depth > 3 or rng.random() < 0.15:
        return rng.choice(pool)
    if isinstance(value, dict):
        out = {k: _scramble(rng, v, depth + 1) if rng.random() < 0.3 else v
               for k, v in value.items()}
        if rng.random() < 0.1:
            out[rng.choice(["id", "name", "node_id", "status", "spec"])] = rng.choice(pool)
        return out
    if isinstance(value, list):
        return [_scramble(rng, v, depth + 1) if rng.random() < 0.3 else v for v in value]
    return value


def test_members_agree_on_every_entry_however_malformed():
    # Two members apply the same entries, a third of them scrambled: no
    # entry raises, and both end in the same state with the same answers.
    import random

    rng = random.Random(20240607)
    members = [StateMachine(), StateMachine()]
    entries = []
    for i in range(600):
        sid, tid = f"s{i % 7}", f"t{i % 23}"
        ops = rng.choice([
            [Op.create("service", {"id": sid, "name": sid, "spec_version": 1,
                                   "spec": {"task": {"image": "x"}}})],
            [Op.upsert("task", {"id": tid, "service_id": sid, "node_id": f"n{i % 3}",
                                "desired_state": "running", "status": {"state": "running"},
                                "spec": {"image": "x"}})],
            [Op.patch("task", tid, {"status": {"state": "failed"}}, unset=["node_id"])],
            [{"op": "create", "kind": "task", "spec_of": sid,
              "obj": {"id": f"r{i}", "service_id": sid, "spec_version": 1}}],
            [Op.delete("task", tid), Op.create("config", {"id": f"c{i}", "name": f"c{i % 5}"})],
        ])
        t = txn(*ops, rid=f"rid{i % 50}" if rng.random() < 0.2 else None, ts=float(i))
        if rng.random() < 0.35:
            t = _scramble(rng, t)
        entries.append(codec.pack({"txns": [t]}))
    answers = [[sm.apply(e) for e in entries] for sm in members]
    assert answers[0] == answers[1]
    assert sum(1 for a in answers[0] if not a[0]["ok"]) > 50
    a, b = members
    assert a.index == b.index and a.objects == b.objects
    assert a._unique == b._unique and a._indexes == b._indexes and a._counts == b._counts


def test_a_task_without_ports_can_be_updated():
    # Sharing the ports of a task's previous version used to raise when
    # neither version had any, half-way through the update.
    sm = StateMachine()
    task = {"id": "t", "service_id": "s", "spec": {"image": "x"}, "desired_state": "running"}
    apply(sm, txn(Op.create("task", task)))
    [r] = apply(sm, txn(Op.update("task", dict(task, desired_state="shutdown"), version=1)))
    assert r["ok"] and sm.get("task", "t")["desired_state"] == "shutdown"
    assert "ports" not in sm.get("task", "t") and sm.task_counts("s") == (0, 0)
