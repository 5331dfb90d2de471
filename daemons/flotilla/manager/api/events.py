"""``GET /v1/events``: what changed in the cluster (see manager/events.py)."""

from __future__ import annotations

from typing import Any, Literal, Optional

from flask import Blueprint
from pydantic import BaseModel, Field, field_validator

from ...model.validation import ApiError, Model
from .. import events as eventlog
from .common import json_response, manager, parse_query, policy
from .openapi import doc

bp = Blueprint("events", __name__, url_prefix="/v1")


def _choices(value: Optional[str], allowed: tuple[str, ...], what: str) -> Optional[str]:
    if value is None:
        return None
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise ValueError(f"give one or more of {', '.join(allowed)}")
    for item in items:
        if item not in allowed:
            raise ValueError(f"unknown {what} {item!r} (one of {', '.join(allowed)})")
    return ",".join(items)


class EventQuery(Model):
    since: Optional[int] = Field(default=None, ge=0, description=(
        "Return events with a larger index (the `index` of a previous answer). "
        "Default: only events from now on."))
    wait: float = Field(default=0, ge=0, le=60, allow_inf_nan=False, description=(
        "Seconds to wait for a first matching event (long poll); 0 answers at once."))
    type: Optional[str] = Field(default=None, max_length=100, description=(
        "Only these object types, comma-separated: service, task, node, cluster, config, "
        "network."))
    action: Optional[str] = Field(default=None, max_length=100, description=(
        "Only these actions, comma-separated: create, update, remove, state."))
    service: Optional[str] = Field(default=None, min_length=1, max_length=128, description=(
        "Only events of this service and its tasks (name or id)."))
    node: Optional[str] = Field(default=None, min_length=1, max_length=253, description=(
        "Only events of this node and the tasks on it (hostname or id)."))
    limit: int = Field(default=1000, ge=1, le=1000, description="At most this many events.")

    @field_validator("type")
    @classmethod
    def _type(cls, v):
        return _choices(v, eventlog.TYPES, "type")

    @field_validator("action")
    @classmethod
    def _action(cls, v):
        return _choices(v, eventlog.ACTIONS, "action")


class Event(BaseModel):
    """One change in the cluster."""
    index: int = Field(description="Store index of the change; events of one transaction share it.")
    time: float = Field(description="When the change was made (unix seconds).")
    type: Literal["service", "task", "node", "cluster", "config", "network"]
    action: str = Field(description="create, update, remove, or state (observed state changed).")
    id: str
    name: Optional[str] = Field(description="Service name, node hostname, or task "
                                            "<service>.<slot>.")
    attributes: dict[str, Any] = Field(description=(
        "Tasks: service_id, service, slot, node_id, node, desired_state, state, "
        "previous_state (action state), error, message, exit_code."))


class EventList(BaseModel):
    events: list[Event]
    index: int = Field(description="Pass as `since` to get the events that follow.")
    truncated: bool = Field(description=(
        "Some events after `since` are no longer kept; the answer starts with the oldest kept."))


@bp.get("/events")
@policy("control")
@doc("Cluster events (services, tasks, nodes, configs, cluster), oldest first; "
     "long-poll with `wait` and resume with `since`.",
     response=EventList, query=EventQuery, tags=("events",))
def list_events():
    q = parse_query(EventQuery)
    log = getattr(manager(), "events", None)
    if log is None:
        raise ApiError(503, "unavailable", "events are not available on this manager yet")
    match = eventlog.Filter(types=q.type.split(",") if q.type else None,
                            actions=q.action.split(",") if q.action else None,
                            service=q.service, node=q.node)
    return json_response(log.query(since=q.since, wait=q.wait, match=match, limit=q.limit))
