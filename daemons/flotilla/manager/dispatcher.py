"""Agent sessions, assignments and task status (leader only).

Sessions. An agent registers (the node becomes READY and gets a session id)
and then heartbeats at the period handed out: the cluster's heartbeat period
(default 1 s), lengthened when needed so the whole cluster sends at most
``MAX_HEARTBEATS_PER_S`` heartbeats a second, ±10 % jitter. A node whose
heartbeat is more than 3 periods late is marked DOWN. After a leader change
the new dispatcher knows no sessions: nodes get 6 periods to register again.
Node state is written only when it changes.

Assignments. The registration answer carries the complete set of tasks for
the node (sequence 1). After that the dispatcher pushes increments to the
agent's own listener (mTLS, the agent checks it is a manager), each with a
sequence number and the one it applies to; at most one push per node is in
flight and changes made meanwhile go in the next one. An agent that sees a
gap, or a session it does not know, answers 409 and gets a complete set.
A failed push is followed by a complete set too, so nothing is ever lost or
applied twice. Only changes that matter to the agent are pushed (a task
newly assigned, a new desired state or spec, a deletion) — not the agent's
own status reports.

Status. Agents report task status as it changes, in batches; the dispatcher
checks that each task belongs to the reporting node, keeps the latest per
task, drops any that would move a task's state backwards, and writes what
has arrived at once, as independent transactions sharing Raft entries.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import random
import threading
import time

import urllib3

from ..common import taskmodel, tls
from ..common.component import Component
from . import objects
from .store.store import Op, StoreError, TxnFailed, new_id

log = logging.getLogger(__name__)

GRACE_MULTIPLIER = 3
LEADER_CHANGE_MULTIPLIER = 6
MAX_HEARTBEATS_PER_S = 200
FLUSH_INTERVAL = 0.05
PUSH_DEBOUNCE = 0.005
PUSH_WORKERS = 16
AGENT_FIELDS = ("id", "service_id", "service_name", "slot", "node_id", "spec", "spec_version",
                "ports", "desired_state")


class SessionInvalid(Exception):
    pass


def agent_view(task: dict) -> dict:
    return {k: task.get(k) for k in AGENT_FIELDS}


def pushed_to_agent(task: dict | None) -> bool:
    return task is not None and task.get("node_id") is not None and \
        taskmodel.at_least(task["status"]["state"], "assigned")


class _Session:
    __slots__ = ("id", "deadline", "agent_addr", "seq", "needs_complete", "pending", "inflight",
                 "retry_at", "failures")

    def __init__(self, session_id, deadline, agent_addr):
        self.id = session_id
        self.deadline = deadline
        self.agent_addr = agent_addr
        self.seq = 1
        self.needs_complete = False
        self.pending: dict[str, dict | None] = {}
        self.inflight = False
        self.retry_at = 0.0
        self.failures = 0


class Dispatcher(Component):
    name = "dispatcher"

    def __init__(self, store, tls_paths: tuple[str, str] | None = None):
        super().__init__()
        self._store = store
        self._lock = threading.Lock()
        self._sessions: dict[str, _Session] = {}
        self._grace: dict[str, float] = {}
        self._statuses: dict[str, tuple[str, dict]] = {}   # task id -> (node id, status)
        self._pool = None
        self._pools: dict[str, urllib3.HTTPSConnectionPool] = {}
        self._ctx = None
        if tls_paths is not None:
            bundle, ca = tls_paths
            self._ctx = tls.ReloadingContext(
                lambda: tls.client_context(bundle, ca, server_name_check=True),
                [bundle, ca], check_interval=1.0)
        self._ctx_generation = -1
        self.pushes = 0
        self.push_failures = 0
        self.status_writes = 0

    # -- periods ------------------------------------------------------------------------
    def period(self) -> float:
        c = objects.cluster(self._store)
        base = float(c["spec"]["dispatcher"]["heartbeat_period"]) if c else objects.DEFAULT_HEARTBEAT
        return max(base, self._store.count("node") / MAX_HEARTBEATS_PER_S)

    def _jittered(self) -> float:
        return round(self.period() * random.uniform(0.9, 1.1), 3)

    # -- agent calls ----------------------------------------------------------------------
    def register(self, node_id: str, description: dict, addr: str | None,
                 agent_addr: str | None) -> dict:
        node = self._mark(node_id, "ready", "", description=description, addr=addr,
                          agent_addr=agent_addr)
        period = self._jittered()
        session = _Session(new_id(), time.monotonic() + period * GRACE_MULTIPLIER, agent_addr)
        tasks = [agent_view(t) for t in self._store.by_index("task", "node_id", node_id)
                 if pushed_to_agent(t)]
        with self._lock:
            self._sessions[node_id] = session
            self._grace.pop(node_id, None)
        return {"session_id": session.id, "heartbeat_period": period,
                "assignments": {"type": "complete", "seq": 1, "tasks": tasks},
                **self.view(node)}

    def heartbeat(self, node_id: str, session_id: str) -> dict:
        period = self._jittered()
        with self._lock:
            session = self._session(node_id, session_id)
            session.deadline = time.monotonic() + period * GRACE_MULTIPLIER
        node = self._store.get("node", node_id)
        if node is None:
            raise SessionInvalid("node removed")
        return {"heartbeat_period": period, **self.view(node)}

    def update_status(self, node_id: str, session_id: str, updates: list[dict]) -> int:
        with self._lock:
            self._session(node_id, session_id)
        accepted = 0
        for u in updates:
            task = self._store.get("task", u["task_id"])
            if task is None or task["node_id"] != node_id:
                continue
            with self._lock:
                self._statuses[u["task_id"]] = (node_id, u["status"])
            accepted += 1
        self._store.hub.wake_all()      # the main loop writes them now
        return accepted

    def _session(self, node_id, session_id) -> _Session:
        session = self._sessions.get(node_id)
        if session is None or session.id != session_id:
            raise SessionInvalid("unknown session; register again")
        return session

    def view(self, node) -> dict:
        return {
            "node": {
                "id": node["id"],
                "role": node.get("role"),
                "desired_role": node["spec"]["role"],
                "availability": node["spec"]["availability"],
                "state": node["status"]["state"],
            },
            "managers": objects.manager_api_addrs(self._store),
        }

    # -- node state --------------------------------------------------------------------------
    def _mark(self, node_id, state, message, description=None, addr=None, agent_addr=None):
        def change(node):
            new = dict(node, status={"state": state, "message": message})
            if description is not None:
                new["description"] = dict(node.get("description") or {}, **description)
                if description.get("hostname"):
                    new["hostname"] = description["hostname"]
            if addr:
                new["addr"] = addr
            if agent_addr:
                new["agent_addr"] = agent_addr
            return new

        try:
            return self._store.update("node", node_id, change)
        except TxnFailed as exc:
            if exc.code == "not_found":
                raise SessionInvalid("node removed") from None
            raise

    # -- main loop ----------------------------------------------------------------------------
    def run(self):
        self._pool = concurrent.futures.ThreadPoolExecutor(PUSH_WORKERS, "assignment-push")
        period = self.period()
        deadline = time.monotonic() + period * LEADER_CHANGE_MULTIPLIER
        with self._lock:
            for node in self._store.list("node"):
                if node["status"]["state"] != "down" and node["id"] not in self._sessions:
                    self._grace[node["id"]] = deadline
        watcher = self._store.watch()
        try:
            while not self.stopping.is_set():
                events = watcher.next(timeout=FLUSH_INTERVAL)
                if events:
                    # gather a burst of task changes into one push per node
                    time.sleep(PUSH_DEBOUNCE)
                    events += watcher.next(timeout=0)
                for e in events:
                    self._on_event(e)
                self._expire()
                self._flush_statuses()
                self._push_all()
        finally:
            self._pool.shutdown(wait=False, cancel_futures=True)

    def wake(self):
        self._store.hub.wake_all()

    def _on_event(self, e):
        if e.action == "reset":
            with self._lock:
                for s in self._sessions.values():
                    s.needs_complete = True
            return
        if e.kind != "task":
            return
        old, new = e.old, e.object
        was, now = pushed_to_agent(old), pushed_to_agent(new)
        if not was and not now:
            return
        if was and now and old["node_id"] == new["node_id"] and \
                old["desired_state"] == new["desired_state"] and \
                old["spec_version"] == new["spec_version"] and old["spec"] == new["spec"]:
            return  # only the agent's own status changed
        with self._lock:
            if was and (not now or old["node_id"] != new["node_id"]):
                s = self._sessions.get(old["node_id"])
                if s is not None:
                    s.pending[old["id"]] = None
            if now:
                s = self._sessions.get(new["node_id"])
                if s is not None:
                    s.pending[new["id"]] = agent_view(new)

    def _expire(self):
        now = time.monotonic()
        with self._lock:
            expired = [n for n, s in self._sessions.items() if s.deadline < now]
            expired += [n for n, d in self._grace.items() if d < now]
            for n in expired:
                self._sessions.pop(n, None)
                self._grace.pop(n, None)
        for node_id in expired:
            try:
                self._mark(node_id, "down", "heartbeat failure")
                log.info("node %s is down (heartbeat failure)", node_id)
            except SessionInvalid:
                pass
            except StoreError as exc:
                log.warning("could not mark %s down: %s", node_id, exc)
                with self._lock:
                    self._grace[node_id] = now + 1.0

    # -- status writes ---------------------------------------------------------------------------
    def _flush_statuses(self):
        with self._lock:
            batch, self._statuses = self._statuses, {}
        if not batch:
            return
        txns, keys = [], []
        for task_id, (node_id, status) in batch.items():
            task = self._store.get("task", task_id)
            if task is None or task["node_id"] != node_id:
                continue
            current = task["status"]
            try:
                if taskmodel.before(status["state"], current["state"]):
                    continue
            except KeyError:
                continue
            merged = dict(current, **{k: status.get(k) for k in
                                      ("state", "message", "err", "exit_code", "container_id")})
            merged["timestamp"] = time.time()
            if all(merged.get(k) == current.get(k) for k in ("state", "message", "err",
                                                             "exit_code", "container_id")):
                continue
            txns.append([Op.update("task", dict(task, status=merged), version=task["version"])])
            keys.append((task_id, node_id, status))
        if not txns:
            return
        results = self._store.commit_many(txns)
        retry = {}
        for (task_id, node_id, status), result in zip(keys, results):
            if isinstance(result, TxnFailed) and result.code == "conflict":
                retry[task_id] = (node_id, status)
            elif not isinstance(result, Exception):
                self.status_writes += 1
        if retry:
            with self._lock:
                for task_id, value in retry.items():
                    self._statuses.setdefault(task_id, value)

    # -- pushing assignments ------------------------------------------------------------------------
    def _push_all(self):
        now = time.monotonic()
        jobs = []
        with self._lock:
            for node_id, s in self._sessions.items():
                if s.inflight or not s.agent_addr or now < s.retry_at:
                    continue
                if not s.needs_complete and not s.pending:
                    continue
                if s.needs_complete:
                    tasks = [agent_view(t) for t in self._store.by_index("task", "node_id", node_id)
                             if pushed_to_agent(t)]
                    msg = {"type": "complete", "seq": s.seq + 1, "tasks": tasks}
                    sent = dict(s.pending)
                else:
                    sent = dict(s.pending)
                    msg = {"type": "incremental", "seq": s.seq + 1, "applies_to": s.seq,
                           "tasks": [v for v in sent.values() if v is not None],
                           "removed": [k for k, v in sent.items() if v is None]}
                msg["session_id"] = s.id
                s.inflight = True
                jobs.append((node_id, s, msg, sent))
        for job in jobs:
            self._pool.submit(self._push, *job)

    def _pool_for(self, node_id, addr):
        ctx = self._ctx.get()
        if self._ctx.generation != self._ctx_generation:
            self._pools.clear()
            self._ctx_generation = self._ctx.generation
        key = f"{node_id}@{addr}"
        pool = self._pools.get(key)
        if pool is None:
            host, port = addr.rsplit(":", 1)
            pool = urllib3.HTTPSConnectionPool(
                host.strip("[]"), int(port), maxsize=2, ssl_context=ctx, server_hostname=node_id,
                assert_hostname=node_id, timeout=urllib3.Timeout(connect=2.0, read=10.0),
                retries=False)
            self._pools[key] = pool
        return pool

    def _push(self, node_id, session, msg, sent):
        ok, need_complete = False, False
        try:
            resp = self._pool_for(node_id, session.agent_addr).request(
                "POST", "/v1/assignments", body=json.dumps(msg).encode(),
                headers={"Content-Type": "application/json"})
            if resp.status == 200:
                ok = True
            elif resp.status == 409:
                need_complete = True
            else:
                log.info("assignment push to %s: HTTP %s", node_id, resp.status)
                need_complete = True
        except Exception as exc:  # network trouble: try again with a complete set
            log.info("assignment push to %s failed: %s", node_id, exc)
            need_complete = True
        with self._lock:
            session.inflight = False
            if ok:
                self.pushes += 1
                session.seq = msg["seq"]
                session.failures = 0
                if msg["type"] == "complete":
                    session.needs_complete = False
                for task_id, view in sent.items():
                    if session.pending.get(task_id, 0) == view:
                        del session.pending[task_id]
            else:
                self.push_failures += 1
                session.needs_complete = need_complete
                session.failures += 1
                session.retry_at = time.monotonic() + min(0.05 * 2 ** session.failures, 2.0)
