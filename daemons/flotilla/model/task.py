"""The task model shared by managers and agents.

Task states are ordered and only move forward (values as in SwarmKit, so
comparing them is meaningful)::

    new < pending < assigned < accepted < preparing < ready < starting
        < running < complete < shutdown < failed < rejected < remove < orphaned

Who moves what:
- the orchestrator creates a task in ``pending`` (``new`` if its service is
  on networks: the allocator gives it its addresses and moves it to
  ``pending``) with a desired state of
  ``running`` (``ready`` while a restart delay runs, or while its service's
  dependencies do not hold: then the task carries ``"gated": True``), and
  sets the desired state to ``shutdown`` to stop it or ``remove`` to stop
  and delete it;
- the scheduler moves ``pending`` -> ``assigned`` and sets ``node_id``;
- the agent moves ``assigned`` -> ... -> ``running`` (never past the desired
  state) and then to ``complete`` / ``failed`` / ``shutdown``; an error
  before ``starting`` is ``rejected``;
- a removed node's tasks become ``orphaned``.

A task's shape is defined once: ``StoredTask`` below is the store object
(and what agents receive), with its ``status`` a ``TaskStatus`` (what agents
report, ``model/taskapi.py``), its ``ports`` ``TaskPort``s and its ``spec``
the service's ``TaskSpec`` (``model/specs.py``), copied at creation;
``Task`` and ``TaskDetail`` (``model/taskapi.py``) are the API's views of
it, each field naming where in the stored task it is read (``viewer``).
This module imports no pydantic, so the CLI can read the states cheaply.

Container labels set by the agent: ``flotilla.node.id``, ``flotilla.task.id``,
``flotilla.service.id``, ``flotilla.service.name``, ``flotilla.task.slot``.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Optional, TypedDict

STATE_VALUES = {
    "new": 0,
    "pending": 64,
    "assigned": 192,
    "accepted": 256,
    "preparing": 320,
    "ready": 384,
    "starting": 448,
    "running": 512,
    "complete": 576,
    "shutdown": 640,
    "failed": 704,
    "rejected": 768,
    "remove": 800,
    "orphaned": 832,
}
STATES = tuple(sorted(STATE_VALUES, key=STATE_VALUES.__getitem__))

LABEL_NODE = "flotilla.node.id"
LABEL_TASK = "flotilla.task.id"
LABEL_SERVICE = "flotilla.service.id"
LABEL_SERVICE_NAME = "flotilla.service.name"
LABEL_SLOT = "flotilla.task.slot"

DEFAULT_STOP_GRACE = 10.0

# How the scheduler's status message of a pending task that fits on no node
# begins: "no suitable node (2 nodes lack 512 MB memory; ...)". Clients (the
# CLI's wait) rely on it to tell such a task from one not yet scheduled.
UNSCHEDULABLE = "no suitable node"


def value(state: str) -> int:
    return STATE_VALUES[state]


def before(a: str, b: str) -> bool:
    return STATE_VALUES[a] < STATE_VALUES[b]


def at_least(a: str, b: str) -> bool:
    return STATE_VALUES[a] >= STATE_VALUES[b]


def finished(state: str) -> bool:
    """The task will never run (again): complete, shutdown, failed, ..."""
    return STATE_VALUES[state] > STATE_VALUES["running"]


def runnable(task: dict) -> bool:
    """Counts toward the service's replicas: desired state at most running."""
    return STATE_VALUES[task["desired_state"]] <= STATE_VALUES["running"]


def active(task: dict) -> bool:
    """Holds resources on its node (what the scheduler counts): desired state
    at most running and not yet finished."""
    return runnable(task) and not finished(task["status"]["state"])


# -- the stored task -------------------------------------------------------------------

class _StoredTask(TypedDict):
    id: str
    service_id: str
    service_name: str
    slot: Optional[int]             # replicated services: 1..N
    node_id: Optional[str]          # set by the scheduler (global: preset)
    spec: dict                      # the service's TaskSpec, canonical, as at creation
    spec_version: int
    ports: list[dict]               # TaskPort
    desired_state: str
    status: dict                    # TaskStatus


class StoredTask(_StoredTask, total=False):
    """A task as the store keeps it and agents receive it (made by the
    orchestrator, ``manager/orchestrator/tasks.py``)."""
    service_labels: dict[str, str]  # only when the container's templates read
                                    # {{.Service.Labels}}: as at creation
    gated: bool                     # held at ``ready`` by its service's dependencies
    networks: list[dict]            # its addresses: [{network_id, addr, aliases}]
                                    # (the allocator, ``model/network.py``)
    version: int
    created_at: float
    updated_at: float


def status(state: str, message: str = "", *, err: str | None = None,
           exit_code: int | None = None, container_id: str | None = None,
           now: float | None = None) -> dict:
    """A ``TaskStatus`` as the store keeps it."""
    return {"state": state, "message": message, "err": err, "exit_code": exit_code,
            "container_id": container_id, "timestamp": now if now is not None else time.time()}


def task_ports(service_spec: dict) -> list[dict]:
    """The ``TaskPort`` list of a service's tasks."""
    return [{"target": p["target"], "published": p["published"], "protocol": p["protocol"]}
            for p in service_spec.get("endpoint", {}).get("ports", [])]


# -- the API's views -------------------------------------------------------------------

_REQUIRED: Any = object()


class From:
    """Where a view's field is read in the stored task: a path of keys
    (the field's own name when none is given); ``default`` when the last
    key may be absent."""
    __slots__ = ("path", "default")

    def __init__(self, *path: str, default: Any = _REQUIRED):
        self.path = path
        self.default = default


class Given:
    """A view's field the caller supplies (it is not in the task)."""


_viewers: dict[Any, Callable[..., dict]] = {}


def _source(name: str, metadata: list) -> From | Given:
    for m in metadata:
        if isinstance(m, (From, Given)):
            return m
    return From(name)


def _compile(model: Any) -> Callable[..., dict]:
    """The view's function, built once from the model's fields (as
    dataclasses build their methods): a listing reads one view per task."""
    items, given, env = [], [], {}
    for i, (name, f) in enumerate(model.model_fields.items()):
        src = _source(name, f.metadata)
        if isinstance(src, Given):
            given.append(name)
            items.append(f"{name!r}: {name}")
            continue
        *head, last = src.path
        expr = "task" + "".join(f"[{k!r}]" for k in head)
        if src.default is _REQUIRED:
            expr += f"[{last!r}]"
        else:
            env[f"_d{i}"] = src.default
            expr += f".get({last!r}, _d{i})"
        items.append(f"{name!r}: {expr}")
    params = "".join(f", {name}" for name in given)
    code = f"def view(task, *{params}):\n    return {{" + ", ".join(items) + "}\n"
    exec(compile(code, f"<view of {model.__name__}>", "exec"), env)
    return env["view"]


def viewer(model: Any) -> Callable[..., dict]:
    """The function that shows a task (a ``StoredTask``) as ``model`` does:
    ``model`` is a pydantic model whose fields are marked with ``From``
    (or read under their own name) and ``Given`` (keyword arguments of the
    function); the view's fields are in the model's order."""
    fn = _viewers.get(model)
    if fn is None:
        fn = _viewers[model] = _compile(model)
    return fn
