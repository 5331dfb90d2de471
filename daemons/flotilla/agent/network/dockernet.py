"""The Docker side of a network on one engine.

The engine gets one Docker network per Flotilla network, ``flotilla-<name>``,
of the ``bridge`` driver, adopting the bridge made by ``linux.py``
(``com.docker.network.bridge.name``): the network's subnet, this node's
attachment address as its gateway, the network's ``internal`` flag (and no
masquerading then), the MTU the underlay leaves, and the label
``flotilla.network.id``. Docker leaves an adopted bridge in place when the
network is removed.

Containers are created on the first of their networks with their allocated
address, aliases and an explicit MAC (:func:`names.mac_for`), and connected
to the others after creation (engines before API 1.44 take one network at
creation, and the MAC only as the container's own ``MacAddress``).
"""

from __future__ import annotations

import calendar
import dataclasses
import ipaddress
import re
import time
from collections.abc import Sequence
from typing import Any

import docker
from docker import errors as docker_errors
from docker.types import EndpointConfig, IPAMConfig, IPAMPool, NetworkingConfig

from .desired import NetworkState
from .names import LABEL_NETWORK_ID, bridge_name, docker_network_name, mac_for

OPT_BRIDGE_NAME = "com.docker.network.bridge.name"
OPT_MASQUERADE = "com.docker.network.bridge.enable_ip_masquerade"
OPT_MTU = "com.docker.network.driver.mtu"

_CREATED = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.\d+)?(Z|[+-]\d\d:\d\d)$")


class DockerNetworkError(RuntimeError):
    """The engine refused a network change (the message says which and why)."""


class NetworkUnavailable(Exception):
    """A task's network is not (yet) on this node's engine; the message says
    which and why."""


@dataclasses.dataclass(frozen=True)
class ReadyNetwork:
    """A network made on this node's engine: what a container on it needs."""
    id: str
    name: str
    docker_name: str            # flotilla-<name>
    gateway: str                # where the node's resolver answers its containers


