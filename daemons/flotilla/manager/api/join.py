"""Joining: the root CA (any manager) and certificate issuance (leader).

These are the only endpoints that need no client certificate. The CA
endpoint serves public data only; the join endpoint requires a valid join
token and issues a certificate whose role the token decides.
"""

from __future__ import annotations

from typing import Optional

from flask import Blueprint, current_app
from pydantic import Field, field_validator

from ...common.config import ConfigError, split_addr
from ...model.validation import ApiError, Hostname, Model
from ..caserver import JoinRefused
from .common import json_response, manager, parse_body, policy
from .openapi import doc

bp = Blueprint("join", __name__, url_prefix="/v1")

class Platform(Model):
    os: str = Field(default="", max_length=32)
    arch: str = Field(default="", max_length=32)


def _address(value):
    if value is None:
        return value
    try:
        split_addr(value, default_port=None)
    except ConfigError as exc:
        raise ValueError(str(exc)) from None
    return value


class JoinRequest(Model):
    token: str = Field(max_length=200)
    csr: str = Field(max_length=16384)
    hostname: Hostname = ""
    addr: str = Field(max_length=300)
    raft_addr: Optional[str] = Field(default=None, max_length=300)
    platform: Optional[Platform] = None

    @field_validator("addr", "raft_addr")
    @classmethod
    def _addresses(cls, v):
        return _address(v)


@bp.get("/join/ca")
@policy("public", local=True)
@doc("The cluster's root CA certificate (PEM); check it against the join token's digest.",
     content_type="application/x-pem-file", tags=("join",))
def root_ca():
    m = manager()
    with open(m.cfg.ca_path, "rb") as f:
        pem = f.read()
    return current_app.response_class(pem, mimetype="application/x-pem-file")


@bp.post("/join")
@policy("public")
@doc("Join with a token and a certificate signing request.", body=JoinRequest, status=201,
     tags=("join",))
def join():
    body = parse_body(JoinRequest)
    m = manager()
    try:
        result = m.ca.join(token=body.token, csr=body.csr, hostname=body.hostname,
                           addr=body.addr, raft_addr=body.raft_addr,
                           platform=body.platform.model_dump() if body.platform else None)
    except JoinRefused as exc:
        raise ApiError(exc.status, exc.code, str(exc)) from None
    return json_response(result, 201)
