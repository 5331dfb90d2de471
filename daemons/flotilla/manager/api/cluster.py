"""The cluster object: settings and join tokens.

``PATCH /v1/cluster`` changes settings; ``rotate_network_keys: true`` asks
every node for a new WireGuard key at once (the cluster's
``network_keys.force_rotate`` goes up by one, as SwarmKit's rotation flags
ride on its cluster update; see ``manager/networkkeys.py``)."""

from __future__ import annotations

from typing import Optional, Union

from flask import Blueprint
from pydantic import Field, StrictBool, field_validator

from ...ca import tokens
from ...common.units import format_duration, parse_duration
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
        raise ValueError(f"{what} must be between {format_duration(lo)} and "
                         f"{format_duration(hi)}")
    return seconds


class ClusterUpdate(Model):
    cert_expiry: Optional[Union[str, float]] = None
    heartbeat_period: Optional[Union[str, float]] = None
    task_history_limit: Optional[int] = Field(default=None, ge=-1, le=1000)
    # how often each node's WireGuard key is replaced (encrypted networks)
    network_key_rotation: Optional[Union[str, float]] = None
    # every node's WireGuard key replaced now
    rotate_network_keys: StrictBool = False
    version: Optional[int] = None

    @field_validator("cert_expiry")
    @classmethod
    def _cert_expiry(cls, v):
        return _duration(v, objects.MIN_CERT_EXPIRY, MAX_CERT_EXPIRY, "cert_expiry")

    @field_validator("heartbeat_period")
    @classmethod
    def _heartbeat(cls, v):
        return _duration(v, 0.1, 3600, "heartbeat_period")

    @field_validator("network_key_rotation")
    @classmethod
    def _network_key_rotation(cls, v):
        return _duration(v, objects.MIN_NETWORK_KEY_ROTATION, objects.MAX_NETWORK_KEY_ROTATION,
                         "network_key_rotation")


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
        if body.network_key_rotation is not None or body.rotate_network_keys:
            keys = objects.network_keys_spec(c)
            if body.network_key_rotation is not None:
                keys["rotation_period"] = float(body.network_key_rotation)
            if body.rotate_network_keys:
                keys["force_rotate"] += 1
            spec["network_keys"] = keys
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
