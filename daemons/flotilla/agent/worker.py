"""The worker: runs the tasks the managers assign to this node.

``assign()`` receives assignments (a complete set, or a delta) from the
session and returns at once; the work is done by a pool of threads, one
operation at a time per task (a task's controller is never run by two
threads at once), so that many tasks are prepared and started in parallel.

The worker reacts to the Docker events of its own containers (those
labelled ``flotilla.node.id=<node id>``) as they happen, and reconciles every
few seconds as a safety net against missed events (the event stream is
re-opened when the engine restarts). Its prober (``health.py``) runs the
``http`` and ``tcp`` healthchecks and reports their changes the same way.

Tasks and their statuses are kept in ``<state dir>/agent.db``. When the
worker starts, it loads them and re-attaches the containers of this node by
their task id label: a running container is left running (never restarted
or recreated), and a task whose container ended while the agent was down is
reported complete or failed. Containers of tasks this node does not know
are left alone until the first complete assignment, which removes every
container of this node whose task is not in the set.

Stopping the worker stops its threads only: containers keep running, as
they do when the agent restarts.
"""

from __future__ import annotations

import copy
import logging
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Callable, Iterable

from ..common.component import Component
from ..model import task as taskmodel
from .controller import Controller
from .executor import DockerExecutor
from .health import Prober
from .storage import TaskStore

if TYPE_CHECKING:
    from docker.types import CancellableStream

log = logging.getLogger(__name__)

RECONCILE_INTERVAL = 3.0
EVENTS_BACKOFF_MAX = 5.0
STOP_CONCURRENCY = 128
_TEARDOWN = ("shutdown", "remove", "complete", "failed", "rejected", "orphaned")
_SUMMARY_HEALTH = re.compile(r"\((healthy|unhealthy|health: starting)\)")


def _summary_health(summary: dict) -> str | None:
    m = _SUMMARY_HEALTH.search(summary.get("Status") or "")
    if not m:
        return None
    return "starting" if m.group(1) == "health: starting" else m.group(1)


