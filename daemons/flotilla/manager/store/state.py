"""The replicated state machine: typed objects with versions.

Every Raft command is a batch of transactions. A transaction is a list of
operations (create / update / delete / upsert / patch) applied
all-or-nothing with compare-and-set on object versions; the whole cluster applies the same
batches in the same order, so apply must be deterministic: ids and
timestamps are chosen by the proposer, never here.

Objects are plain JSON-like dicts. A stored dict is never mutated: a write
replaces it with a new dict. That makes reads cheap (no copies) and a
snapshot a shallow copy of the per-kind maps.

Readers never take the lock. Only apply (on the Raft thread) and loading a
snapshot change the maps, and they serialise on ``lock`` with each other
only: a reader copies what it needs with single C-level operations
(``list(d.values())``, ``dict(d)``, ``list(ids)``), which CPython performs
without letting another thread run, so a request thread can never make
the Raft thread wait, however much it reads. An update that keeps an
object's indexed value leaves its index entry alone, so a reader never
misses it. A reader may see a transaction half applied (as a reader of
several ``get`` calls always could); writers are protected by
compare-and-set on versions.

Per-service task counts (desired running, observed running) are kept up to
date on apply, so listing services costs O(services), not O(tasks).

Each successful transaction advances ``index`` by one and stamps the objects
it wrote with ``version = index``. Results of transactions that carried a
request id are remembered (bounded), so a client that retries after an
unknown outcome gets the original answer instead of a second write (only
successes are remembered: a refused transaction changed nothing). A request
id is bound to the request it came with: the proposer sends a digest of the
request (``rd``) and it is remembered with the result, so the same id with
another request is refused (``key_reused``) instead of answered with the
first request's result. Results remembered without a digest (by an older
release, or in an older snapshot) are replayed for any request.
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import IO, TYPE_CHECKING, Any, TypeVar

import msgpack

from ..raft import codec

if TYPE_CHECKING:
    from .watch import EventHub

log = logging.getLogger(__name__)

_T = TypeVar("_T")
_List = list        # ``list`` is also a method of StateMachine
# (index, objects by kind and id, remembered results by request id, applied bytes)
Captured = tuple[int, dict[str, dict[str, dict]], Iterable[tuple[str, dict]], int]
# Reads an object of ``kind`` by id as the transaction being staged sees it.
Current = Callable[[str, Any], "dict | None"]

KINDS = ("cluster", "node", "config", "network", "service", "task")
# Fields that must be unique among live objects of a kind.
UNIQUE = {"config": ("name",), "network": ("name",), "service": ("name",)}
# Fields with a secondary index (value -> ids), for lookups such as "the
# tasks of this service" or "the tasks on this node".
INDEXED = {"task": ("service_id", "node_id"), "node": ("role",)}
DEDUPE_LIMIT = 100_000
# Set by apply on every stored object; a patch cannot set them.
STAMPED = ("id", "version", "created_at", "updated_at")


def key_reused(rid: str) -> dict:
    """The refusal of a request id that came with another request."""
    return {"code": "key_reused", "field": "Idempotency-Key",
            "message": f"Idempotency-Key {rid!r} was already used for a different request "
                       "(another method, path or body); nothing was changed: send a new "
                       "request with a new key"}


class Event:
    __slots__ = ("seq", "index", "action", "kind", "id", "object", "old")

    def __init__(self, index: int | None, action: str, kind: str | None, oid: str | None,
                 obj: dict | None, old: dict | None) -> None:
        self.seq = 0
        self.index = index
        self.action = action  # create | update | delete | reset
        self.kind = kind
        self.id = oid
        self.object = obj
        self.old = old

    def __repr__(self) -> str:
        return f"Event({self.seq}, {self.action} {self.kind}/{self.id} @{self.index})"


class StateMachine:
    def __init__(self, hub: EventHub | None = None) -> None:
        self.lock = threading.RLock()
        self.objects: dict[str, dict[str, dict]] = {k: {} for k in KINDS}
        self.index = 0
        self._unique: dict[tuple[str, str], dict] = {
            (k, f): {} for k, fields in UNIQUE.items() for f in fields}
        self._indexes: dict[tuple[str, str], dict] = {
            (k, f): {} for k, fields in INDEXED.items() for f in fields}
        self._dedupe: collections.OrderedDict = collections.OrderedDict()
        self._counts: dict[Any, tuple[int, int]] = {}     # by the tasks' service_id
        # Bytes of every entry applied since the cluster began: the same on
        # every member at the same entry, kept in snapshots (the Raft member
        # places its snapshots by it).
        self.applied_bytes = 0
        self.hub = hub

    # -- reads (lock-free) --------------------------------------------------------
    def get(self, kind: str, oid: str | None) -> dict | None:
        """The object, or None (always for a None id)."""
        return self.objects[kind].get(oid) if oid is not None else None

    def _copy(self, items: Callable[[], Iterable[_T]]) -> _List[_T]:
        """``list(items())`` as one C-level copy, atomic for other threads; if
        the container changed during it (a finaliser ran), again, and after
        a few tries under the writers' lock."""
        for _ in range(10):
            try:
                return list(items())
            except RuntimeError:
                continue
        with self.lock:
            return list(items())

    def list(self, kind: str) -> _List[dict]:
        return self._copy(lambda: self.objects[kind].values())

    def count(self, kind: str) -> int:
        return len(self.objects[kind])

    def first(self, kind: str) -> dict | None:
        """One object of ``kind`` (for kinds that hold a single object, such
        as the cluster), read without waiting for the lock: an apply of a
        large Raft entry holds it for a while, and every API request reads
        the cluster object. Replacing an object is one dict assignment."""
        try:
            return next(iter(self.objects[kind].values()), None)
        except RuntimeError:        # the kind gained or lost an object meanwhile
            items = self.list(kind)
            return items[0] if items else None

    def task_counts(self, service_id: str) -> tuple[int, int]:
        """(tasks desired running, of those observed running) of a service."""
        return self._counts.get(service_id, (0, 0))

    def by_unique(self, kind: str, field: str, value: Any) -> dict | None:
        oid = self._unique.get((kind, field), {}).get(value)
        return self.objects[kind].get(oid) if oid is not None else None

    def by_index(self, kind: str, field: str, value: Any) -> _List[dict]:
        held = self._indexes[(kind, field)].get(value)
        if not held:
            return []
        ids = self._copy(lambda: held)
        objs = self.objects[kind]
        out = []
        for i in ids:
            obj = objs.get(i)
            if obj is not None:
                out.append(obj)
        return out

    # -- apply --------------------------------------------------------------------
    def apply(self, payload: bytes) -> _List[dict] | dict:
        """Apply one Raft entry; never raises for what the entry holds.

        Every member applies the same entries in the same order, so
        whatever this decides must depend only on the entry's bytes and the
        state. An entry that does not decode to a batch of transactions is
        refused whole (``{"ok": False, "error": ...}`` instead of a list);
        a transaction that cannot be applied (a malformed operation, a
        value of the wrong type) is refused alone and changes nothing, like
        one that fails its compare-and-set. An exception would stop this
        member's Raft thread at this entry for good, on every member."""
        self.applied_bytes += len(payload)
        try:
            batch = codec.unpack_lists(payload)
        except codec.CodecError as exc:
            return self._refused_entry(str(exc))
        txns = batch.get("txns", []) if isinstance(batch, dict) else None
        if not isinstance(txns, list):
            return self._refused_entry("not a batch of transactions")
        events: _List[Event] = []
        results = []
        with self.lock:
            for txn in txns:
                # Total: an error while staging (nothing changed yet), or
                # while changing the maps (undone, see _apply_txn), refuses
                # the transaction the same way on every member.
                try:
                    result = self._apply_txn(txn, events)
                except MemoryError:
                    raise           # not a property of the entry: see node.py
                except _Undone as exc:
                    cause = exc.__cause__
                    result = _refused(f"{cause.__class__.__name__}: {cause}")
                except Exception as exc:
                    result = _refused(f"{exc.__class__.__name__}: {exc}")
                results.append(result)
        if self.hub is not None and events:
            self.hub.publish(events)
        return results

    def remembered(self, rid: str) -> dict | None:
        """The result remembered for request id ``rid`` (with its
        ``rd``, ``refs`` and ``gone``), or None."""
        return self._dedupe.get(rid)

    @staticmethod
    def _refused_entry(reason: str) -> dict:
        log.error("raft entry refused: %s", reason)
        return {"ok": False, "error": {"code": "refused",
                                       "message": f"malformed raft entry refused: {reason}"}}

    def _apply_txn(self, txn: Any, events: _List[Event]) -> dict:
        if not isinstance(txn, dict):
            return _refused("a transaction must be a map")
        rid = txn.get("rid")
        if rid is not None and rid in self._dedupe:
            done = self._dedupe[rid]
            digest, first = txn.get("rd"), done.get("rd")
            if digest is not None and first is not None and digest != first:
                # Not remembered either: the first request keeps the id.
                return {"ok": False, "error": key_reused(rid)}
            return self._replay(done)
        ts = txn.get("ts", 0.0)
        staged: dict[tuple[str, str], dict | None] = {}
        order: list[tuple[str, str]] = []

        def current(kind: str, oid: Any) -> dict | None:
            key = (kind, oid)
            if key in staged:
                return staged[key]
            return self.objects[kind].get(oid)

        for op in txn.get("ops", ()):
            # Compact forms (a patch, a task naming its service's spec)
            # become the plain operation they stand for.
            expand: Callable[[dict, Current], tuple[dict | None, dict | None]] | None
            expand = self._patched if op.get("op") == "patch" else (
                self._with_service_spec if op.get("spec_of") is not None else None)
            if expand is not None:
                op, failure = expand(op, current)
                if failure is not None:
                    return {"ok": False, "error": failure}
            failure = self._check(op, current, staged)
            if failure is not None:
                # Failures change nothing and are not remembered: a retry
                # with the same request id is simply evaluated again.
                return {"ok": False, "error": failure}
            if op["kind"] in INDEXED and op["op"] != "delete":
                problem = _hazard(op["kind"], op["obj"])
                if problem is not None:
                    return _refused(problem)
            key = (op["kind"], op["id"] if op["op"] == "delete" else op["obj"]["id"])
            if key not in staged:
                order.append(key)
            staged[key] = None if op["op"] == "delete" else op["obj"]

        # Everything above only read the state; from here on it changes.
        # The checks above leave nothing that could fail here, but should
        # anything still do, what this transaction changed is undone and
        # it is refused: every member takes the same decision.
        index_before, events_before = self.index, len(events)
        undo: list[tuple[str, str, dict | None]] = []
        try:
            self.index += 1
            index = self.index
            refs: _List[tuple[str, str]] = []
            gone: _List[tuple[str, str]] = []
            for kind, oid in order:
                old = self.objects[kind].get(oid)
                new = staged[(kind, oid)]
                undo.append((kind, oid, old))
                if new is None:
                    if old is None:
                        continue
                    del self.objects[kind][oid]
                    self._unindex(kind, old)
                    if kind == "task":
                        self._count(old, None)
                    events.append(Event(index, "delete", kind, oid, None, old))
                    gone.append((kind, oid))
                    continue
                new = dict(new)
                if kind == "task":
                    self._share(new, old)
                new["version"] = index
                new["created_at"] = old["created_at"] if old is not None else ts
                new["updated_at"] = ts
                # An object whose indexed value did not change stays in its
                # index entry throughout: a reader never misses it.
                self.objects[kind][oid] = new
                if old is not None:
                    self._unindex(kind, old, new)
                self._index(kind, new, old)
                if kind == "task":
                    self._count(old, new)
                refs.append((kind, oid))
                events.append(Event(index, "update" if old is not None else "create", kind, oid,
                                    new, old))
        except BaseException as exc:
            for kind, oid, old in reversed(undo):
                if old is None:
                    self.objects[kind].pop(oid, None)
                else:
                    self.objects[kind][oid] = old
            self.index = index_before
            del events[events_before:]
            self._reindex()
            if isinstance(exc, MemoryError) or not isinstance(exc, Exception):
                raise               # not a property of the entry
            raise _Undone() from exc
        result: dict[str, Any] = {"ok": True, "index": index, "refs": refs}
        if rid is not None:
            # What the request was, and what it removed (a retry of a
            # removal finds the object gone and is answered from this).
            if txn.get("rd") is not None:
                result["rd"] = txn["rd"]
            if gone:
                result["gone"] = gone
        self._remember(rid, result)
        return self._replay(result)

    def _patched(self, op: dict, current: Current) -> tuple[dict | None, dict | None]:
        """A patch names an existing object and the top-level fields to
        set (``set``) and to remove (``unset``): only those travel through
        Raft. It is applied as the update it stands for, so it is checked
        (version, unique fields) and indexed the same way."""
        kind, oid = op.get("kind"), op.get("id")
        fields, unset = op.get("set") or {}, op.get("unset") or []
        if kind not in self.objects or not isinstance(oid, str):
            return None, {"code": "invalid", "message": "patch without a known kind and id"}
        if not isinstance(fields, dict) or not isinstance(unset, list) or \
                any(k in STAMPED for k in fields) or any(k in STAMPED for k in unset):
            return None, {"code": "invalid", "message": f"malformed patch of {kind} {oid}"}
        cur = current(kind, oid)
        if cur is None:
            return None, {"code": "not_found", "kind": kind, "id": oid,
                          "message": f"{kind} {oid} not found"}
        obj = dict(cur)
        obj.update(fields)
        for key in unset:
            obj.pop(key, None)
        return {"op": "update", "kind": kind, "obj": obj, "version": op.get("version")}, None

    def _with_service_spec(self, op: dict,
                           current: Current) -> tuple[dict | None, dict | None]:
        """A task created with ``spec_of`` takes the task spec of that
        service, which must still be at the task's ``spec_version``."""
        obj, sid = op.get("obj"), op.get("spec_of")
        if op.get("op") != "create" or op.get("kind") != "task" or not isinstance(obj, dict) \
                or not isinstance(sid, str) or obj.get("service_id") != sid:
            return None, {"code": "invalid", "message": "malformed task creation"}
        service = current("service", sid)
        if service is None or service.get("spec_version") != obj.get("spec_version"):
            return None, {"code": "conflict", "kind": "service", "id": sid,
                          "message": f"service {sid} changed before its task was created"}
        obj = dict(obj)
        obj["spec"] = service["spec"]["task"]
        return {"op": "create", "kind": "task", "obj": obj}, None

    def _check(self, op: dict, current: Current,
               staged: dict[tuple[str, str], dict | None]) -> dict | None:
        kind = op.get("kind")
        if kind not in self.objects:
            return {"code": "invalid", "message": f"unknown kind {kind!r}"}
        action = op.get("op")
        if action == "delete":
            oid = op.get("id")
            obj = None
        else:
            obj = op.get("obj")
            if not isinstance(obj, dict) or not isinstance(obj.get("id"), str):
                return {"code": "invalid", "message": "object without id"}
            oid = obj["id"]
        cur = current(kind, oid)
        if action == "create":
            if cur is not None:
                return {"code": "exists", "kind": kind, "id": oid,
                        "message": f"{kind} {oid} already exists"}
        elif action in ("update", "delete"):
            if cur is None:
                return {"code": "not_found", "kind": kind, "id": oid,
                        "message": f"{kind} {oid} not found"}
            want = op.get("version")
            if want is not None and want != cur.get("version"):
                return {"code": "conflict", "kind": kind, "id": oid,
                        "message": f"{kind} {oid} changed (version {cur.get('version')}, "
                                   f"expected {want})"}
        elif action != "upsert":
            return {"code": "invalid", "message": f"unknown operation {action!r}"}
        if obj is not None:
            for field in UNIQUE.get(kind, ()):
                value = obj.get(field)
                if value is None:
                    continue
                holder = self._unique[(kind, field)].get(value)
                if holder is not None and holder != oid and current(kind, holder) is not None:
                    return {"code": "exists", "kind": kind, "id": holder,
                            "message": f"{kind} with {field} {value!r} already exists"}
                for (skind, sid), sobj in staged.items():
                    if (skind == kind and sid != oid and sobj is not None
                            and sobj.get(field) == value):
                        return {"code": "exists", "kind": kind, "id": sid,
                                "message": f"{kind} with {field} {value!r} already exists"}
        return None

    def _reindex(self) -> None:
        """Rebuild the unique and secondary indexes and the task counts
        from the objects (after loading a snapshot, or undoing a
        transaction that failed half-way)."""
        self._unique = {key: {} for key in self._unique}
        self._indexes = {key: {} for key in self._indexes}
        self._counts = {}
        for kind, objs in self.objects.items():
            for obj in objs.values():
                if kind == "task":
                    self._count(None, obj)
                self._index(kind, obj)

    def _share(self, new: dict, old: dict | None) -> None:
        """Let a task share its spec with its previous version or its
        service instead of holding its own copy (every applied object is
        freshly decoded): 30,000 tasks of 30 services then hold 30 specs,
        and the watch ring's old versions cost little."""
        spec = new.get("spec")
        if spec is None:
            return
        if old is not None and old.get("spec") == spec:
            new["spec"] = old["spec"]
        else:
            service = self.get("service", new.get("service_id"))
            service_spec = service.get("spec") if service is not None else None
            if isinstance(service_spec, dict) and service_spec.get("task") == spec:
                new["spec"] = service_spec["task"]
        if old is not None and "ports" in old and old["ports"] == new.get("ports"):
            new["ports"] = old["ports"]

    def _index(self, kind: str, obj: dict, old: dict | None = None) -> None:
        for field in UNIQUE.get(kind, ()):
            if obj.get(field) is not None:
                self._unique[(kind, field)][obj[field]] = obj["id"]
        for field in INDEXED.get(kind, ()):
            value = obj.get(field)
            if value is not None and (old is None or old.get(field) != value):
                self._indexes[(kind, field)].setdefault(value, set()).add(obj["id"])

    def _unindex(self, kind: str, obj: dict, new: dict | None = None) -> None:
        for field in UNIQUE.get(kind, ()):
            table = self._unique[(kind, field)]
            if table.get(obj.get(field)) == obj["id"] and \
                    (new is None or new.get(field) != obj.get(field)):
                del table[obj[field]]
        for field in INDEXED.get(kind, ()):
            value = obj.get(field)
            if value is not None and (new is None or new.get(field) != value):
                ids = self._indexes[(kind, field)].get(value)
                if ids is not None:
                    ids.discard(obj["id"])
                    if not ids:
                        del self._indexes[(kind, field)][value]

    def _count(self, old: dict | None, new: dict | None) -> None:
        """Move a task's contribution to its service's counts (one
        assignment per service, so readers never see a half-made change)."""
        changes: dict[Any, tuple[int, int]] = {}
        for task, sign in ((old, -1), (new, 1)):
            if task is None or task.get("desired_state") != "running":
                continue
            sid = task.get("service_id")
            running = 1 if (task.get("status") or {}).get("state") == "running" else 0
            desired, up = changes.get(sid) or self._counts.get(sid, (0, 0))
            changes[sid] = (desired + sign, up + sign * running)
        for sid, (desired, up) in changes.items():
            if desired <= 0:
                self._counts.pop(sid, None)
            else:
                self._counts[sid] = (desired, up)

    def _remember(self, rid: str | None, result: dict) -> None:
        if rid is None:
            return
        self._dedupe[rid] = result
        while len(self._dedupe) > DEDUPE_LIMIT:
            self._dedupe.popitem(last=False)

    def _replay(self, result: dict) -> dict:
        if not result["ok"]:
            return result
        objects = []
        for kind, oid in result["refs"]:
            obj = self.objects[kind].get(oid)
            if obj is not None:
                objects.append(obj)
        return {"ok": True, "index": result["index"], "objects": objects}

    # -- snapshots --------------------------------------------------------------------
    def snapshot_capture(self) -> Captured:
        with self.lock:
            return (self.index,
                    {k: dict(v) for k, v in self.objects.items()},
                    list(self._dedupe.items()), self.applied_bytes)

    def snapshot_view(self) -> Captured:
        """The state as it is, without a copy: for a process forked from
        the Raft thread, which is the only one that changes it (the
        child's memory is a copy of the parent's at the fork)."""
        return self.index, self.objects, self._dedupe.items(), self.applied_bytes

    @staticmethod
    def snapshot_write(captured: Captured, f: IO[bytes]) -> None:
        index, objects, dedupe, applied_bytes = captured
        packer = msgpack.Packer(use_bin_type=True)
        f.write(packer.pack({"index": index, "kinds": list(objects), "bytes": applied_bytes}))
        for kind, objs in objects.items():
            for obj in objs.values():
                f.write(packer.pack(["o", kind, obj]))
        for rid, result in dedupe:
            f.write(packer.pack(["d", rid, result]))
        f.write(packer.pack(["end"]))

    def snapshot_load(self, unpacker: Iterator[Any]) -> None:
        head = next(unpacker)
        objects: dict[str, dict[str, dict]] = {k: {} for k in KINDS}
        dedupe: collections.OrderedDict[str, dict] = collections.OrderedDict()
        complete = False
        for record in unpacker:
            tag = record[0]
            if tag == "o":
                kind, obj = record[1], record[2]
                if kind in objects:
                    objects[kind][obj["id"]] = obj
            elif tag == "d":
                # (``rd`` and ``gone`` are absent from older snapshots)
                result = record[2]
                if result.get("ok"):
                    result["refs"] = [tuple(r) for r in result.get("refs", ())]
                    if "gone" in result:
                        result["gone"] = [tuple(r) for r in result["gone"]]
                dedupe[record[1]] = result
            elif tag == "end":
                complete = True
                break
        if not complete:
            raise codec.CodecError("truncated snapshot")
        with self.lock:
            self.index = int(head["index"])
            self.applied_bytes = int(head.get("bytes", 0))
            self.objects = objects
            self._dedupe = dedupe
            for obj in objects["task"].values():
                self._share(obj, None)
            self._reindex()
        if self.hub is not None:
            self.hub.publish([Event(self.index, "reset", None, None, None, None)])


class _Undone(Exception):
    """A transaction failed while changing the maps and was undone."""


def _hashable(value: object) -> bool:
    try:
        hash(value)
    except TypeError:
        return False
    return True


def _refused(problem: str) -> dict:
    log.error("transaction refused while applying it: %s", problem)
    return {"ok": False, "error": {"code": "invalid",
                                   "message": f"transaction refused: {problem}"}}


# Values that changing the maps uses as keys, or reads into, without
# checking them: an object that passed ``StateMachine._check`` but would
# make that fail half-way is refused before anything changes. Only what
# applying would have failed on anyway is refused, so members of different
# releases still agree on every entry.
def _hazard(kind: str, obj: dict) -> str | None:
    for field in INDEXED[kind]:
        value = obj.get(field)
        if value is not None and type(value) is not str and not _hashable(value):
            return f"{kind} {obj['id']}: {field} must be a string"
    if kind == "task" and obj.get("desired_state") == "running":
        status = obj.get("status")
        if status and not isinstance(status, dict):
            return f"task {obj['id']}: status must be a map"
    return None
