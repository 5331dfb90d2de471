"""One task's state machine on the node.

A controller drives its task toward ``min(desired state, running)``::

    assigned -> accepted -> preparing -> ready -> starting -> running
                               |           |          |          |
                               +-> rejected (image, templates, mounts, create or
                                            start error)
                                                      +----------+-> complete (exit 0)
                                                                 +-> failed (non-zero exit,
                                                                     out of memory, unhealthy,
                                                                     container removed)
    any non-terminal state -> shutdown (desired state shutdown or higher)

- preparing: the image is present (pulled if missing and allowed); an
  existing container of this task (after an agent restart) is adopted
  instead of creating a second one;
- ready: the container is created; a task whose desired state is ``ready``
  waits here until its desired state is raised to ``running``;
- starting: the container was started and its healthcheck (the spec's or the
  image's) has not passed yet;
- running: the container runs and has no healthcheck or is healthy.

An engine healthcheck (a ``test``, or the image's) is read from the
container's state; an ``http`` or ``tcp`` one is probed by the agent
(``health.Prober``): the controller watches the task while its container
runs, and the prober has the task synced again when its health changes.

States only move forward; every state reached is published once, including
the intermediate ones when several steps happen at once. Nothing is ever
restarted here: a finished task stays finished, restarting is the
orchestrator's job (it creates a new task).

``sync()`` runs on a worker thread and is never run concurrently for the
same task: it observes the container, takes as many steps as it can, and
returns when it has to wait for something (a container event, a desired
state change).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Callable

from ..model import task as taskmodel
from ..model.task import at_least, before, finished
from .executor import (APIError, ImageUnavailable, NetworkUnavailable, TemplateError,
                       container_address, grace_seconds, log_timestamp, probed)

if TYPE_CHECKING:
    from .executor import DockerExecutor
    from .health import Prober

log = logging.getLogger(__name__)

CHAIN = ("accepted", "preparing", "ready", "starting", "running")
MESSAGES = {
    "assigned": "assigned",
    "accepted": "accepted",
    "preparing": "preparing",
    "ready": "prepared",
    "starting": "starting",
    "running": "started",
    "complete": "finished",
    "shutdown": "shutdown",
}
MAX_STEPS = 16
_RUNNING_STATES = ("running", "paused", "restarting")


def new_status(state: str, message: str = "", err: str | None = None,
               exit_code: int | None = None, container_id: str | None = None) -> dict:
    return {"state": state, "message": message, "err": err, "exit_code": exit_code,
            "container_id": container_id, "timestamp": time.time()}


def initial_status(task: dict | None, stored: dict | None = None) -> dict:
    """The status a controller starts from: the later of the stored one and
    the one the task carries, never below ``assigned``."""
    best = new_status("assigned", MESSAGES["assigned"])
    for candidate in ((task or {}).get("status"), stored):
        if candidate and candidate.get("state") in taskmodel.STATE_VALUES \
                and before(best["state"], candidate["state"]):
            best = {**new_status(candidate["state"]), **candidate}
    return best


def health_of(state: dict) -> str | None:
    """``starting`` / ``healthy`` / ``unhealthy``, or None without a healthcheck."""
    return (state.get("Health") or {}).get("Status")


def _explain(exc: Exception) -> str:
    text = getattr(exc, "explanation", None) or str(exc)
    return text if isinstance(text, str) else text.decode(errors="replace")


class Controller:
    """The state machine of one task (or of a stray container to remove,
    when built without a task)."""

    def __init__(self, task_id: str, executor: DockerExecutor,
                 publish: Callable[[Controller, dict], None], task: dict | None = None,
                 status: dict | None = None, prober: Prober | None = None) -> None:
        self.id = task_id
        self._executor = executor
        self._prober = prober
        self._publish = publish
        self._lock = threading.Lock()
        self._task = task
        self._dropped = task is None
        self.status = initial_status(task, status)
        self.container_id: str | None = self.status.get("container_id")
        self.extra_containers: list[str] = []    # duplicates found for this task, to remove
        self.forgotten = False                   # removal finished: drop the controller
        self.seen: tuple | None = None           # (container id, state, health) last observed
        # scheduling, owned by the worker
        self.queued = False
        self.dirty = False

    # -- updates from the worker (any thread) ---------------------------------------
    @property
    def state(self) -> str:
        return self.status["state"]

    @property
    def task(self) -> dict | None:
        with self._lock:
            return self._task

    @property
    def dropped(self) -> bool:
        with self._lock:
            return self._dropped

    def update(self, task: dict) -> None:
        """A new version of the task (desired state, spec); un-drops it."""
        with self._lock:
            self._task = task
            self._dropped = False

    def drop(self) -> None:
        """The task is no longer wanted here: stop and remove its container."""
        with self._lock:
            self._dropped = True

    def _snapshot(self) -> tuple[dict | None, bool]:
        with self._lock:
            return self._task, self._dropped

    def settled(self) -> bool:
        """Nothing to do until the container or the task changes."""
        task, dropped = self._snapshot()
        if dropped or task is None or self.extra_containers:
            return False
        desired = task["desired_state"]
        if at_least(desired, "shutdown"):
            return finished(self.state)
        if finished(self.state):
            return True
        target = "ready" if desired == "ready" else "running"
        if before(self.state, target):
            # still starting (e.g. waiting for health): settled only if the
            # container was seen and nothing else is expected from us
            return self.state == "starting" and self.seen is not None
        return True

    # -- reporting ------------------------------------------------------------------
    def _emit(self, state: str, message: str, err: str | None = None,
              exit_code: int | None = None) -> None:
        self.status = new_status(state, message, err, exit_code, self.container_id)
        self._publish(self, dict(self.status))

    def _report(self, state: str, message: str | None = None, err: str | None = None,
                exit_code: int | None = None) -> bool:
        """Move to ``state`` (publishing any skipped step of the normal chain
        first); a state not above the current one is ignored."""
        if not before(self.state, state):
            return False
        if state in CHAIN:
            for step in CHAIN:
                if step == state:
                    break
                if before(self.state, step):
                    self._emit(step, MESSAGES[step])
        self._emit(state, message if message is not None else MESSAGES.get(state, state),
                   err, exit_code)
        return True

    # -- the state machine -----------------------------------------------------------
    def sync(self, stopping: Callable[[], bool] = lambda: False) -> None:
        for _ in range(MAX_STEPS):
            if stopping() or self.forgotten:
                return
            if not self._step():
                return

    def _step(self) -> bool:
        """Take the next step; True if another step may follow at once."""
        task, dropped = self._snapshot()
        self._remove_extras()
        if dropped or task is None or task["desired_state"] == "remove":
            self._teardown(task)
            return False
        desired = task["desired_state"]
        if at_least(desired, "shutdown"):
            self._shutdown(task)
            return False
        if finished(self.state):
            return False
        if before(self.state, "preparing"):
            self._report("preparing")
            return True
        if before(self.state, "ready"):
            return self._prepare(task)
        return self._observe(task)

    def _prepare(self, task: dict) -> bool:
        found = self._executor.find(self.id)
        if found:
            keep = next((c for c in found if c.get("State") == "running"), found[0])
            self.container_id = keep["Id"]
            self.extra_containers = [c["Id"] for c in found if c["Id"] != keep["Id"]]
            self._remove_extras()
            self._report("ready", "adopted existing container")
            return True
        image = task["spec"]["container"]["image"]
        try:
            self._executor.ensure_image(image)
        except ImageUnavailable as exc:
            self._report("rejected", f"image {image} unavailable", err=str(exc))
            return False
        try:
            self.container_id = self._executor.create(task)
        except APIError as exc:
            self._report("rejected", "creating the container failed", err=_explain(exc))
            return False
        except TemplateError as exc:
            self._report("rejected", "expanding the spec's templates failed", err=str(exc))
            return False
        except NetworkUnavailable as exc:
            self._report("rejected", "network unavailable", err=str(exc))
            return False
        self._report("ready")
        return True

    def _find_container(self) -> dict | None:
        info = self._executor.inspect(self.container_id) if self.container_id else None
        if info is None:
            found = self._executor.find(self.id)
            if found:
                self.container_id = found[0]["Id"]
                info = self._executor.inspect(self.container_id)
        return info

    def _observe(self, task: dict) -> bool:
        info = self._find_container()
        if info is None:
            self.seen = None
            self._unwatch()
            if self.state == "ready":
                self._report("rejected", "container removed before it started",
                             err="task: container removed")
            else:
                self._report("failed", "container removed", err="task: container removed")
            return False
        st = info["State"]
        health = health_of(st)
        self.seen = (info["Id"], st.get("Status"), health)
        desired = task["desired_state"]
        status = st.get("Status")
        if status == "created":
            if self.state == "ready" and desired == "running":
                try:
                    self._executor.start(info["Id"])
                except APIError as exc:
                    self._report("rejected", "starting the container failed", err=_explain(exc))
                    return False
                self._report("starting")
                return True
            return False
        if status in _RUNNING_STATES:
            if desired == "ready" and self.state == "ready":
                return False
            health, why = self._health(task, info, health)
            if health == "unhealthy":
                self._unwatch()
                # Said first, then stopped: a task that turned unhealthy
                # leaves its service's VIP and answers now, not once its
                # container has taken its stop grace period to exit.
                self._report("failed", "container unhealthy",
                             err="task: container unhealthy" + (f" ({why})" if why else ""))
                self._executor.stop(info["Id"], grace_seconds(task))
                return False
            if health in (None, "healthy"):
                self._report("running")
            else:
                self._report("starting", "waiting for the container to become healthy")
            return False
        if status == "removing":
            self._unwatch()
            return False
        self._exited(st)
        return False

    def _health(self, task: dict, info: dict, engine: str | None) -> tuple[str | None, str | None]:
        """The running container's health and, for a probed healthcheck, the
        last failure: the engine's health unless the spec's healthcheck is
        an ``http`` or ``tcp`` one."""
        spec = task["spec"]["container"].get("healthcheck")
        if self._prober is None or not probed(spec):
            return engine, None
        started = log_timestamp(info["State"].get("StartedAt") or "")
        health = self._prober.watch(self.id, info["Id"], container_address(info), spec,
                                    started[1] if started else None)
        return health.status, health.detail

    def _unwatch(self) -> None:
        if self._prober is not None:
            self._prober.unwatch(self.id)

    def _exited(self, st: dict) -> None:
        self._unwatch()
        code = st.get("ExitCode")
        if st.get("OOMKilled"):
            self._report("failed", "container ran out of memory",
                         err="task: out of memory", exit_code=code)
        elif code == 0:
            self._report("complete", exit_code=0)
        else:
            self._report("failed", "container exited with an error",
                         err=f"task: non-zero exit ({code})", exit_code=code)

    def _shutdown(self, task: dict | None) -> None:
        """Stop the container and report ``shutdown``, unless the task is
        already finished (a terminal state is kept)."""
        self._unwatch()
        if finished(self.state):
            return
        info = self._find_container()
        if info is not None:
            st = info["State"]
            self.seen = (info["Id"], st.get("Status"), health_of(st))
            if st.get("Status") in _RUNNING_STATES:
                self._executor.stop(info["Id"], grace_seconds(task))
            elif st.get("Status") in ("exited", "dead") and at_least(self.state, "starting"):
                # it ended on its own before we stopped it: say how
                self._exited(st)
                return
        self._report("shutdown")

    def _teardown(self, task: dict | None) -> None:
        self._unwatch()
        if task is not None:
            self._shutdown(task)
        ids = [c["Id"] for c in self._executor.find(self.id)]
        if self.container_id and self.container_id not in ids:
            ids.append(self.container_id)
        for cid in ids:
            if task is None:
                self._executor.stop(cid, None)
            self._executor.remove(cid)
        self.seen = None
        self.forgotten = True

    def _remove_extras(self) -> None:
        while self.extra_containers:
            cid = self.extra_containers[0]
            log.info("task %s: removing duplicate container %s", self.id, cid[:12])
            self._executor.remove(cid)
            self.extra_containers.pop(0)
