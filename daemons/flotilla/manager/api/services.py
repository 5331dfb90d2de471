"""Services and tasks: create, list, inspect, scale/update, remove, ps."""

from __future__ import annotations

import time
from typing import Optional

from flask import Blueprint
from pydantic import Field

from ...model import responses, specs, taskapi
from ...model import task as taskmodel
from ...model.validation import ApiError, Model
from ..orchestrator import updater
from ..orchestrator import tasks as T
from ..orchestrator.dependencies import cycle_error
from ..store.store import Op, new_id
from .common import (json_response, manager, parse_body, parse_query, policy, replayed_removal,
                     request_id)
from .networks import resolve_spec_networks
from .openapi import doc

bp = Blueprint("services", __name__, url_prefix="/v1")


class TaskQuery(Model):
    service: Optional[str] = Field(default=None, min_length=1, max_length=128)
    node: Optional[str] = Field(default=None, min_length=1, max_length=253)
    desired: Optional[str] = Field(default=None, max_length=32)


class ServiceUpdate(Model):
    replicas: Optional[int] = Field(default=None, ge=0, le=specs.MAX_REPLICAS)
    spec: Optional[specs.ServiceSpec] = None
    version: Optional[int] = None


def service_view(s, counts=None):
    counts = counts if counts is not None else _counts(s["id"])
    return {
        "id": s["id"],
        "name": s["name"],
        "mode": s["spec"]["mode"],
        "replicas": {"desired": s["spec"]["replicas"] if s["spec"]["mode"] == "replicated"
                     else counts["desired"], "running": counts["running"]},
        "image": s["spec"]["task"]["container"]["image"],
        "ports": s["spec"]["endpoint"]["ports"],
        "virtual_ips": _virtual_ips(s),
        "spec": s["spec"],
        "spec_version": s["spec_version"],
        "update_status": s.get("update_status"),
        "previous_spec": s.get("previous_spec"),
        "version": s["version"],
        "created_at": s["created_at"],
        "updated_at": s["updated_at"],
    }


def _virtual_ips(s):
    out = []
    for v in s.get("virtual_ips") or ():
        n = manager().store.get("network", v["network_id"])
        out.append({"network_id": v["network_id"], "network": n["name"] if n else None,
                    "addr": v["addr"]})
    return out


def _counts(service_id):
    # Kept up to date by the store on apply: no walk over the tasks.
    desired, running = manager().store.task_counts(service_id)
    return {"running": running, "desired": desired}


def task_view(t, nodes=None, services=None, model=taskapi.Task):
    node = None
    if t.get("node_id"):
        node = (nodes or {}).get(t["node_id"]) if nodes is not None else \
            manager().store.get("node", t["node_id"])
    service = services.get(t["service_id"]) if services is not None else \
        manager().store.get("service", t["service_id"])
    return taskmodel.viewer(model)(t, node=node["hostname"] if node else None,
                                   up_to_date=service is not None and not T.is_dirty(t, service))


def _get_service(ref):
    store = manager().store
    s = store.get("service", ref) or store.by_unique("service", "name", ref)
    if s is None:
        matches = ([x for x in store.list("service") if x["id"].startswith(ref)]
                   if len(ref) >= 4 else [])
        if len(matches) == 1:
            return matches[0]
        raise ApiError(404, "not_found", f"service {ref} not found")
    return s


def _check_ports(spec: dict, exclude: str | None = None):
    """Two services may not publish the same host port: with host-mode
    publishing they could never share a node."""
    mine = {(p["published"], p["protocol"]) for p in spec["endpoint"]["ports"]}
    if not mine:
        return
    for other in manager().store.list("service"):
        if other["id"] == exclude:
            continue
        theirs = {(p["published"], p["protocol"]) for p in other["spec"]["endpoint"]["ports"]}
        clash = mine & theirs
        if clash:
            port, proto = sorted(clash)[0]
            raise ApiError(409, "port_in_use",
                           f"port {port}/{proto} is already published by service {other['name']}",
                           field="endpoint.ports")


