"""Global services: one runnable task on every eligible node.

A node is eligible when it is not down, not drained and matches the
service's constraints. A paused node keeps its task but gets no new one.
Tasks are created with the node already chosen; the scheduler only checks
that the node can take them. Nodes that join later get their task as soon
as they are known. Tasks running an older spec are left to the rolling
updater.
"""

from __future__ import annotations

import collections

from ...model import task as taskmodel
from . import tasks as T
from .replicated import _merge, _pair


def reconcile(service: dict, tasks: list[dict], nodes: dict, restarts,
              matches) -> list[T.Change]:
    """``matches(node)`` tells whether the node satisfies the constraints."""
    changes: list[T.Change] = []
    by_node: dict[str, list[dict]] = collections.defaultdict(list)
    for t in tasks:
        if taskmodel.runnable(t):
            by_node[t["node_id"]].append(t)
    for node_id, ts in by_node.items():
        ts.sort(key=lambda t: (t.get("created_at") or 0, t["id"]))
        node = nodes.get(node_id)
        eligible = node is not None and T.node_unusable(node) is None and matches(node)
        if not eligible:
            for t in ts:
                changes.append(("update", T.with_desired(t, "shutdown")))
            continue
        keep, t = _pair(ts, service)
        for extra in ts:
            if extra is not t and extra not in keep:
                changes.append(("update", T.with_desired(extra, "shutdown")))
        if T.finished(t):
            changes += restarts.restart(service, t, f"task {t['status']['state']}", nodes)
    for node in nodes.values():
        if node["id"] in by_node or T.node_unusable(node) is not None:
            continue
        if node["spec"]["availability"] == "pause" or not matches(node):
            continue
        changes.append(("create", T.new_task(service, node_id=node["id"])))
    return _merge(changes)
