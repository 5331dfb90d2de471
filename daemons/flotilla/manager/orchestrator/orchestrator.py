"""The orchestrator component (leader only).

Watches the store; when a service, one of its tasks (created, deleted, ended,
moved) or a node changes, the affected services are reconciled — replicated
or global — and the resulting task creations and updates are committed, one
transaction per service (compare-and-set on every task it touches; a
conflict simply reconciles that service again). It also raises restarted
tasks to ``running`` when their restart delay is over, and marks the tasks
of removed services for removal.

Dependencies (``dependencies.py``): a service whose dependencies do not hold
gets its new tasks gated, and they are raised to ``running`` once they do.
A reverse map (service name -> ids of the services depending on it), derived
from the store and rebuilt whenever a service changes, tells which services
to check again when a task of a dependency changes state.
"""

from __future__ import annotations

import logging
import time
from typing import Callable

from ...common.component import Component
from ...model import task as taskmodel
from ..store.store import Op, Store, StoreError
from . import dependencies, globalsvc, replicated, sweeps
from . import tasks as T
from .restart import RestartSupervisor

log = logging.getLogger(__name__)

GATHER = 0.05


class Orchestrator(Component):
    name = "orchestrator"

    def __init__(self, store: Store,
                 constraint_matcher: Callable[[list[str], dict], bool]) -> None:
        super().__init__()
        self._store = store
        self._matches = constraint_matcher      # (constraints, node) -> bool
        self.restarts = RestartSupervisor(store)
        self.passes = 0
        self._dependents: dict[str, set[str]] = {}

    def run(self) -> None:
        watcher = self._store.watch()
        self.restarts.resume(self._store.list("task"))
        self._dependents = dependencies.dependents(self._store.list("service"))
        dirty = {s["id"] for s in self._store.list("service")}
        last_full = time.monotonic()
        full_every = sweeps.FULL_PASS
        sweeping = True
        while not self.stopping.is_set():
            try:
                self._start_due()
                if dirty:
                    began = time.monotonic()
                    dirty = self._reconcile(dirty)
                    if sweeping:
                        full_every = sweeps.next_sweep_after(time.monotonic() - began)
                sweeping = False
            except StoreError as exc:
                log.info("orchestration postponed: %s", exc)
                dirty = {s["id"] for s in self._store.list("service")}
                if self.sleep(0.2):
                    return
            wait = 1.0
            nxt = self.restarts.next_due()
            if nxt is not None:
                wait = max(0.01, min(wait, nxt - time.time()))
            events = watcher.next(timeout=wait)
            if events:
                # Gather what follows closely (a scheduler batch, a stream of
                # status writes) so that a service is reconciled once for it
                # rather than once per few events.
                until = time.monotonic() + GATHER
                while (left := until - time.monotonic()) > 0:
                    more = watcher.next(timeout=left)
                    if not more:
                        break
                    events += more
            for e in events:
                dirty |= self._affected(e)
            if time.monotonic() - last_full > full_every:
                dirty |= {s["id"] for s in self._store.list("service")}
                last_full = time.monotonic()
                sweeping = True

    # -- what an event touches ---------------------------------------------------------
    def _affected(self, e) -> set[str]:
        if e.action == "reset":
            self._dependents = dependencies.dependents(self._store.list("service"))
            return {s["id"] for s in self._store.list("service")}
        if e.kind == "service":
            self._dependents = dependencies.dependents(self._store.list("service"))
            name = (e.object or e.old)["name"]
            out = set(self._dependents.get(name, ()))
            if e.action == "delete":
                self._remove_service_tasks(e.id)
                return out
            return out | {e.id}
        if e.kind == "task":
            old, new = e.old, e.object
            t = new or old
            out = set()
            if (old is None or new is None or old["status"]["state"] != new["status"]["state"]
                    or old["desired_state"] != new["desired_state"]):
                out |= self._dependents.get(t["service_name"], set())
            if old is None:
                # Tasks are created by the orchestrator and the updater,
                # which reconciled already: a new task asks nothing more.
                return out
            if new is None:
                return out | {t["service_id"]}
            if old["desired_state"] != new["desired_state"] or T.finished(old) != T.finished(new):
                return out | {t["service_id"]}
            if old["node_id"] != new["node_id"] and (
                    old["node_id"] is not None
                    or T.node_unusable(self._store.get("node", new["node_id"]))):
                # A task newly placed on a usable node needs nothing from the
                # orchestrator (if that node fails later, its event says so).
                return out | {t["service_id"]}
            if dependencies.gated(new) and old["status"] != new["status"]:
                out.add(t["service_id"])        # its waiting message may need restoring
            return out
        if e.kind == "node":
            old, new = e.old, e.object
            if old is not None and new is not None and (
                    old["status"]["state"] == new["status"]["state"]
                    and old["spec"] == new["spec"] and old.get("role") == new.get("role")):
                return set()
            # Global services place by the node's labels and role; a
            # replicated service cares only whether its tasks' node can
            # still run them (a label change on a node busy with tasks of
            # every service must not walk every task of every service).
            out = {s["id"] for s in self._store.list("service") if s["spec"]["mode"] == "global"}
            if old is None or new is None or T.node_unusable(old) != T.node_unusable(new):
                out |= {t["service_id"] for t in self._store.by_index("task", "node_id", e.id)
                        if taskmodel.runnable(t)}
            return out
        return set()

    # -- reconciliation ------------------------------------------------------------------
    def _reconcile(self, service_ids) -> set[str]:
        """Reconcile these services; returns those to try again."""
        nodes = {n["id"]: n for n in self._store.list("node")}
        txns, sids = [], []
        for sid in service_ids:
            service = self._store.get("service", sid)
            if service is None:
                continue
            tasks = self._store.by_index("task", "service_id", sid)
            if service["spec"]["mode"] == "global":
                constraints = service["spec"]["task"]["placement"]["constraints"]
                changes = globalsvc.reconcile(service, tasks, nodes, self.restarts,
                                              lambda node, c=constraints: self._matches(c, node))
            else:
                changes = replicated.reconcile(service, tasks, nodes, self.restarts)
            changes = self._gate(service, tasks, changes)
            if changes:
                txns.append(self._ops(changes))
                sids.append(sid)
        self.passes += 1
        if not txns:
            return set()
        retry = set()
        for sid, result in zip(sids, self._store.commit_many(txns)):
            if isinstance(result, Exception):
                log.debug("reconciling service %s again: %s", sid, result)
                retry.add(sid)
        return retry

    @staticmethod
    def _ops(changes):
        ops = []
        for action, obj in changes:
            if action == "create":
                ops.append(Op.create("task", obj))
            else:
                ops.append(Op.update("task", obj, version=obj["version"]))
        return ops

    # -- dependencies ---------------------------------------------------------------------
    def _waiting_for(self, service) -> str | None:
        """What the service's new tasks wait for, or None if they may start."""
        deps = service["spec"].get("depends_on")
        if not deps:
            return None

        def lookup(name):
            dep = self._store.by_unique("service", "name", name)
            return dep, (self._store.by_index("task", "service_id", dep["id"]) if dep else [])

        return dependencies.waiting(deps, lookup)

    def _gate(self, service, tasks, changes):
        """Hold the tasks the reconciliation creates while the service's
        dependencies do not hold; raise its gated tasks once they do."""
        if not any(a == "create" for a, _ in changes) and not any(
                dependencies.gated(t) for t in tasks):
            return changes
        return dependencies.gate(changes, tasks, self._waiting_for(service))

    def _start_due(self):
        """Restarted tasks whose delay is over start, or wait for their
        service's dependencies."""
        txns = []
        for task_id in self.restarts.due():
            task = self._store.get("task", task_id)
            if task is None or task["desired_state"] != "ready":
                continue
            service = self._store.get("service", task["service_id"])
            message = self._waiting_for(service) if service is not None else None
            if message is None:
                new = dependencies.release(task)
            elif not dependencies.gated(task):
                new = dependencies.hold(task, message)
            else:
                continue
            txns.append([Op.update("task", new, version=task["version"])])
        if txns:
            self._store.commit_many(txns)

    def _remove_service_tasks(self, service_id):
        txns = [[Op.update("task", T.with_desired(t, "remove"), version=t["version"])]
                for t in self._store.by_index("task", "service_id", service_id)
                if t["desired_state"] != "remove"]
        if txns:
            self._store.commit_many(txns)
