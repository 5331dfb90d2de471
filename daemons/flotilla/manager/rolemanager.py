"""Reconciles desired roles with Raft membership (leader only).

Demotion: the member leaves Raft first and only then is the node's observed
role set to worker, so a node never gets a worker certificate while it still
votes. A leader that is being demoted hands leadership over first; the next
leader finishes the job. Promotion needs nothing here: the node sees its new
desired role, renews its certificate as a manager, starts its manager and
asks to join Raft (see the raft blueprint).
"""

from __future__ import annotations

import logging
import time

from ..common.component import Component
from .raft.membership import MembershipBusy, MembershipError, QuorumError
from .store.store import StoreError

log = logging.getLogger(__name__)


PERIOD = 1.0


class RoleManager(Component):
    name = "role-manager"

    def __init__(self, store, raft, membership):
        super().__init__()
        self._store = store
        self._raft = raft
        self._membership = membership

    def run(self):
        watcher = self._store.watch()
        due = True
        next_pass = 0.0
        while not self.stopping.is_set():
            if due or time.monotonic() >= next_pass:
                try:
                    self.reconcile()
                except Exception:
                    log.exception("role reconciliation failed")
                next_pass = time.monotonic() + PERIOD
            # Only node changes (and a pass every second) matter: task
            # changes, thousands a second at times, do not wake a pass.
            events = watcher.next(timeout=max(0.0, next_pass - time.monotonic()))
            due = any(e.kind == "node" or e.action == "reset" for e in events)

    def reconcile(self):
        nodes = self._store.list("node")
        manager_addrs = set()
        for node in nodes:
            mgr = node.get("manager") or {}
            if node.get("role") == "manager" and node["spec"]["role"] == "worker":
                self._demote(node)
            elif mgr.get("raft_addr"):
                manager_addrs.add(mgr["raft_addr"])
        # Raft members with no manager node behind them (the node was removed
        # or demoted while a change was half done) are evicted.
        for addr in self._raft.member_addresses():
            if addr != self._raft.self_address and addr not in manager_addrs:
                if any((n.get("manager") or {}).get("raft_addr") == addr for n in nodes):
                    continue
                try:
                    self._membership.check_removal(addr)
                    self._membership.remove(addr)
                    log.info("evicted stale raft member %s", addr)
                except (QuorumError, MembershipBusy, MembershipError) as exc:
                    log.warning("cannot evict raft member %s yet: %s", addr, exc)

    def _demote(self, node):
        addr = (node.get("manager") or {}).get("raft_addr")
        if addr == self._raft.self_address:
            log.info("this manager is being demoted: handing leadership over")
            self._raft.transfer_leadership()
            return
        if addr and addr in self._raft.member_addresses():
            try:
                self._membership.remove(addr)
            except (MembershipBusy, MembershipError) as exc:
                log.warning("demoting %s: %s", node["id"], exc)
                return
            log.info("node %s left raft", node["id"])
        try:
            self._store.update("node", node["id"], lambda n: dict(n, role="worker", manager=None))
            log.info("node %s is now a worker", node["id"])
        except StoreError as exc:
            log.info("demotion of %s will be retried: %s", node["id"], exc)
