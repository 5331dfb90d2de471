"""Whom the agent's listener answers, as learned through the session.

A certificate with ``OU=manager`` proves only that its holder was a manager
when it was issued: a manager that was demoted or removed keeps it until it
expires. So the listener does not go by the certificate alone. Each answer
of the dispatcher (registration and heartbeats) names the leader that holds
this agent's session; when the agent's copy is out of date (it sends the
version it holds) the answer also carries the node ids of the current
managers and the cluster's revocation list (node ids and certificate
serials). Then:

- pushes (``POST /v1/assignments``) and log reads are accepted only from
  the leader the session is with;
- ``/metrics`` and ``/v1/health`` from the current managers, the leader and
  admin certificates;
- nothing from a revoked node or certificate.

The managers and the revocation list are kept in ``<data-dir>/agent/
trust.json`` (0600, atomic renames), so a restarted agent enforces them
before it registers again; an agent that never registered answers nothing.
A leader of an earlier release names no leader: while the session is with
one, any current manager certificate of the cluster is accepted, as before.
"""

from __future__ import annotations

import logging
import threading

from ..ca import certs, revocation
from ..common import fsutil

log = logging.getLogger(__name__)


class Trust:
    def __init__(self, path: str | None = None):
        self._path = path
        self._lock = threading.Lock()
        self.leader: str | None = None      # node id of the leader of the session
        self.legacy = False                 # the session's leader names no leader
        self.version: str | None = None
        self.known = False                  # managers and revocations are known
        self._managers: frozenset[str] = frozenset()
        self._revoked: dict[str, float] = {}
        if path is not None:
            self._load(path)

    # -- learning ----------------------------------------------------------------------
    def update(self, reply: dict) -> None:
        """From a registration or heartbeat answer."""
        leader = reply.get("leader_id")
        block = reply.get("trust") or {}
        with self._lock:
            self.leader = leader if isinstance(leader, str) else None
            self.legacy = "leader_id" not in reply
            if "managers" not in block or block.get("version") == self.version:
                return
            self._set(block)
        self._save()

    def _set(self, block: dict) -> None:
        self._managers = frozenset(str(m) for m in block.get("managers") or ())
        revoked = {str(n): 0.0 for n in block.get("revoked_nodes") or ()}
        for s in block.get("revoked_serials") or ():
            try:
                revoked[revocation.serial_key(s)] = 0.0
            except (TypeError, ValueError):
                continue
        self._revoked = revoked
        self.version = block.get("version")
        self.known = True

    def _load(self, path: str) -> None:
        data = fsutil.read_json(path, None)
        if isinstance(data, dict) and "managers" in data:
            try:
                self._set(data)
            except (TypeError, ValueError):
                log.warning("ignoring unreadable %s", path)

    def _save(self) -> None:
        if self._path is None:
            return
        nodes, serials = revocation.split(self._revoked)
        try:
            fsutil.atomic_write_json(self._path, {
                "version": self.version, "managers": sorted(self._managers),
                "revoked_nodes": nodes, "revoked_serials": serials}, mode=0o600)
        except OSError as exc:
            log.warning("cannot save %s: %s", self._path, exc)

    # -- deciding ------------------------------------------------------------------------
    def revoked(self, ident: certs.CertIdentity) -> bool:
        return revocation.is_revoked(self._revoked, ident.node_id, ident.serial)

    def is_leader(self, ident: certs.CertIdentity) -> bool:
        """May push assignments and read logs."""
        if ident.role != certs.ROLE_MANAGER:
            return False
        return self.legacy or (self.leader is not None and ident.node_id == self.leader)

    def may_observe(self, ident: certs.CertIdentity) -> bool:
        """May read metrics and health."""
        if ident.role == certs.ROLE_ADMIN:
            return True
        return self.is_leader(ident) or (ident.role == certs.ROLE_MANAGER
                                         and ident.node_id in self._managers)
