"""Nodes: list, inspect, update (availability, labels), promote, demote, remove."""

from __future__ import annotations

import time
from typing import Literal, Optional

from flask import Blueprint
from pydantic import Field, field_validator

from ...ca import revocation
from ...model import responses
from ...model import task as taskmodel
from ...model.names import LABEL_KEY
from ...model.validation import ApiError, Model, Text
from .. import networkkeys
from ..raft.membership import QuorumError
from ..store import queries
from ..store.store import Op
from .common import (json_response, manager, parse_body, parse_query, policy, replayed_removal,
                     request_id)
from .openapi import doc

bp = Blueprint("nodes", __name__, url_prefix="/v1/nodes")

MAX_LABELS = 64
MAX_LABEL_VALUE = 1024


def validate_labels(labels):
    if labels is None:
        return labels
    if len(labels) > MAX_LABELS:
        raise ValueError(f"at most {MAX_LABELS} labels")
    for k, v in labels.items():
        if not LABEL_KEY.match(k):
            raise ValueError(f"invalid label key {k[:40]!r}")
        if len(v) > MAX_LABEL_VALUE:
            raise ValueError(f"label {k} is longer than {MAX_LABEL_VALUE} characters")
    return labels


class ForceQuery(Model):
    force: bool = False


class NodeUpdate(Model):
    role: Optional[Literal["manager", "worker"]] = None
    availability: Optional[Literal["active", "pause", "drain"]] = None
    labels: Optional[dict[str, Text]] = None
    labels_add: Optional[dict[str, Text]] = None
    labels_rm: Optional[list[str]] = Field(default=None, max_length=MAX_LABELS)
    version: Optional[int] = None

    _labels = field_validator("labels", "labels_add")(validate_labels)

    @field_validator("labels_rm")
    @classmethod
    def _label_keys(cls, v):
        for k in v or ():
            if not LABEL_KEY.match(k):
                raise ValueError(f"invalid label key {k[:40]!r}")
        return v


def resources(node, m):
    """Total, reserved by active tasks, and free CPU and memory."""
    total = (node.get("description") or {}).get("resources") or {}
    cpus = float(total.get("cpus") or 0)
    memory = int(total.get("memory") or 0)
    r_cpus, r_mem, count = 0.0, 0, 0
    for t in m.store.by_index("task", "node_id", node["id"]):
        if taskmodel.active(t):
            res = t["spec"]["resources"]["reservations"]
            r_cpus += float(res.get("cpus") or 0)
            r_mem += int(res.get("memory") or 0)
            count += 1
    return {"total": {"cpus": cpus, "memory": memory},
            "reserved": {"cpus": round(r_cpus, 6), "memory": r_mem},
            "free": {"cpus": round(max(cpus - r_cpus, 0.0), 6), "memory": max(memory - r_mem, 0)},
            "tasks": count}


def view(node, m, reachable=None, leader_id=None):
    mgr = node.get("manager") or None
    out = {
        "id": node["id"],
        "hostname": node.get("hostname"),
        "addr": node.get("addr"),
        "ip": (node.get("status") or {}).get("addr"),
        "role": node.get("role"),
        "desired_role": node["spec"]["role"],
        "availability": node["spec"]["availability"],
        "labels": node["spec"].get("labels", {}),
        "state": node["status"]["state"],
        "message": node["status"].get("message", ""),
        "leader": node["id"] == leader_id,
        "platform": (node.get("description") or {}).get("platform", {}),
        "engine": (node.get("description") or {}).get("engine", {}),
        "resources": resources(node, m),
        "agent_addr": node.get("agent_addr"),
        "flotilla_version": (node.get("description") or {}).get("version"),
        "wireguard": (node.get("description") or {}).get("wireguard"),
        "network_key": networkkeys.api_view(node),
        "cert": node.get("cert"),
        "version": node.get("version"),
        "created_at": node.get("created_at"),
        "updated_at": node.get("updated_at"),
        "manager": None,
    }
    if mgr:
        out["manager"] = {
            "raft_addr": mgr.get("raft_addr"),
            "api_addr": mgr.get("api_addr"),
            "reachability": ("reachable" if reachable is None or mgr.get("raft_addr") in reachable
                             else "unreachable"),
        }
    return out


def _get(ref):
    node = queries.find_node(manager().store, ref)
    if node is None:
        raise ApiError(404, "not_found", f"node {ref} not found")
    return node


def _views(nodes):
    m = manager()
    reachable = m.raft.reachable_addresses() if m.raft is not None else None
    leader = m.leader_node_id()
    return [view(n, m, reachable, leader) for n in nodes]


@bp.get("")
@policy("control")
@doc("List nodes.", response=list[responses.Node], tags=("nodes",))
def list_nodes():
    nodes = sorted(manager().store.list("node"), key=lambda n: (n.get("hostname") or "", n["id"]))
    return json_response(_views(nodes))


