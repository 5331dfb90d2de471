"""Queries over the store's objects that more than one component asks
(the shapes of the objects are ``model/objects.py``)."""

from __future__ import annotations

from ...model.objects import release
from .store import Store

# The first release whose managers apply "patch" operations and tasks
# created with their service's spec by reference (see store.Store._compact).
PATCH_SINCE = (0, 2)
# The first release whose managers answer pre-votes (see raft/prevote.py).
PREVOTE_SINCE = (0, 3)


def cluster(store: Store) -> dict | None:
    return store.first("cluster")


def manager_api_addrs(store: Store) -> list[str]:
    # Every heartbeat answer carries this list: read the few managers
    # through the role index, not all nodes.
    out = []
    for node in store.by_index("node", "role", "manager"):
        mgr = node.get("manager") or {}
        if mgr.get("api_addr"):
            out.append(mgr["api_addr"])
    return sorted(out)


def managers_run(store: Store, since: tuple[int, int]) -> bool:
    """True when every manager's node reports release ``since`` or later
    (during a rolling upgrade from an older one, it is not)."""
    managers = store.by_index("node", "role", "manager")
    return bool(managers) and all((release(n) or (0, 0)) >= since for n in managers)


def managers_apply_patches(store: Store) -> bool:
    """True when every manager runs a release that applies patches (and
    specs by reference), so the leader may propose them."""
    return managers_run(store, PATCH_SINCE)


def managers_answer_prevotes(store: Store) -> bool:
    """True when every manager runs a release that answers pre-votes, so a
    member may ask for them before it starts an election."""
    return managers_run(store, PREVOTE_SINCE)


def find_node(store: Store, ref: str) -> dict | None:
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
