"""Service dependencies: when a service's new tasks may start.

A service names the services it depends on (``depends_on``), each with a
condition. While some condition does not hold, the orchestrator creates the
service's new tasks *gated*: desired state ``ready`` and ``"gated": True``.
The scheduler places them and the agent prepares them (image present,
container created) but does not start them; their status message says what
they wait for, e.g. ``waiting for dependency db (healthy): 1/2 tasks
running``. Once every condition holds, the orchestrator raises exactly the
gated tasks to ``running`` (a task waiting in ``ready`` for its restart
delay is not gated, and is judged when its delay is over). A task that has
started is never stopped because a dependency fails later, as in Compose.

Conditions are judged over the dependency's *current* tasks: runnable
(desired ``ready`` or ``running``) and of its current spec.

- ``started``: every current task has started its container (``starting``,
  ``running`` or ``complete``) and none has failed;
- ``healthy``: every current task is ``running``, which means healthy where
  the task has a healthcheck;
- ``completed``: every current task is ``complete`` (exited 0): one-shot
  services, with restart condition ``on-failure`` or ``none``.

A replicated dependency also needs as many current tasks as it has
replicas; with 0 replicas every condition holds, ``healthy`` included:
there is nothing to wait for, and a dependency scaled to 0 must not hold
its dependents back for ever. A global dependency needs at least one
current task. A dependency on a service that does not exist does not hold.

Everything here is a pure function of services and tasks.
"""

from __future__ import annotations

from typing import Callable, Iterable

from ...model import task as taskmodel
from . import tasks as T

CONDITIONS = ("started", "healthy", "completed")
PREFIX = "waiting for dependency "
RELEASED = "dependencies met"

_GOOD = {"started": ("starting", "running", "complete"),
         "healthy": ("running",),
         "completed": ("complete",)}
_WORD = {"started": "started", "healthy": "running", "completed": "complete"}
_FAILED = ("failed", "rejected")


# -- conditions ------------------------------------------------------------------------
def current_tasks(service: dict, tasks: Iterable[dict]) -> list[dict]:
    """The service's runnable tasks of its current spec."""
    return [t for t in tasks if taskmodel.runnable(t) and not T.is_dirty(t, service)]


def progress(condition: str, service: dict, tasks: Iterable[dict]) -> tuple[bool, str]:
    """Whether ``condition`` holds for ``service`` given its tasks, and how
    far it is, for people: ``1/2 tasks running, 1 failed``."""
    current = current_tasks(service, tasks)
    good = sum(1 for t in current if t["status"]["state"] in _GOOD[condition])
    failed = sum(1 for t in current if t["status"]["state"] in _FAILED)
    spec = service["spec"]
    if spec["mode"] == "replicated":
        want = spec["replicas"]
        met = good == len(current) and len(current) >= want
        total = max(want, len(current))
    else:
        met = bool(current) and good == len(current)
        total = len(current)
    text = f"{good}/{total} tasks {_WORD[condition]}"
    if failed:
        text += f", {failed} failed"
    return met, text


def waiting(depends_on: list[dict],
            lookup: Callable[[str], tuple[dict | None, list[dict]]]) -> str | None:
    """The status message of a gated task, or None when every dependency holds.

    ``lookup(name)`` returns the service of that name (None if there is
    none) and its tasks.
    """
    unmet = []
    for dep in depends_on:
        name, condition = dep["service"], dep["condition"]
        service, tasks = lookup(name)
        if service is None:
            unmet.append(f"{name} ({condition}): service {name} does not exist")
            continue
        met, text = progress(condition, service, tasks)
        if not met:
            unmet.append(f"{name} ({condition}): {text}")
    if not unmet:
        return None
    more = f" (and {len(unmet) - 1} more)" if len(unmet) > 1 else ""
    return PREFIX + unmet[0] + more


# -- gating tasks -----------------------------------------------------------------------
def gated(task: dict) -> bool:
    """Held back by dependencies, to be raised to ``running`` by the orchestrator."""
    return bool(task.get("gated")) and task["desired_state"] == "ready"


def hold(task: T.Task, message: str) -> dict:
    """The task gated: desired ``ready``, marked, with ``message``."""
    return dict(task, desired_state="ready", gated=True,
                status=dict(task["status"], message=message))


def refresh(task: dict, message: str) -> dict | None:
    """A gated task with an up-to-date message, or None if it is fine as it
    is. A message someone else wrote while the task is pending is kept: it
    is the scheduler's reason why the task fits nowhere, and more urgent."""
    st = task["status"]
    if st["message"] == message or T.finished(task):
        return None
    if st["state"] == "pending" and not st["message"].startswith(PREFIX):
        return None
    return dict(task, status=dict(st, message=message))


def release(task: dict) -> dict:
    """The gated task raised to ``running``."""
    new = {k: v for k, v in task.items() if k != "gated"}
    new["desired_state"] = "running"
    if task["status"]["message"].startswith(PREFIX):
        new["status"] = dict(task["status"], message=RELEASED)
    return new


def gate(changes: list[T.Change], tasks: list[dict],
         message: str | None) -> list[T.Change]:
    """Apply the dependencies' verdict to one reconciliation of a service.

    ``message`` is what ``waiting()`` said (None: every dependency holds).
    Unmet: tasks the reconciliation creates to run are created gated, and
    gated tasks get the current message. Met: gated tasks are raised to
    ``running``. Tasks the reconciliation already changes are left to it.
    """
    touched = {obj["id"] for action, obj in changes if action == "update"}
    out: list[T.Change] = []
    for action, obj in changes:
        if action == "create" and message is not None and obj["desired_state"] == "running":
            obj = hold(obj, message)
        out.append((action, obj))
    for t in tasks:
        if t["id"] in touched or not gated(t):
            continue
        new = release(t) if message is None else refresh(t, message)
        if new is not None:
            out.append(("update", new))
    return out


# -- the dependency graph ------------------------------------------------------------------
def graph(services: Iterable[dict]) -> dict[str, list[str]]:
    """Service name -> the names it depends on."""
    return {s["name"]: [d["service"] for d in s["spec"].get("depends_on") or ()]
            for s in services}


def dependents(services: Iterable[dict]) -> dict[str, set[str]]:
    """Service name -> ids of the services that depend on it (the name may
    belong to no service)."""
    out: dict[str, set[str]] = {}
    for s in services:
        for d in s["spec"].get("depends_on") or ():
            out.setdefault(d["service"], set()).add(s["id"])
    return out


def find_cycle(deps: dict[str, list[str]], start: str) -> list[str] | None:
    """A dependency cycle through ``start`` as the names along it, from
    ``start`` back to it (``[a, b, a]``), or None."""
    seen = {start}
    path = [start]
    stack = [iter(deps.get(start, ()))]
    while stack:
        name = next(stack[-1], None)
        if name is None:
            stack.pop()
            path.pop()
            continue
        if name == start:
            return path + [name]
        if name in seen:
            continue
        seen.add(name)
        path.append(name)
        stack.append(iter(deps.get(name, ())))
    return None


def cycle_error(spec: dict, services: Iterable[dict]) -> str | None:
    """``dependency cycle a -> b -> a`` if ``spec`` (new, or replacing the
    stored service of its name) would close a cycle, else None."""
    deps = graph(s for s in services if s["name"] != spec["name"])
    deps[spec["name"]] = [d["service"] for d in spec.get("depends_on") or ()]
    cycle = find_cycle(deps, spec["name"])
    return "dependency cycle " + " -> ".join(cycle) if cycle else None
