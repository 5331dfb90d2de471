"""Operators' client bundles (``OU=admin``): issue, list, revoke.

Each bundle has a name and is recorded in the cluster object (name, serial,
expiry, when it was created and revoked); the one ``--init`` writes is
named ``init``. A bundle is issued for a key the operator generated: the
request carries a certificate signing request, the answer only the
certificate, so the private key never leaves the operator's machine.

Revoking a bundle puts its serial on the cluster's revocation list
(``ca/revocation.py``), which every manager checks on every request and
agents learn with their next heartbeat. A bundle cannot revoke itself
(the operator would lock themselves out): revoke it with another one, or
through a manager's control socket.
"""

from __future__ import annotations

import time
from typing import Optional, Union

from flask import Blueprint
from pydantic import Field, field_validator

from ...ca import certs, revocation
from ...common.units import format_duration, parse_duration
from ...model import objects, responses
from ...model.validation import ApiError, Model, ObjectName
from ..store.store import new_id
from .common import identity, json_response, manager, parse_body, policy, request_id, stored_cluster
from .openapi import doc

bp = Blueprint("admins", __name__, url_prefix="/v1/cluster/admins")

DEFAULT_EXPIRY = 365 * 86400
MAX_EXPIRY = 10 * 365 * 86400


class AdminCreate(Model):
    name: ObjectName
    csr: str = Field(max_length=16384)
    expiry: Optional[Union[str, float]] = None

    @field_validator("expiry")
    @classmethod
    def _expiry(cls, v):
        if v is None:
            return None
        seconds = parse_duration(v)
        if seconds < objects.MIN_CERT_EXPIRY or seconds > MAX_EXPIRY:
            raise ValueError(f"must be between {format_duration(objects.MIN_CERT_EXPIRY)} and "
                             f"{format_duration(MAX_EXPIRY)}")
        return seconds


def state(rec: dict, now: float | None = None) -> str:
    if rec.get("revoked_at") is not None:
        return "revoked"
    return "expired" if rec["not_after"] <= (time.time() if now is None else now) else "active"


def view(rec: dict, caller=None) -> dict:
    """A record as the API shows it; ``current`` marks the bundle the caller
    is using."""
    out = {k: rec.get(k) for k in ("name", "id", "serial", "not_after", "created_at",
                                   "revoked_at")}
    out["state"] = state(rec)
    out["current"] = bool(caller is not None and caller.serial is not None
                          and revocation.serial_hex(caller.serial) == rec["serial"])
    return out


def _kept(admins: dict | None, now: float) -> dict:
    """The records worth keeping: a bundle is forgotten a while after it
    expired, when its revocation is dropped too."""
    return {s: r for s, r in (admins or {}).items() if r["not_after"] + revocation.GRACE > now}


@bp.get("")
@policy("control")
@doc("The operators' client bundles (admin certificates), revoked and expired ones included; "
     "`current` marks the caller's.",
     response=list[responses.Admin], tags=("cluster",))
def list_admins():
    admins = (stored_cluster().get("admins") or {}).values()
    caller = identity()
    return json_response([view(r, caller) for r in sorted(
        admins, key=lambda r: (r["created_at"], r["name"]))])


@bp.post("")
@policy("control")
@doc("Issue an admin certificate for the key in a signing request.", body=AdminCreate,
     response=responses.AdminIssued, status=201, tags=("cluster",))
def create_admin():
    body = parse_body(AdminCreate)
    key_id = certs.csr_key_id(body.csr.encode())
    if key_id is None:
        raise ApiError(400, "invalid", "csr: not a PEM certificate signing request", field="csr")
    m = manager()
    lifetime = int(body.expiry or DEFAULT_EXPIRY)

    def change(c):
        now = time.time()
        admins = _kept(c.get("admins"), now)
        for rec in admins.values():
            if rec.get("key_id") == key_id:
                if rec["name"] == body.name:
                    return None     # this request again (its answer was lost)
                raise ApiError(409, "exists", "a bundle was already issued for this key",
                               field="csr")
            if rec["name"] == body.name and state(rec, now) == "active":
                raise ApiError(409, "exists", f"an active admin bundle named {body.name} exists "
                                              "(revoke it first, or choose another name)",
                               field="name")
        try:
            cert_pem = m.ca.root().sign_csr(body.csr.encode(), node_id="admin-" + new_id()[:12],
                                            role=certs.ROLE_ADMIN, cluster_id=c["id"],
                                            lifetime=lifetime)
        except certs.CertificateError as exc:
            raise ApiError(400, "invalid", f"csr: {exc}", field="csr") from None
        rec = objects.admin_record(body.name, certs.identity_from_pem(cert_pem),
                                   cert_pem.decode(), key_id, now)
        return dict(c, admins=dict(admins, **{rec["serial"]: rec}))

    c = m.store.update("cluster", stored_cluster()["id"], change, rid=request_id())
    # The record for this key (also when a retry of the request is answered
    # from the first time it was applied).
    rec = next((r for r in (c.get("admins") or {}).values() if r.get("key_id") == key_id), None)
    if rec is None:
        raise ApiError(409, "conflict", "the bundle was not recorded; retry")
    return json_response(dict(view(rec), cert=rec["cert"], ca=c["root_ca"]["cert"]), 201)


