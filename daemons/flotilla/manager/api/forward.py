"""Follower -> leader request forwarding.

A follower answers only local endpoints itself; everything else goes to the
leader over mTLS with this manager's own certificate, carrying the original
caller's identity in a header the leader trusts only from a current manager.
The caller sees one answer.
"""

from __future__ import annotations

import logging

import requests
from flask import request

from ...common import admission, tls
from ...common.httpclient import _TLSAdapter
from . import common

log = logging.getLogger(__name__)

PASS_HEADERS = ("Content-Type", "Idempotency-Key", "Accept")


class Forwarder:
    # Longer than the longest long poll (GET /v1/events?wait=60).
    def __init__(self, manager, timeout: float = 75.0):
        self._manager = manager
        self._timeout = timeout
        cfg = manager.cfg
        self._ctx = tls.ReloadingContext(lambda: tls.client_context(cfg.bundle_path, cfg.ca_path),
                                         [cfg.bundle_path, cfg.ca_path], check_interval=1.0)
        self._session = None
        self._generation = -1

    def _client(self):
        ctx = self._ctx.get()
        if self._session is None or self._generation != self._ctx.generation:
            session = requests.Session()
            session.mount("https://", _TLSAdapter(ctx, pool_connections=4, pool_maxsize=64))
            self._session, self._generation = session, self._ctx.generation
        return self._session

    def forward(self, direct_identity):
        leader = self._manager.leader_api_addr()
        if leader is None or leader == self._manager.cfg.advertise:
            return common.error_response(503, "no_leader",
                                         "the cluster has no leader at the moment; retry shortly")
        headers = {h: request.headers[h] for h in PASS_HEADERS if h in request.headers}
        headers[common.IDENTITY_HEADER] = direct_identity.header() if direct_identity else ""
        headers[common.FORWARDED_HEADER] = self._manager.cfg.node_id
        url = f"https://{leader}{request.full_path if request.query_string else request.path}"
        try:
            with admission.blocking():
                resp = self._client().request(request.method, url, data=common.body_bytes(),
                                              headers=headers, timeout=self._timeout)
        except requests.RequestException as exc:
            log.info("forwarding to leader %s failed: %s", leader, exc)
            return common.error_response(503, "leader_unreachable",
                                         f"the leader ({leader}) could not be reached; retry shortly")
        out = common.json_response(None)
        out.set_data(resp.content)
        out.status_code = resp.status_code
        out.headers["Content-Type"] = resp.headers.get("Content-Type", "application/json")
        return out
