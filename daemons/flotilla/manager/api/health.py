"""Health of this manager, as seen locally (answered by any manager)."""

from __future__ import annotations

from flask import Blueprint

from ... import __version__
from ...common import tls
from ...model import responses
from .common import json_response, manager, policy
from .openapi import doc

bp = Blueprint("health", __name__, url_prefix="/v1")


@bp.get("/health")
@policy("any", local=True)
@doc("Health of this manager as it sees itself.", response=responses.Health, tags=("meta",))
def health():
    m = manager()
    raft = m.raft.status() if m.raft is not None else {"state": "starting"}
    leader_addr = m.leader_api_addr()
    refused = m.counters.snapshot()
    for reason, n in tls.handshake_failures().items():
        refused[f"tls.{reason}"] = n
    return json_response({
        "status": "ok",
        "version": __version__,
        "node_id": m.cfg.node_id,
        "cluster_id": m.cfg.cluster_id,
        "role": "manager",
        "addr": m.cfg.advertise,
        "is_leader": m.is_leader,
        "leader_ready": m.leader_ready.is_set(),
        "leader": {"node_id": m.leader_node_id(), "addr": leader_addr} if leader_addr else None,
        "raft": raft,
        "store_index": m.store.index,
        "refused": refused,
    })
