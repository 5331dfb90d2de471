"""The nodes' WireGuard keys (encrypted networks): when each is rotated.

Each node makes its own key pair and publishes only the public key
(``agent/network/wireguard.py``); the managers decide when a node must make
a new one, record the new public key and hand it to the other nodes of its
encrypted networks, as SwarmKit's key manager rotates the keys of its
overlay networks (every 12 hours by default).

Cluster setting ``spec.network_keys``::

    {rotation_period (seconds, default 12 h, at least 1 min),
     force_rotate (a counter: ``cluster update --rotate-network-keys`` adds one,
                   every key made before is due at once, as SwarmKit's CA
                   ForceRotate)}

What the managers keep about each node's key (``node.network_key``)::

    {generation (1 for the node's first key, one more at each rotation),
     rotated_at (when the managers recorded the key, leader's clock),
     force_rotate (the cluster's counter the key answers),
     due (the generation asked for and not yet reported, or None),
     due_force, requested_at}

A rotation, in four steps:

1. :class:`NetworkKeyManager` (leader only) finds the node's key due (older
   than the period, or made before the last forced rotation) and writes
   ``due = generation + 1``. At most ``MAX_ROTATING`` nodes are asked at
   once (a request unanswered for ``STALE_AFTER`` no longer counts), so a
   forced rotation of a large cluster goes by batches.
2. The dispatcher's answers to the node's heartbeats carry
   ``network_key: {generation, public_key, due}``; the agent makes a new key
   pair (written aside, 0600), keeps using the old one, and sends the new
   public key with its next heartbeat.
3. The dispatcher records it (:func:`reported`): the node's published key
   and generation change in one write. That change is pushed at once, in
   the pictures of the node's encrypted networks, to every node of them,
   the node itself included.
4. Each peer replaces the node's key in its tunnel, and the node switches
   its tunnel to the new private key when the pictures list its new key
   (or, without encrypted networks, when the answers say it was recorded),
   then removes the old one: both ends change from the same push.

A node that registers with another key than the one recorded (its data
directory's key replaced, or a new key adopted at a restart) gets a new
generation the same way (:func:`registered`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from typing import Any

from ..common.component import Component
from ..model import objects
from .store import queries
from .store.store import NotLeader, StoreError, TxnFailed

log = logging.getLogger(__name__)

CHECK_EVERY = 1.0
MAX_ROTATING = 16
STALE_AFTER = 60.0


def settings(cluster: Mapping[str, Any] | None) -> dict[str, Any]:
    """The cluster's ``network_keys`` settings (the defaults for a cluster
    made before they existed)."""
    return objects.network_keys_spec(cluster)


def published(node: Mapping[str, Any]) -> str | None:
    """The public key the node published (None: it carries no encrypted
    network between hosts)."""
    wg = (node.get("description") or {}).get("wireguard")
    return wg.get("public_key") if isinstance(wg, Mapping) else None


def due(node: Mapping[str, Any], keys: Mapping[str, Any], now: float) -> bool:
    """The node's key should be replaced now and has not been asked for:
    older than the rotation period, or made before the last forced
    rotation."""
    nk = node.get("network_key")
    if not isinstance(nk, Mapping) or published(node) is None or nk.get("due"):
        return False
    if int(nk.get("force_rotate") or 0) < int(keys["force_rotate"]):
        return True
    return now - float(nk.get("rotated_at") or 0) >= float(keys["rotation_period"])


def rotating(node: Mapping[str, Any], now: float) -> bool:
    """A rotation was asked of the node less than ``STALE_AFTER`` ago and not
    answered yet."""
    nk = node.get("network_key")
    return isinstance(nk, Mapping) and bool(nk.get("due")) and \
        now - float(nk.get("requested_at") or 0) < STALE_AFTER


def to_ask(nodes: Iterable[Mapping[str, Any]], keys: Mapping[str, Any], now: float,
           limit: int = MAX_ROTATING) -> list[str]:
    """The ids of the nodes to ask for a new key now: ready nodes whose key
    is due, the oldest keys first, while fewer than ``limit`` rotations are
    under way."""
    nodes = list(nodes)
    busy = sum(1 for n in nodes if rotating(n, now))
    ready = [n for n in nodes if (n.get("status") or {}).get("state") == "ready"
             and due(n, keys, now)]
    ready.sort(key=lambda n: (float((n.get("network_key") or {}).get("rotated_at") or 0),
                              n["id"]))
    return [n["id"] for n in ready[:max(0, limit - busy)]]


def asked(node: dict, keys: Mapping[str, Any], now: float) -> dict | None:
    """``node`` with a rotation asked of it (None: nothing to change)."""
    if not due(node, keys, now):
        return None
    nk = dict(node["network_key"])
    nk.update(due=int(nk.get("generation") or 0) + 1, due_force=int(keys["force_rotate"]),
              requested_at=now)
    return dict(node, network_key=nk)


def registered(old: Mapping[str, Any], new: dict, keys: Mapping[str, Any], now: float) -> dict:
    """``new`` (the node as its registration rewrites it, ``old`` before)
    with its key's record: a key not seen before is a new generation."""
    key = published(new)
    if key is None:
        return new
    nk = old.get("network_key") if isinstance(old.get("network_key"), Mapping) else None
    if nk is not None and published(old) == key:
        return new
    force = int(keys["force_rotate"])
    if nk is not None and nk.get("due"):
        force = int(nk.get("due_force") or 0)      # made for the rotation asked
    return dict(new, network_key=_record(int((nk or {}).get("generation") or 0) + 1, now,
                                         force))


