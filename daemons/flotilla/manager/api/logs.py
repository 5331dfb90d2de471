"""``GET /v1/services/<ref>/logs``: a service's container output, gathered
from the agents of the nodes that ran its tasks (see manager/logs.py)."""

from __future__ import annotations

import threading
from typing import Literal, Optional

from flask import Blueprint, current_app
from pydantic import BaseModel, Field

from ...model.validation import ApiError, Model
from ..logs import Busy, LogCollector
from .common import json_response, manager, parse_query, policy
from .openapi import doc
from .services import _get_service

bp = Blueprint("logs", __name__, url_prefix="/v1")

_collector_lock = threading.Lock()
MAX_LOG_LINES = 10_000   # what an agent returns at most per task


class LogQuery(Model):
    tail: Optional[int] = Field(default=None, ge=0, le=MAX_LOG_LINES, description=(
        f"Only the last N lines of each task (default: all, at most {MAX_LOG_LINES})."))
    since: Optional[float] = Field(default=None, ge=0, allow_inf_nan=False, description=(
        "Only lines written at or after this time (unix seconds)."))


class LogEntry(BaseModel):
    task_id: str
    service: str
    slot: Optional[int] = Field(description="The task's slot (replicated services).")
    node_id: str
    node: Optional[str] = Field(description="Hostname of the node that ran the task.")
    time: float = Field(description="When the container wrote the line (unix seconds).")
    timestamp: str = Field(description="The same time in RFC 3339 with nanoseconds (UTC).")
    stream: Literal["stdout", "stderr"]
    line: str


class LogUnreachable(BaseModel):
    node_id: str
    node: Optional[str]
    error: str
    truncated: bool = Field(default=False, description=(
        "The node answered more than a logs request reads (8 MiB per node, 16 MiB and "
        "100,000 lines in all): the lines of its tasks read before the limit are included, "
        "the others left out. Ask for fewer with `tail` or `since`."))


class ServiceLogs(BaseModel):
    entries: list[LogEntry] = Field(description="Oldest first.")
    unreachable: list[LogUnreachable] = Field(description=(
        "Nodes whose tasks' logs could not be read in full (unreachable, too slow: 5 s for the "
        "whole request, or truncated); the other nodes' lines are still returned."))


def _collector() -> LogCollector:
    ext = current_app.extensions
    with _collector_lock:
        collector = ext.get("flotilla.logs")
        if collector is None:
            cfg = manager().cfg
            collector = ext["flotilla.logs"] = LogCollector(cfg.bundle_path, cfg.ca_path)
    return collector


@bp.get("/services/<ref>/logs")
@policy("control")
@doc("The output of a service's tasks (stdout and stderr), oldest first, read from the "
     "nodes that ran them; nodes that cannot be reached are listed in `unreachable`.",
     response=ServiceLogs, query=LogQuery, tags=("services",))
def service_logs(ref):
    q = parse_query(LogQuery)
    store = manager().store
    service = _get_service(ref)
    tasks = store.by_index("task", "service_id", service["id"])
    try:
        return json_response(_collector().collect(store, tasks, tail=q.tail, since=q.since))
    except Busy as exc:
        raise ApiError(503, "busy", str(exc)) from None
