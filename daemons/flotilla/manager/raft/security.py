"""Who may speak Raft with this manager, and how the transport is secured.

A Raft peer must present a certificate from this cluster's CA with OU=manager,
O=this cluster, and CN naming a node that is a member of the Raft
configuration in effect here and not revoked; the certificate itself must
not be revoked either (by serial: a demoted manager's old certificates).
The Raft address it claims must be the one that member joined with.

Which node id stands behind each member's address is recorded with the
membership itself, not taken from the replicated store: a membership change
that adds a manager carries its node id (and API address), and the member
list in effect is saved with those ids in ``raft/members.json`` whenever it
changes (after the journal is synced). A restarted manager replays its store
only up to the commit index it last saved, which may be older than the
membership it already knows; deciding from that store would refuse a member
it has not yet seen become a manager, possibly the very leader it needs to
catch up. The store is consulted only for revocations and for the id of a
member recorded by an older release (or taken from a snapshot), which that
store then holds.
"""

from __future__ import annotations

import logging
import ssl
import threading
from collections.abc import Iterable
from typing import Any, Protocol

from ...ca import certs, revocation
from ...common import fsutil, tls
from ...common.ratelog import RateLimitedLog
from ...model import objects

log = logging.getLogger(__name__)

# At most one line about refused Raft connections per this many seconds.
REFUSAL_LOG_INTERVAL = 5.0

_List = list        # ``list`` is also a method of StoreView


class StoreView(Protocol):
    """What Raft security reads from the replicated store (``store.Store``)."""

    def list(self, kind: str) -> _List[dict]: ...

    def by_index(self, kind: str, field: str, value: Any) -> _List[dict]: ...


class Syncable(Protocol):
    """The Raft journal, as far as security needs it (``journal.Journal``)."""

    def sync(self) -> None: ...


