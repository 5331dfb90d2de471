"""Raft membership as seen by managers: a promoted manager joins here."""

from __future__ import annotations

from flask import Blueprint
from pydantic import Field, field_validator

from ...model import responses
from ...model.validation import ApiError, Model
from ..raft.membership import MembershipBusy, MembershipError
from ..raft.security import node_by_raft_addr
from .common import identity, json_response, manager, parse_body, policy
from .join import _address
from .openapi import doc

bp = Blueprint("raft", __name__, url_prefix="/v1/raft")


class RaftJoin(Model):
    raft_addr: str = Field(max_length=300)
    api_addr: str = Field(max_length=300)

    @field_validator("raft_addr", "api_addr")
    @classmethod
    def _addresses(cls, v):
        return _address(v)


@bp.get("")
@policy("control")
@doc("Raft status of the leader.", tags=("managers",))
def status():
    m = manager()
    return json_response(m.raft.status())


@bp.post("/join")
@policy("manager")
@doc("Manager: join the Raft group.", body=RaftJoin, response=responses.RaftMembers,
     tags=("managers",))
def join():
    """Record the caller's addresses, add it to the Raft configuration (the
    change carries its node id and API address) and return the members it
    must start with (Raft address -> node id, and -> API address)."""
    body = parse_body(RaftJoin)
    m = manager()
    node_id = identity().node_id
    holder = m.security.managers_by_address().get(body.raft_addr)
    if holder is None:              # a manager whose joining was left half done
        recorded = node_by_raft_addr(m.store, body.raft_addr)
        holder = recorded["id"] if recorded is not None else None
    if holder is not None and holder != node_id:
        raise ApiError(409, "address_in_use", f"raft address {body.raft_addr} belongs to {holder}")
    m.store.update("node", node_id, lambda node: dict(
        node, role="manager", manager={"raft_addr": body.raft_addr, "api_addr": body.api_addr}))
    try:
        m.membership.add(body.raft_addr, member={"node_id": node_id, "api_addr": body.api_addr})
    except MembershipBusy as exc:
        raise ApiError(503, "membership_busy", str(exc)) from None
    except MembershipError as exc:
        raise ApiError(503, "membership_failed", str(exc)) from None
    ids = m.security.managers_by_address()
    apis = m.security.api_by_address()
    addresses = m.raft.member_addresses()
    return json_response({"members": {addr: ids.get(addr) for addr in addresses},
                          "api": {addr: apis[addr] for addr in addresses if addr in apis}})
