"""Agent sessions (leader only).

An agent registers (the node becomes READY), then heartbeats at the period
the dispatcher hands out (the cluster's heartbeat period, jittered by ±10 %).
A node whose heartbeat is late by more than 3 periods is marked DOWN. After a
leader change the new dispatcher knows no sessions: every node that was not
DOWN gets 6 periods to register again before it is marked DOWN.

Node state is written only when it changes, never per heartbeat.
"""

from __future__ import annotations

import logging
import random
import threading
import time

from ..common.component import Component
from . import objects
from .store.store import StoreError, TxnFailed, new_id

log = logging.getLogger(__name__)

GRACE_MULTIPLIER = 3
LEADER_CHANGE_MULTIPLIER = 6


class SessionInvalid(Exception):
    pass


class Dispatcher(Component):
    name = "dispatcher"

    def __init__(self, store):
        super().__init__()
        self._store = store
        self._lock = threading.Lock()
        self._sessions: dict[str, tuple[str, float]] = {}   # node id -> (session id, deadline)
        self._grace: dict[str, float] = {}                  # node id -> deadline (no session yet)

    def period(self) -> float:
        c = objects.cluster(self._store)
        return float(c["spec"]["dispatcher"]["heartbeat_period"]) if c else objects.DEFAULT_HEARTBEAT

    def _jittered(self) -> float:
        p = self.period()
        return round(p * random.uniform(0.9, 1.1), 3)

    # -- agent calls --------------------------------------------------------------
    def register(self, node_id: str, description: dict, addr: str | None) -> dict:
        node = self._mark(node_id, "ready", "", description=description, addr=addr)
        session = new_id()
        period = self._jittered()
        with self._lock:
            self._sessions[node_id] = (session, time.monotonic() + period * GRACE_MULTIPLIER)
            self._grace.pop(node_id, None)
        return {"session_id": session, "heartbeat_period": period, **self.view(node)}

    def heartbeat(self, node_id: str, session_id: str) -> dict:
        period = self._jittered()
        with self._lock:
            current = self._sessions.get(node_id)
            if current is None or current[0] != session_id:
                raise SessionInvalid("unknown session; register again")
            self._sessions[node_id] = (session_id, time.monotonic() + period * GRACE_MULTIPLIER)
        node = self._store.get("node", node_id)
        if node is None:
            raise SessionInvalid("node removed")
        return {"heartbeat_period": period, **self.view(node)}

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

    # -- state writes ---------------------------------------------------------------
    def _mark(self, node_id, state, message, description=None, addr=None):
        def change(node):
            new = dict(node, status={"state": state, "message": message})
            if description is not None:
                new["description"] = dict(node.get("description") or {}, **description)
                if description.get("hostname"):
                    new["hostname"] = description["hostname"]
            if addr:
                new["addr"] = addr
            return new

        try:
            return self._store.update("node", node_id, change)
        except TxnFailed as exc:
            if exc.code == "not_found":
                raise SessionInvalid("node removed") from None
            raise

    def run(self):
        period = self.period()
        deadline = time.monotonic() + period * LEADER_CHANGE_MULTIPLIER
        with self._lock:
            for node in self._store.list("node"):
                if node["status"]["state"] != "down" and node["id"] not in self._sessions:
                    self._grace[node["id"]] = deadline
        while not self.sleep(min(0.25, self.period() / 4)):
            now = time.monotonic()
            with self._lock:
                expired = [n for n, (_, d) in self._sessions.items() if d < now]
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
