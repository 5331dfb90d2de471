"""Service specifications: validation and the canonical stored form.

A spec arrives as JSON (from the CLI or any client), is validated here with
unknown keys refused, and is stored in canonical form: durations in seconds,
sizes in bytes, every field present. The task part is copied into each task
(see ``flotilla.model.task``).
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, Optional, Self, Union

from pydantic import AfterValidator, Field, ValidationInfo, field_validator, model_validator

from ..common import template
from ..common.units import parse_bytes, parse_duration
from .constraint import parse_constraints
from .names import ENV_KEY, SERVICE_NAME
from .network import MAX_NETWORKS_PER_SERVICE, NetworkAttachment
from .validation import Model, Text, check_labels

MAX_REPLICAS = 10000
# The engine takes memory as a signed 64-bit byte count.
MAX_MEMORY = 2 ** 63 - 1
# node.labels.<key, at most 128>==<value, at most 1024>, with room to spare.
MAX_CONSTRAINT = 1200

Duration = Union[str, float]
Size = Union[str, int]


def _seconds(value: Duration, lo: float = 0.0, hi: float = 365 * 86400,
             what: str = "duration") -> float:
    seconds = parse_duration(value)
    if seconds < lo or seconds > hi:
        raise ValueError(f"{what} must be between {lo:g}s and {hi:g}s")
    return seconds


def _check_no_nul(items: Optional[list[str]], what: str) -> None:
    # The kernel takes arguments and environment as C strings.
    for item in items or ():
        if "\x00" in item:
            raise ValueError(f"{what} must not contain NUL characters")


def _template(value: Optional[str]) -> Optional[str]:
    """A field each node expands per task (``common/template.py``): only
    the placeholders it knows."""
    if value is not None:
        template.check(value)      # TemplateError is a ValueError: a 400 naming the field
    return value


def _env_template(entry: str) -> str:
    _, sep, value = entry.partition("=")
    if sep:
        template.check(value)
    return entry


class Mount(Model):
    type: Literal["bind", "volume", "tmpfs"] = "volume"
    # source and target may hold templates ({{.Task.Slot}}), expanded per task
    source: Annotated[str, AfterValidator(_template)] = Field(default="", max_length=4096)
    target: Annotated[str, AfterValidator(_template)] = Field(max_length=4096)
    readonly: bool = False

    @model_validator(mode="after")
    def _check(self) -> Self:
        # what the placeholders stand for is checked by the engine; their
        # surroundings must make an absolute path or a volume name
        target, source = template.sample(self.target), template.sample(self.source)
        if not target.startswith("/"):
            raise ValueError("mount target must be an absolute path")
        if self.type == "bind" and not source.startswith("/"):
            raise ValueError("bind mount source must be an absolute path")
        if self.type == "volume" and source and not SERVICE_NAME.match(source):
            raise ValueError("volume name must be letters, digits, '_', '.', '-'")
        if self.type == "tmpfs" and self.source:
            raise ValueError("tmpfs mounts take no source")
        return self


HTTP_STATUS = re.compile(r"^([1-5][0-9][0-9])(?:-([1-5][0-9][0-9]))?$")
HEALTH_FORMS = ("test", "http", "tcp")


def _any_success() -> list[Union[int, str]]:
    """HttpCheck's default status: any success or redirect."""
    return ["200-399"]


class HttpCheck(Model):
    """GET http://<container address>:<port><path>, answered with one of the
    ``status`` codes (codes like ``204`` or ranges like ``200-299``)."""
    port: int = Field(ge=1, le=65535)
    path: str = Field(default="/", max_length=2048)
    status: list[Union[int, str]] = Field(default_factory=_any_success,
                                          min_length=1, max_length=32)

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        if not v.startswith("/"):
            raise ValueError("path must start with '/'")
        if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in v):
            raise ValueError("path must not contain spaces or control characters")
        return v

    @field_validator("status", mode="before")
    @classmethod
    def _one_status(cls, v: Any) -> Any:
        return [v] if isinstance(v, (int, str)) else v

    @field_validator("status")
    @classmethod
    def _status(cls, v: list[Union[int, str]]) -> list[Union[int, str]]:
        out: list[Union[int, str]] = []
        for item in v:
            m = HTTP_STATUS.match(str(item)) if not isinstance(item, bool) else None
            if not m or int(m.group(1)) > int(m.group(2) or m.group(1)):
                raise ValueError(f"status {str(item)[:20]!r} is not a code (e.g. 200) "
                                 "or a range (e.g. 200-299) within 100-599")
            out.append(m.group(0))
        return out