class Worker(Component):
    name = "agent-worker"

    def __init__(self, node_id: str, state_dir: str, executor: DockerExecutor,
                 report: Callable[[str, dict], None], concurrency: int = 16):
        super().__init__()
        if getattr(executor, "node_id", node_id) != node_id:
            raise ValueError("the executor belongs to another node")
        self.node_id = node_id
        self.state_dir = state_dir
        self.concurrency = max(1, int(concurrency))
        # Stopping mostly waits out grace periods, so it gets many more
        # threads: removing 100 tasks must not take 100 / concurrency grace
        # periods.
        self.stop_concurrency = max(self.concurrency, STOP_CONCURRENCY)
        self.reconcile_interval = RECONCILE_INTERVAL
        self._executor = executor
        self._report = report
        self._store = TaskStore(state_dir)
        self._lock = threading.Lock()            # controllers and their scheduling
        self._assign_lock = threading.Lock()     # one assignment applied at a time
        self._ctls: dict[str, Controller] = {}
        self._strays: dict[str, list[str]] = {}  # unknown task id -> its containers
        self._loaded = False
        self._swept = False                      # a complete assignment was applied
        self._pending: list[tuple[list[dict], bool, tuple[str, ...]]] = []
        self._pool: ThreadPoolExecutor | None = None
        self._stop_pool: ThreadPoolExecutor | None = None
        self._events_thread: threading.Thread | None = None
        self._stream: CancellableStream[dict] | None = None
        self.prober = Prober(self._on_health)

    # -- public interface ----------------------------------------------------------------
    def assign(self, tasks: list[dict], *, complete: bool, removed: Iterable[str] = ()) -> None:
        """Apply an assignment. ``complete``: ``tasks`` is everything this node
        must run, anything else is stopped and removed. Otherwise ``tasks``
        are added or updated and the ids in ``removed`` dropped."""
        tasks = [copy.deepcopy(t) for t in tasks]
        removed = tuple(removed)
        with self._assign_lock:
            if not self._loaded:
                self._pending.append((tasks, complete, removed))
                return
            self._apply(tasks, complete, removed)

    def statuses(self) -> dict[str, dict]:
        with self._lock:
            return {tid: dict(c.status) for tid, c in self._ctls.items() if c.task is not None}

    def container_states(self) -> dict[str, int]:
        """This node's task containers by last observed engine state
        (``unknown`` until observed)."""
        with self._lock:
            ctls = [c for c in self._ctls.values() if c.container_id is not None]
        counts: dict[str, int] = {}
        for c in ctls:
            seen = c.seen
            state = (seen[1] if seen else None) or "unknown"
            counts[state] = counts.get(state, 0) + 1
        return counts

    def tasks(self) -> dict[str, dict]:
        with self._lock:
            tasks = [(c.id, c.task) for c in self._ctls.values() if not c.dropped]
        return {i: copy.deepcopy(t) for i, t in tasks if t is not None}

    # -- main loop -----------------------------------------------------------------------
    def run(self) -> None:
        self._store.open()
        self._pool = ThreadPoolExecutor(max_workers=self.concurrency,
                                        thread_name_prefix=f"task-{self.node_id[:8]}")
        self._stop_pool = ThreadPoolExecutor(max_workers=self.stop_concurrency,
                                             thread_name_prefix=f"stop-{self.node_id[:8]}")
        self.prober.start()
        try:
            if not self._load():
                return
            self._events_thread = threading.Thread(target=self._watch_events, daemon=True,
                                                   name=f"events-{self.node_id[:8]}")
            self._events_thread.start()
            while not self.sleep(self.reconcile_interval):
                self._reconcile()
        finally:
            self._shutdown_threads()

    def wake(self) -> None:
        self._close_stream()

    def _shutdown_threads(self) -> None:
        self._close_stream()
        thread = self._events_thread
        if thread is not None:
            thread.join(5.0)
        self._events_thread = None
        for attr in ("_pool", "_stop_pool"):
            pool = getattr(self, attr)
            setattr(self, attr, None)
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
        self.prober.stop()
        with self._assign_lock:
            self._loaded = False
        with self._lock:
            for ctl in self._ctls.values():
                ctl.queued = ctl.dirty = False
        self._store.close()

    def _load(self) -> bool:
        """Load the stored tasks and re-attach this node's containers; False
        if the worker was stopped meanwhile."""
        records = self._store.load()
        backoff = 0.5
        while True:
            try:
                containers = self._executor.list()
                break
            except Exception as exc:
                log.warning("listing this node's containers failed (%s); retrying", exc)
                if self.sleep(backoff):
                    return False
                backoff = min(backoff * 2, EVENTS_BACKOFF_MAX)
        by_task: dict[str, list[dict]] = {}
        for c in containers:
            labels = c.get("Labels") or {}
            tid = labels.get(taskmodel.LABEL_TASK) or f"container:{c['Id']}"
            by_task.setdefault(tid, []).append(c)
        ctls, strays = {}, {}
        for tid, rec in records.items():
            ctl = Controller(tid, self._executor, self._publish, rec.task, rec.status,
                             prober=self.prober)
            if rec.dropped:
                ctl.drop()
            found = sorted(by_task.pop(tid, []), key=lambda c: c.get("Created", 0), reverse=True)
            if found:
                ids = [c["Id"] for c in found]
                if ctl.container_id not in ids:
                    running = [c["Id"] for c in found if c.get("State") == "running"]
                    ctl.container_id = (running or ids)[0]
                ctl.extra_containers = [i for i in ids if i != ctl.container_id]
            ctls[tid] = ctl
        for tid, found in by_task.items():
            strays[tid] = [c["Id"] for c in found]
        if strays:
            log.info("%d container(s) of unknown tasks on this node, kept until the "
                     "first complete assignment", len(strays))
        with self._lock:
            self._ctls = ctls
            self._strays = strays
        with self._assign_lock:
            self._loaded = True
            self._swept = False
            pending, self._pending = self._pending, []
            for tasks, complete, removed in pending:
                self._apply(tasks, complete, removed)
        for ctl in list(ctls.values()):
            self._kick(ctl)
        log.info("worker %s started with %d task(s)", self.node_id[:12], len(ctls))
        return not self.stopping.is_set()

    # -- assignments ---------------------------------------------------------------------
    def _apply(self, tasks: list[dict], complete: bool, removed: tuple[str, ...]) -> None:
        wanted = {t["id"]: t for t in tasks}
        self._store.save_tasks(wanted.values())
        kick = []
        with self._lock:
            for tid, task in wanted.items():
                ctl = self._ctls.get(tid)
                if ctl is None or ctl.forgotten:
                    ctl = Controller(tid, self._executor, self._publish, task,
                                     prober=self.prober)
                    # a container of this task found at start is adopted by
                    # the controller instead of being removed
                    self._strays.pop(tid, None)
                    self._ctls[tid] = ctl
                else:
                    ctl.update(task)
                kick.append(ctl)
            drop = set(removed) - set(wanted)
            if complete:
                drop |= {tid for tid in self._ctls if tid not in wanted}
                for tid, cids in self._strays.items():
                    if tid not in wanted:
                        stray = Controller(tid, self._executor, self._publish)
                        stray.container_id = cids[0]
                        stray.extra_containers = list(cids[1:])
                        self._ctls[tid] = stray
                        kick.append(stray)
                self._strays = {}
            dropped = []
            for tid in drop:
                ctl = self._ctls.get(tid)
                if ctl is not None and ctl.task is not None:
                    ctl.drop()
                    dropped.append(tid)
                    kick.append(ctl)
        self._store.mark_dropped(dropped)
        if complete:
            self._swept = True
        for ctl in kick:
            self._kick(ctl)

    # -- scheduling ----------------------------------------------------------------------
    def _kick(self, ctl: Controller) -> None:
        """Have the controller sync soon: at most one run per controller at a
        time, and a change during a run triggers one more run."""
        with self._lock:
            if ctl.queued:
                ctl.dirty = True
                return
            tearing_down = ctl.dropped or (
                ctl.task is not None and ctl.task["desired_state"] in _TEARDOWN)
            pool = self._stop_pool if tearing_down else self._pool
            if pool is None or self.stopping.is_set():
                return
            ctl.queued = True
            ctl.dirty = False
        try:
            pool.submit(self._run_controller, ctl)
        except RuntimeError:            # the pool is shutting down
            with self._lock:
                ctl.queued = False

    def _run_controller(self, ctl: Controller) -> None:
        while True:
            try:
                ctl.sync(self.stopping.is_set)
            except Exception as exc:
                # most likely the engine is unreachable; the reconcile retries
                log.warning("task %s: %s", ctl.id, exc, exc_info=log.isEnabledFor(logging.DEBUG))
            with self._lock:
                if ctl.forgotten and not ctl.dropped and ctl.task is not None \
                        and ctl.task["desired_state"] != "remove":
                    # assigned again while its container was being removed:
                    # keep the task (finished, it is not started again)
                    ctl.forgotten = False
                if ctl.forgotten:
                    forget = self._ctls.get(ctl.id) is ctl and ctl.task is not None
                    if self._ctls.get(ctl.id) is ctl:
                        del self._ctls[ctl.id]
                    ctl.queued = False
                    break
                if not ctl.dirty or self.stopping.is_set():
                    ctl.queued = False
                    return
                ctl.dirty = False
        if forget:
            try:
                self._store.delete([ctl.id])
            except Exception as exc:
                log.warning("task %s: forgetting it failed: %s", ctl.id, exc)

    def _publish(self, ctl: Controller, status: dict) -> None:
        if ctl.task is None:
            return
        try:
            self._store.save_status(ctl.id, status)
        except Exception as exc:
            log.warning("task %s: saving its status failed: %s", ctl.id, exc)
        log.debug("task %s: %s %s", ctl.id, status["state"], status.get("err") or "")
        try:
            self._report(ctl.id, status)
        except Exception:
            log.exception("task %s: reporting its status failed", ctl.id)

    # -- container events and reconciliation ---------------------------------------------
    def _close_stream(self) -> None:
        with self._lock:
            stream, self._stream = self._stream, None
        if stream is not None:
            try:
                stream.close()
            except Exception:
                pass

    def _watch_events(self) -> None:
        backoff = 0.5
        while not self.stopping.is_set():
            stream = None
            try:
                stream = self._executor.events()
                with self._lock:
                    self._stream = stream
                if self.stopping.is_set():
                    break
                # anything may have happened while the stream was closed
                self._reconcile(everything=True)
                backoff = 0.5
                for event in stream:
                    self._on_event(event)
                    if self.stopping.is_set():
                        break
            except Exception as exc:
                if not self.stopping.is_set():
                    log.info("container events interrupted: %s", exc)
            finally:
                if stream is not None:
                    with self._lock:
                        if self._stream is stream:
                            self._stream = None
                    try:
                        stream.close()
                    except Exception:
                        pass
            if self.sleep(backoff):
                break
            backoff = min(backoff * 2, EVENTS_BACKOFF_MAX)

    def _on_event(self, event: dict) -> None:
        attrs = (event.get("Actor") or {}).get("Attributes") or {}
        tid = attrs.get(taskmodel.LABEL_TASK)
        if attrs.get(taskmodel.LABEL_NODE) != self.node_id or not tid:
            return
        with self._lock:
            ctl = self._ctls.get(tid)
        if ctl is not None:
            self._kick(ctl)

    def _on_health(self, task_id: str) -> None:
        """A probed healthcheck changed its verdict."""
        with self._lock:
            ctl = self._ctls.get(task_id)
        if ctl is not None:
            self._kick(ctl)

    def _reconcile(self, everything: bool = False) -> None:
        """Sync every controller that has work to do or whose container is
        not as last seen; after a complete assignment, remove containers of
        tasks this node does not know."""
        try:
            containers = self._executor.list()
        except Exception as exc:
            log.info("reconcile: listing containers failed: %s", exc)
            return
        by_task: dict[str, dict] = {}
        for c in containers:
            tid = (c.get("Labels") or {}).get(taskmodel.LABEL_TASK) or f"container:{c['Id']}"
            by_task.setdefault(tid, c)
        kick = []
        with self._lock:
            for tid, ctl in self._ctls.items():
                if everything or not ctl.settled():
                    kick.append(ctl)
                    continue
                if taskmodel.finished(ctl.state):
                    continue
                found = by_task.get(tid)
                now = ((found["Id"], found.get("State"), _summary_health(found)) if found
                       else None)
                if ctl.seen is None or now != ctl.seen:
                    kick.append(ctl)
            if self._swept:
                for tid, c in by_task.items():
                    if tid not in self._ctls:
                        stray = Controller(tid, self._executor, self._publish)
                        stray.container_id = c["Id"]
                        self._ctls[tid] = stray
                        kick.append(stray)
        for ctl in kick:
            self._kick(ctl)

