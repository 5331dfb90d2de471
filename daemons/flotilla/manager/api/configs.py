"""Configs: small named blobs (up to 500 KB) kept in the replicated store,
for services to mount. Immutable once created, like SwarmKit's."""

from __future__ import annotations

import base64
import binascii

from flask import Blueprint
from pydantic import Field, field_validator

from ...model import responses
from ...model.validation import ApiError, Model, ObjectName, Text
from ..store.store import Op, new_id
from .common import json_response, manager, parse_body, policy, replayed_removal, request_id
from .nodes import validate_labels
from .openapi import doc

bp = Blueprint("configs", __name__, url_prefix="/v1/configs")

MAX_DATA = 500 * 1024


class ConfigCreate(Model):
    name: ObjectName
    data: str = Field(max_length=(MAX_DATA * 4) // 3 + 8)
    labels: dict[str, Text] = Field(default_factory=dict)

    @field_validator("data")
    @classmethod
    def _data(cls, v):
        try:
            raw = base64.b64decode(v, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("must be base64") from None
        if len(raw) > MAX_DATA:
            raise ValueError(f"larger than {MAX_DATA} bytes")
        return v

    @field_validator("labels")
    @classmethod
    def _labels(cls, v):
        return validate_labels(v)


def view(c, with_data=False):
    out = {k: c[k] for k in ("id", "name", "labels", "version", "created_at", "updated_at")}
    out["size"] = len(base64.b64decode(c["data"]))
    if with_data:
        out["data"] = c["data"]
    return out


def _get(ref):
    store = manager().store
    c = store.get("config", ref) or store.by_unique("config", "name", ref)
    if c is None:
        raise ApiError(404, "not_found", f"config {ref} not found")
    return c


@bp.get("")
@policy("control")
@doc("List configs.", response=list[responses.Config], tags=("configs",))
def list_configs():
    items = sorted(manager().store.list("config"), key=lambda c: c["name"])
    return json_response([view(c) for c in items])


@bp.post("")
@policy("control")
@doc("Create a config (base64 data, at most 500 KB).", body=ConfigCreate,
     response=responses.Config, status=201, tags=("configs",))
def create_config():
    body = parse_body(ConfigCreate)
    obj = {"id": new_id(), "name": body.name, "data": body.data, "labels": body.labels}
    result = manager().store.commit([Op.create("config", obj)], rid=request_id())
    return json_response(view(result["objects"][0]), 201)


@bp.get("/<ref>")
@policy("control")
@doc("Inspect a config, with its data.", response=responses.Config, tags=("configs",))
def inspect_config(ref):
    return json_response(view(_get(ref), with_data=True))


@bp.delete("/<ref>")
@policy("control")
@doc("Remove a config.", response=responses.Removed, tags=("configs",))
def remove_config(ref):
    if (done := replayed_removal()) is not None:
        return json_response(done)
    c = _get(ref)
    manager().store.commit([Op.delete("config", c["id"])], rid=request_id())
    return json_response({"id": c["id"], "removed": True})
