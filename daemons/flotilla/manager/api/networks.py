"""Networks: create, list, inspect, remove; and the networks a service's
spec names, resolved and checked.

A network's subnet, gateway and VXLAN id are decided when it is created,
here on the leader: the transaction that creates it also bumps the
cluster object's version with a compare-and-set, so two networks created
at once can never be given overlapping subnets or the same VXLAN id (the
second is decided again on what the first left).
"""

from __future__ import annotations

import ipaddress

from flask import Blueprint

from ...model import responses
from ...model.network import NetworkSpec, default_network_settings, dns_label
from ...model.task import finished
from ...model.validation import ApiError
from ..allocator import ipam
from ..store.store import Op, TxnFailed, new_id
from .common import (json_response, manager, parse_body, policy, replayed_removal, request_id,
                     stored_cluster)
from .openapi import doc

bp = Blueprint("networks", __name__, url_prefix="/v1/networks")

CREATE_ATTEMPTS = 8


def view(n: dict, services: list[dict] | None = None) -> dict:
    spec = n["spec"]
    out = {"id": n["id"], "name": n["name"], "driver": spec["driver"], "subnet": n["subnet"],
           "gateway": n["gateway"], "vni": n["vni"], "attachable": spec["attachable"],
           "internal": spec["internal"], "encrypted": spec["encrypted"],
           "labels": spec["labels"], "version": n.get("version"),
           "created_at": n.get("created_at"), "updated_at": n.get("updated_at")}
    if services is not None:
        out["services"] = [
            {"id": s["id"], "name": s["name"],
             "virtual_ip": next((v["addr"] for v in s.get("virtual_ips") or ()
                                 if v["network_id"] == n["id"]), None)}
            for s in services]
    return out


def find(ref: str) -> dict | None:
    """A network by id, name or unique id prefix (at least 4 characters)."""
    store = manager().store
    n = store.get("network", ref) or store.by_unique("network", "name", ref)
    if n is None and len(ref) >= 4:
        matches = [x for x in store.list("network") if x["id"].startswith(ref)]
        n = matches[0] if len(matches) == 1 else None
    return n


def _get(ref: str) -> dict:
    n = find(ref)
    if n is None:
        raise ApiError(404, "not_found", f"network {ref} not found")
    return n


def services_on(network_id: str) -> list[dict]:
    return sorted((s for s in manager().store.list("service")
                   if any(a["target"] == network_id for a in s["spec"]["task"]["networks"])),
                  key=lambda s: s["name"])


def _settings(cluster: dict) -> dict:
    return cluster["spec"].get("network") or default_network_settings()


def _decide(spec: NetworkSpec, networks: list[dict], cluster: dict) -> dict:
    """The subnet, gateway and VXLAN id of a new network, or 400."""
    taken = [ipaddress.IPv4Network(n["subnet"]) for n in networks]
    if spec.subnet is not None:
        subnet = ipaddress.IPv4Network(spec.subnet)
        clash = ipam.overlapping(subnet, taken)
        if clash is not None:
            owner = next(n["name"] for n in networks if n["subnet"] == str(clash))
            raise ApiError(400, "invalid", f"subnet: {subnet} overlaps {clash} of network "
                           f"{owner}", field="subnet")
    else:
        settings = _settings(cluster)
        pools = [ipaddress.IPv4Network(p) for p in settings["default_addr_pool"]]
        try:
            subnet = ipam.choose_subnet(pools, settings["subnet_size"], taken)
        except ipam.Exhausted as exc:
            raise ApiError(400, "invalid", f"subnet: {exc}; name a subnet for this network",
                           field="subnet") from None
    gateway = spec.gateway or str(next(subnet.hosts()))
    try:
        vni = ipam.choose_vni((n["vni"] for n in networks), ipam.vni_start(cluster["id"]))
    except ipam.Exhausted as exc:
        raise ApiError(400, "invalid", str(exc)) from None
    return {"subnet": str(subnet), "gateway": gateway, "vni": vni}


@bp.get("")
@policy("control")
@doc("List networks.", response=list[responses.Network], tags=("networks",))
def list_networks():
    items = sorted(manager().store.list("network"), key=lambda n: n["name"])
    return json_response([view(n) for n in items])


