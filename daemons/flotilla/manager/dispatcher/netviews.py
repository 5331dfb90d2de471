"""What each node is told about the networks its tasks are on.

A node takes part in a network while one of its tasks that was sent to it
(assigned or later, not finished) has an address there. For each such
network the node gets the whole picture, kept current through the
assignment stream: the network (subnet, gateway, VXLAN id, options), every
endpoint on it (each task's address, its node and that node's address,
whether it serves: runs and is meant to), and the services on it (names,
aliases, mode, VIP). From that a node programs its engine's bridge and
VXLAN entries, its resolver and its virtual IPs. The picture of an
encrypted network also lists its nodes' WireGuard public keys and ports
(``peers``), which each node published when it registered: its traffic
between hosts crosses the nodes' tunnels (``agent/network/wireguard.py``).

``NetworkTracker`` follows the store's events and says which networks
changed (and so which nodes must be sent them again); ``view()`` builds a
network's picture. A change is sent as the network's whole picture, not as
a delta: a network holds tens to hundreds of tasks, and a node that missed
anything is set right by the next message.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ...model import task as taskmodel

# The kinds of store objects whose changes may change what nodes are told.
KINDS = ("task", "service", "network", "node")


def task_networks(task: dict | None) -> set[str]:
    if task is None:
        return set()
    return {a["network_id"] for a in task.get("networks") or ()}


def on_node(task: dict | None) -> bool:
    """The task holds its node's part in its networks: sent to its node and
    not finished."""
    return (task is not None and task.get("node_id") is not None
            and taskmodel.at_least(task["status"]["state"], "assigned")
            and not taskmodel.finished(task["status"]["state"]))


def serving(task: dict) -> bool:
    """The task takes its service's traffic: it runs (healthy, where it has a
    healthcheck) and is meant to keep running. One being stopped (scaled
    down, replaced, drained) leaves its VIPs and answers when its node is
    told to stop it, not once its container has exited."""
    return task["status"]["state"] == "running" and task.get("desired_state") == "running"


def _endpoint_key(task: dict | None) -> Any:
    if task is None or not on_node(task):
        return None
    return (task["node_id"], serving(task), tuple(
        (a["network_id"], a["addr"], tuple(a.get("aliases") or ())) for a in task["networks"]))


def _service_key(service: dict | None) -> Any:
    if service is None:
        return None
    spec = service["spec"]
    return (service["name"], spec["endpoint"].get("mode"),
            tuple((a["target"], tuple(a["aliases"])) for a in spec["task"]["networks"]),
            tuple((v["network_id"], v["addr"]) for v in service.get("virtual_ips") or ()))


class NetworkTracker:
    """Which nodes take part in which network, and which networks changed."""

    def __init__(self) -> None:
        self.members: dict[str, set[str]] = {}       # network id -> node ids
        self._count: dict[tuple[str, str], int] = {}  # (network, node) -> tasks there
        self.dirty: set[str] = set()

    def load(self, tasks: Iterable[dict]) -> None:
        self.members, self._count = {}, {}
        for t in tasks:
            if on_node(t):
                for nid in task_networks(t):
                    self._add(nid, t["node_id"])
        self.dirty = set(self.members)

    def _add(self, nid: str, node_id: str) -> None:
        key = (nid, node_id)
        self._count[key] = self._count.get(key, 0) + 1
        self.members.setdefault(nid, set()).add(node_id)

    def _remove(self, nid: str, node_id: str) -> None:
        key = (nid, node_id)
        left = self._count.get(key, 0) - 1
        if left > 0:
            self._count[key] = left
            return
        self._count.pop(key, None)
        nodes = self.members.get(nid)
        if nodes is not None:
            nodes.discard(node_id)
            if not nodes:
                del self.members[nid]

    def note(self, e: Any) -> None:
        """Follow one store event (not a reset)."""
        if e.kind == "task":
            old, new = e.old, e.object
            if not (task_networks(old) or task_networks(new)):
                return
            if _endpoint_key(old) == _endpoint_key(new):
                return
            if on_node(old):
                for nid in task_networks(old):
                    self._remove(nid, old["node_id"])
            if on_node(new):
                for nid in task_networks(new):
                    self._add(nid, new["node_id"])
            self.dirty |= task_networks(old) | task_networks(new)
        elif e.kind == "service":
            if _service_key(e.old) != _service_key(e.object):
                for s in (e.old, e.object):
                    if s is not None:
                        self.dirty.update(a["target"] for a in s["spec"]["task"]["networks"])
        elif e.kind == "network":
            self.dirty.add(e.id)
        elif e.kind == "node" and e.old is not None and e.object is not None:
            before, after = e.old.get("status") or {}, e.object.get("status") or {}
            if before.get("addr") != after.get("addr") or \
                    wireguard_of(e.old) != wireguard_of(e.object):
                self.dirty.update(nid for nid, nodes in self.members.items() if e.id in nodes)

    def of_node(self, node_id: str) -> set[str]:
        return {nid for nid, nodes in self.members.items() if node_id in nodes}


def wireguard_of(node: dict | None) -> dict | None:
    """The WireGuard public key and port the node published, if any."""
    wg = ((node or {}).get("description") or {}).get("wireguard")
    return {"public_key": wg.get("public_key"), "port": wg.get("port")} \
        if isinstance(wg, dict) else None


def view(store: Any, network_id: str) -> dict | None:
    """The whole picture of one network, as nodes are sent it (None if the
    network is gone)."""
    n = store.get("network", network_id)
    if n is None:
        return None
    nodes: dict[str, dict | None] = {}
    endpoints = []
    services: dict[str, dict] = {}
    for s in store.list("service"):
        for att in s["spec"]["task"]["networks"]:
            if att["target"] == network_id:
                vip = next((v["addr"] for v in s.get("virtual_ips") or ()
                            if v["network_id"] == network_id), None)
                services[s["id"]] = {"id": s["id"], "name": s["name"],
                                     "mode": s["spec"]["endpoint"].get("mode", "vip"),
                                     "aliases": list(att["aliases"]), "vip": vip}
    for t in _tasks_on(store, network_id):
        if not on_node(t):
            continue
        node_id = t["node_id"]
        if node_id not in nodes:
            nodes[node_id] = store.get("node", node_id)
        node = nodes[node_id]
        addr = next(a for a in t["networks"] if a["network_id"] == network_id)
        endpoints.append({
            "task_id": t["id"], "service_id": t["service_id"],
            "service_name": t["service_name"], "slot": t.get("slot"),
            "addr": addr["addr"], "aliases": list(addr.get("aliases") or ()),
            "node_id": node_id,
            "node_addr": ((node or {}).get("status") or {}).get("addr"),
            "running": serving(t),
        })
    endpoints.sort(key=lambda ep: ep["task_id"])
    out = {"id": n["id"], "name": n["name"], "subnet": n["subnet"], "gateway": n["gateway"],
           "vni": n["vni"], "internal": n["spec"]["internal"],
           "encrypted": n["spec"]["encrypted"], "attachable": n["spec"]["attachable"],
           "services": sorted(services.values(), key=lambda s: s["name"]),
           "endpoints": endpoints}
    if n["spec"]["encrypted"]:
        out["peers"] = [{"node_id": node_id,
                         "node_addr": ((node or {}).get("status") or {}).get("addr"),
                         "wireguard": wireguard_of(node)}
                        for node_id, node in sorted(nodes.items())]
    return out


def _tasks_on(store: Any, network_id: str) -> list[dict]:
    """The tasks with an address on the network (those of services that
    left it, or are gone, included while they stop)."""
    return [t for t in store.list("task") if network_id in task_networks(t)]
