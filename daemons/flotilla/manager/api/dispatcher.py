"""Agent session endpoints: register, heartbeat, certificate renewal.

At registration the node's address is the one its agent connected from
(through a follower, the one the follower saw), as SwarmKit takes it: the
node reports its hostname (checked as at join), platform, resources and
engine labels, the ports it listens on and its WireGuard public key (for
encrypted networks; never a private key), but not where it is. Its agent
listener is reached at the observed host and the reported port, unless the
node was started with an explicit advertise address (``--advertise`` or
``--agent-advertise``, for NAT): then at that address.
"""

from __future__ import annotations

from typing import Optional

from flask import Blueprint
from pydantic import Field, field_validator

from ...model import responses
from ...model.network import valid_wireguard_key as valid_key
from ...model.session import Heartbeat, StatusReport
from ...model.validation import ApiError, Hostname, Model
from ..caserver import JoinRefused
from ..dispatcher.dispatcher import SessionInvalid
from .common import identity, json_response, manager, parse_body, peer_ip, policy
from .join import Platform
from .join import _address as check_address
from .openapi import doc

bp = Blueprint("dispatcher", __name__, url_prefix="/v1")


class Resources(Model):
    cpus: float = Field(default=0, ge=0, le=4096)
    memory: int = Field(default=0, ge=0, le=2 ** 63 - 1)


class Engine(Model):
    version: str = Field(default="", max_length=64)
    labels: dict[str, str] = Field(default_factory=dict)


class WireGuard(Model):
    """The node's WireGuard public key and listen port (encrypted networks)."""
    public_key: str = Field(min_length=44, max_length=44)
    port: int = Field(ge=1, le=65535)

    @field_validator("public_key")
    @classmethod
    def _key(cls, v):
        if not valid_key(v):
            raise ValueError("not a WireGuard public key (32 bytes, base64)")
        return v


class Register(Model):
    hostname: Hostname = ""
    platform: Optional[Platform] = None
    resources: Optional[Resources] = None
    engine: Optional[Engine] = None
    version: str = Field(default="", max_length=64)
    addr: Optional[str] = Field(default=None, max_length=300)
    agent_addr: Optional[str] = Field(default=None, max_length=300)
    # The node was given its advertise address explicitly (behind NAT, the
    # address managers must use is not the one it connects from).
    advertise_explicit: bool = False
    # Absent: the node cannot carry encrypted networks between hosts.
    wireguard: Optional[WireGuard] = None

    @field_validator("addr", "agent_addr")
    @classmethod
    def _addresses(cls, v):
        return check_address(v)


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
    desc["wireguard"] = body.wireguard.model_dump() if body.wireguard is not None else None
    try:
        return json_response(_dispatcher().register(
            identity().node_id, desc, body.addr, body.agent_addr,
            observed_ip=peer_ip(), explicit=body.advertise_explicit))
    except SessionInvalid as exc:
        raise ApiError(401, "revoked", str(exc)) from None


@bp.post("/dispatcher/heartbeat")
@policy("agent")
@doc("Agent: heartbeat.", body=Heartbeat, tags=("agents",))
def heartbeat():
    body = parse_body(Heartbeat)
    try:
        key = body.network_key.model_dump() if body.network_key is not None else None
        return json_response(_dispatcher().heartbeat(identity().node_id, body.session_id,
                                                     body.trust, key))
    except SessionInvalid as exc:
        raise ApiError(409, "session_invalid", str(exc)) from None


@bp.post("/dispatcher/status")
@policy("agent")
@doc("Agent: report task states.", body=StatusReport, response=responses.Accepted, tags=("agents",))
def status():
    body = parse_body(StatusReport)
    updates = [{"task_id": u.task_id, "status": u.status.model_dump()} for u in body.updates]
    try:
        n = _dispatcher().update_status(identity().node_id, body.session_id, updates)
    except SessionInvalid as exc:
        raise ApiError(409, "session_invalid", str(exc)) from None
    return json_response({"accepted": n})


@bp.post("/ca/renew")
@policy("renewal")
@doc("Agent: renew this node's certificate.", body=Renew, tags=("agents",))
def renew():
    body = parse_body(Renew)
    try:
        return json_response(manager().ca.renew(identity().node_id, body.csr, identity()))
    except JoinRefused as exc:
        raise ApiError(exc.status, exc.code, str(exc)) from None
