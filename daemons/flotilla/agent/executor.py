"""Running tasks as Docker containers.

The executor is the only part of the agent that talks to the Docker engine.
It turns a task into a container (name, labels, entrypoint, mounts, limits,
published ports, healthcheck...), expanding the spec's templates
(``{{.Node.ID}}``, ``{{.Task.Slot}}``... in environment values, hostname and
mounts, see ``common/template.py``) with this node's id, hostname and
platform, and offers the few container operations a task controller needs.
Every container it creates or lists carries the label
``flotilla.node.id=<node id>``: several nodes may share one engine, and each
only ever sees and touches its own containers.
"""

from __future__ import annotations

import calendar
import logging
import math
import re
import threading
import time
from typing import Any, Literal, Protocol, Sequence, cast

import docker
from docker import errors as docker_errors
from docker.types import CancellableStream, Healthcheck, Mount
from docker.utils import parse_repository_tag

from ..common import template
from ..common.template import TemplateError  # noqa: F401 (raised by create)
from ..model import task as taskmodel
from .describe import local_platform
from .network.dockernet import (Attachment, ContainerNetworking, NetworkUnavailable,
                                ReadyNetwork, connect, container_networking)

log = logging.getLogger(__name__)

_List = list        # ``list`` is also a method of DockerExecutor
PULL_TIMEOUT = 60.0
# Container events that may change a task's observed state.
WATCHED_EVENTS = ("start", "die", "oom", "kill", "stop", "destroy", "health_status")

_NAME_INVALID = re.compile(r"[^a-zA-Z0-9_.-]")
_ARCHES = {"x86_64": "amd64", "aarch64": "arm64"}

APIError = docker_errors.APIError
# Container logs: most lines returned per request, longest line kept.
MAX_LOG_LINES = 10_000
MAX_LOG_LINE = 16 * 1024


class ImageUnavailable(Exception):
    """The task's image is not on this node and could not be pulled."""


class Networks(Protocol):
    """What the executor needs of the node's networks (``networking.py``)."""

    def ready(self, network_ids: Sequence[str]) -> _List[ReadyNetwork]: ...

    def reapply(self) -> None: ...


def container_name(task: dict, node_id: str) -> str:
    """``<service name>.<slot or node id>.<task id>``, made a valid Docker name."""
    slot = task.get("slot")
    middle = str(slot) if slot is not None else node_id[:12]
    name = f"{task.get('service_name') or 'task'}.{middle}.{task['id']}"
    name = _NAME_INVALID.sub("-", name)
    if not name[0].isalnum():
        name = "t" + name
    return name


def _nanos(seconds: float | str | None) -> int | None:
    return int(float(seconds) * 1e9) if seconds else None


def probed(spec: dict | None) -> bool:
    """The healthcheck is an ``http`` or ``tcp`` one, run by the agent."""
    return bool(spec and (spec.get("http") or spec.get("tcp")))


def _healthcheck(spec: dict | None) -> Healthcheck | None:
    if probed(spec):
        # the agent probes the container itself; the image's HEALTHCHECK
        # must not run as well
        return Healthcheck(test=["NONE"])
    if not spec or not spec.get("test"):
        return None
    return Healthcheck(test=list(spec["test"]),
                       interval=_nanos(spec.get("interval")),
                       timeout=_nanos(spec.get("timeout")),
                       retries=int(spec["retries"]) if spec.get("retries") else None,
                       start_period=_nanos(spec.get("start_period")))


def container_address(info: dict) -> str | None:
    """The container's IP address on its network, from its inspect details
    (reachable from the node for the default bridge network)."""
    settings = info.get("NetworkSettings") or {}
    if settings.get("IPAddress"):
        return settings["IPAddress"]
    networks = settings.get("Networks") or {}
    for name in sorted(networks, key=lambda n: (n != "bridge", n)):
        net = networks[name] or {}
        if net.get("IPAddress"):
            return net["IPAddress"]
    for name in sorted(networks):
        if (networks[name] or {}).get("GlobalIPv6Address"):
            return networks[name]["GlobalIPv6Address"]
    return None


def _mounts(mounts: list[dict] | None) -> list[Mount]:
    out = []
    for m in mounts or ():
        # the service spec allows only these
        kind = cast(Literal["bind", "volume", "tmpfs"], m.get("type") or "volume")
        source = m.get("source") or None
        out.append(Mount(target=m["target"], source=source if kind != "tmpfs" else None,
                         type=kind, read_only=bool(m.get("readonly"))))
    return out