class TcpCheck(Model):
    """A TCP connection to <container address>:<port> is accepted."""
    port: int = Field(ge=1, le=65535)


class Healthcheck(Model):
    """Exactly one of ``test`` (run by the engine inside the container),
    ``http`` or ``tcp`` (probed by the agent from the node)."""
    test: Optional[Annotated[list[Text], Field(min_length=1, max_length=64)]] = None
    http: Optional[HttpCheck] = None
    tcp: Optional[TcpCheck] = None
    interval: Duration = 30.0
    timeout: Duration = 30.0
    retries: int = Field(default=3, ge=0, le=100)
    start_period: Duration = 0.0

    @field_validator("test")
    @classmethod
    def _test(cls, v: Optional[list[str]]) -> Optional[list[str]]:
        if v is None:
            return v
        if v[0] not in ("CMD", "CMD-SHELL", "NONE"):
            raise ValueError("test must start with CMD, CMD-SHELL or NONE")
        if v[0] != "NONE" and len(v) < 2:
            raise ValueError("test needs a command after " + v[0])
        _check_no_nul(v, "test")
        return v

    @field_validator("http", "tcp")
    @classmethod
    def _only_one(cls, v: Optional[Model], info: ValidationInfo) -> Optional[Model]:
        if v is not None:
            for other in HEALTH_FORMS[:HEALTH_FORMS.index(info.field_name)]:
                if info.data.get(other) is not None:
                    raise ValueError(f"only one of test, http or tcp may be set "
                                     f"({other} is set too)")
        return v

    @field_validator("interval", "timeout")
    @classmethod
    def _period(cls, v: Duration) -> float:
        return _seconds(v, 0.001, 86400)

    @field_validator("start_period")
    @classmethod
    def _start(cls, v: Duration) -> float:
        return _seconds(v, 0, 86400)

    @model_validator(mode="after")
    def _form(self) -> Self:
        if all(getattr(self, form) is None for form in HEALTH_FORMS):
            raise ValueError("one of test, http or tcp is required")
        return self


class ContainerSpec(Model):
    image: str = Field(min_length=1, max_length=512)
    command: Optional[list[Text]] = Field(default=None, max_length=256)
    args: Optional[list[Text]] = Field(default=None, max_length=4096)
    # values of env entries, hostname and mounts may hold templates
    # ({{.Node.ID}}), expanded by each node per task
    env: list[Annotated[Text, AfterValidator(_env_template)]] = Field(default_factory=list,
                                                                      max_length=1024)
    labels: dict[str, Text] = Field(default_factory=dict)
    workdir: Optional[str] = Field(default=None, max_length=4096)
    user: Optional[str] = Field(default=None, max_length=256)
    hostname: Annotated[Optional[str], AfterValidator(_template)] = Field(default=None,
                                                                          max_length=253)
    mounts: list[Mount] = Field(default_factory=list, max_length=64)
    healthcheck: Optional[Healthcheck] = None
    stop_grace_period: Duration = 10.0
    stop_signal: Optional[str] = Field(default=None, max_length=16)
    init: Optional[bool] = None

    @field_validator("image")
    @classmethod
    def _image(cls, v: str) -> str:
        if any(c.isspace() for c in v):
            raise ValueError("image reference must not contain spaces")
        return v

    @field_validator("env")
    @classmethod
    def _env(cls, v: list[str]) -> list[str]:
        for item in v:
            key, sep, _ = item.partition("=")
            if not sep or not ENV_KEY.match(key):
                raise ValueError(f"environment entry {item[:40]!r} is not KEY=VALUE")
        _check_no_nul(v, "environment entries")
        return v

    @field_validator("command", "args")
    @classmethod
    def _argv(cls, v: Optional[list[str]], info: ValidationInfo) -> Optional[list[str]]:
        _check_no_nul(v, str(info.field_name))
        return v

    @field_validator("labels")
    @classmethod
    def _labels(cls, v: dict[str, str]) -> dict[str, str]:
        return check_labels(v)

    @field_validator("stop_grace_period")
    @classmethod
    def _grace(cls, v: Duration) -> float:
        return _seconds(v, 0, 3600, "stop grace period")


