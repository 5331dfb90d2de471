"""Flask application factory for the manager API (``/v1``)."""

from __future__ import annotations

import logging
import os

from flask import Flask, request
from werkzeug.exceptions import HTTPException

from ...common.admission import Admission, Budget
from ...common.jsonbody import dumps_line
from ...model.validation import ApiError, error_body
from ..store.store import CommitTimeout, NotLeader, StoreError, TxnFailed
from . import (admins, cluster, common, configs, dispatcher, events, health, join, logs, metrics,
               networks, nodes, openapi, raft, services)
from .forward import Forwarder

log = logging.getLogger(__name__)

MAX_BODY = 4 * 1024 * 1024
ACTIVE_REQUESTS = int(os.environ.get("FLOTILLA_API_ACTIVE", "6"))
# Agent traffic (sessions, status reports, joins, renewals): many clients,
# served after operators' and other managers' requests when both wait.
AGENT_PATHS = ("/v1/dispatcher/", "/v1/join", "/v1/ca/renew")
# The only endpoints that need no client certificate (checked against the
# views' policies below). The worker answers a request without one for any
# other path at once, and refuses bodies over MAX_PUBLIC_BODY on these (a
# join request is a token and a certificate signing request).
PUBLIC_PATHS = frozenset({"/v1/join", "/v1/join/ca"})
MAX_PUBLIC_BODY = 32 * 1024
# Joins run beside the admission slots, at most JOINS at once; up to
# JOINS_WAITING more wait for a turn (at most JOIN_WAIT seconds), and
# beyond that a join is answered 503 "busy" at once.
JOIN_PATH = "/v1/join"
JOINS = 2
JOINS_WAITING = 8
JOIN_WAIT = 2.0


def is_agent_path(path: str) -> bool:
    return path.startswith(AGENT_PATHS)


def is_public_path(path: str) -> bool:
    return path in PUBLIC_PATHS


def _entry(wsgi_app, manager):
    """At most a few request threads run the application at once (see
    common/admission.py); joins have a budget of their own instead."""
    admitted = Admission(
        ACTIVE_REQUESTS, lambda environ: not is_agent_path(environ.get("PATH_INFO", ""))
    ).wrap(wsgi_app)
    joins = Budget(JOINS, JOINS_WAITING, JOIN_WAIT)
    busy = dumps_line(error_body("busy", "too many joins at once; retry in a moment"))

    def entry(environ, start_response):
        if environ.get("PATH_INFO") != JOIN_PATH or environ.get("REQUEST_METHOD") != "POST":
            return admitted(environ, start_response)
        if not joins.enter():
            manager.counters.inc("api.join_busy")
            start_response("503 Service Unavailable", [
                ("Content-Type", "application/json"), ("Content-Length", str(len(busy))),
                ("Retry-After", "1")])
            return [busy]
        try:
            return wsgi_app(environ, start_response)
        finally:
            joins.leave()

    return entry


def create_app(manager, forwarder: Forwarder | None = None) -> Flask:
    app = Flask("flotilla.manager")
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY
    # Flask's documented way to wrap the WSGI app; its type makes wsgi_app a plain method.
    app.wsgi_app = _entry(app.wsgi_app, manager)  # type: ignore[method-assign]
    app.extensions["flotilla.manager"] = manager
    app.extensions["flotilla.forwarder"] = forwarder or Forwarder(manager)
    for bp in (health.bp, join.bp, cluster.bp, admins.bp, nodes.bp, configs.bp, networks.bp,
               dispatcher.bp, raft.bp, services.bp, openapi.bp, metrics.bp, events.bp, logs.bp):
        app.register_blueprint(bp)
    public = {rule.rule for rule in app.url_map.iter_rules()
              if getattr(app.view_functions[rule.endpoint], "flotilla_policy", None) == "public"}
    if public != PUBLIC_PATHS:
        raise RuntimeError(f"public endpoints {sorted(public)} differ from PUBLIC_PATHS")
    # Timing first, so that requests refused or forwarded below are timed too.
    app.before_request(metrics.start_timer)
    app.after_request(metrics.observe_request)

    @app.before_request
    def _authenticate_and_route():
        common.refuse_oversized_body()
        view = app.view_functions.get(request.endpoint) if request.endpoint else None
        if view is None:
            return None  # 404/405 handled by Flask
        pol = getattr(view, "flotilla_policy", "control")
        local = getattr(view, "flotilla_local", False)
        direct = common.direct_identity()
        if pol != "public" and direct is None:
            manager.counters.inc("api.no_client_cert")
            return common.error_response(401, "unauthenticated",
                                         "a client certificate from this cluster is required")
        if not local:
            answer = app.extensions["flotilla.forwarder"].route(direct)
            if answer is not None:
                return answer
        common.authorize(pol, common.identity())
        common.refuse_unknown_query(view)
        return None

    @app.errorhandler(ApiError)
    def _api_error(exc):
        return common.error_response(exc.status, exc.code, exc.message, exc.field)

    @app.errorhandler(TxnFailed)
    def _txn_failed(exc):
        return common.error_response(exc.status, exc.code, str(exc), exc.field)

    @app.errorhandler(NotLeader)
    def _not_leader(exc):
        answer = app.extensions["flotilla.forwarder"].reroute(common.direct_identity())
        return answer or common.error_response(503, "not_leader", str(exc))

    @app.errorhandler(CommitTimeout)
    def _timeout(exc):
        answer = app.extensions["flotilla.forwarder"].reroute(common.direct_identity())
        return answer or common.error_response(503, "outcome_unknown", str(exc))

    @app.errorhandler(StoreError)
    def _store_error(exc):
        return common.error_response(503, "store_error", str(exc))

    @app.errorhandler(HTTPException)
    def _http_error(exc):
        code = {404: "not_found", 405: "method_not_allowed", 413: "too_large"}.get(
            exc.code, "http_error")
        return common.error_response(exc.code or 500, code, exc.description or exc.name)

    @app.errorhandler(Exception)
    def _unexpected(exc):
        log.exception("unhandled error on %s %s", request.method, request.path)
        return common.error_response(500, "internal", "internal error (see the manager log)")

    return app
