"""What every endpoint shares: the error format, caller identity, access
policies and request validation.

Errors are always ``{"error": {"code", "message", "field"}}``.

Identity comes from the verified TLS client certificate (CN = node id, OU =
role, O = cluster id, and its serial), from the unix control socket (root
only, treated as admin), or — on the leader — from the identity header a
follower manager adds when it forwards a request (trusted only from a
current manager). The caller's address travels the same way (the peer
address header), so the leader sees where an agent connected from.

Revocation (``ca/revocation.py``): a caller whose node id or certificate
serial is on the cluster's list is refused, whether it called directly or
through a follower, and so is a forwarding manager whose own certificate
is revoked.

Policies:
- ``public``: no client certificate needed (joining).
- ``any``: any valid identity.
- ``agent``: a node certificate (manager or worker) of a node that exists.
- ``renewal``: as ``agent``, but a certificate revoked by serial is left to
  the CA to judge (a demoted node asking again for the worker certificate
  whose answer it lost; see ``caserver.py``).
- ``manager``: a manager certificate of a node whose desired role is manager.
- ``control``: an admin certificate, or a manager node's certificate.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import ipaddress
import json
import logging
from typing import Any

from flask import current_app, g, request
from pydantic import ValidationError

from ...ca import certs
from ...common.jsonbody import dumps_line
from ...model import objects
from ...model.validation import ApiError, Model, error_body, validate, validation_error
from ..store import queries
from ..store.store import RequestId

log = logging.getLogger(__name__)

IDENTITY_HEADER = "X-Flotilla-Identity"
FORWARDED_HEADER = "X-Flotilla-Forwarded-By"
PEER_HEADER = "X-Flotilla-Peer-Addr"


def error_response(status: int, code: str, message: str, field: str | None = None):
    return json_response(error_body(code, message, field), status)


def json_response(payload, status: int = 200):
    return current_app.response_class(dumps_line(payload), status=status,
                                      mimetype="application/json")


@dataclasses.dataclass(frozen=True)
class Identity:
    node_id: str
    role: str
    cluster_id: str
    via: str = "tls"
    serial: int | None = None           # of the certificate, when there is one
    not_after: float | None = None      # its expiry (unix time)

    def header(self) -> str:
        out: dict[str, Any] = {"cn": self.node_id, "ou": self.role, "o": self.cluster_id}
        if self.serial is not None:
            out["s"] = format(self.serial, "x")
        if self.not_after is not None:
            out["na"] = self.not_after
        return json.dumps(out)


def manager():
    return current_app.extensions["flotilla.manager"]


def direct_identity() -> Identity | None:
    if "direct_identity" in g:
        return g.direct_identity
    ident: Identity | None = None
    env_ident = request.environ.get("flotilla.identity")
    if env_ident is not None:
        ident = env_ident
    else:
        sock: Any = request.environ.get("gunicorn.socket")
        # The verified peer certificate cannot change on a connection: parse
        # it once per connection, not once per request.
        cached: Any = getattr(sock, "_flotilla_identity", False)
        if cached is not False:
            ident = cached
        else:
            getpeercert = getattr(sock, "getpeercert", None)
            if getpeercert is not None:
                parsed = certs.identity_from_peercert(getpeercert())
                if parsed is not None:
                    ident = Identity(parsed.node_id, parsed.role, parsed.cluster_id,
                                     serial=parsed.serial,
                                     not_after=parsed.not_after.timestamp())
            try:
                sock._flotilla_identity = ident
            except AttributeError:
                pass
    g.direct_identity = ident
    return ident


def identity() -> Identity | None:
    """The caller, after resolving forwarding by a follower manager."""
    if "identity" in g:
        return g.identity
    ident = direct_identity()
    forwarded = request.headers.get(IDENTITY_HEADER)
    if forwarded is not None:
        if not is_current_manager(ident):
            manager().counters.inc("api.forward_refused")
            raise ApiError(403, "forward_refused", "only a current manager may forward requests")
        if forwarded == "":
            ident = None
        else:
            try:
                f = json.loads(forwarded)
                serial = int(f["s"], 16) if f.get("s") is not None else None
                not_after = float(f["na"]) if f.get("na") is not None else None
                ident = Identity(str(f["cn"]), str(f["ou"]), str(f["o"]), via="forwarded",
                                 serial=serial, not_after=not_after)
            except (ValueError, KeyError, TypeError, AttributeError):
                raise ApiError(400, "bad_request", "malformed forwarded identity") from None
    g.identity = ident
    return ident


def peer_ip() -> str | None:
    """The address the caller connected from: the direct peer's, or the one
    a current manager forwarding the request observed. IPv4 addresses
    mapped into IPv6 are given as IPv4."""
    forwarded = request.headers.get(PEER_HEADER)
    if forwarded is not None:
        if not is_current_manager(direct_identity()):
            manager().counters.inc("api.forward_refused")
            raise ApiError(403, "forward_refused", "only a current manager may forward requests")
        return normalize_ip(forwarded)
    return normalize_ip(request.environ.get("REMOTE_ADDR"))


def normalize_ip(value) -> str | None:
    try:
        addr = ipaddress.ip_address(str(value).strip())
    except ValueError:
        return None
    if addr.version == 6 and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return str(addr)


def is_current_manager(ident: Identity | None) -> bool:
    if ident is None or ident.role != certs.ROLE_MANAGER:
        return False
    m = manager()
    if m.ca.revoked(None, ident.serial):
        return False
    if ident.node_id == m.cfg.node_id:
        return True
    node = m.store.get("node", ident.node_id)
    if node is not None:
        return objects.wants_manager_cert(node) and not m.ca.revoked(ident.node_id)
    # A manager we know only from Raft membership (store still catching up).
    return ident.node_id in m.security.managers_by_address().values()


def authorize(policy: str, ident: Identity | None) -> None:
    if policy == "public":
        return
    if ident is None:
        raise ApiError(401, "unauthenticated", "a client certificate from this cluster is required")
    m = manager()
    if ident.via != "unix" and ident.cluster_id != m.cfg.cluster_id:
        raise ApiError(401, "unauthenticated", "certificate is from another cluster")
    if ident.via != "unix" and m.ca.revoked(ident.node_id):
        m.counters.inc("api.revoked")
        raise ApiError(401, "revoked",
                       "this certificate belongs to a node removed from the cluster")
    if ident.via != "unix" and policy != "renewal" and m.ca.revoked(None, ident.serial):
        # A certificate revoked on its own (a demoted manager's, an admin
        # bundle's): the node itself, if any, is still a member.
        m.counters.inc("api.certificate_revoked")
        raise ApiError(401, "certificate_revoked", "this certificate has been revoked")
    if policy == "any":
        return
    if ident.role == certs.ROLE_ADMIN:
        if policy == "control":
            return
        raise ApiError(403, "forbidden", "an admin certificate cannot use agent endpoints")
    node = m.store.get("node", ident.node_id)
    if node is None:
        m.counters.inc("api.unknown_node")
        raise ApiError(401, "revoked", "unknown node (removed from the cluster?)")
    if policy in ("agent", "renewal"):
        return
    if policy == "manager":
        if ident.role == certs.ROLE_MANAGER and node["spec"]["role"] == "manager":
            return
        raise ApiError(403, "forbidden", "a manager certificate is required")
    if policy == "control":
        if ident.role == certs.ROLE_MANAGER and node.get("role") == "manager":
            return
        m.counters.inc("api.forbidden")
        raise ApiError(403, "forbidden",
                       "this endpoint needs an admin or manager certificate "
                       f"(caller is a {ident.role} node)")
    raise ApiError(500, "internal", f"unknown policy {policy}")


def policy(name: str, *, local: bool = False):
    """Mark a view with its access policy. ``local`` views are answered by
    any manager; the rest are answered by the leader (followers forward)."""

    def deco(fn):
        fn.flotilla_policy = name
        fn.flotilla_local = local

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            return fn(*args, **kwargs)

        wrapper.flotilla_policy = name
        wrapper.flotilla_local = local
        return wrapper

    return deco


def refuse_oversized_body() -> None:
    """Refuse a body over the limit before anything else looks at the request.

    The body is not read here: the API's worker has read (or thrown away)
    all of it before the request got a thread (see manager/apiworker.py),
    and the control socket likewise (manager/control.py)."""
    limit = current_app.config["MAX_CONTENT_LENGTH"]
    if request.content_length and request.content_length > limit:
        raise ApiError(413, "too_large",
                       f"request body too large ({request.content_length} bytes; "
                       f"the limit is {limit})")


def body_bytes() -> bytes:
    """The request body, at most the limit long, whether or not the client
    announced its length (a chunked body over the limit is refused too)."""
    refuse_oversized_body()
    try:
        if request.content_length is not None or not request.environ.get("wsgi.input_terminated"):
            return request.get_data(cache=True)
        if "unsized_body" not in g:
            limit = current_app.config["MAX_CONTENT_LENGTH"]
            data = request.environ["wsgi.input"].read(limit + 1)
            if len(data) > limit:
                raise ApiError(413, "too_large", f"request body too large (the limit is {limit})")
            g.unsized_body = data
        return g.unsized_body
    except OSError:  # timed out or reset while reading (see manager/apiworker.py)
        raise ApiError(400, "incomplete_body", "the request body did not arrive in time") from None


def _check_content_type() -> None:
    mimetype = request.mimetype
    if mimetype != "application/json" and not (
            mimetype.startswith("application/") and mimetype.endswith("+json")):
        raise ApiError(415, "unsupported_media_type",
                       "the request body must be JSON (Content-Type: application/json), not "
                       + (repr(request.content_type) if request.content_type else "untyped"),
                       field="Content-Type")


def parse_body(model: type[Model]):
    """The request body, validated by ``model``. The body must be a JSON
    object sent as ``application/json``; values must have the JSON types
    the model declares (``"3"`` is not a number)."""
    raw = body_bytes()
    if not raw.strip():
        raise ApiError(400, "invalid_json", "a request body (a JSON object) is required")
    _check_content_type()
    return validate(model, raw)


def parse_query(model: type[Model]):
    """Validate the query string with ``model`` (unknown parameters refused)."""
    data = {}
    for key in request.args:
        values = request.args.getlist(key)
        data[key] = values[0] if len(values) == 1 else values
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc, data, "unknown parameter") from None


def refuse_unknown_query(view) -> None:
    """A view that declares no query parameters takes none."""
    d = getattr(view, "flotilla_doc", None)
    if d is not None and d.query is None and request.args:
        name = next(iter(request.args))
        raise ApiError(400, "invalid", f"{name}: unknown parameter", field=name)


def request_id() -> RequestId | None:
    """The request's ``Idempotency-Key``, bound to the request: the store
    applies a key once, and refuses it (422) with any other request."""
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return None
    key = key.strip()
    if not key or len(key) > 128:
        raise ApiError(400, "invalid", "Idempotency-Key must be 1-128 characters",
                       field="Idempotency-Key")
    return RequestId(key, request_digest())


def request_digest() -> bytes:
    """What the request is: its method, path, query parameters and body
    (128 bits of SHA-256). A follower forwards all four unchanged, so the
    leader computes the same digest whichever manager the client reached."""
    h = hashlib.sha256()
    h.update(json.dumps([request.method, request.path,
                         sorted(request.args.items(multi=True))]).encode())
    h.update(b"\n")
    h.update(body_bytes())
    return h.digest()[:16]


def replayed_removal() -> dict | None:
    """For a removal (DELETE) whose Idempotency-Key was applied before with
    the same request: its first answer, ``{"id", "removed": true}``; the
    object is gone, so the view could not look it up again."""
    done = manager().store.remembered(request_id())
    if done is None or not done["removed"]:
        return None
    return {"id": done["removed"][0][1], "removed": True}


def flag(name: str) -> bool:
    value = request.args.get(name, "").lower()
    return value in ("1", "true", "yes", "on")


def stored_cluster() -> dict:
    """The cluster object, or 503 while the cluster is still being created."""
    c = queries.cluster(manager().store)
    if c is None:
        raise ApiError(503, "no_leader", "the cluster is still being created")
    return c
