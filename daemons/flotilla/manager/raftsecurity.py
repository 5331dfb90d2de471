"""Who may speak Raft with this manager, and how the transport is secured.

A Raft peer must present a certificate from this cluster's CA with OU=manager,
O=this cluster, and CN naming a node that is currently a manager and not
revoked; the certificate itself must not be revoked either (by serial: a
demoted manager's old certificates). The Raft address it claims must be the one recorded for that node.
The list of managers comes from the replicated store; until the store holds
anything (a new member catching up) it comes from the member map this
manager was given when it joined (``raft/members.json``).
"""

from __future__ import annotations

import logging
import threading

from ..ca import certs, revocation
from ..common import fsutil, tls

log = logging.getLogger(__name__)


class SecurityCounters:
    """Thread-safe counters of refused connections and requests by reason."""

    def __init__(self):
        self._lock = threading.Lock()
        self._counts: dict[str, int] = {}

    def inc(self, key: str):
        with self._lock:
            self._counts[key] = self._counts.get(key, 0) + 1

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)


class RaftSecurity:
    def __init__(self, *, bundle_path: str, ca_path: str, cluster_id: str, store,
                 members_path: str, counters: SecurityCounters):
        self._cluster_id = cluster_id
        self._store = store
        self._members_path = members_path
        self._counters = counters
        self._journal = None
        self._server = tls.ReloadingContext(
            lambda: tls.server_context(bundle_path, ca_path, client_cert="required"),
            [bundle_path, ca_path], check_interval=1.0)
        self._client = tls.ReloadingContext(
            lambda: tls.client_context(bundle_path, ca_path),
            [bundle_path, ca_path], check_interval=1.0)
        saved = fsutil.read_json(members_path, {}) or {}
        self._bootstrap: dict[str, str] = dict(saved.get("ids", {}))

    # -- member map ------------------------------------------------------------------
    def managers_by_address(self) -> dict[str, str]:
        """Raft address -> node id for every node allowed to be a Raft member."""
        cluster = _cluster(self._store)
        nodes = self._store.list("node")
        if cluster is None:
            return dict(self._bootstrap)
        revoked = cluster.get("revoked", {})
        out = {}
        for node in nodes:
            mgr = node.get("manager") or {}
            addr = mgr.get("raft_addr")
            if not addr or node["id"] in revoked:
                continue
            if node.get("role") == "manager" or node.get("spec", {}).get("role") == "manager":
                out[addr] = node["id"]
        # Members we were told about at join time stay valid until the store
        # says otherwise (it may lag behind the Raft configuration briefly).
        known = {n["id"] for n in nodes}
        for addr, nid in self._bootstrap.items():
            if addr not in out and nid not in known and nid not in revoked:
                out[addr] = nid
        return out

    def remember(self, ids: dict[str, str]):
        """Record address -> node id pairs learned outside the store."""
        self._bootstrap.update(ids)
        self._persist(sorted(set(self._bootstrap)))

    # -- transport interface ----------------------------------------------------------
    def context(self, server_side: bool):
        return (self._server if server_side else self._client).get()

    def verify_peer(self, peercert, expected_address):
        ident = certs.identity_from_peercert(peercert)
        if ident is None:
            self.refused("no_identity", "peer certificate lacks CN/OU/O")
            return None
        if ident.role != certs.ROLE_MANAGER:
            self.refused("not_manager", f"{ident.node_id} has role {ident.role}")
            return None
        if ident.cluster_id != self._cluster_id:
            self.refused("wrong_cluster", f"{ident.node_id} is from cluster {ident.cluster_id}")
            return None
        cluster = _cluster(self._store)
        if cluster is not None and revocation.serial_revoked(cluster.get("revoked"), ident.serial):
            self.refused("revoked", f"{ident.node_id} presented revoked certificate "
                                    f"{ident.serial:x}")
            return None
        members = self.managers_by_address()
        if ident.node_id not in members.values():
            self.refused("not_member", f"{ident.node_id} is not a current manager")
            return None
        if expected_address is not None and members.get(expected_address) != ident.node_id:
            self.refused("wrong_peer", f"{expected_address} answered as {ident.node_id}")
            return None
        return ident.node_id

    def claim_ok(self, node_id, address) -> bool:
        return node_id is not None and self.managers_by_address().get(address) == node_id

    def refused(self, reason: str, detail: str = ""):
        self._counters.inc(f"raft.{reason}")
        log.warning("raft connection refused (%s): %s", reason, detail)

    def attach_journal(self, journal):
        self._journal = journal

    def before_send(self):
        if self._journal is not None:
            self._journal.sync()

    def members_changed(self, addresses):
        # The configuration is in the journal first, then recorded here.
        if self._journal is not None:
            self._journal.sync()
        self._persist(addresses)

    def _persist(self, addresses):
        ids = self.managers_by_address()
        ids.update({a: n for a, n in self._bootstrap.items() if a in addresses})
        fsutil.atomic_write_json(self._members_path, {
            "members": sorted(addresses),
            "ids": {a: ids[a] for a in addresses if a in ids},
        })


def _cluster(store):
    clusters = store.list("cluster")
    return clusters[0] if clusters else None


def saved_members(path: str) -> list[str]:
    saved = fsutil.read_json(path, {}) or {}
    return list(saved.get("members", []))
