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
applied twice. Pushes go out from the leader's push process
(``pushproc.py``, running ``pusher.py``) over one kept-alive connection per
agent, opened when the agent registers; changes
made while a node's push is in flight (a burst of service creations) go
together in its next one. Only changes that matter to the agent are pushed
(a task newly assigned, a new desired state or spec, a deletion) — not the agent's
own status reports.

Trust. Each answer names the leader (its node id: the only manager whose
pushes and log reads the agent accepts for this session), and, when the
agent does not hold them yet (it says which version it holds), the node
ids of the current managers (who may read its metrics) and the cluster's
revocation list (node ids and certificate serials).

Network keys. Each answer also tells the agent about its WireGuard key
(``network_key``: the generation and public key recorded, and the
generation asked for when its key is due); a heartbeat that reports a new
key (``network_key: {public_key, generation}``) records it, and so does a
registration with a key not recorded before (``manager/networkkeys.py``).
The front sends such a heartbeat back to the API, which writes it.

Addresses. A registration records the address the agent connected from
(``status.addr``, what ``node.ip`` constraints use); the node's API and
agent addresses take that host with the ports the node reports, unless the
node was given its advertise address explicitly (NAT).

Status. Agents report task status as it changes, in batches; the dispatcher
checks that each task belongs to the reporting node, keeps the latest per
task, drops any that would move a task's state backwards, and writes what
has arrived at once, as independent transactions sharing Raft entries,
without waiting for them: one batch is in flight at a time and reports
arriving meanwhile go in the next. A report also counts as a sign of life.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import threading
import time
from typing import Any

from ...ca import revocation
from ...common.component import Component
from ...common.config import ConfigError, join_addr, split_addr
from ...model import objects
from ...model import task as taskmodel
from ...model.validation import error_body
from .. import networkkeys
from ..store import queries
from ..store.store import NotLeader, Op, StoreError, TxnFailed, new_id
from . import netviews
from .pushproc import PushProcess

log = logging.getLogger(__name__)

GRACE_MULTIPLIER = 3
LEADER_CHANGE_MULTIPLIER = 6
STALL_TOLERANCE = 1.0      # a main-loop pass later than this is a stall, not a quiet cluster
MAX_HEARTBEATS_PER_S = 200
FLUSH_INTERVAL = 0.05
PUSH_DEBOUNCE = 0.005
AGENT_FIELDS = ("id", "service_id", "service_name", "slot", "node_id", "spec", "spec_version",
                "ports", "desired_state", "networks")


class SessionInvalid(Exception):
    pass


def at_host(addr: str | None, host: str) -> str | None:
    """``addr`` with its host replaced by ``host`` (the port kept)."""
    if not addr:
        return addr
    try:
        _, port = split_addr(addr, default_port=None)
    except ConfigError:
        return addr
    return join_addr(host, port)


def agent_view(task: dict) -> dict:
    view = {k: task.get(k) for k in AGENT_FIELDS}
    if "service_labels" in task:        # only tasks whose templates read them
        view["service_labels"] = task["service_labels"]
    return view


def pushed_to_agent(task: dict | None) -> bool:
    return task is not None and task.get("node_id") is not None and \
        taskmodel.at_least(task["status"]["state"], "assigned")


class _Session:
    __slots__ = ("id", "deadline", "agent_addr", "seq", "needs_complete", "pending", "inflight",
                 "retry_at", "failures", "nets_pending", "nets_held")

    def __init__(self, session_id: str, deadline: float, agent_addr: str | None) -> None:
        self.id = session_id
        self.deadline = deadline
        self.agent_addr = agent_addr
        self.seq = 1
        self.needs_complete = False
        self.pending: dict[str, dict | None] = {}
        self.inflight = False
        self.retry_at = 0.0
        self.failures = 0
        # networks to send again (id -> change count when marked), and
        # those the agent holds
        self.nets_pending: dict[str, int] = {}
        self.nets_held: set[str] = set()


