"""The allocator (leader only): addresses on networks.

- A task whose service is on networks is created ``new``; the allocator
  gives it one address per network (with the service's aliases there) and
  moves it to ``pending``, where the scheduler takes it (SwarmKit's NEW ->
  PENDING). A task whose network is gone, or whose network has no address
  left, stays ``new`` with the reason as its status message and is tried
  again when addresses are released.
- A service in ``vip`` mode gets one virtual IP per network it is on
  (``service.virtual_ips``); they follow its spec (networks added or
  removed, ``dnsrr``), and are released when it is removed.

(Nodes take no address: every engine's bridge on a network has the
network's gateway address, which no broadcast carries to another host;
containers use it as their gateway and their resolver's address.)

Addresses are released when their holder is gone: a task once it has
finished (or is deleted), a service once removed, both once their network
is removed. The allocator's view of what is in
use is rebuilt from the store whenever it starts (a new leader) or falls
behind the watch feed, so a decision never rests on anything but committed
state: an address is never given twice. Every decision is a compare-and-set
on the object's version; one that fails is released and decided again.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from ...common.component import Component
from ...model import task as taskmodel
from ..store.store import CommitTimeout, Op, Store, StoreError
from . import ipam

log = logging.getLogger(__name__)

INTERVAL = 0.05          # how long changes are gathered before a pass
RETRY = 1.0              # tasks waiting for an address are tried this often
MAX_TXNS = 500           # decisions committed together

NEW_MESSAGE = "allocating network addresses"
PENDING_MESSAGE = "pending task scheduling"


def wants_addresses(task: dict) -> bool:
    """A ``new`` task that is meant to run."""
    return (task["status"]["state"] == "new"
            and task["desired_state"] in ("ready", "running"))


def holds_addresses(task: dict) -> bool:
    """The task's addresses are in use: it has not finished."""
    return bool(task.get("networks")) and not taskmodel.finished(task["status"]["state"])


def wants_vips(service: dict) -> bool:
    return (service["spec"]["endpoint"].get("mode", "vip") == "vip"
            and bool(service["spec"]["task"]["networks"]))


