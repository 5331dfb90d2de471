"""The bodies of the agents' heartbeats and status reports. Kept apart from
the views (and free of Flask) because the dispatcher's front
(``manager/front.py``) validates them too."""

from __future__ import annotations

from typing import Optional

from pydantic import Field, field_validator

from . import task as taskmodel
from .validation import Model


class TaskStatus(Model):
    state: str = Field(max_length=16)
    message: str = Field(default="", max_length=2000)
    err: Optional[str] = Field(default=None, max_length=2000)
    exit_code: Optional[int] = Field(default=None, ge=-(2 ** 63), le=2 ** 63 - 1)
    container_id: Optional[str] = Field(default=None, max_length=128)
    timestamp: Optional[float] = None

    @field_validator("state")
    @classmethod
    def _state(cls, v):
        if v not in taskmodel.STATE_VALUES:
            raise ValueError(f"unknown task state {v!r}")
        return v


class StatusUpdate(Model):
    task_id: str = Field(max_length=64)
    status: TaskStatus


class StatusReport(Model):
    session_id: str = Field(max_length=64)
    updates: list[StatusUpdate] = Field(max_length=1000)


class Heartbeat(Model):
    session_id: str = Field(max_length=64)
    # The version of the managers and revocation list the agent holds: the
    # answer carries them only when they differ.
    trust: Optional[str] = Field(default=None, max_length=64)