class Dispatcher(Component):
    name = "dispatcher"

    def __init__(self, store, tls_paths: tuple[str, str] | None = None,
                 front: tuple[str, str, str] | None = None, node_id: str | None = None):
        super().__init__()
        self._store = store
        self._node_id = node_id         # this manager's: the leader agents trust
        # ((cluster version, manager ids), trust block) of the last trust()
        self._trust_cache: tuple[tuple[Any, tuple[str, ...]], dict[str, Any]] | None = None
        self._lock = threading.Lock()
        self._sessions: dict[str, _Session] = {}
        self._grace: dict[str, float] = {}
        self._statuses: dict[str, tuple[str, dict]] = {}   # task id -> (node id, status)
        # Pushes go out from a child process (pushproc.py), which also
        # serves the front (front.py) when given ``front``: (listen address,
        # advertised address, cluster id). Without TLS files (tests of the
        # logic alone) nothing is pushed.
        self._front_addr = front[1] if front is not None else None
        self._pusher = None
        if tls_paths is not None:
            self._pusher = PushProcess(*tls_paths, front=None if front is None else
                                       (front[0], front[2], self.front_requests))
        self.front_requests_served = 0
        self._woken = False
        self._last_pass = time.monotonic()
        self._writing = False       # a batch of status writes is in flight
        self._nets = netviews.NetworkTracker()      # under _lock
        self._net_changes = 0
        self.pushes = 0
        self.push_failures = 0
        self.status_writes = 0

    # -- periods ------------------------------------------------------------------------
    def period(self) -> float:
        c = queries.cluster(self._store)
        if c:
            base = float(c["spec"]["dispatcher"]["heartbeat_period"])
        else:
            base = objects.DEFAULT_HEARTBEAT
        return max(base, self._store.count("node") / MAX_HEARTBEATS_PER_S)

    def _jittered(self) -> float:
        return round(self.period() * random.uniform(0.9, 1.1), 3)

    # -- agent calls ----------------------------------------------------------------------
    def register(self, node_id: str, description: dict, addr: str | None,
                 agent_addr: str | None, observed_ip: str | None = None,
                 explicit: bool = False) -> dict:
        if observed_ip and not explicit:
            addr = at_host(addr, observed_ip)
            agent_addr = at_host(agent_addr, observed_ip)
        node = self._mark(node_id, "ready", "", description=description, addr=addr,
                          agent_addr=agent_addr, ip=observed_ip)
        period = self._jittered()
        session = _Session(new_id(), time.monotonic() + period * GRACE_MULTIPLIER, agent_addr)
        tasks = [agent_view(t) for t in self._store.by_index("task", "node_id", node_id)
                 if pushed_to_agent(t)]
        with self._lock:
            self._sessions[node_id] = session
            self._grace.pop(node_id, None)
            networks = self._network_views(node_id, self._nets.of_node(node_id))
            session.nets_held = {v["id"] for v in networks}
        if agent_addr and self._pusher is not None:
            self._pusher.warm(node_id, agent_addr)
        reply = {"session_id": session.id, "heartbeat_period": period,
                 "assignments": {"type": "complete", "seq": 1, "tasks": tasks,
                                 "networks": networks},
                 **self.view(node)}
        if self._pusher is not None and self._pusher.front_listening:
            reply["dispatcher_addr"] = self._front_addr
        return reply

    def heartbeat(self, node_id: str, session_id: str, trust: str | None = None,
                  network_key: dict | None = None) -> dict:
        period = self._renew(node_id, session_id)
        node = self._store.get("node", node_id)
        if node is None:
            raise SessionInvalid("node removed")
        if network_key is not None and not networkkeys.is_recorded(node, network_key):
            node = self._record_key(node_id, network_key)
        if node["status"]["state"] != "ready":
            # The session is alive, so the node is: whoever wrote it down
            # (a deposed leader's last pass, an expiry racing this
            # heartbeat) was wrong, and a heartbeat is the proof.
            node = self._mark(node_id, "ready", "")
        return {"heartbeat_period": period, **self.view(node, trust)}

    def update_status(self, node_id: str, session_id: str, updates: list[dict]) -> int:
        # A report proves the agent alive as well as a heartbeat does: when
        # reports queue up in front of heartbeats, the node stays up.
        alive_until = time.monotonic() + self.period() * GRACE_MULTIPLIER
        with self._lock:
            session = self._session(node_id, session_id)
            session.deadline = max(session.deadline, alive_until)
        accepted = []
        for u in updates:
            task = self._store.get("task", u["task_id"])
            if task is not None and task["node_id"] == node_id:
                accepted.append((u["task_id"], (node_id, u["status"])))
        if accepted:
            with self._lock:
                self._statuses.update(accepted)
        if accepted:
            self._wake_once()           # the main loop writes them now
        return len(accepted)

    def front_requests(self, requests: list) -> list:
        """Heartbeats and status reports from the front (front.py), already
        validated and authenticated: [[id, kind, node id, body, serial], ...]
        -> [[id, HTTP status, body], ...]. Never waits for Raft: a heartbeat
        that would change the node's state is sent back to the API."""
        c = queries.cluster(self._store)
        revoked = c.get("revoked", {}) if c else {}
        answers = []
        for request_id, kind, node_id, body, *rest in requests:
            serial = rest[0] if rest else None
            node = self._store.get("node", node_id) if node_id not in revoked else None
            try:
                if node is None:
                    answer = 401, error_body("revoked",
                                             "unknown node (removed from the cluster?)")
                elif revocation.serial_revoked(revoked, serial):
                    answer = 401, error_body("certificate_revoked",
                                             "this certificate has been revoked")
                elif kind == "heartbeat":
                    answer = self._front_heartbeat(node, body["session_id"], body.get("trust"),
                                                   body.get("network_key"))
                elif kind == "status":
                    answer = 200, {"accepted": self.update_status(node_id, body["session_id"],
                                                                  body["updates"])}
                else:
                    answer = 404, error_body("not_found", f"unknown request {kind!r}")
            except SessionInvalid as exc:
                answer = 409, error_body("session_invalid", str(exc))
            except (KeyError, TypeError):
                answer = 400, error_body("invalid", "malformed request")
            answers.append([request_id, *answer])
        self.front_requests_served += len(requests)
        return answers

    def _front_heartbeat(self, node, session_id, trust=None, network_key=None):
        if node["status"]["state"] != "ready" or \
                not networkkeys.is_recorded(node, network_key):
            return 421, error_body("misdirected", "send this heartbeat to the API")
        period = self._renew(node["id"], session_id)
        return 200, {"heartbeat_period": period, **self.view(node, trust)}

    def _renew(self, node_id, session_id) -> float:
        """A heartbeat on the session: its deadline moves; the next period."""
        period = self._jittered()
        with self._lock:
            session = self._session(node_id, session_id)
            session.deadline = time.monotonic() + period * GRACE_MULTIPLIER
        return period

    def _session(self, node_id, session_id) -> _Session:
        session = self._sessions.get(node_id)
        if session is None or session.id != session_id:
            raise SessionInvalid("unknown session; register again")
        return session

    def view(self, node, trust: str | None = None) -> dict:
        """What every answer to an agent carries; ``trust`` is the version
        of the managers and revocation list the agent holds."""
        block = self.trust()
        return {
            "node": {
                "id": node["id"],
                "role": node.get("role"),
                "desired_role": node["spec"]["role"],
                "availability": node["spec"]["availability"],
                "state": node["status"]["state"],
                "network_key": networkkeys.agent_view(node),
            },
            "managers": queries.manager_api_addrs(self._store),
            "leader_id": self._node_id,
            "trust": block if block["version"] != trust else {"version": block["version"]},
        }

    def trust(self) -> dict:
        """The node ids of the current managers and the revocation list, with
        a version (a digest of them); rebuilt only when they change."""
        c = queries.cluster(self._store)
        managers = tuple(sorted(n["id"] for n in self._store.by_index("node", "role", "manager")))
        key = (c.get("version") if c else None, managers)
        cached = self._trust_cache
        if cached is None or cached[0] != key:
            nodes, serials = revocation.split(c.get("revoked") if c else None)
            block: dict[str, Any] = {"managers": list(managers), "revoked_nodes": nodes,
                     "revoked_serials": serials}
            block["version"] = hashlib.sha256(
                json.dumps(block, sort_keys=True).encode()).hexdigest()[:32]
            self._trust_cache = cached = (key, block)
        return cached[1]

    # -- node state --------------------------------------------------------------------------
    def _record_key(self, node_id: str, report: dict) -> dict:
        """The node's agent reported a new key: recorded if it answers the
        rotation asked of it (its peers are told through the pictures)."""
        now = time.time()
        try:
            node = self._store.update("node", node_id, lambda n: networkkeys.reported(
                n, report["public_key"], report["generation"], now))
        except TxnFailed as exc:
            if exc.code == "not_found":
                raise SessionInvalid("node removed") from None
            raise
        if networkkeys.is_recorded(node, report):
            log.info("node %s: network key generation %s recorded", node_id[:12],
                     report["generation"])
        return node

    def _mark(self, node_id, state, message, description=None, addr=None, agent_addr=None,
              ip=None):
        if description is not None:
            keys = networkkeys.settings(queries.cluster(self._store))
            now = time.time()

        def change(node):
            status = {"state": state, "message": message}
            seen = ip or (node.get("status") or {}).get("addr")
            if seen:
                status["addr"] = seen
            new = dict(node, status=status)
            if description is not None:
                new["description"] = dict(node.get("description") or {}, **description)
                if description.get("hostname"):
                    new["hostname"] = description["hostname"]
                new = networkkeys.registered(node, new, keys, now)
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
        if self._pusher is not None:
            self._pusher.start()
        period = self.period()
        self._last_pass = time.monotonic()
        deadline = self._last_pass + period * LEADER_CHANGE_MULTIPLIER
        with self._lock:
            for node in self._store.list("node"):
                if node["status"]["state"] != "down" and node["id"] not in self._sessions:
                    self._grace[node["id"]] = deadline
            self._nets.load(self._store.list("task"))
        watcher = self._store.watch()
        try:
            while not self.stopping.is_set():
                events = watcher.next(timeout=FLUSH_INTERVAL)
                if events:
                    # gather a burst of task changes into one push per node
                    time.sleep(PUSH_DEBOUNCE)
                    events += watcher.next(timeout=0)
                self._woken = False
                self._on_events(events)
                self._expire()
                self._flush_statuses()
                self._push_all()
        except NotLeader:
            # Leadership lost under way: the manager stops this component.
            log.info("dispatcher stopping: this manager is no longer the leader")
        finally:
            if self._pusher is not None:
                self._pusher.stop()

    def wake(self):
        self._store.hub.wake_all()

    def _wake_once(self):
        """Wake the main loop unless a wake-up is already on its way."""
        if not self._woken:
            self._woken = True
            self.wake()

    def _on_events(self, events):
        """Note what each node must be sent for these changes: worked out
        first, then recorded under one hold of the lock (agents' requests
        take it too; a lock taken per event under GIL contention cost more
        than the work itself)."""
        reset = False
        changes = []                # (node id, task id, agent view or None)
        net_events = []
        for e in events:
            if e.action == "reset":
                reset = True
                continue
            if e.kind in netviews.KINDS:
                net_events.append(e)
            if e.kind != "task":
                continue
            old, new = e.old, e.object
            was, now = pushed_to_agent(old), pushed_to_agent(new)
            if not was and not now:
                continue
            if was and now and old["node_id"] == new["node_id"] and \
                    old["desired_state"] == new["desired_state"] and \
                    old["spec_version"] == new["spec_version"] and old["spec"] == new["spec"]:
                continue  # only the agent's own status changed
            if was and (not now or old["node_id"] != new["node_id"]):
                changes.append((old["node_id"], old["id"], None))
            if now:
                changes.append((new["node_id"], new["id"], agent_view(new)))
        if not reset and not changes and not net_events:
            return
        tasks = self._store.list("task") if reset else None
        with self._lock:
            if reset:
                for s in self._sessions.values():
                    s.needs_complete = True
                self._nets.load(tasks or ())
            sessions = self._sessions
            for node_id, task_id, view in changes:
                s = sessions.get(node_id)
                if s is not None:
                    s.pending[task_id] = view
            for e in net_events:
                self._nets.note(e)
            if self._nets.dirty:
                self._net_changes += 1
                for nid in self._nets.dirty:
                    members = self._nets.members.get(nid, ())
                    for node_id, s in sessions.items():
                        if node_id in members or nid in s.nets_held:
                            s.nets_pending[nid] = self._net_changes
                self._nets.dirty = set()

    def _expire(self):
        now = time.monotonic()
        stalled = now - self._last_pass - STALL_TOLERANCE
        self._last_pass = now
        with self._lock:
            if stalled > 0:
                # This loop did not run for a while (the process was paused
                # or starved of CPU): the agents could not reach it either.
                # Their deadlines move by the time lost, instead of every
                # session expiring at once on waking up.
                for sess in self._sessions.values():
                    sess.deadline += stalled
                for n in self._grace:
                    self._grace[n] += stalled
            expired = [n for n, s in self._sessions.items() if s.deadline < now]
            expired += [n for n, d in self._grace.items() if d < now]
            for n in expired:
                self._sessions.pop(n, None)
                self._grace.pop(n, None)
        for node_id in expired:
            if self._pusher is not None:
                self._pusher.forget(node_id)
            try:
                self._mark(node_id, "down", "heartbeat failure")
                log.info("node %s is down (heartbeat failure)", node_id)
            except SessionInvalid:
                pass
            except NotLeader:
                raise
            except StoreError as exc:
                log.warning("could not mark %s down: %s", node_id, exc)
                with self._lock:
                    self._grace[node_id] = now + 1.0

    # -- status writes ---------------------------------------------------------------------------
    def _flush_statuses(self):
        # One batch in flight at a time, written without waiting for it
        # here (pushes go on meanwhile); reports arriving meanwhile are
        # merged per task and go in the next batch.
        if self._writing:
            return
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
        self._writing = True
        try:
            self._store.submit_many(txns, lambda results: self._written(keys, results))
        except StoreError:
            self._writing = False
            raise

    def _written(self, keys, results):
        # Runs on the Raft thread: only bookkeeping here.
        # A conflict (the task changed meanwhile) or a write whose outcome is
        # unknown (a leadership change under way) is tried again; a status
        # the store refused for good (the task is gone) is dropped.
        retry = {}
        for (task_id, node_id, status), result in zip(keys, results):
            if not isinstance(result, Exception):
                self.status_writes += 1
            elif not isinstance(result, TxnFailed) or result.code == "conflict":
                retry[task_id] = (node_id, status)
        if retry:
            with self._lock:
                for task_id, value in retry.items():
                    self._statuses.setdefault(task_id, value)
        self._writing = False
        if self._statuses:
            self._wake_once()

    # -- pushing assignments ------------------------------------------------------------------
    def _network_views(self, node_id: str, network_ids) -> list[dict]:
        """The pictures of those networks the node still takes part in."""
        members = self._nets.members
        views = []
        for nid in sorted(network_ids):
            if node_id in members.get(nid, ()):
                v = netviews.view(self._store, nid)
                if v is not None:
                    views.append(v)
        return views

    def _push_all(self):
        now = time.monotonic()
        jobs = []
        with self._lock:
            for node_id, s in self._sessions.items():
                if s.inflight or not s.agent_addr or now < s.retry_at:
                    continue
                if not s.needs_complete and not s.pending and not s.nets_pending:
                    continue
                if s.needs_complete:
                    tasks = [agent_view(t) for t in self._store.by_index("task", "node_id", node_id)
                             if pushed_to_agent(t)]
                    msg = {"type": "complete", "seq": s.seq + 1, "tasks": tasks,
                           "networks": self._network_views(node_id, self._nets.of_node(node_id))}
                    sent = dict(s.pending)
                else:
                    sent = dict(s.pending)
                    msg = {"type": "incremental", "seq": s.seq + 1, "applies_to": s.seq,
                           "tasks": [v for v in sent.values() if v is not None],
                           "removed": [k for k, v in sent.items() if v is None]}
                    if s.nets_pending:
                        views = self._network_views(node_id, s.nets_pending)
                        msg["networks"] = views
                        msg["networks_removed"] = sorted(set(s.nets_pending) -
                                                         {v["id"] for v in views})
                msg["session_id"] = s.id
                s.inflight = True
                jobs.append((node_id, s, msg, (sent, dict(s.nets_pending))))
        for node_id, s, msg, sent in jobs:
            # encoded as JSON in the push process, off this process's GIL
            pushed = self._pusher is not None and self._pusher.push(
                node_id, s.agent_addr, msg,
                lambda status, error, n=node_id, s=s, m=msg, t=sent:
                self._pushed(n, s, m, t, status, error))
            if not pushed:
                with self._lock:
                    s.inflight = False

    def _pushed(self, node_id, session, msg, sent_both, status, error):
        sent, nets_sent = sent_both
        # Runs on the pusher's thread.
        ok, need_complete = False, False
        if error is not None:       # network trouble: try again with a complete set
            log.info("assignment push to %s failed: %s", node_id, error)
            need_complete = True
        elif status == 200:
            ok = True
        else:
            if status != 409:
                log.info("assignment push to %s: HTTP %s", node_id, status)
            need_complete = True
        with self._lock:
            session.inflight = False
            if ok:
                self.pushes += 1
                session.seq = msg["seq"]
                session.failures = 0
                if msg["type"] == "complete":
                    session.needs_complete = False
                    session.nets_held = {v["id"] for v in msg["networks"]}
                else:
                    session.nets_held |= {v["id"] for v in msg.get("networks", ())}
                    session.nets_held -= set(msg.get("networks_removed", ()))
                for nid, change in nets_sent.items():
                    if session.nets_pending.get(nid) == change:
                        del session.nets_pending[nid]
                for task_id, view in sent.items():
                    if session.pending.get(task_id, 0) == view:
                        del session.pending[task_id]
            else:
                self.push_failures += 1
                session.needs_complete = need_complete
                session.failures += 1
                session.retry_at = time.monotonic() + min(0.05 * 2 ** session.failures, 2.0)
        if ok and (session.pending or session.needs_complete or session.nets_pending):
            self._wake_once()       # more changed while this push was in flight