def _revoke(c: dict, rec: dict, caller, now: float) -> dict:
    """The cluster object with ``rec`` revoked (its serial on the list)."""
    if caller is not None and caller.serial is not None and \
            revocation.serial_hex(caller.serial) == rec["serial"]:
        raise ApiError(409, "own_credentials",
                       f"admin bundle {rec['name']} is the one making this request; revoke it "
                       "with another bundle")
    rec = dict(rec, revoked_at=now)
    revoked = revocation.with_entries(
        c.get("revoked"), [(revocation.serial_key(rec["serial"]), rec["not_after"])])
    return dict(c, admins=dict(_kept(c.get("admins"), now), **{rec["serial"]: rec}),
                revoked=revocation.purge(revoked) or revoked)


@bp.post("/<name>/revoke")
@policy("control")
@doc("Revoke the active admin bundle of this name: every manager and agent refuses it "
     "from then on (a name already revoked is answered as it is).", response=responses.Admin,
     tags=("cluster",))
def revoke_admin(name):
    caller = identity()
    found = {}

    def change(c):
        now = time.time()
        admins = _kept(c.get("admins"), now)
        active = [r for r in admins.values() if r["name"] == name and state(r, now) == "active"]
        if not active:
            if any(r["name"] == name for r in admins.values()):
                return None         # revoked (or expired) already: nothing to do
            raise ApiError(404, "not_found", f"no admin bundle named {name}")
        found["serial"] = active[0]["serial"]
        return _revoke(c, active[0], caller, now)

    c = manager().store.update("cluster", stored_cluster()["id"], change, rid=request_id())
    rec = (c.get("admins") or {}).get(found.get("serial"))
    if rec is None:     # nothing left to revoke: the newest bundle of that name
        named = [r for r in (c.get("admins") or {}).values() if r["name"] == name]
        if not named:
            raise ApiError(404, "not_found", f"no admin bundle named {name}")
        rec = max(named, key=lambda r: r["created_at"])
    return json_response(view(rec))


class AdminCertificate(Model):
    cert: str = Field(max_length=16384)


@bp.post("/revoke")
@policy("control")
@doc("Revoke the admin bundle whose certificate (PEM) is given, recorded or not (the "
     "bundle --init wrote before bundles were recorded).", body=AdminCertificate,
     response=responses.Admin, tags=("cluster",))
def revoke_certificate():
    body = parse_body(AdminCertificate)
    c = stored_cluster()
    pem = body.cert.encode()
    try:
        certs.verify_chain(pem, c["root_ca"]["cert"].encode())
        ident = certs.identity_from_pem(pem)
    except certs.CertificateError as exc:
        raise ApiError(400, "invalid", f"cert: {exc}", field="cert") from None
    if ident.role != certs.ROLE_ADMIN or ident.cluster_id != c["id"]:
        raise ApiError(400, "invalid", "cert: not an admin certificate of this cluster",
                       field="cert")
    serial = format(ident.serial, "x")
    caller = identity()

    def change(c):
        now = time.time()
        admins = _kept(c.get("admins"), now)
        rec = admins.get(serial)
        if rec is None:
            # Issued before bundles were recorded: only --init did that.
            taken = {r["name"] for r in admins.values()}
            name = "init" if "init" not in taken else f"unrecorded-{serial[:8]}"
            rec = objects.admin_record(name, ident, body.cert, certs.cert_key_id(pem), now)
            rec["created_at"] = ident.not_before.timestamp()
        elif state(rec, now) != "active":
            return None
        return _revoke(c, rec, caller, now)

    c = manager().store.update("cluster", c["id"], change, rid=request_id())
    rec = (c.get("admins") or {}).get(serial)
    return json_response(view(rec) if rec is not None else {
        "name": "", "id": ident.node_id, "serial": serial,
        "not_after": ident.not_after.timestamp(), "created_at": ident.not_before.timestamp(),
        "revoked_at": None, "state": "expired", "current": False})
