"""Automatic certificate renewal.

The node renews at a random point between 50 % and 80 % of its certificate's
lifetime (or at once when its role changes), with a fresh key each time (a
renewal that failed is tried again with the same key). The
new key and certificate replace the bundle in one atomic rename, so every
reader (the API server, the Raft transport, the clients) sees either the old
pair or the new one, and picks the new one up on its next connection.
"""

from __future__ import annotations

import datetime
import logging
import threading

from cryptography.hazmat.primitives.asymmetric import ec

from ..ca import certs
from ..common.component import Component
from ..common.httpclient import ApiError

log = logging.getLogger(__name__)


class Renewer(Component):
    name = "cert-renewer"

    def __init__(self, cfg, client, on_renewed=None) -> None:
        super().__init__()
        self._cfg = cfg
        self._client = client
        self._on_renewed = on_renewed
        self._force = threading.Event()
        self._planned: tuple[int, datetime.datetime] | None = None
        # The key of a renewal not answered yet: asked again with the same
        # key, the CA recognises it even if the certificate it comes with
        # was revoked meanwhile (a demotion).
        self._pending_key: ec.EllipticCurvePrivateKey | None = None
        self.renewals = 0

    def current(self) -> certs.CertIdentity:
        with open(self._cfg.bundle_path, "rb") as f:
            return certs.identity_from_pem(f.read())

    def force(self):
        """Renew now (the node's role changed)."""
        self._force.set()

    def wake(self):
        self._force.set()  # interrupts the wait; run() then sees stopping

    def _due(self, ident) -> datetime.datetime:
        if self._planned is None or self._planned[0] != ident.serial:
            self._planned = (ident.serial, certs.renewal_time(ident.not_before, ident.not_after))
            log.info("certificate %x renews at %s", ident.serial, self._planned[1].isoformat())
        return self._planned[1]

    def run(self):
        backoff = 1.0
        while not self.stopping.is_set():
            ident = self.current()
            now = datetime.datetime.now(datetime.timezone.utc)
            wait = (self._due(ident) - now).total_seconds()
            if wait > 0 and not self._force.is_set():
                self._force.wait(min(wait, 60.0))
                continue
            if self.stopping.is_set():
                return
            try:
                self.renew()
                self._force.clear()
                backoff = 1.0
            except (ApiError, OSError, certs.CertificateError) as exc:
                log.warning("certificate renewal failed: %s (retry in %.0fs)", exc, backoff)
                if getattr(exc, "code", None) == "node_removed":
                    return
                if self.sleep(backoff):
                    return
                lifetime = (ident.not_after - ident.not_before).total_seconds()
                backoff = min(backoff * 2, max(2.0, lifetime / 20), 300.0)

    def renew(self) -> certs.CertIdentity:
        if self._pending_key is None:
            self._pending_key = certs.new_key()
        key = self._pending_key
        csr = certs.make_csr(key).decode()
        reply = self._client.post("/v1/ca/renew", {"csr": csr}, timeout=15, retry_for=10)
        cert_pem = reply["cert"].encode()
        with open(self._cfg.ca_path, "rb") as f:
            certs.verify_chain(cert_pem, f.read())
        certs.write_node_bundle(self._cfg.bundle_path, certs.key_to_pem(key), cert_pem)
        self._pending_key = None
        ident = certs.identity_from_pem(cert_pem)
        self.renewals += 1
        log.info("certificate renewed: serial %x, role %s, valid until %s",
                 ident.serial, ident.role, ident.not_after.isoformat())
        if self._on_renewed is not None:
            self._on_renewed(ident)
        return ident
