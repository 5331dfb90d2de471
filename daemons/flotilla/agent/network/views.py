"""From what the managers tell a node to what its engine, VIPs and resolver need.

The dispatcher sends a node the whole picture of every network its tasks
are on (``manager/dispatcher/netviews.py``)::

    {id, name, subnet, gateway, vni, internal, encrypted, ...,
     services: [{id, name, mode, aliases, vip}],
     endpoints: [{task_id, service_id, addr, node_id, node_addr, running}]}

These functions turn those pictures (by network id) into the input of
:class:`~.driver.NetworkDriver` (:func:`driver_networks`), of
:class:`~.vips.VirtualIPs` (:func:`vip_spec`) and of the resolver
(:func:`resolver_table`, :func:`listen_addresses`). They are pure: the
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
- Encrypted networks: until traffic between hosts can be encrypted, an
  encrypted network stays on each host: endpoints on other engines are left
  out of the forwarding entries, the VIPs' backends and the answers, so
  nothing of it crosses the underlay in clear.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Collection, Iterable, Mapping
from typing import Any

from .desired import DesiredStateError, NetworkState, parse_network
from .names import bridge_name
from .resolver import DNS_PORT, NetworkEntry, ServiceEntry

Views = Mapping[str, Mapping[str, Any]]


def ip_of(addr: object) -> str | None:
    """``10.0.1.5`` from ``10.0.1.5``, ``10.0.1.5/24``; None if it is no IPv4 address."""
    if not isinstance(addr, str):
        return None
    try:
        return str(ipaddress.IPv4Address(addr.split("/", 1)[0]))
    except ValueError:
        return None


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


def endpoints(view: Mapping[str, Any], underlay: str | None) -> list[Mapping[str, Any]]:
    """The endpoints of a network this node may reach: all of them, or on an
    encrypted network only those on this engine."""
    eps = [ep for ep in view.get("endpoints") or () if isinstance(ep, Mapping)
           and ip_of(ep.get("addr")) is not None]
    if view.get("encrypted"):
        eps = [ep for ep in eps if ip_of(ep.get("node_addr")) == underlay]
    return eps


def gateway_of(view: Mapping[str, Any]) -> str | None:
    return ip_of(view.get("gateway"))


def driver_networks(views: Views, underlay: str | None
                    ) -> tuple[list[NetworkState], dict[str, str]]:
    """The networks the driver should have (checked one by one) and, by
    network id, why one could not be made from its picture."""
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
        for ep in sorted(endpoints(view, underlay),
                         key=lambda e: (not e.get("running"), str(e.get("task_id")))):
            addr = ip_of(ep.get("addr"))
            if addr is not None and ip_of(ep.get("node_addr")) is not None:
                chosen.setdefault(addr, ep)
        desired = {
            "id": nid, "name": view.get("name"), "subnet": subnet, "vni": view.get("vni"),
            "internal": bool(view.get("internal")),
            "attachment": f"{gateway}/{subnet.split('/', 1)[1]}",
            "endpoints": [{"addr": addr, "node_underlay_ip": ip_of(ep.get("node_addr"))}
                          for addr, ep in sorted(chosen.items()) if addr != gateway],
        }
        try:
            nets.append(parse_network(desired, f"network {view.get('name')}"))
        except DesiredStateError as exc:
            errors[nid] = str(exc)
    return nets, errors


def _serving(ep: Mapping[str, Any], down: Collection[str]) -> bool:
    return bool(ep.get("running")) and ep.get("task_id") not in down


def _backends(view: Mapping[str, Any], underlay: str | None,
              down: Collection[str]) -> dict[str, list[str]]:
    """Service id -> the addresses of its serving endpoints on the network."""
    out: dict[str, list[str]] = {}
    for ep in endpoints(view, underlay):
        if _serving(ep, down):
            ip = ip_of(ep.get("addr"))
            if ip is not None:
                out.setdefault(str(ep.get("service_id")), []).append(ip)
    return {sid: sorted(set(addrs)) for sid, addrs in out.items()}


def vip_spec(views: Views, network_ids: Iterable[str], underlay: str | None,
             down: Collection[str] = ()) -> dict[str, dict[str, list[str]]]:
    """The input of :meth:`~.vips.VirtualIPs.apply` for the networks
    ``network_ids`` (those whose bridge exists): per bridge, each vip-mode
    service's VIP and its serving tasks' addresses."""
    spec: dict[str, dict[str, list[str]]] = {}
    for nid in sorted(network_ids):
        view = views.get(nid)
        if view is None:
            continue
        backends = _backends(view, underlay, down)
        vips: dict[str, list[str]] = {}
        for svc in view.get("services") or ():
            vip = ip_of(svc.get("vip"))
            if svc.get("mode", "vip") == "vip" and vip is not None:
                vips[vip] = [b for b in backends.get(str(svc.get("id")), []) if b != vip]
        spec[bridge_name(nid)] = vips
    return spec


def resolver_table(views: Views, underlay: str | None,
                   down: Collection[str] = ()) -> dict[str, NetworkEntry]:
    """The resolver's table: per network, its services (name, aliases, mode,
    VIP, serving tasks' addresses) and the addresses of its tasks that may
    ask, each with all the task's networks this node knows of."""
    task_nets: dict[str, set[str]] = {}
    for nid, view in views.items():
        for ep in endpoints(view, underlay):
            task_nets.setdefault(str(ep.get("task_id")), set()).add(nid)
    table: dict[str, NetworkEntry] = {}
    for nid in sorted(views):
        view = views[nid]
        backends = _backends(view, underlay, down)
        services: list[ServiceEntry] = []
        for svc in view.get("services") or ():
            services.append({"name": str(svc.get("name") or ""),
                             "aliases": [str(a) for a in svc.get("aliases") or ()],
                             "mode": str(svc.get("mode") or "vip"),
                             "vip": ip_of(svc.get("vip")),
                             "task_addrs": backends.get(str(svc.get("id")), [])})
        tasks: dict[str, list[str]] = {}
        for ep in endpoints(view, underlay):
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
