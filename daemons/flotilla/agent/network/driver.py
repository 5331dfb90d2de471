"""One engine's overlay networks, made to match what it should have.

``NetworkDriver(client, underlay_ip).apply(desired)`` takes the complete
list of networks this engine should have (see ``desired.py``) and, for each,
makes the bridge (with this node's attachment address), the VXLAN device,
the Docker network adopting the bridge and the forwarding and neighbour
entries of every endpoint on another engine exactly what they should be.
Everything is read back from the kernel and the engine each time, so one
call after an agent restart restores it all, and a second call changes
nothing.

Networks no longer listed are removed (Docker network, then devices) once no
container uses them; another cluster's (the Docker network's
``flotilla.cluster.id`` label) only when its subnet overlaps one this node
needs (an engine cannot hold both: a cluster that is gone left it).
Several nodes may share one engine (one network namespace): each programs
the same devices and entries, and a network one of them has just made is
left alone for ``remove_grace`` seconds by the others (which do not list
it), so that its containers can be created on it, unless its subnet
overlaps one they list.

A failure on one network (the kernel or the engine refusing) does not stop
the others: it is in the result's ``errors``, and the next call tries again.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import docker
from docker import errors as docker_errors

from .desired import NetworkState, parse_desired
from .dockernet import (DockerNetworkError, DockerNetworks, created_at, gateway_of,
                        subnet_of)
from .linux import ENCRYPTED_OVERHEAD, VXLAN_OVERHEAD, LinkError, Links
from .names import LABEL_CLUSTER_ID, LABEL_NETWORK_ID, bridge_name, mac_for, short_id, vxlan_name

log = logging.getLogger(__name__)

# How long a Docker network made by another node sharing this engine is kept
# though this node does not list it.
REMOVE_GRACE = 60.0


@dataclasses.dataclass
class ApplyResult:
    """What one :meth:`NetworkDriver.apply` did."""
    changes: list[str] = dataclasses.field(default_factory=list)
    errors: dict[str, str] = dataclasses.field(default_factory=dict)   # network id -> why
    kept: dict[str, str] = dataclasses.field(default_factory=dict)     # unlisted, kept: why

    @property
    def changed(self) -> bool:
        return bool(self.changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class NetworkDriver:
    """The overlay networks of the engine ``client``, on the node whose
    underlay address (where other engines send VXLAN) is ``underlay_ip``.

    With ``cluster_id``, the Docker networks made are labelled with it and
    only networks so labelled are ever removed: clusters sharing an engine
    leave each other's networks alone.
    """

    def __init__(self, client: docker.DockerClient, underlay_ip: str,
                 cluster_id: str | None = None,
                 remove_grace: float = REMOVE_GRACE,
                 links: Callable[[], Links] = Links,
                 clock: Callable[[], float] = time.time) -> None:
        self.underlay_ip = ipaddress.IPv4Address(underlay_ip)
        self.cluster_id = cluster_id
        self.docker = DockerNetworks(client)
        self.remove_grace = remove_grace
        self._links = links
        self._clock = clock
        self._lock = threading.Lock()

    def apply(self, desired: Iterable[Mapping[str, Any] | NetworkState]) -> ApplyResult:
        """Make the engine have exactly the networks ``desired``. A
        :class:`~.desired.DesiredStateError` (bad input), or a
        :class:`~.linux.LinkError` saying the underlay address is not this
        host's, changes nothing."""
        nets = parse_desired(desired)
        result = ApplyResult()
        with self._lock, self._links() as links:
            mtu = links.underlay_mtu(self.underlay_ip)     # LinkError if not ours
            self._remove_unlisted(links, nets, result)
            for net in nets:
                try:
                    self._apply_one(links, net, mtu, result)
                except (LinkError, DockerNetworkError, docker_errors.APIError) as exc:
                    result.errors[net.id] = str(exc)
                    log.warning("network %s (%s): %s", net.name, net.id, exc)
        for change in result.changes:
            log.info("network: %s", change)
        return result

    def _apply_one(self, links: Links, net: NetworkState, mtu: int, result: ApplyResult) -> None:
        bridge, vxlan = bridge_name(net.id), vxlan_name(net.id)
        changes = result.changes
        if net.encrypted:       # its frames cross the WireGuard tunnel, in VXLAN over IPv6
            mtu -= ENCRYPTED_OVERHEAD - VXLAN_OVERHEAD
        source = net.source(self.underlay_ip)
        changes += links.ensure_bridge(bridge, mtu, mac_for(net.attachment.ip))
        changes += links.ensure_address(bridge, net.attachment)
        changes += links.ensure_vxlan(vxlan, bridge, net.vni, source, mtu)
        labels = {LABEL_CLUSTER_ID: self.cluster_id} if self.cluster_id else None
        made, info = self.docker.ensure(net, mtu, labels)
        changes += made
        # The bridge answers, for other engines, at the MAC of the Docker
        # network's gateway: the same whichever node sharing the engine applies.
        gateway = gateway_of(info) or net.attachment.ip
        changes += links.ensure_mac(bridge, mac_for(gateway))
        remotes = {e.addr: e.underlay_ip for e in net.remote(self.underlay_ip)}
        changes += links.set_remotes(vxlan, remotes)

    def _remove_unlisted(self, links: Links, nets: list[NetworkState],
                         result: ApplyResult) -> None:
        wanted = {n.id for n in nets}
        wanted_short = {n.short_id for n in nets}
        remaining: set[str] = set()          # short ids of Docker networks still there
        now = self._clock()
        for info in self.docker.ours():
            net_id = (info.get("Labels") or {}).get(LABEL_NETWORK_ID) or ""
            try:
                short = short_id(net_id)
            except ValueError:
                continue
            theirs = self.cluster_id is not None and \
                (info.get("Labels") or {}).get(LABEL_CLUSTER_ID) != self.cluster_id
            # One whose subnet overlaps a listed network's goes as soon as
            # no container uses it, whoever made it: an engine cannot hold
            # both (a network removed and made again, a dead cluster's).
            # Otherwise another cluster's is left alone.
            subnet = subnet_of(info)
            clash = subnet is not None and any(subnet.overlaps(n.subnet) for n in nets
                                               if n.id != net_id)
            if net_id in wanted or (theirs and not clash):
                remaining.add(short)
                continue
            made = created_at(info.get("Created"))
            if not clash and made is not None and now - made < self.remove_grace:
                result.kept[net_id] = f"{info.get('Name')} made {now - made:.0f}s ago"
                remaining.add(short)
                continue
            try:
                gone = self.docker.remove(info)
            except (DockerNetworkError, docker_errors.APIError) as exc:
                result.errors[net_id] = str(exc)
                remaining.add(short)
                continue
            if gone:
                result.changes.append(f"removed Docker network {info.get('Name')}")
            else:
                result.kept[net_id] = f"{info.get('Name')} is in use"
                remaining.add(short)
        for short, names in sorted(links.devices().items()):
            if short in wanted_short or short in remaining:
                continue
            # the VXLAN device first: the bridge goes with no port left
            for name in sorted(names, key=lambda n: not n.startswith("flv-")):
                try:
                    result.changes += links.remove(name)
                except LinkError as exc:
                    result.errors[short] = str(exc)

    def show(self) -> dict[str, Any]:
        """Every device made here and what it holds, and the engine's Flotilla networks."""
        with self._links() as links:
            names = [n for ns in links.devices().values() for n in ns]
            devices = links.show(sorted(names))
        networks = {info.get("Name"): {
            "id": (info.get("Labels") or {}).get(LABEL_NETWORK_ID),
            "bridge": (info.get("Options") or {}).get("com.docker.network.bridge.name"),
            "gateway": str(gateway_of(info) or ""),
            "internal": bool(info.get("Internal")),
        } for info in self.docker.ours()}
        return {"devices": devices, "docker_networks": networks}
