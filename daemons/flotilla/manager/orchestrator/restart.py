"""The restart supervisor: applies a service's restart policy.

When a task ends (or its node fails), ``restart()`` decides:
- whether to replace it at all (condition ``none`` never; ``on-failure``
  not after a clean exit; ``max_attempts`` within ``window`` per slot and
  spec version). A task that is not replaced keeps desired state
  ``running``: its slot stays occupied and is not refilled;
- otherwise the old task is set to desired ``shutdown`` and a replacement is
  created in the same slot (or on the same node for global services). With
  a restart delay the replacement is created with desired ``ready`` (the
  agent prepares it) and raised to ``running`` once the delay has passed and
  the old task has stopped (or a minute has gone by). No delay applies when
  the node was drained, went down or was removed: the task is gone from
  there and the service is short of it now.

Restart history lives in memory on the leader, as in SwarmKit.
"""

from __future__ import annotations

import collections
import heapq
import threading
import time
from typing import Callable

from ..store.store import Store
from . import tasks as T

OLD_TASK_TIMEOUT = 60.0


class RestartSupervisor:
    def __init__(self, store: Store, clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._clock = clock
        self._lock = threading.Lock()
        self._history: dict[tuple, collections.deque] = {}
        self._timers: list[tuple[float, str, str]] = []   # (due, new task id, old task id)
        self._waiting: dict[str, tuple[float, str]] = {}   # new task id -> (deadline, old id)

    # -- decisions ------------------------------------------------------------------
    def _key(self, service, task):
        if service["spec"]["mode"] == "global":
            return (service["id"], "node", task["node_id"], service["spec_version"])
        return (service["id"], "slot", task["slot"], service["spec_version"])

    def should_restart(self, service: dict, task: T.Task) -> bool:
        policy = task["spec"]["restart"]
        condition = policy["condition"]
        if condition == "none":
            return False
        if condition == "on-failure" and task["status"]["state"] == "complete":
            return False
        attempts = policy["max_attempts"]
        if not attempts:
            return True
        now = self._clock()
        with self._lock:
            history = self._history.get(self._key(service, task), ())
            window = policy["window"]
            recent = [t for t in history if not window or t >= now - window]
        return len(recent) < attempts

    def restart(self, service: dict, task: T.Task, reason: str,
                nodes: dict) -> list[T.Change]:
        """New task objects and updates (as (old, new) pairs) for this restart.

        Returns a list of ("update", task) / ("create", task) tuples.
        """
        node = nodes.get(task.get("node_id")) if task.get("node_id") else None
        node_failed = task.get("node_id") is not None and T.node_unusable(node) is not None
        if not self.should_restart(service, task):
            return []
        changes: list[T.Change] = []
        if task["desired_state"] in ("ready", "running"):
            changes.append(("update", T.with_desired(task, "shutdown")))
        delay = 0.0 if node_failed else float(task["spec"]["restart"]["delay"])
        now = self._clock()
        if service["spec"]["mode"] == "global":
            new = T.new_task(service, node_id=task["node_id"],
                             desired="ready" if delay else "running", now=now)
        else:
            new = T.new_task(service, slot=task["slot"], desired="ready" if delay else "running",
                             now=now)
        new["status"]["message"] = f"restarted ({reason})"
        changes.append(("create", new))
        with self._lock:
            key = self._key(service, task)
            self._history.setdefault(key, collections.deque(maxlen=256)).append(now)
            if delay:
                old_alive = not T.finished(task) and not node_failed
                heapq.heappush(self._timers,
                               (now + delay, new["id"], task["id"] if old_alive else ""))
        return changes

    # -- delayed starts -----------------------------------------------------------------
    def resume(self, all_tasks):
        """After a leader change: tasks still waiting in desired ``ready``
        start once their delay (measured from creation) has passed."""
        now = self._clock()
        with self._lock:
            for task in all_tasks:
                # Tasks waiting for something else (a dependency, the task
                # an update replaces) are not the restart supervisor's.
                if task.get("gated") or task.get("after"):
                    continue
                if task["desired_state"] == "ready":
                    delay = float(task["spec"]["restart"]["delay"])
                    due = max(now, (task.get("created_at") or now) + delay)
                    heapq.heappush(self._timers, (due, task["id"], ""))

    def due(self) -> list[str]:
        """Ids of waiting tasks that may be raised to ``running`` now."""
        now = self._clock()
        ready = []
        with self._lock:
            while self._timers and self._timers[0][0] <= now:
                _, new_id, old_id = heapq.heappop(self._timers)
                if old_id:
                    self._waiting[new_id] = (now + OLD_TASK_TIMEOUT, old_id)
                else:
                    ready.append(new_id)
            for new_id, (deadline, old_id) in list(self._waiting.items()):
                old = self._store.get("task", old_id)
                if old is None or T.finished(old) or now >= deadline:
                    del self._waiting[new_id]
                    ready.append(new_id)
        return ready

    def next_due(self) -> float | None:
        with self._lock:
            if self._waiting:
                return self._clock() + 0.2
            return self._timers[0][0] if self._timers else None
