"""The task reaper (leader only): deletes task history nobody needs.

- Per slot (replicated) or node (global), at most ``task_history_limit``
  finished tasks are kept (cluster setting, default 5; negative keeps all);
  older ones are deleted.
- Tasks with desired state ``remove`` (scaled away, service removed) are
  deleted once they have stopped, were never assigned, or their node is
  gone or down.
- Tasks whose service no longer exists are set to desired ``remove``.
"""

from __future__ import annotations

import collections
import logging
import time

from ...common.component import Component
from ...model import objects
from ...model import task as taskmodel
from ..store import queries
from ..store.store import Op, Store, StoreError
from . import sweeps
from . import tasks as T

log = logging.getLogger(__name__)

INTERVAL = 0.5
MAX_DELETES_PER_PASS = 2000


class TaskReaper(Component):
    name = "task-reaper"

    def __init__(self, store: Store) -> None:
        super().__init__()
        self._store = store
        self.deleted = 0

    def run(self) -> None:
        # Each pass looks only at the services whose tasks could have become
        # reapable since the last one (a task that is not runnable, a removed
        # service, a node going down), as the watch feed tells; everything
        # is looked at after a reset and as often as sweeps.py says.
        watcher = self._store.watch()
        dirty: set[str] | None = None
        last_full = 0.0
        full_every = sweeps.FULL_PASS
        while not self.sleep(INTERVAL):
            for e in watcher.next(timeout=0):
                if dirty is not None:
                    dirty = self._affected(e, dirty)
            if time.monotonic() - last_full > full_every:
                dirty = None
            if dirty is not None and not dirty:
                continue
            began = time.monotonic()
            try:
                self.reap(dirty)
            except StoreError as exc:
                log.info("reaping postponed: %s", exc)
                continue
            if dirty is None:
                last_full = time.monotonic()
                full_every = sweeps.next_sweep_after(last_full - began)
            dirty = set()

    def _affected(self, e, dirty: set[str]) -> set[str] | None:
        """Services to look at again after event ``e`` (None: all)."""
        if e.action == "reset" or e.kind == "cluster":
            return None
        if e.kind == "task":
            t = e.object
            if t is None or t["desired_state"] == "remove" or not taskmodel.runnable(t):
                dirty.add((t or e.old)["service_id"])
        elif e.kind == "service" and e.action == "delete":
            dirty.add(e.id)
        elif e.kind == "node" and (e.object is None or e.old is None or
                                   e.object["status"]["state"] != e.old["status"]["state"]):
            dirty.update(t["service_id"] for t in self._store.by_index("task", "node_id", e.id))
        return dirty

    def reap(self, service_ids=None):
        """One pass over the tasks of ``service_ids`` (all tasks if None)."""
        cluster = queries.cluster(self._store)
        limit = objects.DEFAULT_TASK_HISTORY
        if cluster is not None:
            limit = cluster["spec"]["orchestration"]["task_history_limit"]
        nodes = {n["id"]: n for n in self._store.list("node")}
        services = {s["id"] for s in self._store.list("service")}
        deletes, orphans = [], []
        history = collections.defaultdict(list)
        if service_ids is None:
            tasks = self._store.list("task")
        else:
            tasks = [t for sid in service_ids
                     for t in self._store.by_index("task", "service_id", sid)]
        for t in tasks:
            if t["service_id"] not in services and t["desired_state"] != "remove":
                orphans.append(t)
                continue
            if t["desired_state"] == "remove":
                node = nodes.get(t["node_id"]) if t["node_id"] else None
                if (T.finished(t) or taskmodel.before(t["status"]["state"], "assigned")
                        or not t["node_id"] or T.node_gone(node)):
                    deletes.append(t)
                continue
            if taskmodel.runnable(t):
                continue
            key = (t["service_id"], t["slot"] if t["slot"] is not None else t["node_id"])
            history[key].append(t)
        if limit >= 0:
            for ts in history.values():
                done = [t for t in ts if T.finished(t)
                        or taskmodel.before(t["status"]["state"], "assigned")]
                if len(done) > limit:
                    done.sort(key=lambda t: (t.get("created_at") or 0, t["id"]))
                    deletes.extend(done[:len(done) - limit])
        txns = [[Op.delete("task", t["id"], version=t["version"])]
                for t in deletes[:MAX_DELETES_PER_PASS]]
        txns += [[Op.update("task", T.with_desired(t, "remove"), version=t["version"])]
                 for t in orphans[:MAX_DELETES_PER_PASS]]
        if txns:
            results = self._store.commit_many(txns)
            self.deleted += sum(1 for r, _ in zip(results, deletes) if not isinstance(r, Exception))