@bp.post("/services")
@policy("control")
@doc("Create a service.", body=specs.ServiceSpec, response=responses.Service, status=201,
     tags=("services",))
def create_service():
    spec = specs.canonical(parse_body(specs.ServiceSpec))
    resolve_spec_networks(spec)
    _check_ports(spec)
    if cycle := cycle_error(spec, manager().store.list("service")):
        raise ApiError(400, "invalid", f"depends_on: {cycle}", field="depends_on")
    obj = {"id": new_id(), "name": spec["name"], "spec": spec, "spec_version": 1}
    result = manager().store.commit([Op.create("service", obj)], rid=request_id())
    return json_response(service_view(result["objects"][0]), 201)


@bp.get("/services")
@policy("control")
@doc("List services.", response=list[responses.Service], tags=("services",))
def list_services():
    items = sorted(manager().store.list("service"), key=lambda s: s["name"])
    return json_response([service_view(s) for s in items])


@bp.get("/services/<ref>")
@policy("control")
@doc("Inspect a service by id, name or id prefix.", response=responses.Service, tags=("services",))
def inspect_service(ref):
    return json_response(service_view(_get_service(ref)))


@bp.patch("/services/<ref>")
@policy("control")
@doc("Scale a service or replace its spec.", body=ServiceUpdate, response=responses.Service,
     tags=("services",))
def update_service(ref):
    body = parse_body(ServiceUpdate)
    current = _get_service(ref)
    if body.replicas is not None and current["spec"]["mode"] != "replicated":
        raise ApiError(400, "invalid", "only replicated services can be scaled", field="replicas")
    new_spec = specs.canonical(body.spec) if body.spec is not None else None
    if new_spec is not None:
        if new_spec["name"] != current["name"]:
            raise ApiError(400, "invalid", "a service cannot be renamed", field="spec.name")
        if new_spec["mode"] != current["spec"]["mode"]:
            raise ApiError(400, "invalid", "a service's mode cannot change", field="spec.mode")
        resolve_spec_networks(new_spec, current["id"], prefix="spec.")
        _check_ports(new_spec, exclude=current["id"])
        if cycle := cycle_error(new_spec, manager().store.list("service")):
            raise ApiError(400, "invalid", f"spec.depends_on: {cycle}", field="spec.depends_on")

    def change(s):
        spec = dict(new_spec if new_spec is not None else s["spec"])
        if body.replicas is not None:
            spec["replicas"] = body.replicas
        if spec == s["spec"]:
            return None
        new = dict(s, spec=spec, spec_version=s["spec_version"] + 1)
        if _rolls_out(s["spec"], spec):
            # Tasks must be replaced: the rolling updater takes it from here.
            new["previous_spec"] = s["spec"]
            new["update_status"] = {"state": "updating", "message": "update in progress",
                                    "started_at": time.time()}
        return new

    s = manager().store.update("service", current["id"], change, rid=request_id(),
                               version=body.version)
    return json_response(service_view(s))


def _rolls_out(old: dict, new: dict) -> bool:
    return old["task"] != new["task"] or taskmodel.task_ports(old) != taskmodel.task_ports(new)


@bp.post("/services/<ref>/rollback")
@policy("control")
@doc("Go back to the service's previous spec, with its rollback settings.",
     response=responses.Service, tags=("services",))
def rollback_service(ref):
    current = _get_service(ref)

    def change(s):
        try:
            return updater.rollback(s, "manual rollback", time.time())
        except ValueError as exc:
            raise ApiError(409, "no_previous_spec", str(exc)) from None

    s = manager().store.update("service", current["id"], change, rid=request_id())
    return json_response(service_view(s))


