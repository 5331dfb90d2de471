"""The bodies of the agents' heartbeats and status reports, validated by
the dispatcher's API views and by its front (``manager/dispatcher/front.py``),
which runs outside Flask."""

from __future__ import annotations

from typing import Optional

from pydantic import Field

from .taskapi import TaskStatus
from .validation import Model


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
