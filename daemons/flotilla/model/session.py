"""The bodies of the agents' heartbeats and status reports, validated by
the dispatcher's API views and by its front (``manager/dispatcher/front.py``),
which runs outside Flask."""

from __future__ import annotations

from typing import Optional

from pydantic import Field, field_validator

from .network import valid_wireguard_key
from .taskapi import TaskStatus
from .validation import Model


class StatusUpdate(Model):
    task_id: str = Field(max_length=64)
    status: TaskStatus


class StatusReport(Model):
    session_id: str = Field(max_length=64)
    updates: list[StatusUpdate] = Field(max_length=1000)


class NetworkKeyReport(Model):
    """A new WireGuard public key the node made when asked (``generation``:
    the one the managers asked for). Never a private key."""
    public_key: str = Field(min_length=44, max_length=44)
    generation: int = Field(ge=1, le=2 ** 53)

    @field_validator("public_key")
    @classmethod
    def _key(cls, v: str) -> str:
        if not valid_wireguard_key(v):
            raise ValueError("not a WireGuard public key (32 bytes, base64)")
        return v


class Heartbeat(Model):
    session_id: str = Field(max_length=64)
    # The version of the managers and revocation list the agent holds: the
    # answer carries them only when they differ.
    trust: Optional[str] = Field(default=None, max_length=64)
    # Sent while the node has a new key the managers have not recorded yet.
    network_key: Optional[NetworkKeyReport] = None