@bp.post("")
@policy("control")
@doc("Create a network (overlay: one subnet across the nodes that run its tasks).",
     body=NetworkSpec, response=responses.Network, status=201, tags=("networks",))
def create_network():
    spec = parse_body(NetworkSpec)
    store = manager().store
    if store.by_unique("network", "name", spec.name) is not None:
        raise ApiError(409, "exists", f"network {spec.name} already exists", field="name")
    nid = new_id()
    for _ in range(CREATE_ATTEMPTS):
        cluster = stored_cluster()
        decided = _decide(spec, store.list("network"), cluster)
        obj = {"id": nid, "name": spec.name, "spec": spec.model_dump(mode="json"), **decided}
        # The compare-and-set on the cluster's version orders network creations.
        ops = [Op.create("network", obj),
               Op.patch("cluster", cluster["id"], {"networks_created":
                                                   cluster.get("networks_created", 0) + 1},
                        version=cluster["version"])]
        try:
            result = store.commit(ops, rid=request_id())
        except TxnFailed as exc:
            if exc.code == "conflict":
                continue        # another network (or a cluster change) came first
            raise
        return json_response(view(result["objects"][0], []), 201)
    raise ApiError(409, "conflict", "the cluster changed while the network was created; retry")


@bp.get("/<ref>")
@policy("control")
@doc("Inspect a network by id, name or id prefix, with the services on it.",
     response=responses.Network, tags=("networks",))
def inspect_network(ref):
    n = _get(ref)
    return json_response(view(n, services_on(n["id"])))


@bp.delete("/<ref>")
@policy("control")
@doc("Remove a network no service uses.", response=responses.Removed, tags=("networks",))
def remove_network(ref):
    if (done := replayed_removal()) is not None:
        return json_response(done)
    n = _get(ref)
    users = services_on(n["id"])
    if users:
        names = ", ".join(s["name"] for s in users)
        raise ApiError(409, "in_use", f"network {n['name']} is in use by service"
                       f"{'s' if len(users) > 1 else ''} {names}")
    holders = [t for t in manager().store.list("task")
               if not finished(t["status"]["state"])
               and any(a["network_id"] == n["id"] for a in t.get("networks") or ())]
    if holders:
        raise ApiError(409, "in_use", f"network {n['name']} is still in use by "
                       f"{len(holders)} task(s) that are stopping; retry shortly")
    manager().store.commit([Op.delete("network", n["id"])], rid=request_id())
    return json_response({"id": n["id"], "removed": True})


def resolve_spec_networks(spec: dict, service_id: str | None = None, prefix: str = "") -> None:
    """Check the networks a canonical service spec names and store them by
    id (in place): each exists; a service on a network is named by a DNS
    label; no alias or name is taken on that network by another service."""
    attachments = spec["task"]["networks"]
    if not attachments:
        return
    try:
        dns_label(spec["name"], "the name of a service on a network,")
    except ValueError as exc:
        raise ApiError(400, "invalid", f"{prefix}name: {exc}", field=f"{prefix}name") from None
    seen: set[str] = set()
    for i, att in enumerate(attachments):
        field = f"{prefix}task.networks.{i}"
        n = find(att["target"])
        if n is None:
            raise ApiError(400, "invalid", f"{field}.target: network {att['target']} not found",
                           field=f"{field}.target")
        if n["id"] in seen:
            raise ApiError(400, "invalid", f"{field}.target: network {n['name']} is listed "
                           "twice", field=f"{field}.target")
        seen.add(n["id"])
        att["target"] = n["id"]
        mine = {spec["name"].lower(), *(a.lower() for a in att["aliases"])}
        for other in services_on(n["id"]):
            if other["id"] == service_id or other["name"] == spec["name"]:
                continue
            theirs = {other["name"].lower()}
            for o in other["spec"]["task"]["networks"]:
                if o["target"] == n["id"]:
                    theirs.update(a.lower() for a in o["aliases"])
            clash = sorted(mine & theirs)
            if clash:
                raise ApiError(400, "invalid",
                               f"{field}.aliases: {clash[0]} already names service "
                               f"{other['name']} on network {n['name']}",
                               field=f"{field}.aliases")
