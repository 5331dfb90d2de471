"""The agent's HTTPS listener (mutual TLS): the leader pushes assignments here.

Who may call what is decided by what the session taught the agent
(``trust.py``), not by the certificate's role alone: pushes and log reads
(``service logs``) only from the leader this agent's session is with;
``/metrics`` and ``/v1/health`` from the current managers, that leader and
admin certificates; nothing from a revoked node or certificate, or from
another cluster. Pushes must also name the agent's current session.
``/v1/health`` says only that the agent is up (no session details). A
container without this node's label is answered as not found.
"""

from __future__ import annotations

import json
import logging
import re
from typing import TYPE_CHECKING, Callable, TypeVar

from flask import Flask, Response, request
from prometheus_client import CONTENT_TYPE_LATEST

from ..ca import certs
from ..common import tls
from ..common.component import Component
from ..common.jsonbody import dumps_line
from ..common.tlsserver import TLSWSGIServer, bind_address
from .assignments import AssignmentStream, Refused
from .trust import Trust

if TYPE_CHECKING:
    from ..common.config import NodeConfig
    from .executor import DockerExecutor
    from .metrics import AgentMetrics

log = logging.getLogger(__name__)

_N = TypeVar("_N", int, float)


def _json(app: Flask, payload: object, status: int = 200) -> Response:
    return app.response_class(dumps_line(payload), status=status, mimetype="application/json")


def _error(app: Flask, status: int, code: str, message: str) -> Response:
    return _json(app, {"error": {"code": code, "message": message}}, status)


_CONTAINER_REF = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def _number_arg(name: str, kind: Callable[[str], _N], minimum: int = 0) -> _N | None:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = kind(raw)
    except ValueError:
        raise ValueError(f"{name}: not a number") from None
    if not value >= minimum or value == float("inf"):
        raise ValueError(f"{name}: must be at least {minimum}")
    return value


# Endpoints the current managers and admins may read; the rest is the leader's.
OBSERVE = ("metrics", "health")


def create_agent_app(stream: AssignmentStream, node_id: str, cluster_id: str,
                     counters: dict[str, int] | None = None,
                     metrics: AgentMetrics | None = None, executor: DockerExecutor | None = None,
                     trust: Trust | None = None) -> Flask:
    app = Flask("flotilla.agent")
    app.config["MAX_CONTENT_LENGTH"] = 64 * 1024 * 1024
    if trust is None:
        trust = Trust()

    def refuse(reason: str, status: int, code: str, message: str) -> Response:
        if counters is not None:
            counters[reason] = counters.get(reason, 0) + 1
        return _error(app, status, code, message)

    @app.before_request
    def _authorize() -> Response | None:
        sock = request.environ.get("werkzeug.socket")
        ident = certs.identity_from_peercert(sock.getpeercert()) if sock is not None else None
        if ident is None or ident.cluster_id != cluster_id or ident.role not in (
                certs.ROLE_MANAGER, certs.ROLE_ADMIN):
            return refuse("forbidden", 403, "forbidden",
                          "only a manager of this cluster may call an agent")
        if not trust.known and not trust.legacy:
            return refuse("no_session", 503, "no_session",
                          "this agent has not registered with the cluster yet")
        if trust.revoked(ident):
            return refuse("revoked", 403, "revoked", "this certificate has been revoked")
        if request.endpoint in OBSERVE:
            if trust.may_observe(ident):
                return None
            return refuse("forbidden", 403, "forbidden",
                          "only a current manager or an admin may read this")
        if trust.is_leader(ident):
            return None
        if ident.role == certs.ROLE_ADMIN:
            return refuse("forbidden", 403, "forbidden",
                          "only a manager of this cluster may call an agent")
        return refuse("not_leader", 403, "not_leader",
                      "only the leader this agent's session is with may call this")

    @app.post("/v1/assignments")
    def assignments() -> Response:
        try:
            msg = json.loads(request.get_data() or b"{}")
        except ValueError:
            return _error(app, 400, "invalid_json", "request body is not valid JSON")
        if not isinstance(msg, dict):
            return _error(app, 400, "invalid_json", "request body must be a JSON object")
        try:
            seq = stream.push(msg)
        except Refused as exc:
            return _error(app, 409, exc.code, str(exc))
        return _json(app, {"seq": seq})

    @app.get("/v1/health", endpoint="health")
    def health() -> Response:
        return _json(app, {"status": "ok", "node_id": node_id})

    if executor is not None:
        @app.get("/v1/containers/<container_id>/logs")
        def container_logs(container_id: str) -> Response:
            if not _CONTAINER_REF.match(container_id):
                return _error(app, 404, "not_found", "no such container on this node")
            try:
                tail = _number_arg("tail", int)
                since = _number_arg("since", float)
            except ValueError as exc:
                return _error(app, 400, "invalid", str(exc))
            try:
                return _json(app, executor.logs(container_id, tail=tail, since=since))
            except LookupError:
                return _error(app, 404, "not_found", "no such container on this node")
            except Exception as exc:  # the engine failed or is unreachable
                log.info("reading logs of container %s failed: %s", container_id, exc)
                return _error(app, 502, "engine_error",
                              f"the container engine failed: {str(exc)[:200]}")

    if metrics is not None:
        @app.get("/metrics", endpoint="metrics")
        def metrics_view() -> Response:
            return app.response_class(metrics.render(), content_type=CONTENT_TYPE_LATEST)

    @app.errorhandler(404)
    def _not_found(_exc: Exception) -> Response:
        return _error(app, 404, "not_found", "no such endpoint")

    @app.errorhandler(405)
    def _not_allowed(_exc: Exception) -> Response:
        return _error(app, 405, "method_not_allowed", "method not allowed")

    return app


class AgentServer(Component):
    name = "agent-listener"

    def __init__(self, cfg: NodeConfig, stream: AssignmentStream,
                 metrics: AgentMetrics | None = None, executor: DockerExecutor | None = None,
                 trust: Trust | None = None) -> None:
        super().__init__()
        self._cfg = cfg
        self._stream = stream
        self._trust = trust
        self._metrics = metrics
        self._executor = executor
        self._server: TLSWSGIServer | None = None
        self.counters: dict[str, int] = {}
        self._ctx = tls.ReloadingContext(
            lambda: tls.install_bounded(
                tls.server_context(cfg.bundle_path, cfg.ca_path, client_cert="required")),
            [cfg.bundle_path, cfg.ca_path], check_interval=0.5)

    def _refused(self, reason: str) -> None:
        self.counters[reason] = self.counters.get(reason, 0) + 1

    def run(self) -> None:
        host, port = bind_address(self._cfg.agent_listen)
        app = create_agent_app(self._stream, self._cfg.node_id, self._cfg.cluster_id, self.counters,
                               self._metrics, executor=self._executor, trust=self._trust)
        self._server = TLSWSGIServer(host, port, app, self._ctx.get, on_refused=self._refused)
        log.info("agent listening on %s", self._cfg.agent_listen)
        self._server.serve_forever(poll_interval=0.5)

    def wake(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
