"""Certificate issuance on the leader: joining nodes, renewals, revocation.

The root CA key lives in the replicated Cluster object, so whichever manager
leads can sign. Only the public key is taken from a CSR; the subject (CN =
node id, OU = role, O = cluster id) comes from the store.

Demotion: when a node whose role is now worker renews with a manager
certificate, its worker certificate is issued and every manager certificate
it was given (still valid) is revoked, in one transaction. A node whose
answer was lost asks again with the same key; that request is recognised
(the key is the one of the certificate just issued) and answered although
the certificate it comes with has just been revoked.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from ..ca import certs, revocation, tokens
from ..model import objects
from .store import queries
from .store.store import Op, Store, TxnFailed, new_id

log = logging.getLogger(__name__)


class JoinRefused(Exception):
    def __init__(self, message, code="join_refused", status=401):
        super().__init__(message)
        self.code = code
        self.status = status


class CAServer:
    def __init__(self, store: Store, counters) -> None:
        self._store = store
        self._counters = counters
        self._root_cache: tuple[str, certs.RootCA] | None = None
        self._lock = threading.Lock()

    def _cluster(self) -> dict:
        cluster = queries.cluster(self._store)
        assert cluster is not None      # the store holds the cluster before the CA serves
        return cluster

    def root(self) -> certs.RootCA:
        root = self._cluster()["root_ca"]
        with self._lock:
            if self._root_cache is None or self._root_cache[0] != root["digest"]:
                self._root_cache = (root["digest"], certs.RootCA.from_pem(
                    root["cert"].encode(), root["key"].encode()))
            return self._root_cache[1]

    def ca_pem(self) -> str:
        return self._cluster()["root_ca"]["cert"]

    # -- joining ----------------------------------------------------------------
    def join(self, *, token: str, csr: str, hostname: str, addr: str, raft_addr: str | None,
             platform: dict | None) -> dict:
        cluster = self._cluster()
        try:
            parsed = tokens.parse_token(token)
        except tokens.InvalidToken as exc:
            self._counters.inc("join.malformed_token")
            raise JoinRefused(str(exc), "invalid_token", 400) from None
        if parsed.digest != cluster["root_ca"]["digest"]:
            self._counters.inc("join.wrong_ca_digest")
            raise JoinRefused("the token was issued for a different cluster CA", "invalid_token")
        role = None
        for candidate in ("manager", "worker"):
            if tokens.token_matches(token, cluster["tokens"][candidate]):
                role = candidate
        if role is None:
            self._counters.inc("join.wrong_token")
            raise JoinRefused("invalid join token (wrong or rotated)", "invalid_token")
        node_id = new_id()
        lifetime = cluster["spec"]["ca"]["node_cert_expiry"]
        try:
            cert_pem = self.root().sign_csr(csr.encode(), node_id=node_id, role=role,
                                            cluster_id=cluster["id"], lifetime=lifetime)
        except certs.CertificateError as exc:
            raise JoinRefused(str(exc), "invalid_csr", 400) from None
        ident = certs.identity_from_pem(cert_pem)
        node = objects.new_node(node_id, hostname=hostname, addr=addr, role=role,
                                raft_addr=raft_addr, platform=platform)
        node = objects.with_cert(node, ident, certs.cert_key_id(cert_pem))
        self._store.commit([Op.create("node", node)])
        log.info("node %s (%s) joined as %s", node_id, hostname, role)
        return {
            "node_id": node_id,
            "cluster_id": cluster["id"],
            "role": role,
            "cert": cert_pem.decode(),
            "ca": cluster["root_ca"]["cert"],
            "managers": queries.manager_api_addrs(self._store),
        }

    # -- renewal ------------------------------------------------------------------
    def renew(self, node_id: str, csr: str, presented=None) -> dict:
        """A new certificate for ``node_id``, whose role the store decides.

        ``presented`` (``role``, ``serial``, ``not_after``) is the
        certificate the request came with. A revoked one is refused, except
        when the request's key is that of the node's last certificate: the
        same renewal asked again because its answer was lost (the demotion
        that issued that certificate revoked the one presented)."""
        cluster = self._cluster()
        issued: dict[str, Any] = {}
        csr_key = certs.csr_key_id(csr.encode())
        serial = getattr(presented, "serial", None)

        def change(node):
            # Signed inside the retry so the role matches the node version
            # the record is written against.
            if revocation.serial_revoked(queries.cluster(self._store).get("revoked"), serial) \
                    and (csr_key is None or (node.get("cert") or {}).get("key_id") != csr_key):
                self._counters.inc("api.certificate_revoked")
                raise JoinRefused("this certificate has been revoked", "certificate_revoked")
            role = "manager" if objects.wants_manager_cert(node) else "worker"
            try:
                cert_pem = self.root().sign_csr(
                    csr.encode(), node_id=node_id, role=role, cluster_id=cluster["id"],
                    lifetime=cluster["spec"]["ca"]["node_cert_expiry"])
            except certs.CertificateError as exc:
                raise JoinRefused(str(exc), "invalid_csr", 400) from None
            issued.update(cert=cert_pem.decode(), role=role)
            new = objects.with_cert(node, certs.identity_from_pem(cert_pem),
                                    certs.cert_key_id(cert_pem))
            issued["revoke"] = [] if role == "manager" else \
                manager_certs_to_revoke(node, presented)
            if role != "manager":
                new["manager_certs"] = {}
            return new

        def revoke_manager_certs(_old, _new):
            entries = issued.get("revoke")
            if not entries:
                return []
            current = queries.cluster(self._store)
            revoked = revocation.with_entries(current.get("revoked"), entries)
            revoked = revocation.purge(revoked) or revoked
            return [Op.update("cluster", dict(current, revoked=revoked),
                              version=current["version"])]

        if node_id in cluster.get("revoked", {}):
            raise JoinRefused("this node has been removed from the cluster", "node_removed")
        try:
            self._store.update("node", node_id, change, extra_ops=revoke_manager_certs)
        except TxnFailed as exc:
            if exc.code == "not_found":
                raise JoinRefused("this node has been removed from the cluster",
                                  "node_removed") from None
            raise
        if issued.get("revoke"):
            log.info("node %s is a worker now: its manager certificates are revoked (%s)",
                     node_id, ", ".join(sorted({k for k, _ in issued["revoke"]})))
        return {"cert": issued["cert"], "role": issued["role"], "ca": cluster["root_ca"]["cert"]}

    def revoked(self, node_id: str | None, serial=None) -> bool:
        """Whether the node, or the certificate with this serial, is revoked."""
        cluster = queries.cluster(self._store)
        return cluster is not None and revocation.is_revoked(cluster.get("revoked"), node_id,
                                                            serial)


def purge_revoked(cluster: dict, now: float | None = None,
                  grace: float = revocation.GRACE) -> dict | None:
    """Drop revocation entries whose certificate expired more than ``grace`` ago."""
    keep = revocation.purge(cluster.get("revoked", {}), now, grace)
    return None if keep is None else dict(cluster, revoked=keep)


def manager_certs_to_revoke(node: dict, presented=None) -> list[tuple[str, float]]:
    """The node's manager certificates still valid (and the one presented, if
    it is a manager certificate), as revocation entries: what a demoted node
    gives up when it gets its worker certificate. ``presented`` has
    ``role``, ``serial`` and ``not_after`` (unix time)."""
    entries = [(revocation.serial_key(s), t) for s, t in (node.get("manager_certs") or {}).items()]
    last = node.get("cert") or {}
    if last.get("role") == "manager" and last.get("serial"):
        entries.append((revocation.serial_key(last["serial"]), last["not_after"]))
    if (presented is not None and presented.role == "manager"
            and presented.serial is not None and presented.not_after is not None):
        entries.append((revocation.serial_key(presented.serial), presented.not_after))
    return entries
