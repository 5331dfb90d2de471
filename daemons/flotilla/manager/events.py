"""Cluster events for people: what changed, in the order it changed.

Every manager keeps the most recent user events (10,000) in memory, built
from the store's watch feed: a service created, a task moving from
``starting`` to ``running``, a node going ``down``. ``GET /v1/events`` and
``flotilla events`` read them.

An event's ``index`` is the store index of the transaction that made the
change. Every manager applies the same transactions in the same order, so
the index means the same thing on every manager and a client can resume
with ``since=<index>`` after a leader change. The events of one transaction
share its index and are never split between two answers.

Only changes a user can see become events: a task's status message being
rewritten does not. Attributes never carry object bodies (config data, the
cluster's keys and tokens).

The ring keeps the store's changes as they come and turns each into a user
event the first time a reader reaches it: at thousands of changes a second
most of them leave the ring unread, and converting them as they arrived
was a twentieth of a busy leader's time.
"""

from __future__ import annotations

import collections
import contextlib
import threading
import time

from ..common import admission
from ..common.component import Component
from .store.watch import Watcher

RING_SIZE = 10_000
TYPES = ("service", "task", "node", "cluster", "config", "network")
ACTIONS = ("create", "update", "remove", "state")

# Fields whose change alone is not worth an event.
# (``networks_created`` orders network creations, see api/networks.py.)
_QUIET_FIELDS = ("version", "updated_at", "networks_created")
_QUIET_STATUS_FIELDS = ("message", "timestamp")


def _without(obj: dict, status_quiet: bool) -> dict:
    out = {k: v for k, v in obj.items() if k not in _QUIET_FIELDS}
    if status_quiet and isinstance(out.get("status"), dict):
        out["status"] = {k: v for k, v in out["status"].items() if k not in _QUIET_STATUS_FIELDS}
    return out


def task_name(task: dict) -> str:
    """``<service>.<slot>`` (replicated) or ``<service>.<node id prefix>`` (global)."""
    slot = task.get("slot")
    middle = str(slot) if slot is not None else (task.get("node_id") or "")[:12]
    return f"{task.get('service_name') or 'task'}.{middle}"


def _task_event(e, obj, node_name):
    old, new = e.old, e.object
    st = obj.get("status") or {}
    attrs = {
        "service_id": obj.get("service_id"),
        "service": obj.get("service_name"),
        "slot": obj.get("slot"),
        "node_id": obj.get("node_id"),
        "node": node_name(obj.get("node_id")),
        "desired_state": obj.get("desired_state"),
        "state": st.get("state"),
        "error": st.get("err"),
        "message": st.get("message") or "",
    }
    if st.get("exit_code") is not None:
        attrs["exit_code"] = st["exit_code"]
    if e.action == "create":
        action = "create"
    elif e.action == "delete":
        action = "remove"
    else:
        if _without(old, True) == _without(new, True):
            return None
        old_st = (old.get("status") or {}).get("state")
        if old_st != st.get("state"):
            action = "state"
            attrs["previous_state"] = old_st
        else:
            action = "update"
        if old.get("desired_state") != new.get("desired_state"):
            attrs["previous_desired_state"] = old.get("desired_state")
        if old.get("node_id") != new.get("node_id"):
            attrs["previous_node_id"] = old.get("node_id")
    return action, task_name(obj), attrs


def _node_event(e, obj):
    old, new = e.old, e.object
    st = obj.get("status") or {}
    spec = obj.get("spec") or {}
    attrs = {
        "hostname": obj.get("hostname"),
        "role": obj.get("role"),
        "desired_role": spec.get("role"),
        "availability": spec.get("availability"),
        "state": st.get("state"),
        "message": st.get("message") or "",
        "addr": obj.get("addr"),
    }
    if e.action == "create":
        action = "create"
    elif e.action == "delete":
        action = "remove"
    else:
        if _without(old, False) == _without(new, False):
            return None
        old_st = (old.get("status") or {}).get("state")
        if old_st != st.get("state"):
            action = "state"
            attrs["previous_state"] = old_st
        else:
            action = "update"
            attrs["changed"] = sorted(k for k in set(old) | set(new)
                                      if k not in _QUIET_FIELDS and old.get(k) != new.get(k))
    return action, obj.get("hostname") or obj.get("id"), attrs