class ResourceSet(Model):
    cpus: float = Field(default=0.0, ge=0, le=1024)
    memory: Size = 0

    @field_validator("memory")
    @classmethod
    def _memory(cls, v: Size) -> int:
        n = parse_bytes(v)
        if n and n < 4 * 1024 * 1024:
            raise ValueError("memory must be at least 4 MB (or 0 for none)")
        if n > MAX_MEMORY:
            raise ValueError("memory must be less than 8 EB (2^63 bytes)")
        return n


class Resources(Model):
    limits: ResourceSet = Field(default_factory=ResourceSet)
    reservations: ResourceSet = Field(default_factory=ResourceSet)


class RestartPolicy(Model):
    condition: Literal["none", "on-failure", "any"] = "any"
    delay: Duration = 5.0
    max_attempts: int = Field(default=0, ge=0, le=1_000_000)
    window: Duration = 0.0

    @field_validator("delay", "window")
    @classmethod
    def _dur(cls, v: Duration) -> float:
        return _seconds(v, 0, 86400)


class Preference(Model):
    spread: str = Field(max_length=256)

    @field_validator("spread")
    @classmethod
    def _spread(cls, v: str) -> str:
        if not (v.startswith("node.labels.") or v.startswith("engine.labels.")) or v.endswith("."):
            raise ValueError("spread takes node.labels.<key> or engine.labels.<key>")
        return v


class Placement(Model):
    constraints: list[str] = Field(default_factory=list, max_length=64)
    preferences: list[Preference] = Field(default_factory=list, max_length=8)
    max_replicas: int = Field(default=0, ge=0, le=MAX_REPLICAS)

    @field_validator("constraints")
    @classmethod
    def _constraints(cls, v: list[str]) -> list[str]:
        for expr in v:
            if len(expr) > MAX_CONSTRAINT:
                raise ValueError(f"constraint {expr[:40]!r}... is longer than "
                                 f"{MAX_CONSTRAINT} characters")
        # parse_constraints raises ValueError naming the bad expression. A
        # key that names nothing would never match: refuse the typo here.
        for c in parse_constraints(v):
            if not c.known:
                raise ValueError(f"invalid constraint {c.expr!r}: unknown key {c.key!r} "
                                 "(use node.id, node.hostname, node.ip, node.role, "
                                 "node.platform.os, node.platform.arch, node.labels.<key> "
                                 "or engine.labels.<key>)")
        return v


class TaskSpec(Model):
    container: ContainerSpec
    resources: Resources = Field(default_factory=Resources)
    restart: RestartPolicy = Field(default_factory=RestartPolicy)
    placement: Placement = Field(default_factory=Placement)
    # Raised by ``service update --force``: a new value replaces every task.
    force_update: int = Field(default=0, ge=0, le=2 ** 63 - 1)
    # The networks the tasks join (``target``: stored as the network's id).
    networks: list[NetworkAttachment] = Field(default_factory=list,
                                              max_length=MAX_NETWORKS_PER_SERVICE)

    @field_validator("networks")
    @classmethod
    def _networks(cls, v: list[NetworkAttachment]) -> list[NetworkAttachment]:
        seen: set[str] = set()
        for n in v:
            if n.target in seen:
                raise ValueError(f"network {n.target} is listed twice")
            seen.add(n.target)
        return v

    @model_validator(mode="after")
    def _check(self) -> Self:
        lim, res = self.resources.limits, self.resources.reservations
        # memory is a byte count (an int) once validated
        if lim.memory and res.memory and int(res.memory) > int(lim.memory):
            raise ValueError("memory reservation is larger than the memory limit")
        if lim.cpus and res.cpus and res.cpus > lim.cpus:
            raise ValueError("CPU reservation is larger than the CPU limit")
        return self


