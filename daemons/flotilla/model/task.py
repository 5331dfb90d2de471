"""The task model shared by managers and agents.

Task states are ordered and only move forward (values as in SwarmKit, so
comparing them is meaningful)::

    new < pending < assigned < accepted < preparing < ready < starting
        < running < complete < shutdown < failed < rejected < remove < orphaned

Who moves what:
- the orchestrator creates a task in ``pending`` with a desired state of
  ``running`` (``ready`` while a restart delay runs, or while its service's
  dependencies do not hold: then the task carries ``"gated": True``), and
  sets the desired state to ``shutdown`` to stop it or ``remove`` to stop
  and delete it;
- the scheduler moves ``pending`` -> ``assigned`` and sets ``node_id``;
- the agent moves ``assigned`` -> ... -> ``running`` (never past the desired
  state) and then to ``complete`` / ``failed`` / ``shutdown``; an error
  before ``starting`` is ``rejected``;
- a removed node's tasks become ``orphaned``.

A task (store object and what agents receive)::

    {
      "id": str, "service_id": str, "service_name": str,
      "slot": int | None,            # replicated services: 1..N
      "node_id": str | None,         # set by the scheduler (global: preset)
      "spec": TaskSpec,              # copied from the service at creation
      "spec_version": int,
      "ports": [{"target": 80, "published": 8080, "protocol": "tcp"}],   # host mode
      "desired_state": "running",
      "service_labels": {str: str},  # only when the container's templates
                                     # read {{.Service.Labels}}: as at creation
      "status": {"state": "pending", "message": str, "err": str | None,
                 "exit_code": int | None, "container_id": str | None,
                 "timestamp": float},
    }

TaskSpec::

    {
      "container": {
        "image": str,
        "command": [str] | None,      # replaces the image's ENTRYPOINT
        "args": [str] | None,         # replaces the image's CMD
        "env": ["K=V", ...],
        "labels": {str: str},
        "workdir": str | None, "user": str | None, "hostname": str | None,
        "mounts": [{"type": "bind" | "volume" | "tmpfs", "source": str,
                    "target": str, "readonly": bool}],
        "healthcheck": {                  # None: the image's own
            # exactly one of test (run by the engine), http, tcp (probed by the agent)
            "test": ["CMD-SHELL", "..."] | ["CMD", ...] | ["NONE"] | None,
            "http": {"port": int, "path": "/...", "status": ["200-399", "204", ...]} | None,
            "tcp": {"port": int} | None,  # keys absent in specs stored before http/tcp
            "interval": float, "timeout": float, "retries": int,
            "start_period": float} | None,
        "stop_grace_period": float,   # seconds, default 10
        "stop_signal": str | None,
        "init": bool | None,
      },
      "resources": {"limits": {"cpus": float, "memory": int},
                    "reservations": {"cpus": float, "memory": int}},
      "restart": {"condition": "any" | "on-failure" | "none", "delay": float,
                  "max_attempts": int, "window": float},
      "placement": {"constraints": [str], "preferences": [{"spread": str}],
                    "max_replicas": int},
    }

Container labels set by the agent: ``flotilla.node.id``, ``flotilla.task.id``,
``flotilla.service.id``, ``flotilla.service.name``, ``flotilla.task.slot``.
"""

from __future__ import annotations

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
STATES = tuple(sorted(STATE_VALUES, key=STATE_VALUES.get))

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