def _service_event(e, obj):
    old, new = e.old, e.object
    spec = obj.get("spec") or {}
    attrs = {
        "mode": spec.get("mode"),
        "image": ((spec.get("task") or {}).get("container") or {}).get("image"),
        "spec_version": obj.get("spec_version"),
    }
    if spec.get("mode") == "replicated":
        attrs["replicas"] = spec.get("replicas")
    if e.action == "create":
        return "create", obj.get("name"), attrs
    if e.action == "delete":
        return "remove", obj.get("name"), attrs
    if _without(old, False) == _without(new, False):
        return None
    old_spec = old.get("spec") or {}
    if old_spec.get("replicas") != spec.get("replicas"):
        attrs["previous_replicas"] = old_spec.get("replicas")
    old_image = ((old_spec.get("task") or {}).get("container") or {}).get("image")
    if old_image != attrs["image"]:
        attrs["previous_image"] = old_image
    status = new.get("update_status") or {}
    if status and status != (old.get("update_status") or {}):
        # The rolling updater's progress: updating, paused (with the reason),
        # completed, rollback_started, ...
        attrs["update_state"] = status.get("state")
        attrs["update_message"] = status.get("message")
    return "update", obj.get("name"), attrs


def _plain_event(e, obj, name):
    """Configs, networks and the cluster object: which fields changed, never
    their values."""
    action = {"create": "create", "delete": "remove"}.get(e.action, "update")
    attrs = {}
    if action == "update":
        old, new = e.old, e.object
        changed = sorted(k for k in set(old) | set(new)
                         if k not in _QUIET_FIELDS and old.get(k) != new.get(k))
        if not changed:
            return None
        attrs["changed"] = changed
    return action, name, attrs


def _admin_changes(old: dict, new: dict) -> dict:
    """The names of the admin bundles issued and revoked by a cluster change."""
    before, after = old.get("admins") or {}, new.get("admins") or {}
    created = sorted(r["name"] for s, r in after.items() if s not in before)
    revoked = sorted(r["name"] for s, r in after.items()
                     if r.get("revoked_at") is not None
                     and (before.get(s) or {}).get("revoked_at") is None)
    out = {}
    if created:
        out["admins_created"] = created
    if revoked:
        out["admins_revoked"] = revoked
    return out


def convert(e, when: float, node_name=lambda _id: None) -> dict | None:
    """The user event for one store event, or None if it is not worth one."""
    if e.kind not in TYPES or e.action not in ("create", "update", "delete"):
        return None
    obj = e.object if e.object is not None else e.old
    if obj is None:
        return None
    if e.kind == "task":
        out = _task_event(e, obj, node_name)
    elif e.kind == "node":
        out = _node_event(e, obj)
    elif e.kind == "service":
        out = _service_event(e, obj)
    elif e.kind in ("config", "network"):
        out = _plain_event(e, obj, obj.get("name"))
    else:
        out = _plain_event(e, obj, obj.get("name") or "default")
        if out is not None and out[0] == "update" and "admins" in out[2].get("changed", ()):
            out[2].update(_admin_changes(e.old, e.object))
    if out is None:
        return None
    action, name, attrs = out
    return {"index": e.index, "time": when, "type": e.kind, "action": action, "id": e.id,
            "name": name, "attributes": attrs}


class Filter:
    """Which events a reader wants: every given criterion must match; a
    criterion with several values matches any of them."""

    def __init__(self, types=None, actions=None, service=None, node=None):
        self.types = set(types) if types else None
        self.actions = set(actions) if actions else None
        self.service = service
        self.node = node

    def __call__(self, ev: dict) -> bool:
        if self.types is not None and ev["type"] not in self.types:
            return False
        if self.actions is not None and ev["action"] not in self.actions:
            return False
        attrs = ev["attributes"]
        if self.service is not None:
            if ev["type"] == "service":
                if self.service not in (ev["id"], ev["name"]):
                    return False
            elif ev["type"] == "task":
                if self.service not in (attrs.get("service_id"), attrs.get("service")):
                    return False
            else:
                return False
        if self.node is not None:
            if ev["type"] == "node":
                if self.node not in (ev["id"], ev["name"]):
                    return False
            elif ev["type"] == "task":
                if self.node not in (attrs.get("node_id"), attrs.get("node")):
                    return False
            else:
                return False
        return True


_UNREAD = object()


class _Entry:
    __slots__ = ("index", "when", "change", "event")

    def __init__(self, index, when, change):
        self.index = index
        self.when = when
        self.change = change        # the store event, until converted
        self.event = _UNREAD        # the user event (None: not worth one)


