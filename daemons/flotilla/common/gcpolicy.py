"""Keep CPython's cyclic garbage collector from stopping a manager for long.

A manager holds the whole cluster in memory as plain dicts and lists: with
30,000 tasks that is over a million containers the collector tracks. A full
collection walks all of them with the GIL held, 0.5-0.9 s on a 2-core
machine, and the allocations of decoding one large Raft entry are enough to
set one off. For that long the Raft thread cannot send heartbeats: longer
than an election timeout, so a leader was deposed by its own collector.

The policy installed here: after a full collection that took longer than
``FREEZE_AFTER``, everything that survived it is moved to the permanent
generation (``gc.freeze()``), which later collections do not walk. What
survives a full collection is reachable, so nothing that is garbage at that
moment is frozen; later full collections only walk what was created since
the last freeze, and their pauses stay in the tens of milliseconds however
large the store grows.

Frozen objects are still freed by reference counting when they are dropped
(store objects are replaced, never mutated, and form no cycles). What is
never reclaimed is a reference cycle among objects that were alive at a
freeze and dropped later; freezes happen only after a slow full collection,
i.e. when the heap has grown by tens of thousands of long-lived objects, so
that stays small. The numbers are exported as metrics.
"""

from __future__ import annotations

import gc
import threading
import time
from typing import TypedDict

FREEZE_AFTER = 0.010

_lock = threading.Lock()
_installed = False
_started = 0.0


class _Stats(TypedDict):
    collections: list[int]
    seconds: list[float]
    max_pause: float
    freezes: int


_stats: _Stats = {"collections": [0, 0, 0], "seconds": [0.0, 0.0, 0.0], "max_pause": 0.0,
                  "freezes": 0}


def _on_collection(phase: str, info: dict) -> None:
    global _started
    if phase == "start":
        _started = time.perf_counter()
        return
    took = time.perf_counter() - _started
    generation = info.get("generation", 0)
    _stats["collections"][generation] += 1
    _stats["seconds"][generation] += took
    if took > _stats["max_pause"]:
        _stats["max_pause"] = took
    if generation == 2 and took > FREEZE_AFTER:
        gc.freeze()
        _stats["freezes"] += 1


def install() -> None:
    """Install the policy in this process (once; later calls do nothing)."""
    global _installed
    with _lock:
        if _installed:
            return
        _installed = True
        gc.callbacks.append(_on_collection)


def stats() -> dict:
    """Collections and seconds per generation, the longest pause, freezes
    and the number of objects in the permanent generation."""
    return {"collections": list(_stats["collections"]), "seconds": list(_stats["seconds"]),
            "max_pause": _stats["max_pause"], "freezes": _stats["freezes"],
            "frozen": gc.get_freeze_count(), "installed": _installed}
