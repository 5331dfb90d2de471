"""Replicated services: keep slots 1..N each with one runnable task.

``reconcile()`` is a pure function of the service, its tasks and the nodes;
it returns changes for the orchestrator to commit:
- a slot's task that ended, or sits on a node that is down or removed,
  goes through the restart supervisor;
- a task on a drained node is replaced *first*: a new task for the same slot
  is placed elsewhere and the old one stops only once the new one runs (or
  after ``DRAIN_WAIT`` seconds if it fits nowhere, ``DRAIN_START_WAIT`` if
  it was placed but never starts), so a drain never takes a service below
  its replica count where capacity allows, however slowly the other nodes
  start containers;
- tasks running an older spec are left to the rolling updater
  (``updater.py``), which replaces them in batches; while it starts a
  replacement first, the slot holds both tasks (see ``_pair``);
- missing slots are created at the lowest free numbers; surplus slots are
  removed from the busiest nodes first, non-running tasks before running
  ones (desired state ``remove``).
"""

from __future__ import annotations

import collections
import time

from ...model import task as taskmodel
from . import tasks as T

DRAIN_WAIT = 30.0          # the replacement fits nowhere
DRAIN_START_WAIT = 300.0   # it was placed: its node pulls and starts it


def _draining(task: T.Task, nodes: dict) -> bool:
    """On a drained node that is still up: worth keeping until replaced."""
    node = nodes.get(task["node_id"]) if task["node_id"] else None
    return (node is not None and T.node_unusable(node) == "node drained"
            and task["status"]["state"] == "running")


def _handoff(olds, new, nodes, now) -> bool:
    """Keep the old tasks of a slot running while their replacement starts."""
    if not olds or not all(_draining(t, nodes) for t in olds):
        return False
    if new["node_id"] and T.node_unusable(nodes.get(new["node_id"])):
        return False
    if new["status"]["state"] == "running" or T.finished(new):
        return False
    waited = now - (new.get("created_at") or now)
    return waited < (DRAIN_START_WAIT if new["node_id"] else DRAIN_WAIT)


def _pair(ts: list[dict], service: dict) -> tuple[list[dict], dict]:
    """A slot's (or node's) runnable tasks, oldest first -> (tasks to keep
    besides the live one, the live one).

    The rolling updater's start-first replacement names the task it
    replaces; both stay until the updater stops the old one. If the
    replacement ended, or runs a spec the service no longer has (the update
    was rolled back) while the old one runs the service's spec, the old one
    stays live and the replacement goes."""
    newest = ts[-1]
    replaced = next((t for t in ts[:-1] if t["id"] == newest.get("replaces")), None)
    if replaced is None or T.finished(replaced):
        return [], newest
    if T.finished(newest) or (T.is_dirty(newest, service) and not T.is_dirty(replaced, service)):
        return [], replaced
    return [replaced], newest


def reconcile(service: dict, tasks: list[dict], nodes: dict, restarts,
              now: float | None = None) -> list[T.Change]:
    now = time.time() if now is None else now
    changes: list[T.Change] = []
    by_slot: dict[int, list[dict]] = collections.defaultdict(list)
    for task in tasks:
        if taskmodel.runnable(task):
            by_slot[task["slot"]].append(task)
    live: dict[int, T.Task] = {}
    for slot, ts in by_slot.items():
        ts.sort(key=lambda t: (t.get("created_at") or 0, t["id"]))
        keep, current = _pair(ts, service)
        if not keep and current is ts[-1] and _handoff(ts[:-1], ts[-1], nodes, now):
            keep = ts[:-1]
        for extra in ts:
            if extra is not current and extra not in keep:
                changes.append(("update", T.with_desired(extra, "shutdown")))
        live[slot] = current

    for slot, t in list(live.items()):
        node = nodes.get(t["node_id"]) if t["node_id"] else None
        if T.finished(t):
            changes += restarts.restart(service, t, f"task {t['status']['state']}", nodes)
        elif _draining(t, nodes):
            replacement = T.new_task(service, slot=slot, now=now)
            replacement["status"]["message"] = "replacing a task on a drained node"
            changes.append(("create", replacement))
        elif t["node_id"] and T.node_unusable(node):
            changes += restarts.restart(service, t, T.node_unusable(node), nodes)

    replicas = service["spec"]["replicas"]
    if len(live) < replicas:
        slot = 0
        for _ in range(replicas - len(live)):
            slot += 1
            while slot in live:
                slot += 1
            new = T.new_task(service, slot=slot)
            changes.append(("create", new))
            live[slot] = new
    elif len(live) > replicas:
        for slot in _surplus(live, len(live) - replicas):
            for t in by_slot[slot]:
                changes.append(("update", T.with_desired(t, "remove")))
    return _merge(changes)


def _surplus(live: dict[int, T.Task], count: int) -> list[int]:
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