class Allocator(Component):
    name = "allocator"

    def __init__(self, store: Store) -> None:
        super().__init__()
        self._store = store
        self.given = 0                       # addresses given out (tests, metrics)
        self._reset_state()

    def _reset_state(self) -> None:
        self._pools: dict[str, ipam.AddressPool] = {}
        # (network id, address) -> who holds it: "task:ID" or "vip:ID"
        self._holders: dict[tuple[str, str], str] = {}
        self._held: dict[str, list[tuple[str, str]]] = {}   # holder -> its addresses
        self._new_tasks: set[str] = set()    # to give addresses to
        self._stalled: set[str] = set()      # waiting for an address or their network
        self._services: set[str] = set()
        self._stalled_services: set[str] = set()

    # -- the in-memory view of what is in use -----------------------------------------
    def load(self) -> None:
        """Rebuild the view from the store."""
        self._reset_state()
        store = self._store
        for n in store.list("network"):
            self._pools[n["id"]] = ipam.AddressPool(n["subnet"], n["gateway"])
        for s in store.list("service"):
            self._hold(f"vip:{s['id']}", ((v["network_id"], v["addr"])
                                          for v in s.get("virtual_ips") or ()))
            self._services.add(s["id"])
        for t in store.list("task"):
            if holds_addresses(t):
                self._hold(f"task:{t['id']}", ((a["network_id"], a["addr"])
                                               for a in t["networks"]))
            if wants_addresses(t):
                self._new_tasks.add(t["id"])

    def _hold(self, holder: str, addrs: Iterable[tuple[str, str]]) -> None:
        for network_id, addr in addrs:
            pool = self._pools.get(network_id)
            if pool is None:
                continue            # its network is gone: nothing to hold
            key = (network_id, ipam.host(addr).exploded)
            other = self._holders.get(key)
            if other is not None and other != holder:
                log.error("address %s on network %s is held by both %s and %s",
                          addr, network_id, other, holder)
                continue
            pool.mark(addr)
            self._holders[key] = holder
            self._held.setdefault(holder, []).append(key)

    def _release(self, holder: str) -> None:
        for key in self._held.pop(holder, ()):
            if self._holders.get(key) == holder:
                del self._holders[key]
                pool = self._pools.get(key[0])
                if pool is not None:
                    pool.release(key[1])
                    self._waiting_wakeup()

    def _release_one(self, holder: str, network_id: str) -> None:
        keys = self._held.get(holder, [])
        for key in [k for k in keys if k[0] == network_id]:
            keys.remove(key)
            if self._holders.get(key) == holder:
                del self._holders[key]
                pool = self._pools.get(network_id)
                if pool is not None:
                    pool.release(key[1])
                    self._waiting_wakeup()

    def _waiting_wakeup(self) -> None:
        """Addresses or a network appeared: what waited for them is tried again."""
        self._new_tasks |= self._stalled
        self._stalled.clear()
        self._services |= self._stalled_services
        self._stalled_services.clear()

    def _give(self, holder: str, network_id: str) -> str | None:
        pool = self._pools.get(network_id)
        if pool is None:
            return None
        addr = pool.allocate()          # may raise Exhausted
        key = (network_id, ipam.host(addr).exploded)
        self._holders[key] = holder
        self._held.setdefault(holder, []).append(key)
        self.given += 1
        return addr

    # -- following the store ----------------------------------------------------------
    def note(self, e: Any) -> bool:
        """Follow one watch event; False if the view must be rebuilt."""
        if e.action == "reset":
            return False
        obj, old = e.object, e.old
        if e.kind == "network":
            if e.action == "create" and obj is not None:
                self._pools[obj["id"]] = ipam.AddressPool(obj["subnet"], obj["gateway"])
                self._waiting_wakeup()
            elif e.action == "delete":
                self._pools.pop(e.id, None)
                for key in [k for k in self._holders if k[0] == e.id]:
                    holder = self._holders.pop(key)
                    held = self._held.get(holder)
                    if held is not None and key in held:
                        held.remove(key)
        elif e.kind == "task":
            if obj is None or not holds_addresses(obj):
                self._release(f"task:{e.id}")
            if obj is not None and wants_addresses(obj):
                if e.id not in self._stalled:
                    self._new_tasks.add(e.id)
            else:
                self._new_tasks.discard(e.id)
                self._stalled.discard(e.id)
        elif e.kind == "service":
            if obj is None:
                self._release(f"vip:{e.id}")
                self._services.discard(e.id)
            elif old is None or old["spec"] != obj["spec"]:
                self._services.add(e.id)
        return True

    # -- deciding -------------------------------------------------------------------
    def run(self) -> None:
        watcher = self._store.watch()
        self.load()
        since_retry = 0.0
        while not self.sleep(INTERVAL):
            for e in watcher.next(timeout=0):
                if not self.note(e):
                    self.load()
            since_retry += INTERVAL
            if since_retry >= RETRY:
                since_retry = 0.0
                self._waiting_wakeup()
            try:
                self.allocate()
            except CommitTimeout as exc:
                log.info("allocation outcome unknown (%s): reading the store again", exc)
                self.load()
            except StoreError as exc:
                log.info("allocation postponed: %s", exc)
                self.load()

    def allocate(self) -> None:
        """One pass: services' VIPs, then new tasks."""
        self._allocate_services()
        self._allocate_tasks()

    def _commit(self, decisions: list[tuple[list[dict], str, Any]]) -> None:
        """Commit ``(ops, holder, undo)`` decisions; undo those that failed."""
        for start in range(0, len(decisions), MAX_TXNS):
            batch = decisions[start:start + MAX_TXNS]
            results = self._store.commit_many([ops for ops, _h, _u in batch])
            for (_ops, holder, undo), result in zip(batch, results):
                if isinstance(result, CommitTimeout):
                    raise result
                if isinstance(result, Exception):
                    log.debug("allocation for %s not committed: %s", holder, result)
                    undo()

    def _allocate_services(self) -> None:
        decisions = []
        for sid in list(self._services):
            self._services.discard(sid)
            s = self._store.get("service", sid)
            if s is None:
                self._release(f"vip:{sid}")
                continue
            holder = f"vip:{sid}"
            current = {v["network_id"]: v["addr"] for v in s.get("virtual_ips") or ()}
            wanted = ([a["target"] for a in s["spec"]["task"]["networks"]
                       if a["target"] in self._pools] if wants_vips(s) else [])
            new: dict[str, str] = {}
            given: list[str] = []
            try:
                for nid in wanted:
                    if nid in current:
                        new[nid] = current[nid]
                    else:
                        addr = self._give(holder, nid)
                        if addr is not None:
                            new[nid] = addr
                            given.append(nid)
            except ipam.Exhausted as exc:
                log.warning("no virtual IP for service %s: %s", s["name"], exc)
                self._stalled_services.add(sid)
            if new == current:
                continue
            for nid in current:
                if nid not in new:
                    self._release_one(holder, nid)
            vips = [{"network_id": nid, "addr": addr} for nid, addr in new.items()]

            def undo(sid=sid, holder=holder, given=given):
                for nid in given:
                    self._release_one(holder, nid)
                self._services.add(sid)
            decisions.append(([Op.patch("service", sid, {"virtual_ips": vips},
                                        version=s["version"])], holder, undo))
        self._commit(decisions)

    def _allocate_tasks(self) -> None:
        if not self._new_tasks:
            return
        decisions = []
        for tid in sorted(self._new_tasks):
            self._new_tasks.discard(tid)
            t = self._store.get("task", tid)
            if t is None or not wants_addresses(t):
                continue
            holder = f"task:{tid}"
            if holder in self._held:
                continue                        # decided; its commit is on its way
            problem, networks = self._task_addresses(t, holder)
            if problem is not None:
                self._stalled.add(tid)
                if t["status"]["message"] != problem:
                    decisions.append(([Op.patch("task", tid, {
                        "status": dict(t["status"], message=problem)}, version=t["version"])],
                        holder, lambda: None))
                continue
            status = taskmodel.status("pending", PENDING_MESSAGE)
            status["timestamp"] = t["status"]["timestamp"]

            def undo(tid=tid, holder=holder):
                self._release(holder)
                self._new_tasks.add(tid)
            decisions.append(([Op.patch("task", tid, {"networks": networks, "status": status},
                                        version=t["version"])], holder, undo))
        self._commit(decisions)

    def _task_addresses(self, t: dict, holder: str) -> tuple[str | None, list[dict]]:
        """The task's addresses (given now), or why it cannot have them yet."""
        out: list[dict] = []
        for att in t["spec"]["networks"]:
            nid = att["target"]
            if nid not in self._pools:
                self._release(holder)
                return f"network {nid} not found", []
            try:
                addr = self._give(holder, nid)
            except ipam.Exhausted:
                self._release(holder)
                name = (self._store.get("network", nid) or {}).get("name", nid)
                return f"no address left on network {name}", []
            out.append({"network_id": nid, "addr": addr, "aliases": list(att["aliases"])})
        return None, out
