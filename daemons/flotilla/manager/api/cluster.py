"""The cluster object: settings and join tokens."""

from __future__ import annotations

from typing import Optional, Union

from flask import Blueprint
from pydantic import Field, field_validator

from ...ca import tokens
from ...common.units import parse_duration
from ...model import objects, responses
from ...model.validation import ApiError, Model
from .common import json_response, manager, parse_body, policy, request_id, stored_cluster
from .openapi import doc

bp = Blueprint("cluster", __name__, url_prefix="/v1/cluster")

MAX_CERT_EXPIRY = 10 * 365 * 86400


def _duration(value, lo, hi, what):
    if value is None:
        return None
    seconds = parse_duration(value)
    if seconds < lo or seconds > hi:
        raise ValueError(f"{what} must be between {lo:g}s and {hi:g}s")
    return seconds


class ClusterUpdate(Model):
    cert_expiry: Optional[Union[str, float]] = None
    heartbeat_period: Optional[Union[str, float]] = None
    task_history_limit: Optional[int] = Field(default=None, ge=-1, le=1000)
    version: Optional[int] = None

    @field_validator("cert_expiry")
    @classmethod
    def _cert_expiry(cls, v):
        return _duration(v, objects.MIN_CERT_EXPIRY, MAX_CERT_EXPIRY, "cert_expiry")

    @field_validator("heartbeat_period")
    @classmethod
    def _heartbeat(cls, v):
        return _duration(v, 0.1, 3600, "heartbeat_period")


@bp.get("")
@policy("control")
@doc("The cluster's settings and root CA.", response=responses.Cluster, tags=("cluster",))
def get_cluster():
    return json_response(objects.public_cluster(stored_cluster()))


@bp.patch("")
@policy("control")
@doc("Change cluster settings.", body=ClusterUpdate, response=responses.Cluster, tags=("cluster",))
def updatestored_cluster():
    body = parse_body(ClusterUpdate)

    def change(c):
        spec = {k: dict(v) for k, v in c["spec"].items()}
        if body.cert_expiry is not None:
            spec["ca"]["node_cert_expiry"] = int(body.cert_expiry)
        if body.heartbeat_period is not None:
            spec["dispatcher"]["heartbeat_period"] = float(body.heartbeat_period)
        if body.task_history_limit is not None:
            spec["orchestration"]["task_history_limit"] = body.task_history_limit
        return dict(c, spec=spec)

    c = manager().store.update("cluster", stored_cluster()["id"], change, rid=request_id(),
                               version=body.version)
    return json_response(objects.public_cluster(c))


def _role(role):
    if role not in ("worker", "manager"):
        raise ApiError(404, "not_found", "join token role must be 'worker' or 'manager'",
                       field="role")
    return role


@bp.get("/join-tokens")
@policy("control")
@doc("Both join tokens.", response=responses.JoinTokens, tags=("cluster",))
def get_tokens():
    c = stored_cluster()
    return json_response(dict(c["tokens"]))


@bp.get("/join-tokens/<role>")
@policy("control")
@doc("The join token for a role (worker or manager).", response=responses.JoinToken,
     tags=("cluster",))
def get_token(role):
    c = stored_cluster()
    return json_response({"role": _role(role), "token": c["tokens"][role]})


@bp.post("/join-tokens/<role>/rotate")
@policy("control")
@doc("Replace the join token for a role.", response=responses.JoinToken, tags=("cluster",))
def rotate_token(role):
    _role(role)

    def change(c):
        token = tokens.generate_token(c["root_ca"]["cert"].encode())
        return dict(c, tokens=dict(c["tokens"], **{role: token}))

    c = manager().store.update("cluster", stored_cluster()["id"], change, rid=request_id())
    return json_response({"role": role, "token": c["tokens"][role]})
