"""Certificate issuance on the leader: joining nodes, renewals, revocation.

The root CA key lives in the replicated Cluster object, so whichever manager
leads can sign. Only the public key is taken from a CSR; the subject (CN =
node id, OU = role, O = cluster id) comes from the store.
"""

from __future__ import annotations

import logging
import threading
import time

from ..ca import certs, tokens
from .store.store import Op, TxnFailed, new_id
from . import objects

log = logging.getLogger(__name__)


class JoinRefused(Exception):
    def __init__(self, message, code="join_refused", status=401):
        super().__init__(message)
        self.code = code
        self.status = status


class CAServer:
    def __init__(self, store, counters):
        self._store = store
        self._counters = counters
        self._root_cache: tuple[str, certs.RootCA] | None = None
        self._lock = threading.Lock()

    def root(self) -> certs.RootCA:
        cluster = objects.cluster(self._store)
        root = cluster["root_ca"]
        with self._lock:
            if self._root_cache is None or self._root_cache[0] != root["digest"]:
                self._root_cache = (root["digest"], certs.RootCA.from_pem(
                    root["cert"].encode(), root["key"].encode()))
            return self._root_cache[1]

    def ca_pem(self) -> str:
        return objects.cluster(self._store)["root_ca"]["cert"]

    # -- joining ----------------------------------------------------------------
    def join(self, *, token: str, csr: str, hostname: str, addr: str, raft_addr: str | None,
             platform: dict | None) -> dict:
        cluster = objects.cluster(self._store)
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
        node["cert"] = objects.cert_info(ident)
        self._store.commit([Op.create("node", node)])
        log.info("node %s (%s) joined as %s", node_id, hostname, role)
        return {
            "node_id": node_id,
            "cluster_id": cluster["id"],
            "role": role,
            "cert": cert_pem.decode(),
            "ca": cluster["root_ca"]["cert"],
            "managers": objects.manager_api_addrs(self._store),
        }

    # -- renewal ------------------------------------------------------------------
    def renew(self, node_id: str, csr: str) -> dict:
        cluster = objects.cluster(self._store)
        issued = {}

        def change(node):
            # Signed inside the retry so the role matches the node version
            # the record is written against.
            role = "manager" if objects.wants_manager_cert(node) else "worker"
            try:
                cert_pem = self.root().sign_csr(
                    csr.encode(), node_id=node_id, role=role, cluster_id=cluster["id"],
                    lifetime=cluster["spec"]["ca"]["node_cert_expiry"])
            except certs.CertificateError as exc:
                raise JoinRefused(str(exc), "invalid_csr", 400) from None
            issued.update(cert=cert_pem.decode(), role=role)
            return dict(node, cert=objects.cert_info(certs.identity_from_pem(cert_pem)))

        if node_id in cluster.get("revoked", {}):
            raise JoinRefused("this node has been removed from the cluster", "node_removed")
        try:
            self._store.update("node", node_id, change)
        except TxnFailed as exc:
            if exc.code == "not_found":
                raise JoinRefused("this node has been removed from the cluster",
                                  "node_removed") from None
            raise
        return {"cert": issued["cert"], "role": issued["role"], "ca": cluster["root_ca"]["cert"]}

    def revoked(self, node_id: str) -> bool:
        cluster = objects.cluster(self._store)
        return cluster is not None and node_id in cluster.get("revoked", {})


def purge_revoked(cluster: dict, now: float | None = None, grace: float = 7 * 86400) -> dict | None:
    """Drop revocation entries whose certificate expired more than ``grace`` ago."""
    now = now or time.time()
    revoked = cluster.get("revoked", {})
    keep = {k: v for k, v in revoked.items() if v + grace > now}
    if len(keep) == len(revoked):
        return None
    return dict(cluster, revoked=keep)
