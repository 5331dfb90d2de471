"""Shapes of the objects kept in the store, and small queries over them.

Cluster (one per cluster, id = cluster id)::

    {id, name, spec: {ca: {node_cert_expiry}, dispatcher: {heartbeat_period},
     orchestration: {task_history_limit}},
     root_ca: {cert, key, digest}, tokens: {worker, manager},
     revoked: {node_id | "serial:<hex>": not_after (unix time)},
     admins: {serial (hex): {name, id, serial, not_after, created_at, revoked_at}}}

    (``revoked`` is the revocation list, see ``ca/revocation.py``; ``admins``
    records the operators' client bundles, see ``api/admins.py``.)

Node::

    {id, hostname, addr, role (observed: manager|worker),
     spec: {role (desired), availability: active|pause|drain, labels},
     status: {state: unknown|ready|down, message},
     manager: {raft_addr, api_addr} | None,
     description: {platform: {os, arch}, ...},
     cert: {serial, not_after, role, key_id}   (the last certificate issued),
     manager_certs: {serial (hex): not_after}  (manager certificates still valid)}

    ``status.addr`` is the address the node's agent connected from when it
    last registered (what ``node.ip`` constraints use).

Config::

    {id, name, data (base64 text), labels}
"""

from __future__ import annotations

import re
import time

DEFAULT_CERT_EXPIRY = 90 * 86400
MIN_CERT_EXPIRY = 60
DEFAULT_HEARTBEAT = 1.0
DEFAULT_TASK_HISTORY = 5
# The first release whose managers apply "patch" operations and tasks
# created with their service's spec by reference (see store.Store._compact).
PATCH_SINCE = (0, 2)
# The first release whose managers answer pre-votes (see raft/prevote.py).
PREVOTE_SINCE = (0, 3)
_RELEASE = re.compile(r"(\d+)\.(\d+)")


def cluster(store):
    return store.first("cluster")


def default_cluster_spec(cert_expiry=None, heartbeat=None):
    return {
        "ca": {"node_cert_expiry": int(cert_expiry or DEFAULT_CERT_EXPIRY)},
        "dispatcher": {"heartbeat_period": float(heartbeat or DEFAULT_HEARTBEAT)},
        "orchestration": {"task_history_limit": DEFAULT_TASK_HISTORY},
    }


def new_node(node_id, *, hostname, addr, role, raft_addr=None, api_addr=None, platform=None):
    return {
        "id": node_id,
        "hostname": hostname or node_id[:12],
        "addr": addr,
        # Observed role: a node joining as manager becomes one when it has
        # joined Raft (see RaftJoin); until then it is counted as a worker.
        "role": "worker",
        "spec": {"role": role, "availability": "active", "labels": {}},
        "status": {"state": "unknown", "message": "waiting for the node's agent"},
        "manager": None,
        "description": {"platform": platform or {}},
        "cert": None,
    }


def cert_info(ident, key_id: str | None = None) -> dict:
    info = {
        "serial": format(ident.serial, "x"),
        "role": ident.role,
        "not_before": ident.not_before.timestamp(),
        "not_after": ident.not_after.timestamp(),
    }
    if key_id is not None:
        info["key_id"] = key_id
    return info


def with_cert(node: dict, ident, key_id: str | None = None, now: float | None = None) -> dict:
    """``node`` after its certificate ``ident`` was issued: recorded as its
    last one and, for a manager certificate, among those a demotion revokes."""
    now = time.time() if now is None else now
    held = {s: t for s, t in (node.get("manager_certs") or {}).items() if t > now}
    info = cert_info(ident, key_id)
    if ident.role == "manager":
        held[info["serial"]] = info["not_after"]
    return dict(node, cert=info, manager_certs=held)


