"""From what the managers tell a node to what its engine, VIPs and resolver need.

The dispatcher sends a node the whole picture of every network its tasks
are on (``manager/dispatcher/netviews.py``)::

    {id, name, subnet, gateway, vni, internal, encrypted, ...,
     services: [{id, name, mode, aliases, vip}],
     endpoints: [{task_id, service_id, addr, node_id, node_addr, running}],
     peers: [{node_id, node_addr, wireguard: {public_key, port} | null}]}
                                                  (peers: encrypted networks only)

These functions turn those pictures (by network id) into the input of
:class:`~.driver.NetworkDriver` (:func:`driver_networks`), of
:class:`~.vips.VirtualIPs` (:func:`vip_spec`), of the resolver
(:func:`resolver_table`, :func:`listen_addresses`) and of the engine's
WireGuard tunnel (:func:`tunnel_plan`). They are pure: the
agent's :class:`~flotilla.agent.networking.Networking` calls them and
programs the results.

- Nodes take no address of their own on a network: every engine's bridge
  holds the network's gateway, where the containers' DNS server (our
  resolver) listens and which their ``dns=`` names.
- An endpoint is on another engine when its node's address (``node_addr``,
  the address the managers see the node at: its underlay) is not this
  node's: several nodes sharing an engine share that address.
- A backend of a VIP, or an address in an answer, is an endpoint that runs
  (``running``: observed running, healthy where there is a healthcheck, and
  meant to keep running) and that this node has not itself seen leave
  (``down``: its own tasks that stopped, before the managers say so).
- Encrypted networks: their VXLAN crosses the engines' WireGuard tunnel
  (``wireguard.py``). An endpoint on another engine is reached only through
  the tunnel to that engine (its forwarding entry names the engine's tunnel
  address); while there is none (no tunnel here, the engine published no
  key, or several nodes share that engine), it is left out of the
  forwarding entries, the VIPs' backends and the answers: nothing of the
  network crosses the underlay in clear. An engine's tunnel is one node's:
  a node that shares its engine with another node of an encrypted network
  that spans hosts cannot carry it (:attr:`TunnelPlan.blocked`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Iterable, Mapping
from typing import Any

from .desired import DesiredStateError, NetworkState, parse_network
from .names import bridge_name
from .resolver import DNS_PORT, NetworkEntry, ServiceEntry, ipv4_of
from .wireguard import Peer, tunnel_address, valid_key

Views = Mapping[str, Mapping[str, Any]]


# ``10.0.1.5`` from ``10.0.1.5`` or ``10.0.1.5/24``; None if it is no IPv4 address.
ip_of = ipv4_of


def underlay_of(views: Views, node_id: str) -> str | None:
    """This node's underlay address as the managers know it: the node address
    of one of its own endpoints."""
    for nid in sorted(views):
        for ep in views[nid].get("endpoints") or ():
            if isinstance(ep, Mapping) and ep.get("node_id") == node_id:
                ip = ip_of(ep.get("node_addr"))
                if ip is not None:
                    return ip
    return None


def _all_endpoints(view: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [ep for ep in view.get("endpoints") or () if isinstance(ep, Mapping)
            and ip_of(ep.get("addr")) is not None]


def endpoints(view: Mapping[str, Any], underlay: str | None,
              tunnels: Collection[str] = ()) -> list[Mapping[str, Any]]:
    """The endpoints of a network this node may reach: all of them, or on an
    encrypted network those on this engine and those on the engines at the
    underlay addresses ``tunnels`` (the tunnel reaches them)."""
    eps = _all_endpoints(view)
    if view.get("encrypted"):
        eps = [ep for ep in eps if ip_of(ep.get("node_addr")) == underlay
               or ip_of(ep.get("node_addr")) in tunnels]
    return eps


@dataclasses.dataclass
class TunnelPlan:
    """What this engine's WireGuard tunnel should reach, from the pictures of
    its encrypted networks.

    ``peers``: by underlay address, each other engine with an endpoint on an
    encrypted network (the one node there, its key, port and tunnel
    address). ``unreachable``: other engines that cannot be reached (why).
    ``blocked``: encrypted networks this node cannot carry (why). ``spans``:
    the encrypted networks with endpoints on other engines."""
    peers: dict[str, Peer] = dataclasses.field(default_factory=dict)
    unreachable: dict[str, str] = dataclasses.field(default_factory=dict)
    blocked: dict[str, str] = dataclasses.field(default_factory=dict)
    spans: set[str] = dataclasses.field(default_factory=set)

    @property
    def needed(self) -> bool:
        return bool(self.spans)


def tunnel_plan(views: Views, node_id: str, underlay: str | None) -> TunnelPlan:
    """See :class:`TunnelPlan`. Every node of an encrypted network that spans
    hosts computes the same peers from the same pictures."""
    plan = TunnelPlan()
    if underlay is None:
        return plan
    nodes_at: dict[str, set[str]] = {}            # underlay -> node ids (encrypted networks)
    keys: dict[str, dict[str, Any]] = {}          # node id -> its published WireGuard
    wanted: set[str] = set()
    for nid in sorted(views):
        view = views[nid]
        if not view.get("encrypted"):
            continue
        for peer in view.get("peers") or ():
            if isinstance(peer, Mapping) and isinstance(peer.get("wireguard"), Mapping):
                keys[str(peer.get("node_id"))] = peer["wireguard"]
        eps = _all_endpoints(view)
        here: set[str] = set()
        remote: set[str] = set()
        for ep in eps:
            at = ip_of(ep.get("node_addr"))
            if at is None:
                continue
            nodes_at.setdefault(at, set()).add(str(ep.get("node_id")))
            if at == underlay:
                here.add(str(ep.get("node_id")))
            else:
                remote.add(at)
        if not remote:
            continue                              # on this engine only: no tunnel
        plan.spans.add(nid)
        wanted |= remote
        others = sorted(here - {node_id})
        if others:
            plan.blocked[nid] = (
                f"encrypted network {view.get('name')} has tasks on other hosts, and this "
                f"node shares its engine ({underlay}) with node {others[0][:12]} on it: an "
                "engine's WireGuard tunnel is one node's (run one node per host)")
    for at in sorted(wanted):
        there = sorted(nodes_at.get(at, ()))
        if len(there) > 1:
            plan.unreachable[at] = (f"nodes {', '.join(n[:12] for n in there)} share the "
                                    f"engine at {at}")
            continue
        wg = keys.get(there[0]) if there else None
        key, port = (wg or {}).get("public_key"), (wg or {}).get("port")
        if not valid_key(key) or not isinstance(port, int) or isinstance(port, bool) \
                or not 0 < port < 65536:
            plan.unreachable[at] = (f"node {there[0][:12] if there else '?'} at {at} has "
                                    "published no WireGuard key (no wireguard-go there, or "
                                    "an older release)")
            continue
        plan.peers[at] = Peer(str(key), f"{at}:{port}", tunnel_address(at))
    return plan


def own_keys(views: Views, node_id: str) -> set[str]:
    """The public keys the pictures of encrypted networks list for this node
    (empty: none lists it)."""
    keys = set()
    for view in views.values():
        if not view.get("encrypted"):
            continue
        for peer in view.get("peers") or ():
            if isinstance(peer, Mapping) and peer.get("node_id") == node_id and \
                    isinstance(peer.get("wireguard"), Mapping) and \
                    isinstance(peer["wireguard"].get("public_key"), str):
                keys.add(peer["wireguard"]["public_key"])
    return keys


def gateway_of(view: Mapping[str, Any]) -> str | None:
    return ip_of(view.get("gateway"))


def driver_networks(views: Views, underlay: str | None, tunnels: Collection[str] = ()
                    ) -> tuple[list[NetworkState], dict[str, str]]:
    """The networks the driver should have (checked one by one) and, by
    network id, why one could not be made from its picture. ``tunnels``:
    the underlay addresses of the engines this one's tunnel reaches (an
    encrypted network's endpoints there are reached at their engine's
    tunnel address)."""
    nets: list[NetworkState] = []
    errors: dict[str, str] = {}
    for nid in sorted(views):
        view = views[nid]
        gateway = gateway_of(view)
        subnet = view.get("subnet")
        if gateway is None or not isinstance(subnet, str) or "/" not in subnet:
            errors[nid] = f"the picture of network {view.get('name')!r} has no gateway or subnet"
            continue
        # one entry per address: a running endpoint first (an address given
        # again while its former holder is still listed, stopping)
        chosen: dict[str, Mapping[str, Any]] = {}
        for ep in sorted(endpoints(view, underlay, tunnels),
                         key=lambda e: (not e.get("running"), str(e.get("task_id")))):
            addr = ip_of(ep.get("addr"))
            if addr is not None and ip_of(ep.get("node_addr")) is not None:
                chosen.setdefault(addr, ep)
        encrypted = bool(view.get("encrypted"))
        desired = {
            "id": nid, "name": view.get("name"), "subnet": subnet, "vni": view.get("vni"),
            "internal": bool(view.get("internal")),
            "attachment": f"{gateway}/{subnet.split('/', 1)[1]}",
            "endpoints": [{"addr": addr, "node_underlay_ip": _engine_at(ep, encrypted)}
                          for addr, ep in sorted(chosen.items()) if addr != gateway],
            "encrypted": encrypted,
            "local": str(tunnel_address(underlay)) if encrypted and underlay else None,
        }
        try:
            nets.append(parse_network(desired, f"network {view.get('name')}"))
        except DesiredStateError as exc:
            errors[nid] = str(exc)
    return nets, errors


def _engine_at(ep: Mapping[str, Any], encrypted: bool) -> str | None:
    """Where the endpoint's engine takes the network's VXLAN: its underlay
    address, or its tunnel address on an encrypted network."""
    engine = ip_of(ep.get("node_addr"))
    return str(tunnel_address(engine)) if encrypted and engine is not None else engine


def _serving(ep: Mapping[str, Any], down: Collection[str]) -> bool:
    return bool(ep.get("running")) and ep.get("task_id") not in down


def _backends(view: Mapping[str, Any], underlay: str | None,
              down: Collection[str], tunnels: Collection[str]) -> dict[str, list[str]]:
    """Service id -> the addresses of its serving endpoints on the network."""
    out: dict[str, list[str]] = {}
    for ep in endpoints(view, underlay, tunnels):
        if _serving(ep, down):
            ip = ip_of(ep.get("addr"))
            if ip is not None:
                out.setdefault(str(ep.get("service_id")), []).append(ip)
    return {sid: sorted(set(addrs)) for sid, addrs in out.items()}


def vip_spec(views: Views, network_ids: Iterable[str], underlay: str | None,
             down: Collection[str] = (), tunnels: Collection[str] = ()
             ) -> dict[str, dict[str, list[str]]]:
    """The input of :meth:`~.vips.VirtualIPs.apply` for the networks
    ``network_ids`` (those whose bridge exists): per bridge, each vip-mode
    service's VIP and its serving tasks' addresses."""
    spec: dict[str, dict[str, list[str]]] = {}
    for nid in sorted(network_ids):
        view = views.get(nid)
        if view is None:
            continue
        backends = _backends(view, underlay, down, tunnels)
        vips: dict[str, list[str]] = {}
        for svc in view.get("services") or ():
            vip = ip_of(svc.get("vip"))
            if svc.get("mode", "vip") == "vip" and vip is not None:
                vips[vip] = [b for b in backends.get(str(svc.get("id")), []) if b != vip]
        spec[bridge_name(nid)] = vips
    return spec


def resolver_table(views: Views, underlay: str | None, down: Collection[str] = (),
                   tunnels: Collection[str] = ()) -> dict[str, NetworkEntry]:
    """The resolver's table: per network, its services (name, aliases, mode,
    VIP, serving tasks' addresses) and the addresses of its tasks that may
    ask, each with all the task's networks this node knows of."""
    task_nets: dict[str, set[str]] = {}
    for nid, view in views.items():
        for ep in endpoints(view, underlay, tunnels):
            task_nets.setdefault(str(ep.get("task_id")), set()).add(nid)
    table: dict[str, NetworkEntry] = {}
    for nid in sorted(views):
        view = views[nid]
        backends = _backends(view, underlay, down, tunnels)
        services: list[ServiceEntry] = []
        for svc in view.get("services") or ():
            services.append({"name": str(svc.get("name") or ""),
                             "aliases": [str(a) for a in svc.get("aliases") or ()],
                             "mode": str(svc.get("mode") or "vip"),
                             "vip": ip_of(svc.get("vip")),
                             "task_addrs": backends.get(str(svc.get("id")), [])})
        tasks: dict[str, list[str]] = {}
        for ep in endpoints(view, underlay, tunnels):
            ip = ip_of(ep.get("addr"))
            if ip is not None:
                tasks[ip] = sorted(task_nets.get(str(ep.get("task_id")), {nid}))
        table[nid] = {"services": services, "tasks": tasks}
    return table


def listen_addresses(views: Views, network_ids: Iterable[str],
                     port: int = DNS_PORT) -> list[tuple[str, int]]:
    """Where the resolver serves: the gateway of each network whose bridge exists."""
    out = set()
    for nid in network_ids:
        view = views.get(nid)
        gateway = gateway_of(view) if view is not None else None
        if gateway is not None:
            out.add((gateway, port))
    return sorted(out)


def task_ids(views: Views, node_id: str) -> set[str]:
    """The tasks of node ``node_id`` that are endpoints of the networks."""
    return {str(ep.get("task_id")) for view in views.values()
            for ep in view.get("endpoints") or ()
            if isinstance(ep, Mapping) and ep.get("node_id") == node_id}