def _set_update_state(ref, states: dict, what: str):
    current = _get_service(ref)

    def change(s):
        status = s.get("update_status") or {}
        state = status.get("state")
        if state not in states:
            raise ApiError(409, "no_update",
                           f"service {s['name']} has no {what} (update state: {state or 'none'})")
        message = f"{states[state].replace('_', ' ')} (requested by an operator)"
        return dict(s, update_status=dict(status, state=states[state], message=message,
                                          reason=message if "paused" in states[state] else None))

    s = manager().store.update("service", current["id"], change, rid=request_id())
    return json_response(service_view(s))


@bp.post("/services/<ref>/pause")
@policy("control")
@doc("Pause the service's rolling update or rollback.", response=responses.Service,
     tags=("services",))
def pause_update(ref):
    return _set_update_state(ref, {"updating": "paused", "rollback_started": "rollback_paused"},
                             "update or rollback in progress")


@bp.post("/services/<ref>/resume")
@policy("control")
@doc("Resume the service's paused update or rollback.", response=responses.Service,
     tags=("services",))
def resume_update(ref):
    return _set_update_state(ref, {"paused": "updating", "rollback_paused": "rollback_started"},
                             "paused update or rollback")


@bp.delete("/services/<ref>")
@policy("control")
@doc("Remove a service; its tasks stop and are removed.", response=responses.Removed,
     tags=("services",))
def remove_service(ref):
    if (done := replayed_removal()) is not None:
        return json_response(done)
    s = _get_service(ref)
    manager().store.commit([Op.delete("service", s["id"])], rid=request_id())
    return json_response({"id": s["id"], "removed": True})


@bp.get("/services/<ref>/tasks")
@policy("control")
@doc("A service's tasks.", response=list[taskapi.Task], tags=("tasks",))
def service_tasks(ref):
    s = _get_service(ref)
    tasks = manager().store.by_index("task", "service_id", s["id"])
    return json_response(_task_list(tasks))


def _task_list(tasks):
    nodes = {n["id"]: n for n in manager().store.list("node")}
    store = manager().store
    services = {sid: store.get("service", sid) for sid in {t["service_id"] for t in tasks}}
    tasks = sorted(tasks, key=lambda t: (t["service_name"], t["slot"] or 0,
                                         nodes.get(t["node_id"], {}).get("hostname") or "",
                                         -(t.get("created_at") or 0)))
    return [task_view(t, nodes, services) for t in tasks]


@bp.get("/tasks")
@policy("control")
@doc("List tasks.", query=TaskQuery, response=list[taskapi.Task], tags=("tasks",))
def list_tasks():
    store = manager().store
    query = parse_query(TaskQuery)
    service, node = query.service, query.node
    if service:
        # A removed service's tasks are still found by its id while they stop.
        tasks = store.by_index("task", "service_id", service)
        if not tasks:
            tasks = store.by_index("task", "service_id", _get_service(service)["id"])
    elif node:
        from .nodes import _get as get_node
        tasks = store.by_index("task", "node_id", get_node(node)["id"])
    else:
        tasks = store.list("task")
    if node and service:
        from .nodes import _get as get_node
        node_id = get_node(node)["id"]
        tasks = [t for t in tasks if t["node_id"] == node_id]
    state = query.desired
    if state:
        if state not in taskmodel.STATE_VALUES:
            raise ApiError(400, "invalid", f"unknown state {state!r}", field="desired")
        tasks = [t for t in tasks if t["desired_state"] == state]
    return json_response(_task_list(tasks))


@bp.get("/tasks/<task_id>")
@policy("control")
@doc("Inspect a task by id or id prefix.", response=taskapi.TaskDetail, tags=("tasks",))
def inspect_task(task_id):
    t = manager().store.get("task", task_id)
    if t is None:
        matches = [x for x in manager().store.list("task") if x["id"].startswith(task_id)]
        if len(matches) != 1 or len(task_id) < 4:
            raise ApiError(404, "not_found", f"task {task_id} not found")
        t = matches[0]
    return json_response(task_view(t, model=taskapi.TaskDetail))