def manager_certs_to_revoke(node: dict, presented=None) -> list[tuple[str, float]]:
    """The node's manager certificates still valid (and the one presented, if
    it is a manager certificate), as revocation entries: what a demoted node
    gives up when it gets its worker certificate. ``presented`` has
    ``role``, ``serial`` and ``not_after`` (unix time)."""
    from ..ca import revocation

    entries = [(revocation.serial_key(s), t) for s, t in (node.get("manager_certs") or {}).items()]
    last = node.get("cert") or {}
    if last.get("role") == "manager" and last.get("serial"):
        entries.append((revocation.serial_key(last["serial"]), last["not_after"]))
    if (presented is not None and presented.role == "manager"
            and presented.serial is not None and presented.not_after is not None):
        entries.append((revocation.serial_key(presented.serial), presented.not_after))
    return entries


def admin_record(name: str, ident, cert_pem: str, key_id: str, now: float) -> dict:
    """The cluster's record of an operator's client bundle (``admins``)."""
    return {"name": name, "id": ident.node_id, "serial": format(ident.serial, "x"),
            "key_id": key_id, "not_after": ident.not_after.timestamp(), "created_at": now,
            "revoked_at": None, "cert": cert_pem}


def wants_manager_cert(node) -> bool:
    """A node gets a manager certificate while it is or is becoming a manager.
    A demoted manager keeps it until Raft no longer counts it."""
    return node.get("spec", {}).get("role") == "manager" or node.get("role") == "manager"


def is_manager(node) -> bool:
    return node is not None and node.get("role") == "manager"


def manager_api_addrs(store) -> list[str]:
    # Every heartbeat answer carries this list: read the few managers
    # through the role index, not all nodes.
    out = []
    for node in store.by_index("node", "role", "manager"):
        mgr = node.get("manager") or {}
        if mgr.get("api_addr"):
            out.append(mgr["api_addr"])
    return sorted(out)


def release(node) -> tuple[int, int] | None:
    """(major, minor) of the Flotilla a node's agent reported, if any."""
    found = _RELEASE.match(str((node.get("description") or {}).get("version") or ""))
    return (int(found.group(1)), int(found.group(2))) if found else None


def managers_run(store, since: tuple[int, int]) -> bool:
    """True when every manager's node reports release ``since`` or later
    (during a rolling upgrade from an older one, it is not)."""
    managers = store.by_index("node", "role", "manager")
    return bool(managers) and all((release(n) or (0, 0)) >= since for n in managers)


def managers_apply_patches(store) -> bool:
    """True when every manager runs a release that applies patches (and
    specs by reference), so the leader may propose them."""
    return managers_run(store, PATCH_SINCE)


def managers_answer_prevotes(store) -> bool:
    """True when every manager runs a release that answers pre-votes, so a
    member may ask for them before it starts an election."""
    return managers_run(store, PREVOTE_SINCE)


def node_by_raft_addr(store, raft_addr):
    # Managers first (the index); a node whose role is still changing may
    # hold a Raft address too, so fall back to all nodes.
    for nodes in (store.by_index("node", "role", "manager"), None):
        for node in nodes if nodes is not None else store.list("node"):
            if (node.get("manager") or {}).get("raft_addr") == raft_addr:
                return node
    return None


def find_node(store, ref: str):
    """By id, unique id prefix, or hostname."""
    node = store.get("node", ref)
    if node is not None:
        return node
    nodes = store.list("node")
    by_host = [n for n in nodes if n.get("hostname") == ref]
    if len(by_host) == 1:
        return by_host[0]
    by_prefix = [n for n in nodes if n["id"].startswith(ref)]
    if len(by_prefix) == 1 and len(ref) >= 4:
        return by_prefix[0]
    return None


def public_cluster(c) -> dict:
    """The cluster object without secrets."""
    return {
        "id": c["id"],
        "name": c.get("name", "default"),
        "spec": c["spec"],
        "root_ca": {"cert": c["root_ca"]["cert"], "digest": c["root_ca"]["digest"]},
        "revoked": sorted(c.get("revoked", {})),
        "version": c.get("version"),
        "created_at": c.get("created_at"),
        "updated_at": c.get("updated_at"),
    }