class EventLog(Component):
    """The ring of recent user events on this manager.

    ``floor`` is the store index up to which events may be missing (the
    ring's start, a snapshot installed, or a watch feed that fell behind);
    a reader asking from before it is told its answer is truncated.
    """

    name = "event-log"

    def __init__(self, store, size: int = RING_SIZE, clock=time.time):
        super().__init__()
        self._store = store
        self._size = size
        self._clock = clock
        self._cond = threading.Condition()
        self._ring: collections.deque[_Entry] = collections.deque()
        self._floor = 0
        self._index = 0
        self._watcher: Watcher | None = None

    # -- lifecycle ---------------------------------------------------------------------
    def start(self) -> None:
        # Subscribe before the thread runs, so that nothing applied between
        # start() and the thread's first read is missed.
        with self._cond:
            if self._watcher is None:
                self._watcher = self._store.watch()
                self._floor = self._index = max(self._index, self._store.index)
        super().start()

    def run(self) -> None:
        watcher = self._watcher
        assert watcher is not None, "start() subscribes before run()"
        while not self.stopping.is_set():
            events = watcher.next(timeout=0.5)
            if events:
                self.record(events)

    def wake(self) -> None:
        self._store.hub.wake_all()
        with self._cond:
            self._cond.notify_all()

    # -- recording -----------------------------------------------------------------------
    def _node_name(self, node_id):
        if not node_id:
            return None
        node = self._store.get("node", node_id)
        return node.get("hostname") if node else None

    def record(self, events) -> None:
        # A deletion carries no timestamp of its own: it takes the time of
        # its transaction's other writes, or the time it is recorded.
        stamps: dict[int, float | None] = {}
        for e in events:
            if e.object is not None and e.index is not None:
                stamps.setdefault(e.index, e.object.get("updated_at"))
        now = self._clock()
        with self._cond:
            for e in events:
                if e.action == "reset":
                    self._ring.clear()
                    self._floor = self._index = max(self._index, e.index or self._store.index)
                    continue
                if e.index is None or e.index <= self._floor:
                    continue
                self._index = max(self._index, e.index)
                if e.kind not in TYPES or e.action not in ("create", "update", "delete"):
                    continue
                when = stamps.get(e.index) or now
                if len(self._ring) >= self._size:
                    self._floor = max(self._floor, self._ring.popleft().index)
                self._ring.append(_Entry(e.index, float(when), e))
            self._cond.notify_all()

    # -- reading ---------------------------------------------------------------------------
    @property
    def index(self) -> int:
        return self._index

    def _scan(self, after: int, match) -> list[dict]:
        out = []
        for entry in reversed(self._ring):
            if entry.index <= after:
                break
            ev = entry.event
            if ev is _UNREAD:
                ev = entry.event = convert(entry.change, entry.when, self._node_name)
                entry.change = None
            if ev is not None and match(ev):
                out.append(ev)
        out.reverse()
        return out

    def query(self, since: int | None = None, wait: float = 0.0, match=None,
              limit: int = 1000) -> dict:
        """Events after ``since`` (default: from now on) that ``match``,
        waiting up to ``wait`` seconds for the first one.

        Returns ``{"events", "index", "truncated"}``: pass ``index`` as the
        next ``since``. A transaction's events are never split: an answer
        holds more than ``limit`` events only when one transaction alone
        has more.
        """
        match = match or (lambda _ev: True)
        deadline = time.monotonic() + max(0.0, wait)
        # A long poll gives its request slot back for the whole query (not
        # just the wait: taking a slot back while holding the condition's
        # lock could deadlock with a request waiting for that lock).
        waiting = admission.blocking() if wait > 0 else contextlib.nullcontext()
        with waiting, self._cond:
            if since is None:
                since = self._index
            truncated = since < self._floor
            pos = since
            found: list[dict] = []
            while True:
                if pos < self._floor:
                    pos = self._floor
                found += self._scan(pos, match)
                pos = max(pos, self._index)
                remaining = deadline - time.monotonic()
                if found or remaining <= 0 or self.stopping.is_set():
                    break
                self._cond.wait(remaining)
        if len(found) > limit:
            cut = found[:limit]
            if found[limit]["index"] == cut[-1]["index"]:
                last = cut[-1]["index"]
                kept = [ev for ev in cut if ev["index"] != last]
                cut = kept or [ev for ev in found if ev["index"] == last]
            found, pos = cut, cut[-1]["index"]
        return {"events": found, "index": pos, "truncated": truncated}