class SecurityCounters:
    """Thread-safe counters of refused connections and requests by reason."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, int] = {}

    def inc(self, key: str) -> None:
        with self._lock:
            self._counts[key] = self._counts.get(key, 0) + 1

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)


class RaftSecurity:
    def __init__(self, *, bundle_path: str, ca_path: str, cluster_id: str, store: StoreView,
                 members_path: str, counters: SecurityCounters) -> None:
        self._cluster_id = cluster_id
        self._store = store
        self._members_path = members_path
        self._counters = counters
        self._journal: Syncable | None = None
        self._refusals = RateLimitedLog(log, "raft connection refused", REFUSAL_LOG_INTERVAL)
        self._server = tls.ReloadingContext(
            lambda: _server_context(bundle_path, ca_path), [bundle_path, ca_path],
            check_interval=1.0)
        self._client = tls.ReloadingContext(
            lambda: tls.client_context(bundle_path, ca_path),
            [bundle_path, ca_path], check_interval=1.0)
        saved = fsutil.read_json(members_path, {}) or {}
        # Replaced whole, never changed in place: the handshake thread reads them.
        self._members: tuple[str, ...] = tuple(sorted(saved.get("members", [])))
        self._ids: dict[str, str] = dict(saved.get("ids", {}))     # raft addr -> node id
        self._apis: dict[str, str] = dict(saved.get("api", {}))    # raft addr -> API addr

    # -- member map ------------------------------------------------------------------
    def managers_by_address(self) -> dict[str, str]:
        """Raft address -> node id of every member of the configuration in
        effect that may speak Raft (not revoked)."""
        cluster = _cluster(self._store)
        revoked = cluster.get("revoked", {}) if cluster is not None else {}
        ids = self._ids
        out: dict[str, str] = {}
        for addr in self._members:
            node_id = ids.get(addr) or self._id_from_store(addr)
            if node_id and node_id not in revoked:
                out[addr] = node_id
        return out

    def _id_from_store(self, addr: str) -> str | None:
        node = node_by_raft_addr(self._store, addr)
        if node is not None and objects.wants_manager_cert(node):
            return node["id"]
        return None

    def api_by_address(self) -> dict[str, str]:
        """Raft address -> API address of the members, as recorded with the
        membership (or, for members recorded by an older release, in the
        store)."""
        apis = self._apis
        out: dict[str, str] = {}
        for addr in self._members:
            api = apis.get(addr)
            if api is None:
                node = node_by_raft_addr(self._store, addr)
                api = ((node or {}).get("manager") or {}).get("api_addr")
            if api:
                out[addr] = api
        return out

    def remember(self, ids: dict[str, str], apis: dict[str, str] | None = None) -> None:
        """Start from this membership (address -> node id): the one a joining
        manager was given, or a new cluster's first member."""
        self._ids = {**self._ids, **{a: n for a, n in ids.items() if n}}
        if apis:
            self._apis = {**self._apis, **{a: x for a, x in apis.items() if x}}
        self._members = tuple(sorted(ids))
        self._persist()

    # -- transport interface ----------------------------------------------------------
    def context(self, server_side: bool) -> ssl.SSLContext:
        return (self._server if server_side else self._client).get()

    def verify_peer(self, peercert: dict | None, expected_address: str | None) -> str | None:
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

    def claim_ok(self, node_id: str | None, address: str) -> bool:
        return node_id is not None and self.managers_by_address().get(address) == node_id

    def refused(self, reason: str, detail: str = "") -> None:
        """Count a refused connection; log it, at most one line per
        REFUSAL_LOG_INTERVAL (with the count by reason)."""
        self._counters.inc(f"raft.{reason}")
        self._refusals.note(reason, detail)

    def flush_refusals(self) -> None:
        self._refusals.flush()

    def attach_journal(self, journal: Syncable) -> None:
        self._journal = journal

    def before_send(self) -> None:
        if self._journal is not None:
            self._journal.sync()

    def members_changed(self, addresses: Iterable[str], member: dict | None = None) -> None:
        """The configuration in effect changed (on the Raft thread).
        ``member`` is what the change that added a manager recorded about
        it: ``address``, ``node_id``, ``api_addr``."""
        if member and member.get("address") and member.get("node_id"):
            addr = member["address"]
            self._ids = {**self._ids, addr: member["node_id"]}
            if member.get("api_addr"):
                self._apis = {**self._apis, addr: member["api_addr"]}
        self._members = tuple(sorted(addresses))
        # The configuration is in the journal first, then recorded here.
        if self._journal is not None:
            self._journal.sync()
        self._persist()

    def _persist(self) -> None:
        members = self._members
        ids = dict(self._ids)
        for addr in members:
            if addr not in ids:
                found = self._id_from_store(addr)
                if found:
                    ids[addr] = found
        self._ids = ids
        fsutil.atomic_write_json(self._members_path, {
            "members": list(members),
            "ids": {a: ids[a] for a in members if a in ids},
            "api": {a: self._apis[a] for a in members if a in self._apis},
        })


def _server_context(bundle_path: str, ca_path: str) -> ssl.SSLContext:
    ctx = tls.server_context(bundle_path, ca_path, client_cert="required")
    # Peers never resume a session (each connection uses a new one), and
    # issuing tickets was a third of the cost of a handshake: whoever opens
    # connections to the Raft port would make the manager pay it for nothing.
    ctx.num_tickets = 0
    ctx.options |= ssl.OP_NO_TICKET
    return ctx


def node_by_raft_addr(store: StoreView, raft_addr: str) -> dict | None:
    """The node whose manager speaks Raft from ``raft_addr``, as the store
    knows it."""
    # Managers first (the index); a node whose role is still changing may
    # hold a Raft address too, so fall back to all nodes.
    for nodes in (store.by_index("node", "role", "manager"), None):
        for node in nodes if nodes is not None else store.list("node"):
            if (node.get("manager") or {}).get("raft_addr") == raft_addr:
                return node
    return None


def _cluster(store: StoreView) -> dict | None:
    clusters = store.list("cluster")
    return clusters[0] if clusters else None


def saved_members(path: str) -> list[str]:
    saved = fsutil.read_json(path, {}) or {}
    return list(saved.get("members", []))


def saved_api_addresses(path: str) -> list[str]:
    """API addresses of the Raft members recorded in ``members.json``."""
    saved = fsutil.read_json(path, {}) or {}
    apis = saved.get("api", {}) or {}
    return sorted({apis[a] for a in saved.get("members", []) if a in apis})
