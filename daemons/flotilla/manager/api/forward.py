"""Routing a request to the leader: answer it here, or forward it.

A follower answers only local endpoints itself; everything else goes to the
leader over mTLS with this manager's own certificate, carrying the original
caller's identity (certificate serial included) and address in headers the
leader trusts only from a current manager.
The caller sees one answer.

While the cluster elects a leader (or a new leader starts its components),
a request waits for up to ``LEADER_WAIT`` seconds rather than failing: an
election takes well under a second, so a client sees a slower answer, not
an error. A request the old leader refused unprocessed ("not the leader")
is sent again to the next leader within the same wait; so is one that could
not reach it, or whose outcome it could not tell as it stepped down, if
sending it twice is harmless (a read, or a write with an idempotency key,
which the store applies once). Time spent waiting for a leader that
then refused counts as waiting for it, not against the wait: a leader
paused mid-request answers "not the leader" only once a new one exists.
"""

from __future__ import annotations

import json
import logging
import time

import requests
from flask import request

from ...common import admission, tls
from ...common.httpclient import _TLSAdapter
from . import common

log = logging.getLogger(__name__)

PASS_HEADERS = ("Content-Type", "Idempotency-Key", "Accept")
# Longer than an election (0.3-0.7 s) plus a new leader's start-up, with room
# for a split vote; shorter than a client's own retries (10 s by default).
LEADER_WAIT = 3.0
POLL = 0.025
# Answers of a manager that refused the request without processing it.
UNPROCESSED = {"not_leader", "no_leader"}


class Forwarder:
    # Longer than the longest long poll (GET /v1/events?wait=60).
    def __init__(self, manager, timeout: float = 75.0, leader_wait: float = LEADER_WAIT):
        self._manager = manager
        self._timeout = timeout
        self._leader_wait = leader_wait
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

    def route(self, direct_identity):
        """None if this manager (the leader, ready) answers the request
        itself; otherwise the answer: forwarded, or a 503 after the wait."""
        m = self._manager
        if m.is_leader and m.leader_ready.is_set():
            return None
        if not m.is_leader and request.headers.get(common.IDENTITY_HEADER) is not None:
            # Forwarded to us as the leader: the forwarding manager tries again.
            return common.error_response(503, "not_leader",
                                         "this manager is not the leader (any more)")
        started = time.monotonic()
        deadline = started + self._leader_wait
        refusal = None
        with admission.blocking():
            while True:
                if m.is_leader:
                    if m.leader_ready.is_set():
                        break
                    refusal = ("no_leader", "the leader is still starting up; retry shortly")
                else:
                    leader = m.leader_api_addr()
                    if leader is None or leader == m.cfg.advertise:
                        refusal = ("no_leader",
                                   "the cluster has no leader at the moment; retry shortly")
                    else:
                        sent = time.monotonic()
                        answer = self._forward(leader, direct_identity)
                        if not isinstance(answer, tuple):
                            return answer
                        refusal = answer
                        # The wait resumes where it stood when the request
                        # was sent, within the forwarding timeout overall.
                        deadline = min(deadline + time.monotonic() - sent,
                                       started + self._timeout)
                if time.monotonic() + POLL > deadline:
                    return common.error_response(503, *refusal)
                time.sleep(POLL)
        return None

    def reroute(self, direct_identity):
        """After this manager lost leadership while serving a request (its
        write was refused, or its outcome is unknown): the new leader's
        answer, if the request may be sent again; else None."""
        if (self._manager.is_leader or not _resendable()
                or request.headers.get(common.IDENTITY_HEADER) is not None):
            return None
        return self.route(direct_identity)

    def _forward(self, leader, direct_identity):
        """The leader's answer, or ``(code, message)`` if it may be sent
        again: the leader refused it unprocessed, or could not be reached
        and sending twice is harmless."""
        headers = {h: request.headers[h] for h in PASS_HEADERS if h in request.headers}
        headers[common.IDENTITY_HEADER] = direct_identity.header() if direct_identity else ""
        headers[common.FORWARDED_HEADER] = self._manager.cfg.node_id
        # Where the caller connected from (an agent's address is taken from
        # its connection): trusted by the leader only from a current manager.
        headers[common.PEER_HEADER] = request.environ.get("REMOTE_ADDR") or ""
        url = f"https://{leader}{request.full_path if request.query_string else request.path}"
        try:
            resp = self._client().request(request.method, url, data=common.body_bytes(),
                                          headers=headers, timeout=self._timeout)
        except requests.RequestException as exc:
            log.info("forwarding to leader %s failed: %s", leader, exc)
            message = f"the leader ({leader}) could not be reached; retry shortly"
            if _resendable():
                return ("leader_unreachable", message)
            return common.error_response(503, "leader_unreachable", message)
        if resp.status_code == 503:
            code = _error_code(resp.content)
            if code in UNPROCESSED:
                return ("no_leader", "the cluster has no leader at the moment; retry shortly")
            if code == "outcome_unknown" and _resendable():
                # Sent again within the wait; if that runs out, the client
                # still learns that the write may have been applied.
                return ("outcome_unknown", _error_message(resp.content) or
                        "the leader changed before the write's outcome was known; retry "
                        "with the same Idempotency-Key")
        out = common.json_response(None)
        out.set_data(resp.content)
        out.status_code = resp.status_code
        out.headers["Content-Type"] = resp.headers.get("Content-Type", "application/json")
        return out


def _resendable() -> bool:
    """Sending this request twice does no harm: a read, or a write whose
    idempotency key makes the store apply it once."""
    return request.method in ("GET", "HEAD") or "Idempotency-Key" in request.headers


def _error_field(body: bytes, field: str) -> str | None:
    try:
        err = json.loads(body).get("error")
    except (ValueError, AttributeError):
        return None
    value = err.get(field) if isinstance(err, dict) else None
    return value if isinstance(value, str) else None


def _error_code(body: bytes) -> str | None:
    return _error_field(body, "code")


def _error_message(body: bytes) -> str | None:
    return _error_field(body, "message")