@bp.get("/<ref>")
@policy("control")
@doc("Inspect a node by id, hostname or id prefix.", response=responses.Node, tags=("nodes",))
def inspect_node(ref):
    return json_response(_views([_get(ref)])[0])


def _update(ref, change, rid, version=None):
    return manager().store.update("node", _get(ref)["id"], change, rid=rid, version=version)


@bp.patch("/<ref>")
@policy("control")
@doc("Change a node's role, availability or labels.", body=NodeUpdate, query=ForceQuery,
     response=responses.Node, tags=("nodes",))
def update_node(ref):
    body = parse_body(NodeUpdate)
    if body.role == "worker":
        _check_demotion(_get(ref), parse_query(ForceQuery).force)

    def change(node):
        spec = dict(node["spec"])
        if body.role is not None:
            spec["role"] = body.role
        labels = dict(spec.get("labels", {}))
        if body.labels is not None:
            labels = dict(body.labels)
        for k, v in (body.labels_add or {}).items():
            labels[k] = v
        for k in body.labels_rm or []:
            labels.pop(k, None)
        if len(labels) > MAX_LABELS:
            raise ApiError(400, "invalid", f"at most {MAX_LABELS} labels", field="labels")
        spec["labels"] = labels
        if body.availability is not None:
            spec["availability"] = body.availability
        return dict(node, spec=spec)

    node = _update(ref, change, request_id(), body.version)
    return json_response(_views([node])[0])


def _set_role(node, role):
    return _update(node["id"], lambda n: None if n["spec"]["role"] == role
                   else dict(n, spec=dict(n["spec"], role=role)), request_id())


def _check_demotion(node, force):
    """Refuse to demote the last manager, or one whose departure would leave
    the remaining managers without a reachable majority (unless forced)."""
    m = manager()
    if node["spec"]["role"] == "worker":
        return
    managers = [n for n in m.store.list("node") if n["spec"]["role"] == "manager"]
    if len(managers) <= 1:
        raise ApiError(409, "last_manager", "cannot demote the last manager")
    raft_addr = (node.get("manager") or {}).get("raft_addr")
    if raft_addr and raft_addr in m.raft.member_addresses() and not force:
        try:
            m.membership.check_removal(raft_addr)
        except QuorumError as exc:
            raise ApiError(409, "quorum", str(exc)) from None


@bp.post("/<ref>/promote")
@policy("control")
@doc("Make a node a manager.", response=responses.Node, tags=("nodes",))
def promote(ref):
    return json_response(_views([_set_role(_get(ref), "manager")])[0])


@bp.post("/<ref>/demote")
@policy("control")
@doc("Make a manager a worker.", query=ForceQuery, response=responses.Node, tags=("nodes",))
def demote(ref):
    node = _get(ref)
    _check_demotion(node, parse_query(ForceQuery).force)
    return json_response(_views([_set_role(node, "worker")])[0])


@bp.delete("/<ref>")
@policy("control")
@doc("Remove a node from the cluster (its certificate is revoked).", query=ForceQuery,
     response=responses.Removed, tags=("nodes",))
def remove(ref):
    m = manager()
    force = parse_query(ForceQuery).force
    if (done := replayed_removal()) is not None:
        return json_response(done)
    node = _get(ref)
    if node.get("role") == "manager" or node["spec"]["role"] == "manager":
        raise ApiError(409, "is_manager", f"node {node['hostname']} is a manager; demote it first")
    if node["status"]["state"] == "ready" and not force:
        raise ApiError(409, "node_ready",
                       f"node {node['hostname']} is up; stop it first or use --force")
    not_after = (node.get("cert") or {}).get("not_after") or (time.time() + 90 * 86400)
    cluster = queries.cluster(m.store)
    # The node, its revocation and its unfinished tasks (now orphaned: they
    # will never report again) go in one transaction; a change to any of
    # them in between fails it and the whole thing is retried.
    def extra(_c, _n):
        ops = [Op.delete("node", node["id"], version=_get(node["id"])["version"])]
        for t in m.store.by_index("task", "node_id", node["id"]):
            if not taskmodel.finished(t["status"]["state"]):
                status = dict(t["status"], state="orphaned", message="node removed",
                              timestamp=time.time())
                ops.append(Op.update("task", dict(t, status=status), version=t["version"]))
        return ops

    def revoke(c):
        revoked = revocation.with_entries(c.get("revoked"), [(node["id"], not_after)])
        return dict(c, revoked=revocation.purge(revoked) or revoked)

    m.store.update("cluster", cluster["id"], revoke, rid=request_id(), extra_ops=extra)
    return json_response({"id": node["id"], "removed": True})
