"""The rolling updater (leader only): replaces tasks that run an older spec.

When a service's task spec changes, the API records the spec it replaces
(``previous_spec``) and sets ``update_status.state`` to ``updating``. The
updater then works through the service's slots (or nodes, for global
services) whose task runs an older spec, ``parallelism`` at a time (0: all):

- ``stop-first``: the old task is stopped and its replacement is created in
  desired ``ready`` (the agent prepares it); it is raised to ``running``
  once the old task has stopped, so the two never hold the same port (or
  once the old task's node is down or removed, or after a minute);
- ``start-first``: the replacement is started next to the old task (it names
  it in ``replaces``, so the orchestrator keeps both) and the old one is
  stopped once the replacement runs.

A replacement counts as updated once it is ``running`` (healthy, where a
healthcheck exists). After a batch, the next waits ``delay``. Every
replacement is watched for ``monitor`` seconds after it starts running; if
the share of failed replacements exceeds ``max_failure_ratio``, the
``failure_action`` applies: ``pause`` (state ``paused`` with the reason),
``continue``, or ``rollback`` (the previous spec comes back and is rolled out
with the ``rollback`` settings; tasks still running it are never touched).

Progress is written to ``update_status`` (visible in ``service inspect`` and
as events). Everything the updater needs is in the store, so a new leader
carries on with an update where the old one left off.
"""

from __future__ import annotations

import logging
import time
from typing import Callable

from ...common.component import Component
from ...model import task as taskmodel
from ..store.store import Op, Store, StoreError, TxnFailed
from . import tasks as T

log = logging.getLogger(__name__)

TICK = 0.2
OLD_STOP_TIMEOUT = 60.0
ACTIVE = ("updating", "rollback_started")
PAUSED = ("paused", "rollback_paused")
DEFAULTS = {"parallelism": 1, "delay": 0.0, "failure_action": "pause", "monitor": 5.0,
            "max_failure_ratio": 0.0, "order": "stop-first"}


def settings(service: dict) -> dict:
    rolling_back = (service.get("update_status") or {}).get("state", "").startswith("rollback")
    cfg = service["spec"].get("rollback" if rolling_back else "update") or {}
    return dict(DEFAULTS, **cfg)


def _key(task: dict):
    return task["slot"] if task["slot"] is not None else task["node_id"]


def _name(task: dict) -> str:
    which = _key(task) if task["slot"] is not None else task["node_id"][:12]
    return f"{task['service_name']}.{which}"


def live_tasks(service: dict, tasks: list[dict]) -> dict:
    """Slot (or node) -> the task that currently stands for it."""
    groups: dict = {}
    for t in tasks:
        if taskmodel.runnable(t):
            groups.setdefault(_key(t), []).append(t)
    out = {}
    for key, ts in groups.items():
        ts.sort(key=lambda t: (t.get("created_at") or 0, t["id"]))
        newest = ts[-1]
        replaced = next((t for t in ts[:-1] if t["id"] == newest.get("replaces")), None)
        if replaced is not None and not T.finished(replaced) and (
                T.finished(newest) or (T.is_dirty(newest, service)
                                       and not T.is_dirty(replaced, service))):
            out[key] = replaced
        else:
            out[key] = newest
    return out


def _stopped(task: dict | None) -> bool:
    """The task's container no longer runs, or never started."""
    if task is None or T.finished(task):
        return True
    return taskmodel.STATE_VALUES[task["status"]["state"]] < taskmodel.STATE_VALUES["starting"]


def old_task_gone(task: dict | None, node: dict | None) -> bool:
    """A stop-first replacement need not wait for ``task`` any more: it has
    stopped, or its node is down or removed (it will be told to stop when
    it comes back, and its slot must not stay empty meanwhile)."""
    if task is None or _stopped(task):
        return True
    return bool(task.get("node_id")) and T.node_gone(node)


def has_dirty(service: dict, tasks: list[dict]) -> bool:
    return any(T.is_dirty(t, service) for t in live_tasks(service, tasks).values())


class _Run:
    """One service's update as this leader drives it."""

    def __init__(self, spec_version: int):
        self.spec_version = spec_version
        self.batch: dict = {}           # key -> (new task id, old task id, started)
        self.attempted: set = set()     # keys replaced in this run
        self.watch: dict = {}           # new task id -> running since
        self.failed: dict = {}          # task id -> reason
        self.acted_on = 0               # failures the failure action already saw
        self.updated = 0
        self.next_batch_at = 0.0
        self.total = 0