class Port(Model):
    target: int = Field(ge=1, le=65535)
    published: int = Field(ge=1, le=65535)
    protocol: Literal["tcp", "udp"] = "tcp"
    mode: Literal["host"] = "host"


class Endpoint(Model):
    # vip: the service's name resolves to one virtual IP per network, spread
    # over its tasks; dnsrr: to its tasks' addresses.
    mode: Literal["vip", "dnsrr"] = "vip"
    ports: list[Port] = Field(default_factory=list, max_length=128)

    @field_validator("ports")
    @classmethod
    def _unique(cls, v: list[Port]) -> list[Port]:
        seen: set[tuple[int, str]] = set()
        for p in v:
            key = (p.published, p.protocol)
            if key in seen:
                raise ValueError(f"published port {p.published}/{p.protocol} listed twice")
            seen.add(key)
        return v


class UpdateConfig(Model):
    """How tasks are replaced when the task spec changes (also used, with its
    own values, for rollbacks). Defaults are Docker Swarm's."""
    parallelism: int = Field(default=1, ge=0, le=MAX_REPLICAS)
    delay: Duration = 0.0
    failure_action: Literal["pause", "continue", "rollback"] = "pause"
    monitor: Duration = 5.0
    max_failure_ratio: float = Field(default=0.0, ge=0.0, le=1.0)
    order: Literal["stop-first", "start-first"] = "stop-first"

    @field_validator("delay", "monitor")
    @classmethod
    def _dur(cls, v: Duration) -> float:
        return _seconds(v, 0, 86400)


class Dependency(Model):
    service: str = Field(max_length=63)
    condition: Literal["started", "healthy", "completed"] = "started"

    @field_validator("service")
    @classmethod
    def _name(cls, v: str) -> str:
        if not SERVICE_NAME.match(v):
            raise ValueError("must be a service name")
        return v


class ServiceSpec(Model):
    name: str = Field(max_length=63)
    labels: dict[str, Text] = Field(default_factory=dict)
    mode: Literal["replicated", "global"] = "replicated"
    replicas: Optional[int] = Field(default=None, ge=0, le=MAX_REPLICAS)
    task: TaskSpec
    endpoint: Endpoint = Field(default_factory=Endpoint)
    update: UpdateConfig = Field(default_factory=UpdateConfig)
    rollback: UpdateConfig = Field(default_factory=lambda: UpdateConfig(failure_action="pause"))
    depends_on: list[Dependency] = Field(default_factory=list, max_length=64)

    @field_validator("depends_on")
    @classmethod
    def _deps(cls, v: list[Dependency], info: ValidationInfo) -> list[Dependency]:
        seen: set[str] = set()
        for d in v:
            if d.service == info.data.get("name"):
                raise ValueError("a service cannot depend on itself")
            if d.service in seen:
                raise ValueError(f"service {d.service} is listed twice")
            seen.add(d.service)
        return v

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not SERVICE_NAME.match(v):
            raise ValueError("must be 1-63 characters: letters, digits, '_', '.', '-'")
        return v

    @field_validator("labels")
    @classmethod
    def _labels(cls, v: dict[str, str]) -> dict[str, str]:
        return check_labels(v)

    @model_validator(mode="after")
    def _mode(self) -> Self:
        if self.mode == "global" and self.replicas is not None:
            raise ValueError("replicas cannot be set for a global service")
        if self.mode == "replicated" and self.replicas is None:
            self.replicas = 1
        return self


def canonical(spec: ServiceSpec) -> dict:
    """The stored form: plain data, every field present."""
    return spec.model_dump(mode="json")
