"""Agent session endpoints: register, heartbeat, certificate renewal."""

from __future__ import annotations

from typing import Optional

from flask import Blueprint
from pydantic import Field

from ..caserver import JoinRefused
from ..dispatcher import SessionInvalid
from . import models
from .openapi import doc
from .common import ApiError, Model, identity, json_response, manager, parse_body, policy
from .join import Platform
from .sessionmodels import Heartbeat, StatusReport

bp = Blueprint("dispatcher", __name__, url_prefix="/v1")


class Resources(Model):
    cpus: float = Field(default=0, ge=0, le=4096)
    memory: int = Field(default=0, ge=0, le=2 ** 63 - 1)


class Engine(Model):
    version: str = Field(default="", max_length=64)
    labels: dict[str, str] = Field(default_factory=dict)


class Register(Model):
    hostname: str = Field(default="", max_length=253)
    platform: Optional[Platform] = None
    resources: Optional[Resources] = None
    engine: Optional[Engine] = None
    version: str = Field(default="", max_length=64)
    addr: Optional[str] = Field(default=None, max_length=300)
    agent_addr: Optional[str] = Field(default=None, max_length=300)


class Renew(Model):
    csr: str = Field(max_length=16384)


def _dispatcher():
    d = manager().dispatcher
    if d is None:
        raise ApiError(503, "no_leader", "the dispatcher is not running on this manager")
    return d


@bp.post("/dispatcher/register")
@policy("agent")
@doc("Agent: open a session.", body=Register, tags=("agents",))
def register():
    body = parse_body(Register)
    desc = {"hostname": body.hostname, "version": body.version}
    if body.platform is not None:
        desc["platform"] = body.platform.model_dump()
    if body.resources is not None:
        desc["resources"] = body.resources.model_dump()
    if body.engine is not None:
        desc["engine"] = body.engine.model_dump()
    try:
        return json_response(_dispatcher().register(identity().node_id, desc, body.addr,
                                                    body.agent_addr))
    except SessionInvalid as exc:
        raise ApiError(401, "revoked", str(exc)) from None


@bp.post("/dispatcher/heartbeat")
@policy("agent")
@doc("Agent: heartbeat.", body=Heartbeat, tags=("agents",))
def heartbeat():
    body = parse_body(Heartbeat)
    try:
        return json_response(_dispatcher().heartbeat(identity().node_id, body.session_id))
    except SessionInvalid as exc:
        raise ApiError(409, "session_invalid", str(exc)) from None


@bp.post("/dispatcher/status")
@policy("agent")
@doc("Agent: report task states.", body=StatusReport, response=models.Accepted, tags=("agents",))
def status():
    body = parse_body(StatusReport)
    updates = [{"task_id": u.task_id, "status": u.status.model_dump()} for u in body.updates]
    try:
        n = _dispatcher().update_status(identity().node_id, body.session_id, updates)
    except SessionInvalid as exc:
        raise ApiError(409, "session_invalid", str(exc)) from None
    return json_response({"accepted": n})


@bp.post("/ca/renew")
@policy("agent")
@doc("Agent: renew this node's certificate.", body=Renew, tags=("agents",))
def renew():
    body = parse_body(Renew)
    try:
        return json_response(manager().ca.renew(identity().node_id, body.csr))
    except JoinRefused as exc:
        raise ApiError(exc.status, exc.code, str(exc)) from None