class Updater(Component):
    name = "updater"

    def __init__(self, store: Store, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self._store = store
        self._clock = clock
        self._runs: dict[str, _Run] = {}
        self._candidates: set[str] = set()

    def run(self):
        watcher = self._store.watch()
        self._candidates = {s["id"] for s in self._store.list("service")}
        while not self.stopping.is_set():
            for e in watcher.next(timeout=TICK):
                if e.action == "reset":
                    self._candidates |= {s["id"] for s in self._store.list("service")}
                elif e.kind == "service":
                    self._candidates.add(e.id)
            try:
                self.tick()
            except StoreError as exc:
                log.info("update postponed: %s", exc)
                if self.sleep(0.2):
                    return

    # -- one pass -------------------------------------------------------------------------
    def tick(self):
        for sid in sorted(self._candidates):
            service = self._store.get("service", sid)
            state = ((service or {}).get("update_status") or {}).get("state")
            run = self._runs.get(sid)
            if service is None or state in PAUSED:
                # Paused: no new batch, but the one under way still finishes
                # (a stop-first replacement must not wait forever).
                if service is not None and run is not None and run.batch:
                    self._follow_batch(service, run, settings(service), self._clock())
                    continue
                self._candidates.discard(sid)
                self._runs.pop(sid, None)
                continue
            tasks = self._store.by_index("task", "service_id", sid)
            if state not in ACTIVE and run is None and not has_dirty(service, tasks):
                self._candidates.discard(sid)
                continue
            if run is None or run.spec_version != service["spec_version"]:
                run = self._runs[sid] = _Run(service["spec_version"])
                self._adopt(run, tasks)
            if self._step(service, tasks, run):
                self._runs.pop(sid, None)
                self._candidates.discard(sid)

    def _adopt(self, run: _Run, tasks: list[dict]):
        """Replacements another leader (or an earlier spec) left under way."""
        now = self._clock()
        by_id = {t["id"]: t for t in tasks}
        for t in tasks:
            if not taskmodel.runnable(t) or T.finished(t):
                continue
            if t["desired_state"] == "ready" and t.get("after"):
                run.batch[_key(t)] = (t["id"], t["after"], now)
            elif t.get("replaces") in by_id and \
                    by_id[t["replaces"]]["desired_state"] in ("ready", "running"):
                run.batch[_key(t)] = (t["id"], t["replaces"], now)

    def _step(self, service: dict, tasks: list[dict], run: _Run) -> bool:
        """Advance one service's update; True when it is over (done or paused)."""
        cfg = settings(service)
        now = self._clock()
        self._follow_batch(service, run, cfg, now)
        self._follow_monitor(run, cfg, now)
        if len(run.failed) > run.acted_on and run.total and \
                len(run.failed) / run.total > float(cfg["max_failure_ratio"]):
            run.acted_on = len(run.failed)
            reason = list(run.failed.values())[-1]
            action = cfg["failure_action"]
            rolling_back = service.get("update_status", {}).get("state", "").startswith("rollback")
            if action == "rollback" and not rolling_back:
                self._rollback(service, f"update rolled back: {reason}")
                return True
            if action != "continue":
                message = f"{'rollback' if rolling_back else 'update'} paused: {reason}"
                self._set_status(service, "rollback_paused" if rolling_back else "paused",
                                 message, reason=message)
                return True
        if run.batch or now < run.next_batch_at:
            return False
        live = live_tasks(service, tasks)
        dirty = sorted((k for k, t in live.items() if T.is_dirty(t, service)
                        and k not in run.attempted), key=str)
        if not dirty:
            if run.watch:
                return False          # still monitoring the last batch
            self._finish(service, run)
            return True
        if not run.total:
            run.total = len(dirty) + len(run.attempted)
        size = int(cfg["parallelism"]) or len(dirty)
        self._start_batch(service, [live[k] for k in dirty[:size]], cfg, run, now)
        return False

    # -- batches ----------------------------------------------------------------------------
    def _start_batch(self, service, olds, cfg, run, now):
        start_first = cfg["order"] == "start-first"
        txns, pairs = [], []
        for old in olds:
            if service["spec"]["mode"] == "global":
                new = T.new_task(service, node_id=old["node_id"])
            else:
                new = T.new_task(service, slot=old["slot"])
            new["status"]["message"] = (f"replacing {old['id'][:12]} "
                                        f"(spec version {old['spec_version']})")
            ops = []
            if start_first:
                new["replaces"] = old["id"]
            else:
                ops.append(Op.update("task", T.with_desired(old, "shutdown"),
                                     version=old["version"]))
                if not T.finished(old):
                    new["desired_state"] = "ready"
                    new["after"] = old["id"]
            ops.append(Op.create("task", new))
            txns.append(ops)
            pairs.append((_key(old), new["id"], old["id"]))
        for (key, new_id, old_id), result in zip(pairs, self._store.commit_many(txns)):
            if isinstance(result, Exception):
                continue    # the old task changed meanwhile: looked at again next pass
            run.batch[key] = (new_id, old_id, now)
            run.attempted.add(key)
        state = service.get("update_status", {}).get("state", "updating")
        if state not in ACTIVE:
            state = "updating"
        self._set_status(service, state, self._progress(run, state))

    def _follow_batch(self, service, run, cfg, now):
        had_batch = bool(run.batch)
        for key, (new_id, old_id, started) in list(run.batch.items()):
            new = self._store.get("task", new_id)
            old = self._store.get("task", old_id)
            if new is None or not taskmodel.runnable(new):
                del run.batch[key]          # scaled away or replaced by someone else
                continue
            if T.finished(new):
                run.failed[new_id] = self._reason(new)
                del run.batch[key]
                continue
            if new["desired_state"] == "ready" and new.get("after"):
                node = self._store.get("node", old["node_id"]) \
                    if old is not None and old.get("node_id") else None
                gone = old_task_gone(old, node)
                if gone or now - started > OLD_STOP_TIMEOUT:
                    if not gone:
                        log.info("%s: starting %s although %s has not reported stopping "
                                 "(%s) after %.0f s", service["name"], new_id[:12],
                                 old_id[:12], old["status"]["state"], now - started)
                    self._commit([Op.update("task", T.with_desired(new, "running"),
                                            version=new["version"])])
                continue
            if new["status"]["state"] == "running":
                if old is not None and old["desired_state"] in ("ready", "running"):
                    self._commit([Op.update("task", T.with_desired(old, "shutdown"),
                                            version=old["version"])])
                run.watch[new_id] = now
                run.updated += 1
                del run.batch[key]
        if had_batch and not run.batch:
            run.next_batch_at = now + float(cfg["delay"])

    def _follow_monitor(self, run, cfg, now):
        for task_id, since in list(run.watch.items()):
            t = self._store.get("task", task_id)
            if t is None or not taskmodel.runnable(t):
                del run.watch[task_id]
            elif t["status"]["state"] in ("failed", "rejected"):
                run.failed[task_id] = self._reason(t)
                del run.watch[task_id]
            elif now - since >= float(cfg["monitor"]):
                del run.watch[task_id]

    @staticmethod
    def _reason(task) -> str:
        st = task["status"]
        why = st.get("err") or st.get("message") or st["state"]
        return f"task {_name(task)} {st['state']}: {why}"

    # -- service status -------------------------------------------------------------------------
    def _progress(self, run, state) -> str:
        what = "rollback" if state.startswith("rollback") else "update"
        return f"{what} in progress: {run.updated} of {run.total} tasks updated"

    def _finish(self, service, run):
        state = service.get("update_status", {}).get("state")
        if state is None and not run.attempted:
            return
        done = "rollback_completed" if (state or "").startswith("rollback") else "completed"
        what = "rollback" if done.startswith("rollback") else "update"
        failures = f" ({len(run.failed)} replacement(s) failed)" if run.failed else ""
        self._set_status(service, done, f"{what} completed{failures}", completed=True)

    def _set_status(self, service, state, message, completed=False, reason=None):
        def change(s):
            old = s.get("update_status") or {}
            if s["spec_version"] != service["spec_version"]:
                return None                 # a newer spec arrived: its own update takes over
            new = dict(old, state=state, message=message)
            if reason is not None:
                new["reason"] = reason
            new.setdefault("started_at", time.time())
            if completed:
                new["completed_at"] = time.time()
            return None if new == old else dict(s, update_status=new)

        try:
            self._store.update("service", service["id"], change)
        except TxnFailed as exc:
            log.debug("update status of %s not written: %s", service["name"], exc)

    def _rollback(self, service, message):
        if not service.get("previous_spec"):
            message = f"{message}; but there is no previous spec"
            self._set_status(service, "paused", message, reason=message)
            return
        try:
            self._store.update("service", service["id"],
                               lambda s: rollback(s, message, time.time()))
        except TxnFailed as exc:
            log.info("rollback of %s not written: %s", service["name"], exc)

    def _commit(self, ops):
        try:
            self._store.commit(ops)
        except TxnFailed:
            pass        # changed meanwhile; seen again next pass


def rollback(service: dict, message: str, now: float) -> dict:
    """The service with its previous spec back, rolling out with the rollback
    settings. Raises ValueError when there is nothing to go back to."""
    previous = service.get("previous_spec")
    if not previous:
        raise ValueError(f"service {service['name']} has no previous spec to roll back to")
    return dict(service, spec=previous, previous_spec=service["spec"],
                spec_version=service["spec_version"] + 1,
                update_status={"state": "rollback_started", "message": message,
                               "reason": message, "started_at": now})
