"""The scheduler component (leader only).

Keeps a ``SchedulerCore`` in step with the store (nodes, and every task's
node and reservations) and places pending tasks: a task in state ``pending``
whose desired state is ``ready`` or ``running``. Changes are gathered for a
short moment so that many placements are decided together: while each wait
of up to 20 ms brings more tasks to place, and no longer once one brings
none (other changes, such as a stream of status reports, do not hold new
tasks back); changes with no task to place until 20 ms pass without any; at
most 200 ms. The decisions are committed as independent transactions that
share Raft entries: a task changed meanwhile fails its own compare-and-set
alone and is placed again. Decisions are submitted without waiting for
their commit (at most ``MAX_BATCHES`` in flight): the next batch is decided
while the last one replicates, and a task whose assignment is in flight is
not decided again. A task that fits nowhere stays pending with the
explanation in its status message, and is retried whenever nodes or tasks
change (and every second).
"""

from __future__ import annotations

import collections
import logging
import time
from typing import Callable

from ...common.component import Component
from ...model import task as taskmodel
from ..store.store import Op, StoreError
from .core import SchedulerCore

log = logging.getLogger(__name__)

DEBOUNCE = 0.02
MAX_LATENCY = 0.2
RETRY = 1.0
MAX_BATCHES = 2


def needs_scheduling(task: dict | None) -> bool:
    return (task is not None and task["status"]["state"] == "pending"
            and task["desired_state"] in ("ready", "running"))


class Scheduler(Component):
    name = "scheduler"

    def __init__(self, store, on_placed: Callable[[float], None] | None = None):
        """``on_placed`` is called with the seconds from a task's creation to
        its assignment, for every task placed."""
        super().__init__()
        self._store = store
        self._on_placed = on_placed
        self.core = SchedulerCore()
        self._pending: dict[str, dict] = {}
        self._inflight: set[str] = set()        # assignments submitted, not yet answered
        self._answers: collections.deque = collections.deque()  # from the Raft thread
        self._batches = 0
        self.placed = 0
        self.latencies: list[float] = []     # seconds from creation to assignment (recent)

    def _load(self):
        self.core = SchedulerCore()
        self._pending = {}
        self._inflight = set()
        for node in self._store.list("node"):
            self.core.set_node(node)
        for task in self._store.list("task"):
            self._track(task)

    def _track(self, task) -> bool:
        """Keep the task in step; True if it is newly waiting for a node."""
        if needs_scheduling(task):
            new = task["id"] not in self._pending
            self._pending[task["id"]] = task
            self.core.forget_task(task["id"])
            return new
        self._pending.pop(task["id"], None)
        self.core.track_task(task)
        return False

    def _apply(self, events) -> tuple[bool, int]:
        """Apply watch events: (whether anything changed, how many tasks
        newly wait for a node)."""
        changed, added = False, 0
        for e in events:
            if e.action == "reset":
                self._load()
                return True, len(self._pending)
            if e.kind == "node":
                if e.object is None:
                    self.core.remove_node(e.id)
                else:
                    self.core.set_node(e.object)
                changed = True
            elif e.kind == "task":
                new, old = e.object, e.old
                if new is None:
                    self._pending.pop(e.id, None)
                    self.core.forget_task(e.id)
                else:
                    if (new["status"]["state"] in ("failed", "rejected") and new.get("node_id")
                            and (old is None or old["status"]["state"] != new["status"]["state"])):
                        self.core.note_failure(new)
                    added += self._track(new)
                changed = True
        return changed, added

    def _gather(self, watcher, events) -> bool:
        """Apply ``events`` and the changes right behind them (see the module
        doc); returns whether anything changed."""
        changed, added = self._apply(events)
        if not changed:
            return False
        start = time.monotonic()
        while time.monotonic() - start < MAX_LATENCY:
            more = watcher.next(timeout=DEBOUNCE)
            if not more:
                break
            _, more_added = self._apply(more)
            if added and not more_added:
                break
            added += more_added
        return True

    def run(self):
        watcher = self._store.watch()
        self._load()
        last_tick = 0.0
        while not self.stopping.is_set():
            changed = self._gather(watcher, watcher.next(timeout=RETRY))
            self._take_answers()
            if self._pending and self._batches < MAX_BATCHES and (
                    changed or time.monotonic() - last_tick >= RETRY):
                try:
                    self.tick()
                except StoreError as exc:
                    log.info("scheduling postponed: %s", exc)
                last_tick = time.monotonic()

    def tick(self):
        pending = [t for tid, t in self._pending.items() if tid not in self._inflight]
        if not pending:
            return
        decisions = self.core.schedule(pending)
        txns, kinds = [], []
        now = time.time()
        for task_id, node_id in decisions.assigned:
            task = self._pending.get(task_id)
            if task is None:
                self.core.forget_task(task_id)
                continue
            new = dict(task, node_id=node_id,
                       status=taskmodel.status("assigned", "scheduled", now=now))
            txns.append([Op.update("task", new, version=task["version"])])
            kinds.append(("assign", task))
        for task_id, why in decisions.unschedulable.items():
            task = self._pending.get(task_id)
            if task is None or task["status"].get("message") == why:
                continue
            new = dict(task, status=dict(task["status"], message=why, timestamp=now))
            txns.append([Op.update("task", new, version=task["version"])])
            kinds.append(("explain", task))
        if not txns:
            return
        assigned = [task["id"] for kind, task in kinds if kind == "assign"]
        self._inflight.update(assigned)
        self._batches += 1
        try:
            self._store.submit_many(txns, lambda results: self._answered(kinds, results))
        except StoreError:
            self._batches -= 1
            self._inflight.difference_update(assigned)
            for task_id in assigned:
                self.core.forget_task(task_id)
            raise

    def _answered(self, kinds, results):
        # Runs on the Raft thread: hand the answers to the scheduler's loop.
        self._answers.append((kinds, results, time.time()))
        self._store.hub.wake_all()

    def _take_answers(self):
        while self._answers:
            kinds, results, committed = self._answers.popleft()
            self._batches -= 1
            for (kind, task), result in zip(kinds, results):
                if kind != "assign":
                    continue
                self._inflight.discard(task["id"])
                if isinstance(result, Exception):
                    # Not placed (the task changed meanwhile, or leadership
                    # was lost): release the reservation; the task's own
                    # change says what it needs next.
                    self.core.forget_task(task["id"])
                    continue
                self.placed += 1
                held = self._pending.get(task["id"])
                if held is not None and held["version"] == task["version"]:
                    del self._pending[task["id"]]   # placed; its event is on the way
                created = task.get("created_at")
                if created:
                    took = committed - created
                    self.latencies.append(took)
                    if self._on_placed is not None:
                        self._on_placed(took)
                    if len(self.latencies) > 10000:
                        del self.latencies[:5000]


def constraint_matcher() -> Callable[[list[str], dict], bool]:
    """(constraints, node) -> bool, for the global orchestrator."""
    from ...model.constraint import Constraint, parse_constraints
    from .constraint import matches as node_matches

    cache: dict[tuple[str, ...], list[Constraint]] = {}

    def matches(constraints: list[str], node: dict) -> bool:
        key = tuple(constraints)
        parsed = cache.get(key)
        if parsed is None:
            parsed = cache[key] = parse_constraints(list(constraints))
        return all(node_matches(c, node) for c in parsed)

    return matches

