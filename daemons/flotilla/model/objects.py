"""Shapes of the objects kept in the store, and how new ones are made.

Queries over the store are ``manager/store/queries.py``; the task is
``model/task.py`` and the service spec ``model/specs.py``.

Cluster (one per cluster, id = cluster id)::

    {id, name, spec: {ca: {node_cert_expiry}, dispatcher: {heartbeat_period},
     orchestration: {task_history_limit},
     network: {default_addr_pool: [CIDR...], subnet_size},
     network_keys: {rotation_period, force_rotate}},
     root_ca: {cert, key, digest}, tokens: {worker, manager},
     revoked: {node_id | "serial:<hex>": not_after (unix time)},
     admins: {serial (hex): {name, id, serial, not_after, created_at, revoked_at}}}

    (``revoked`` is the revocation list, see ``ca/revocation.py``; ``admins``
    records the operators' client bundles, see ``manager/api/admins.py``;
    ``network`` is the pool networks' subnets are cut from, set at ``--init``
    only, see ``model/network.py``: a cluster made before it existed has
    none and uses the defaults; ``network_keys``: when the nodes' WireGuard
    keys are rotated, see ``manager/networkkeys.py``, the defaults where
    absent.)

Node::

    {id, hostname, addr, role (observed: manager|worker),
     spec: {role (desired), availability: active|pause|drain, labels},
     status: {state: unknown|ready|down, message},
     manager: {raft_addr, api_addr} | None,
     description: {platform: {os, arch}, ...},
     cert: {serial, not_after, role, key_id}   (the last certificate issued),
     manager_certs: {serial (hex): not_after}  (manager certificates still valid),
     network_key: {generation, rotated_at, force_rotate, due, due_force, requested_at}
                  (its WireGuard key's record, see ``manager/networkkeys.py``)}

    ``status.addr`` is the address the node's agent connected from when it
    last registered (what ``node.ip`` constraints use).

Config::

    {id, name, data (base64 text), labels}
"""

from __future__ import annotations

import re
import time
from datetime import datetime
from typing import Any, Mapping, Protocol

from .network import AddressPool

DEFAULT_CERT_EXPIRY = 90 * 86400
MIN_CERT_EXPIRY = 60
DEFAULT_HEARTBEAT = 1.0
DEFAULT_TASK_HISTORY = 5
# The nodes' WireGuard keys (encrypted networks) are replaced this often, as
# SwarmKit rotates its overlay networks' keys.
DEFAULT_NETWORK_KEY_ROTATION = 12 * 3600
MIN_NETWORK_KEY_ROTATION = 60
MAX_NETWORK_KEY_ROTATION = 365 * 86400
_RELEASE = re.compile(r"(\d+)\.(\d+)")


class Identity(Protocol):
    """What a node or admin certificate says (``ca.certs.CertIdentity``)."""

    @property
    def node_id(self) -> str: ...
    @property
    def role(self) -> str: ...
    @property
    def serial(self) -> int: ...
    @property
    def not_before(self) -> datetime: ...
    @property
    def not_after(self) -> datetime: ...


def default_cluster_spec(cert_expiry: float | None = None, heartbeat: float | None = None,
                         network: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A new cluster's spec; ``network``: the address pool's settings
    (``AddressPool``'s fields, checked here; the defaults where left out)."""
    return {
        "ca": {"node_cert_expiry": int(cert_expiry or DEFAULT_CERT_EXPIRY)},
        "dispatcher": {"heartbeat_period": float(heartbeat or DEFAULT_HEARTBEAT)},
        "orchestration": {"task_history_limit": DEFAULT_TASK_HISTORY},
        "network": AddressPool.model_validate(dict(network or {})).model_dump(mode="json"),
        "network_keys": {"rotation_period": float(DEFAULT_NETWORK_KEY_ROTATION),
                         "force_rotate": 0},
    }


def network_keys_spec(cluster: Mapping[str, Any] | None) -> dict[str, Any]:
    """The cluster's ``network_keys`` settings, the defaults filled in (a
    cluster made before them has none)."""
    found = ((cluster or {}).get("spec") or {}).get("network_keys") or {}
    return {"rotation_period": float(found.get("rotation_period",
                                               DEFAULT_NETWORK_KEY_ROTATION)),
            "force_rotate": int(found.get("force_rotate", 0))}


def new_node(node_id: str, *, hostname: str | None, addr: str | None, role: str,
             raft_addr: str | None = None, api_addr: str | None = None,
             platform: dict | None = None) -> dict[str, Any]:
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


def cert_info(ident: Identity, key_id: str | None = None) -> dict[str, Any]:
    info: dict[str, Any] = {
        "serial": format(ident.serial, "x"),
        "role": ident.role,
        "not_before": ident.not_before.timestamp(),
        "not_after": ident.not_after.timestamp(),
    }
    if key_id is not None:
        info["key_id"] = key_id
    return info


def with_cert(node: dict, ident: Identity, key_id: str | None = None,
              now: float | None = None) -> dict:
    """``node`` after its certificate ``ident`` was issued: recorded as its
    last one and, for a manager certificate, among those a demotion revokes."""
    now = time.time() if now is None else now
    held = {s: t for s, t in (node.get("manager_certs") or {}).items() if t > now}
    info = cert_info(ident, key_id)
    if ident.role == "manager":
        held[info["serial"]] = info["not_after"]
    return dict(node, cert=info, manager_certs=held)


def admin_record(name: str, ident: Identity, cert_pem: str, key_id: str, now: float) -> dict:
    """The cluster's record of an operator's client bundle (``admins``)."""
    return {"name": name, "id": ident.node_id, "serial": format(ident.serial, "x"),
            "key_id": key_id, "not_after": ident.not_after.timestamp(), "created_at": now,
            "revoked_at": None, "cert": cert_pem}


def wants_manager_cert(node: dict) -> bool:
    """A node gets a manager certificate while it is or is becoming a manager.
    A demoted manager keeps it until Raft no longer counts it."""
    return node.get("spec", {}).get("role") == "manager" or node.get("role") == "manager"


def is_manager(node: dict | None) -> bool:
    return node is not None and node.get("role") == "manager"


def release(node: dict) -> tuple[int, int] | None:
    """(major, minor) of the Flotilla a node's agent reported, if any."""
    found = _RELEASE.match(str((node.get("description") or {}).get("version") or ""))
    return (int(found.group(1)), int(found.group(2))) if found else None


def public_cluster(c: dict) -> dict:
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