def log_timestamp(text: str) -> tuple[str, float] | None:
    """Docker's RFC 3339 log timestamp (UTC, trailing zeros trimmed) as a
    fixed-width string (nine fractional digits, so that strings sort in time
    order) and as unix seconds; None if it is not one."""
    if not text.endswith("Z"):
        return None
    main, _, frac = text[:-1].partition(".")
    if not frac.isdigit() and frac:
        return None
    try:
        secs = calendar.timegm(time.strptime(main, "%Y-%m-%dT%H:%M:%S"))
    except ValueError:
        return None
    frac = (frac + "000000000")[:9]
    return f"{main}.{frac}Z", secs + int(frac) / 1e9


def grace_seconds(task: dict | None) -> float:
    if not task:
        return taskmodel.DEFAULT_STOP_GRACE
    grace = ((task.get("spec") or {}).get("container") or {}).get("stop_grace_period")
    return float(grace) if grace is not None else taskmodel.DEFAULT_STOP_GRACE


class DockerExecutor:
    """Docker engine access for one node."""

    def __init__(self, node_id: str, docker_client: docker.DockerClient | None = None,
                 pull: bool = True, pull_timeout: float = PULL_TIMEOUT, max_pool_size: int = 32,
                 hostname: str | None = None) -> None:
        """``hostname`` is the node's (what it registers with; the engine's
        host name when None), for ``{{.Node.Hostname}}``."""
        self.node_id = node_id
        self.hostname = hostname
        self._node_platform: dict | None = None
        self.pull = pull
        self.pull_timeout = pull_timeout
        self._client = docker_client
        self._max_pool_size = max_pool_size
        self._client_lock = threading.Lock()
        # the node's overlay networks, where its tasks' containers are put
        self.networks: Networks | None = None

    # -- engine --------------------------------------------------------------------
    @property
    def client(self) -> docker.DockerClient:
        """The Docker client, created on first use (creating it asks the engine
        for its API version)."""
        if self._client is None:
            with self._client_lock:
                if self._client is None:
                    self._client = docker.from_env(max_pool_size=self._max_pool_size)
        return self._client

    @property
    def api(self) -> docker.APIClient:
        return self.client.api

    def describe(self) -> dict:
        info = self.api.info()
        labels = {}
        for item in info.get("Labels") or ():
            key, _, val = item.partition("=")
            labels[key] = val
        arch = (info.get("Architecture") or "").lower()
        return {
            "hostname": info.get("Name") or "",
            "platform": {"os": (info.get("OSType") or "linux").lower(),
                         "arch": _ARCHES.get(arch, arch)},
            "resources": {"cpus": float(info.get("NCPU") or 0),
                          "memory": int(info.get("MemTotal") or 0)},
            "engine": {"version": info.get("ServerVersion") or "", "labels": labels},
        }

    # -- images --------------------------------------------------------------------
    def image_present(self, image: str) -> bool:
        try:
            self.api.inspect_image(image)
            return True
        except docker_errors.ImageNotFound:
            return False
        except APIError as exc:
            if exc.status_code == 404:
                return False
            raise

    def ensure_image(self, image: str) -> None:
        """Make sure ``image`` is present, pulling it if allowed.

        Raises ImageUnavailable with a message naming the image."""
        if self.image_present(image):
            return
        if not self.pull:
            raise ImageUnavailable(f"image {image} is not present on this node "
                                   "(pulling is disabled)")
        repo, tag = parse_repository_tag(image)
        if tag is None:
            tag = "latest"
        deadline = time.monotonic() + self.pull_timeout
        try:
            stream = self.api.pull(repo, tag=tag, stream=True, decode=True)
            try:
                for item in stream:
                    if isinstance(item, dict) and item.get("error"):
                        raise ImageUnavailable(f"pulling image {image} failed: {item['error']}")
                    if time.monotonic() > deadline:
                        raise ImageUnavailable(f"pulling image {image} timed out after "
                                               f"{self.pull_timeout:g}s")
            finally:
                close = getattr(stream, "close", None)
                if close:
                    close()
        except APIError as exc:
            raise ImageUnavailable(f"pulling image {image} failed: "
                                   f"{exc.explanation or exc}") from None
        if not self.image_present(image):
            raise ImageUnavailable(f"image {image} is not present after pulling it")

    # -- containers ----------------------------------------------------------------
    def _label_filter(self, task_id: str | None = None) -> list[str]:
        flt = [f"{taskmodel.LABEL_NODE}={self.node_id}"]
        if task_id is not None:
            flt.append(f"{taskmodel.LABEL_TASK}={task_id}")
        return flt

    def list(self) -> list[dict]:
        """Every container (running or not) of this node, as the engine's
        container summaries."""
        return self.api.containers(all=True, filters={"label": self._label_filter()})

    def find(self, task_id: str) -> _List[dict]:
        """This node's containers for one task, newest first."""
        found = self.api.containers(all=True, filters={"label": self._label_filter(task_id)})
        return sorted(found, key=lambda c: c.get("Created", 0), reverse=True)

    def labels(self, task: dict) -> dict:
        c = task["spec"]["container"]
        labels = {str(k): str(v) for k, v in (c.get("labels") or {}).items()}
        slot = task.get("slot")
        labels.update({
            taskmodel.LABEL_NODE: self.node_id,
            taskmodel.LABEL_TASK: task["id"],
            taskmodel.LABEL_SERVICE: task.get("service_id") or "",
            taskmodel.LABEL_SERVICE_NAME: task.get("service_name") or "",
            taskmodel.LABEL_SLOT: str(slot) if slot is not None else "",
        })
        return labels

    def template_context(self, task: dict) -> dict:
        """What the spec's placeholders stand for, for ``task`` on this node:
        the node's hostname and platform as it registers them."""
        if self._node_platform is None or not self.hostname:
            try:
                found = self.describe()
            except Exception:   # the engine is down: creating fails anyway
                found = {}
            if self._node_platform is None:
                self._node_platform = found.get("platform") or local_platform()
            if not self.hostname:
                self.hostname = found.get("hostname") or ""
        return template.context(task, self.node_id, self.hostname, self._node_platform)

    def _networking(self, task: dict) -> tuple[ContainerNetworking, str] | None:
        """The task's container on its networks (its first network at
        creation, the others connected before it starts), and its DNS
        server: the node's resolver on the first network. None for a task
        on no network. Waits until the node has made the networks on its
        engine (:class:`NetworkUnavailable` if it does not in time)."""
        atts = [a for a in task.get("networks") or () if isinstance(a, dict)]
        if not atts:
            return None
        if self.networks is None:
            raise NetworkUnavailable("this node does not run overlay networks")
        ready = self.networks.ready([str(a.get("network_id")) for a in atts])
        # No Docker aliases: the engine's embedded resolver would answer
        # them itself with this engine's containers, past the VIP and past
        # whether they run; names are the node's resolver's to answer.
        attachments = [Attachment(net.docker_name, str(a.get("addr")))
                       for net, a in zip(ready, atts)]
        return container_networking(self.api, attachments), ready[0].gateway

    def create(self, task: dict) -> str:
        """Create (not start) the task's container; returns its id. Raises
        TemplateError if the spec holds a template this node cannot expand
        (specs are checked when submitted: only one stored before that),
        NetworkUnavailable if a network of the task is not on this node's
        engine in time."""
        for attempt in (1, 2):
            try:
                return self._create(task)
            except docker_errors.NotFound:
                # a network this node had made is gone from the engine
                # (removed by hand, or by another node sharing the engine)
                if attempt == 2 or self.networks is None or not task.get("networks"):
                    raise
                self.networks.reapply()
        raise AssertionError("unreachable")

    def _create(self, task: dict) -> str:
        spec = task["spec"]
        c = template.expand_container(spec["container"], self.template_context(task))
        limits = (spec.get("resources") or {}).get("limits") or {}
        cpus = float(limits.get("cpus") or 0)
        memory = int(limits.get("memory") or 0)
        ports: _List[tuple[int, str]] = []
        bindings: dict[int | str, _List[Any]] = {}
        for p in task.get("ports") or ():
            proto = (p.get("protocol") or "tcp").lower()
            target = int(p["target"])
            key = f"{target}/{proto}"
            if (target, proto) not in ports:
                ports.append((target, proto))
            bindings.setdefault(key, []).append(p.get("published") or None)
        net = self._networking(task)
        host_config = self.api.create_host_config(
            network_mode=net[0].network_mode if net else None,
            dns=[net[1]] if net else None,
            mounts=_mounts(c.get("mounts")) or None,
            nano_cpus=int(cpus * 1e9) if cpus > 0 else None,
            mem_limit=memory if memory > 0 else None,
            port_bindings=bindings or None,
            restart_policy={"Name": "no"},
            init=c.get("init"),
        )
        grace = grace_seconds(task)
        result = self.api.create_container(
            image=c["image"],
            name=container_name(task, self.node_id),
            entrypoint=c.get("command"),
            command=c.get("args"),
            environment=list(c.get("env") or ()) or None,
            working_dir=c.get("workdir") or None,
            user=c.get("user") or None,
            hostname=c.get("hostname") or None,
            labels=self.labels(task),
            ports=ports or None,
            healthcheck=_healthcheck(c.get("healthcheck")),
            stop_signal=c.get("stop_signal") or None,
            stop_timeout=int(math.ceil(grace)),
            detach=True,
            host_config=host_config,
            mac_address=net[0].mac_address if net else None,
            networking_config=net[0].networking_config if net else None,
        )
        cid: str = result["Id"]
        if net is not None and net[0].others:
            try:
                connect(self.api, cid, net[0])
            except Exception:
                self.remove(cid)
                raise
        return cid

    def start(self, container_id: str) -> None:
        self.api.start(container_id)

    def inspect(self, container_id: str) -> dict | None:
        """The container's details, or None if it does not exist."""
        try:
            return self.api.inspect_container(container_id)
        except docker_errors.NotFound:
            return None

    def stop(self, container_id: str, grace: float | None = None) -> None:
        """Stop with the container's stop signal, then SIGKILL after
        ``grace`` seconds (None: the container's own stop timeout)."""
        try:
            self.api.stop(container_id, timeout=None if grace is None else int(math.ceil(grace)))
        except docker_errors.NotFound:
            pass

    def remove(self, container_id: str) -> None:
        """Remove the container and its anonymous volumes (named volumes stay)."""
        try:
            self.api.remove_container(container_id, v=True, force=True)
        except docker_errors.NotFound:
            pass
        except APIError as exc:
            # "removal already in progress" is as good as done.
            if exc.status_code != 409:
                raise

    def logs(self, container_id: str, tail: int | None = None, since: float | None = None) -> dict:
        """The last ``tail`` lines (at most :data:`MAX_LOG_LINES`) a container
        of this node wrote at or after ``since`` (unix seconds), oldest first,
        each tagged with its stream. LookupError if the container does not
        exist or is not this node's."""
        info = self.inspect(container_id)
        labels = ((info or {}).get("Config") or {}).get("Labels") or {}
        if info is None or labels.get(taskmodel.LABEL_NODE) != self.node_id:
            raise LookupError(f"no container {container_id} on this node")
        limit = MAX_LOG_LINES if tail is None else max(0, min(int(tail), MAX_LOG_LINES))
        entries: _List[dict[str, Any]] = []
        for stream in ("stdout", "stderr") if limit else ():
            raw = self.api.logs(info["Id"], stdout=stream == "stdout", stderr=stream == "stderr",
                                timestamps=True, tail=limit,
                                since=float(since) if since else None)
            for line in raw.decode("utf-8", "replace").split("\n"):
                stamp, _, text = line.partition(" ")
                parsed = log_timestamp(stamp)
                if parsed is None:
                    continue
                entries.append({"timestamp": parsed[0], "time": parsed[1], "stream": stream,
                                "line": text.rstrip("\r")[:MAX_LOG_LINE]})
        entries.sort(key=lambda e: e["timestamp"])   # stable: each stream keeps its order
        return {"container_id": info["Id"], "task_id": labels.get(taskmodel.LABEL_TASK),
                "entries": entries[-limit:] if limit else []}

    def events(self) -> CancellableStream[dict[str, Any]]:
        """A blocking stream of this node's container events (decoded dicts);
        ``close()`` it from another thread to stop reading."""
        return self.api.events(decode=True, filters={
            "type": ["container"],
            "label": self._label_filter(),
            "event": list(WATCHED_EVENTS),
        })
