"""Replicated services: keep slots 1..N each with one runnable task.

``reconcile()`` is a pure function of the service, its tasks and the nodes;
it returns changes for the orchestrator to commit:
- a slot's task that ended, or sits on a node that is down, drained or
  removed, goes through the restart supervisor;
- a task running an older spec is replaced (the rolling updater refines
  this with batches and health gating);
- missing slots are created at the lowest free numbers; surplus slots are
  removed from the busiest nodes first, non-running tasks before running
  ones (desired state ``remove``).
"""

from __future__ import annotations

import collections

from ...common import taskmodel
from . import tasks as T


def reconcile(service: dict, tasks: list[dict], nodes: dict, restarts) -> list[tuple[str, dict]]:
    changes: list[tuple[str, dict]] = []
    by_slot: dict[int, list[dict]] = collections.defaultdict(list)
    for t in tasks:
        if taskmodel.runnable(t):
            by_slot[t["slot"]].append(t)
    live: dict[int, dict] = {}
    for slot, ts in by_slot.items():
        ts.sort(key=lambda t: (t.get("created_at") or 0, t["id"]))
        for extra in ts[:-1]:
            changes.append(("update", T.with_desired(extra, "shutdown")))
        live[slot] = ts[-1]

    for slot, t in list(live.items()):
        node = nodes.get(t["node_id"]) if t["node_id"] else None
        if T.finished(t):
            changes += restarts.restart(service, t, f"task {t['status']['state']}", nodes)
        elif t["node_id"] and T.node_unusable(node):
            changes += restarts.restart(service, t, T.node_unusable(node), nodes)
        elif T.is_dirty(t, service):
            changes.append(("update", T.with_desired(t, "shutdown")))
            changes.append(("create", T.new_task(service, slot=slot)))

    replicas = service["spec"]["replicas"]
    if len(live) < replicas:
        slot = 0
        for _ in range(replicas - len(live)):
            slot += 1
            while slot in live:
                slot += 1
            changes.append(("create", T.new_task(service, slot=slot)))
            live[slot] = None
    elif len(live) > replicas:
        for slot in _surplus(live, len(live) - replicas):
            for t in by_slot[slot]:
                changes.append(("update", T.with_desired(t, "remove")))
    return _merge(changes)


def _surplus(live: dict[int, dict], count: int) -> list[int]:
    """Slots to remove: running tasks are ordered first so that, per node,
    non-running tasks get the highest copy numbers; the highest copy numbers
    (busiest nodes) go first, and among equals the highest slot numbers."""
    order = sorted(live.items(), key=lambda kv: (kv[1]["status"]["state"] != "running", kv[0]))
    per_node: dict = collections.Counter()
    ranked = []
    for slot, t in order:
        copy = per_node[t["node_id"]]
        per_node[t["node_id"]] += 1
        ranked.append((copy, t["status"]["state"] != "running", slot))
    ranked.sort(reverse=True)
    return [slot for _, _, slot in ranked[:count]]


def _merge(changes):
    """Keep the last update per task id (a task may be touched twice)."""
    seen = {}
    out = []
    for action, obj in changes:
        if action == "update":
            if obj["id"] in seen:
                out[seen[obj["id"]]] = (action, obj)
                continue
            seen[obj["id"]] = len(out)
        out.append((action, obj))
    return out
