"""The task as agents report it and as the API shows it: pydantic models
of the shapes described in ``model/task.py`` (models of the API carry no
docstring: it would become their description in the OpenAPI document)."""

from __future__ import annotations

from typing import Annotated, Optional

from pydantic import BaseModel, Field, field_validator

from .specs import TaskSpec
from .task import STATE_VALUES, From, Given
from .validation import Model


# A task's observed status: what an agent reports (checked as sent)
# and what the store keeps.
class TaskStatus(Model):
    state: str = Field(max_length=16)
    message: str = Field(default="", max_length=2000)
    err: Optional[str] = Field(default=None, max_length=2000)
    exit_code: Optional[int] = Field(default=None, ge=-(2 ** 63), le=2 ** 63 - 1)
    container_id: Optional[str] = Field(default=None, max_length=128)
    timestamp: Optional[float] = None

    @field_validator("state")
    @classmethod
    def _state(cls, v: str) -> str:
        if v not in STATE_VALUES:
            raise ValueError(f"unknown task state {v!r}")
        return v


# A port the task publishes on its node (host mode).
class TaskPort(BaseModel):
    target: int
    published: int
    protocol: str


# A task's address on a network (given by the allocator).
class TaskNetwork(BaseModel):
    network_id: str
    addr: str
    aliases: list[str] = []


# A task as the API lists it: its status lifted to the top.
class Task(BaseModel):
    id: str
    service_id: str
    service_name: str
    slot: Optional[int] = None
    node_id: Optional[str] = None
    node: Annotated[Optional[str], Given()] = None       # the node's hostname
    desired_state: str
    state: Annotated[str, From("status", "state")]
    message: Annotated[str, From("status", "message", default="")]
    error: Annotated[Optional[str], From("status", "err", default=None)] = None
    exit_code: Annotated[Optional[int], From("status", "exit_code", default=None)] = None
    container_id: Annotated[Optional[str], From("status", "container_id", default=None)] = None
    timestamp: Annotated[Optional[float], From("status", "timestamp", default=None)] = None
    image: Annotated[str, From("spec", "container", "image")]
    spec_version: int
    up_to_date: Annotated[bool, Given()]                 # runs the service's current spec
    networks: Annotated[list[TaskNetwork], From("networks", default=())] = []
    created_at: Annotated[Optional[float], From("created_at", default=None)] = None
    updated_at: Annotated[Optional[float], From("updated_at", default=None)] = None


# A task as the API shows one: with its spec and ports.
class TaskDetail(Task):
    spec: TaskSpec
    ports: list[TaskPort]