def reported(node: dict, public_key: str, generation: int, now: float) -> dict | None:
    """``node`` once its agent reported ``public_key`` as the key of
    ``generation``: recorded if that is the generation asked for (None:
    nothing to change, the report is stale or already recorded)."""
    nk = node.get("network_key")
    wg = (node.get("description") or {}).get("wireguard")
    if not isinstance(nk, Mapping) or not isinstance(wg, Mapping) or nk.get("due") != generation \
            or wg.get("public_key") == public_key:
        return None
    description = dict(node["description"], wireguard=dict(wg, public_key=public_key))
    return dict(node, description=description,
                network_key=_record(generation, now, int(nk.get("due_force") or 0)))


def is_recorded(node: Mapping[str, Any], report: Mapping[str, Any] | None) -> bool:
    """The key an agent reports is the one recorded (nothing to write)."""
    return report is None or published(node) == report.get("public_key")


def agent_view(node: Mapping[str, Any]) -> dict[str, Any] | None:
    """What the node's agent is told about its key in every answer."""
    nk = node.get("network_key")
    if not isinstance(nk, Mapping):
        return None
    return {"generation": nk.get("generation"), "public_key": published(node),
            "due": nk.get("due")}


def api_view(node: Mapping[str, Any]) -> dict[str, Any] | None:
    """What ``node inspect`` shows of the key's record (the public key is
    shown with the node's ``wireguard``)."""
    nk = node.get("network_key")
    if not isinstance(nk, Mapping):
        return None
    return {"generation": nk.get("generation"), "rotated_at": nk.get("rotated_at"),
            "due": nk.get("due"), "requested_at": nk.get("requested_at")}


def _record(generation: int, now: float, force: int) -> dict:
    return {"generation": generation, "rotated_at": now, "force_rotate": force,
            "due": None, "due_force": None, "requested_at": None}


class NetworkKeyManager(Component):
    """Leader only: asks nodes for new keys when theirs are due (see the
    module's description). Checks every second, and at once when the
    cluster's settings change."""

    name = "network-key-manager"

    def __init__(self, store, limit: int = MAX_ROTATING) -> None:
        super().__init__()
        self._store = store
        self._limit = limit
        self.asked = 0

    def run(self) -> None:
        watcher = self._store.watch()
        next_pass = 0.0
        due_now = True
        while not self.stopping.is_set():
            if due_now or time.monotonic() >= next_pass:
                try:
                    self.check(time.time())
                except NotLeader:
                    return
                except StoreError as exc:
                    log.info("network keys: postponed: %s", exc)
                next_pass = time.monotonic() + CHECK_EVERY
            events = watcher.next(timeout=max(0.0, next_pass - time.monotonic()))
            due_now = any(e.kind == "cluster" or e.action == "reset" for e in events)

    def check(self, now: float) -> list[str]:
        """One pass: ask the nodes whose keys are due; returns their ids."""
        keys = settings(queries.cluster(self._store))
        done = []
        for node_id in to_ask(self._store.list("node"), keys, now, self._limit):
            try:
                self._store.update("node", node_id, lambda n: asked(n, keys, now))
            except TxnFailed as exc:
                if exc.code != "not_found":
                    raise
                continue
            log.info("network keys: asked node %s for a new key", node_id[:12])
            self.asked += 1
            done.append(node_id)
        return done
