"""Building tasks from services, and small predicates over tasks and nodes."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ...common import template
from ...model import task as taskmodel
from ..store.store import new_id

# A task as the orchestrator reads it: one it built (a ``StoredTask``) or the
# store's copy (a plain dict); changes copy a task, they never mutate it.
Task = Mapping[str, Any]
# ("create" | "update", the task to write)
Change = tuple[str, Task]


def new_task(service: dict, *, slot: int | None = None, node_id: str | None = None,
             desired: str = "running", now: float | None = None) -> taskmodel.StoredTask:
    spec = service["spec"]
    task: taskmodel.StoredTask = {
        "id": new_id(),
        "service_id": service["id"],
        "service_name": service["name"],
        "slot": slot,
        "node_id": node_id,
        "spec": spec["task"],
        "spec_version": service["spec_version"],
        "ports": taskmodel.task_ports(spec),
        "desired_state": desired,
        # A task on networks waits for its addresses (the allocator).
        "status": (taskmodel.status("new", "allocating network addresses", now=now)
                   if spec["task"].get("networks") else
                   taskmodel.status("pending", "pending task scheduling", now=now)),
    }
    if template.uses_labels(spec["task"].get("container") or {}):
        # what {{.Service.Labels}} reads on the node (only then: most
        # tasks would carry them for nothing)
        task["service_labels"] = dict(spec.get("labels") or {})
    return task


def with_desired(task: Task, desired: str) -> dict:
    return dict(task, desired_state=desired)


def is_dirty(task: Task, service: dict) -> bool:
    """The task runs an older spec than the service's (replicas do not count)."""
    return (task["spec"] != service["spec"]["task"]
            or task["ports"] != taskmodel.task_ports(service["spec"]))


def node_unusable(node: dict | None) -> str | None:
    """Why tasks on this node must move elsewhere, or None."""
    if node is None:
        return "node removed"
    if node["status"]["state"] == "down":
        return "node down"
    if node["spec"]["availability"] == "drain":
        return "node drained"
    return None


def node_gone(node: dict | None) -> bool:
    """The node is down or removed: no agent there acts on its tasks now."""
    return node_unusable(node) in ("node down", "node removed")


def finished(task: Task) -> bool:
    return taskmodel.finished(task["status"]["state"])