def created_at(value: str | None) -> float | None:
    """Unix seconds of an engine timestamp (``2026-12-07T16:00:00.123456789Z``)."""
    m = _CREATED.match(value or "")
    if not m:
        return None
    secs = calendar.timegm(time.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S"))
    tz = m.group(2)
    if tz != "Z":
        sign = 1 if tz[0] == "+" else -1
        secs -= sign * (int(tz[1:3]) * 3600 + int(tz[4:6]) * 60)
    return float(secs)


def network_options(net: NetworkState, mtu: int) -> dict[str, str]:
    return {
        OPT_BRIDGE_NAME: bridge_name(net.id),
        OPT_MASQUERADE: "false" if net.internal else "true",
        OPT_MTU: str(mtu),
    }


def subnet_of(info: dict[str, Any]) -> ipaddress.IPv4Network | None:
    """The subnet of a Docker network (its summary or inspection)."""
    for cfg in ((info.get("IPAM") or {}).get("Config") or ()):
        subnet = (cfg or {}).get("Subnet")
        if subnet:
            try:
                return ipaddress.IPv4Network(subnet, strict=False)
            except ValueError:
                return None
    return None


def gateway_of(info: dict[str, Any]) -> ipaddress.IPv4Address | None:
    """The gateway of a Docker network (its summary or inspection)."""
    for cfg in ((info.get("IPAM") or {}).get("Config") or ()):
        gw = (cfg or {}).get("Gateway")
        if gw:
            try:
                return ipaddress.IPv4Address(gw.split("/", 1)[0])
            except ValueError:
                return None
    return None


class DockerNetworks:
    """This engine's Flotilla networks."""

    def __init__(self, client: docker.DockerClient) -> None:
        self.client = client

    @property
    def api(self) -> docker.APIClient:
        return self.client.api

    def ours(self) -> list[dict[str, Any]]:
        """Every Docker network carrying a Flotilla network id label (summaries)."""
        nets: list[dict[str, Any]] = self.api.networks(filters={"label": LABEL_NETWORK_ID})
        return nets

    def by_name(self, name: str) -> dict[str, Any] | None:
        # the engine's name filter matches substrings
        for info in self.api.networks(names=[name]):
            if info.get("Name") == name:
                found: dict[str, Any] = info
                return found
        return None

    def ensure(self, net: NetworkState, mtu: int,
               labels: dict[str, str] | None = None) -> tuple[list[str], dict[str, Any]]:
        """The network's Docker network, made if missing: (changes, its summary).

        One that exists (made by another node sharing this engine, or before
        a restart) is kept as it is, whichever node's address is its gateway;
        one of the same name made for another network (removed since, or of
        a cluster that is gone) is removed first if no container uses it.
        ``labels`` are added to the network's id label when it is made.
        """
        name = docker_network_name(net.name)
        info = self.by_name(name)
        changes: list[str] = []
        held = (info or {}).get("Labels") or {}
        if info is not None and held.get(LABEL_NETWORK_ID) not in (None, net.id):
            # a network of that name that was removed (or a dead cluster's):
            # made again for this one once nothing uses it
            if not self.remove(info):
                raise DockerNetworkError(
                    f"Docker network {name} belongs to another network "
                    f"({LABEL_NETWORK_ID}={held.get(LABEL_NETWORK_ID)!r}) still in use")
            changes.append(f"removed Docker network {name} of network "
                           f"{held.get(LABEL_NETWORK_ID)}")
            info = None
        if info is None:
            ipam = IPAMConfig(pool_configs=[IPAMPool(subnet=str(net.subnet),
                                                     gateway=str(net.attachment.ip))])
            try:
                self.api.create_network(name, driver="bridge", options=network_options(net, mtu),
                                        ipam=ipam, internal=net.internal, check_duplicate=True,
                                        labels={**(labels or {}), LABEL_NETWORK_ID: net.id})
                changes.append(f"created Docker network {name}")
            except docker_errors.APIError as exc:
                if exc.status_code != 409:       # 409: made meanwhile by another node
                    raise DockerNetworkError(f"creating Docker network {name}: "
                                             f"{exc.explanation or exc}") from None
            info = self.by_name(name)
            if info is None:
                raise DockerNetworkError(f"Docker network {name} disappeared as it was made")
        labels = info.get("Labels") or {}
        if labels.get(LABEL_NETWORK_ID) != net.id:
            raise DockerNetworkError(
                f"Docker network {name} belongs to another network "
                f"({LABEL_NETWORK_ID}={labels.get(LABEL_NETWORK_ID)!r}) still in use")
        bridge = (info.get("Options") or {}).get(OPT_BRIDGE_NAME)
        if bridge != bridge_name(net.id):
            raise DockerNetworkError(f"Docker network {name} uses bridge {bridge!r}, "
                                     f"not {bridge_name(net.id)}")
        return changes, info

    def in_use(self, info: dict[str, Any]) -> bool:
        """Some container (running or not) is on this Docker network."""
        try:
            inspected = self.api.inspect_network(info["Id"])
        except docker_errors.NotFound:
            return False
        if inspected.get("Containers"):
            return True
        return bool(self.api.containers(all=True, filters={"network": info["Id"]}))

    def remove(self, info: dict[str, Any]) -> bool:
        """Remove the Docker network unless a container uses it; True if it is gone."""
        if self.in_use(info):
            return False
        try:
            self.api.remove_network(info["Id"])
        except docker_errors.NotFound:
            pass
        except docker_errors.APIError as exc:
            # 403 "has active endpoints": a container joined meanwhile
            if exc.status_code in (403, 409):
                return False
            raise DockerNetworkError(f"removing Docker network {info.get('Name')}: "
                                     f"{exc.explanation or exc}") from None
        return True


# -- containers ------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Attachment:
    """A container's place on one network: the Docker network, its address
    there (``10.0.1.5`` or ``10.0.1.5/24``) and more names for it."""
    network: str
    addr: str
    aliases: tuple[str, ...] = ()

    @property
    def ip(self) -> str:
        return str(ipaddress.IPv4Address(self.addr.split("/", 1)[0]))


@dataclasses.dataclass(frozen=True)
class ContainerNetworking:
    """What creating a container on its networks takes: ``network_mode`` (the
    host config's), ``mac_address`` and ``networking_config`` (arguments of
    ``create_container``), then :func:`connect` for the other networks."""
    network_mode: str
    mac_address: str
    networking_config: NetworkingConfig
    others: tuple[Attachment, ...]


def _endpoint(api: docker.APIClient, att: Attachment) -> EndpointConfig:
    return api.create_endpoint_config(ipv4_address=att.ip, aliases=list(att.aliases) or None,
                                      mac_address=mac_for(att.ip))


def container_networking(api: docker.APIClient,
                         attachments: Sequence[Attachment]) -> ContainerNetworking:
    """The settings for a container on ``attachments`` (the first one is
    where it is created)."""
    if not attachments:
        raise ValueError("a container on overlay networks needs at least one network")
    first = attachments[0]
    config = NetworkingConfig()
    config["EndpointsConfig"] = {first.network: _endpoint(api, first)}
    return ContainerNetworking(network_mode=first.network, mac_address=mac_for(first.ip),
                               networking_config=config, others=tuple(attachments[1:]))


def connect(api: docker.APIClient, container_id: str, settings: ContainerNetworking) -> None:
    """Connect a created container to its other networks."""
    for att in settings.others:
        api.connect_container_to_network(container_id, att.network, ipv4_address=att.ip,
                                         aliases=list(att.aliases) or None,
                                         mac_address=mac_for(att.ip))
