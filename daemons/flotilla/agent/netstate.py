"""The networks this node was told about, as the assignment stream brings
them: each network's whole picture (``manager/dispatcher/netviews.py``),
kept in ``<data dir>/agent/networks.json`` (0600, atomic renames) so a
restarted agent programs its engine again before its session is back, and
so an operator can read what the node was told."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from ..common import fsutil


class NetworkState:
    def __init__(self, path: str | None,
                 on_change: Callable[[dict[str, dict]], None] | None = None) -> None:
        self._path = path
        self._lock = threading.Lock()
        # called (outside the lock) with the new networks after each change
        self.on_change = on_change
        self.networks: dict[str, dict] = {}
        if path is not None:
            data = fsutil.read_json(path, None)
            if isinstance(data, dict) and isinstance(data.get("networks"), dict):
                self.networks = data["networks"]

    def apply(self, msg: dict[str, Any], complete: bool) -> None:
        """Take the networks of an assignment message: a complete set
        replaces what is held; an increment updates and removes."""
        views = msg.get("networks")
        removed = msg.get("networks_removed")
        if not complete and not views and not removed:
            return
        with self._lock:
            held = {} if complete else dict(self.networks)
            for v in views or ():
                if isinstance(v, dict) and isinstance(v.get("id"), str):
                    held[v["id"]] = v
            for nid in removed or ():
                held.pop(nid, None)
            if held == self.networks:
                return
            self.networks = held
            if self._path is not None:
                fsutil.atomic_write_json(self._path, {"networks": held})
            snapshot = dict(held)
        if self.on_change is not None:
            self.on_change(snapshot)
