"""The store: reads from the local state machine, writes through Raft.

Writes are grouped: a proposer thread takes every transaction waiting at that
moment and proposes them as one Raft entry, so concurrent writers share the
cost of replication and of fsync. A few entries may be in flight at once.
A single transaction (``commit()``: an operator's request, a component's
one write) goes ahead of those submitted by the thousand
(``commit_many()``, ``submit_many()``: the scheduler's assignments, the
agents' status reports): it waits for a free place in flight, not for
every bulk transaction queued before it.

``commit()`` returns only after the transaction is applied on this member,
which happens only after a majority of members have it on disk (the
transport fsyncs before sending, and the local journal is synced here before
any result is handed back). If the answer does not come within the timeout
the outcome is unknown: the caller may retry with the same request id and
the state machine will return the original result instead of writing twice.
A request id may carry a digest of its request (``RequestId``): the state
machine then refuses the id for any other request.
"""

from __future__ import annotations

import base64
import collections
import functools
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple, Protocol

from pysyncobj.config import FAIL_REASON

from ...common import admission
from ..raft import codec
from ..raft.node import FAIL_TEXT
from .state import StateMachine, key_reused
from .watch import EventHub, Watcher

log = logging.getLogger(__name__)

_List = list        # ``list`` is also a method of Store

MAX_TXNS_PER_ENTRY = 2000
MAX_BYTES_PER_ENTRY = 2 * 1024 * 1024
# An entry takes more transactions only while it is smaller than this: every
# member applies an entry in one go, and a large one (several services'
# tasks created at once) kept a busy member's Raft thread from its
# heartbeats for longer than an election timeout.
ENTRY_FILL_BYTES = 512 * 1024
MAX_IN_FLIGHT = 4


class StoreError(Exception):
    status = 500
    code = "store_error"


class NotLeader(StoreError):
    status = 503
    code = "not_leader"


class CommitTimeout(StoreError):
    status = 503
    code = "outcome_unknown"


class TxnFailed(StoreError):
    """The transaction was applied and refused (conflict, exists, ...)."""

    def __init__(self, error: dict) -> None:
        super().__init__(error.get("message", error.get("code")))
        self.error = error
        self.code = error.get("code", "failed")
        self.field = error.get("field")
        self.status = {"conflict": 409, "exists": 409, "not_found": 404, "invalid": 400,
                       "key_reused": 422, "refused": 500}.get(self.code, 400)


class RequestId(NamedTuple):
    """A request id bound to its request: ``digest`` says what the request
    was (the API hashes its method, path, query and body), and the state
    machine refuses the same ``key`` with another digest. A plain string
    is a request id bound to nothing."""
    key: str
    digest: bytes | None = None


def _rid_parts(rid: str | RequestId | None) -> tuple[str | None, bytes | None]:
    if rid is None or isinstance(rid, str):
        return rid, None
    return rid.key, rid.digest


class _Waiter:
    """Completion of a group of transactions submitted together: one lock
    and one event for the whole group, not one per transaction. ``then`` is
    called (on the Raft thread) when the last one is answered."""
    __slots__ = ("count", "event", "lock", "then")

    def __init__(self, count: int, then: Callable[[], None] | None = None) -> None:
        self.count = count
        self.event = threading.Event() if then is None else None
        self.lock = threading.Lock()
        self.then = then

    def one_done(self) -> None:
        with self.lock:
            self.count -= 1
            last = self.count == 0
        if last:
            then, self.then = self.then, None
            if then is not None:
                # Dropped first: ``then`` usually holds the group's pending
                # transactions, which hold this waiter, and the cycle would
                # keep them all until a full collection.
                then()
            else:
                assert self.event is not None       # made when there is no ``then``
                self.event.set()


class _Pending:
    __slots__ = ("data", "size", "waiter", "result", "error")

    def __init__(self, data: bytes, waiter: _Waiter) -> None:
        self.data = data            # the transaction, packed once
        self.size = len(data)
        self.waiter = waiter
        self.result: dict | None = None
        self.error: Exception | None = None

    def answer(self, result: dict | None = None, error: Exception | None = None) -> None:
        self.result, self.error = result, error
        self.waiter.one_done()


class Op:
    """Helpers that build operations."""

    @staticmethod
    def create(kind: str, obj: dict) -> dict:
        return {"op": "create", "kind": kind, "obj": obj}

    @staticmethod
    def update(kind: str, obj: dict, version: int | None = None) -> dict:
        return {"op": "update", "kind": kind, "obj": obj, "version": version}

    @staticmethod
    def upsert(kind: str, obj: dict) -> dict:
        return {"op": "upsert", "kind": kind, "obj": obj}

    @staticmethod
    def delete(kind: str, oid: str, version: int | None = None) -> dict:
        return {"op": "delete", "kind": kind, "id": oid, "version": version}

    @staticmethod
    def patch(kind: str, oid: str, fields: dict, version: int | None = None,
              unset: Iterable[str] = ()) -> dict:
        return {"op": "patch", "kind": kind, "id": oid, "set": fields, "version": version,
                "unset": list(unset)}


_STAMPED = frozenset(("id", "version", "created_at", "updated_at"))


def as_patch(op: dict, current: dict) -> dict:
    """The patch equivalent to ``op`` (an update with compare-and-set on
    ``current``'s version): the top-level fields that differ, and those
    removed. Unchanged fields (a task's spec, its service id...) are not
    sent again."""
    obj = op["obj"]
    fields = {}
    for key, value in obj.items():
        if key in _STAMPED:
            continue
        if key not in current:
            fields[key] = value
        else:
            old = current[key]
            if old is not value and old != value:
                fields[key] = value
    unset = [k for k in current if k not in obj and k not in _STAMPED]
    return Op.patch(op["kind"], obj["id"], fields, version=op["version"], unset=unset)


class Journal(Protocol):
    def sync(self) -> None: ...


class Replicator(Protocol):
    """What the store needs of its Raft member (``raft.node.RaftNode``)."""

    @property
    def is_leader(self) -> bool: ...

    @property
    def journal(self) -> Journal: ...

    def propose(self, payload: bytes, callback: Callable[[Any, Any], None]) -> None: ...


class Store:
    def __init__(self) -> None:
        self.hub = EventHub()
        self.sm = StateMachine(self.hub)
        self.raft: Replicator | None = None
        self._ready = threading.Condition()
        self._single: collections.deque[_Pending] = collections.deque()
        self._bulk: collections.deque[_Pending] = collections.deque()
        self._slots = threading.Semaphore(MAX_IN_FLIGHT)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._propose_loop, name="store-proposer",
                                        daemon=True)
        self.entries_proposed = 0
        self.txns_proposed = 0
        self._patch_gate: Callable[[Store], Any] | None = None
        self._patch_cache = (-1, False)

    def attach(self, raft: Replicator) -> None:
        self.raft = raft

    def patch_when(self, gate: Callable[[Store], Any]) -> None:
        """Send updates as patches (only the changed fields) while
        ``gate(store)`` is true: every member must understand them, so the
        gate checks that every manager runs a version that applies them."""
        self._patch_gate = gate

    def _patches_allowed(self) -> bool:
        gate = self._patch_gate
        if gate is None:
            return False
        index, allowed = self._patch_cache
        if index != self.sm.index:
            allowed = bool(gate(self))
            self._patch_cache = (self.sm.index, allowed)
        return allowed

    def _compact(self, ops: Iterable[dict]) -> list[dict]:
        """Updates with compare-and-set against the version held here
        become patches (the common case: a task's status, its node), and a
        new task with its service's current spec names the service instead
        of carrying the spec."""
        out = []
        for op in ops:
            if op.get("op") == "create" and op.get("kind") == "task":
                op = self._spec_by_reference(op)
            elif op.get("op") == "update" and op.get("version") is not None:
                obj = op.get("obj")
                current = None
                if isinstance(obj, dict) and op.get("kind") in self.sm.objects:
                    current = self.sm.get(op["kind"], obj.get("id"))
                if current is not None and current.get("version") == op["version"]:
                    op = as_patch(op, current)
            out.append(op)
        return out

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self._ready:
            self._stop.set()
            self._ready.notify()

    # -- reads --------------------------------------------------------------------
    def get(self, kind: str, oid: str | None) -> dict | None:
        return self.sm.get(kind, oid)

    def list(self, kind: str) -> _List[dict]:
        return self.sm.list(kind)

    def first(self, kind: str) -> dict | None:
        return self.sm.first(kind)

    def count(self, kind: str) -> int:
        return self.sm.count(kind)

    def by_unique(self, kind: str, field: str, value: Any) -> dict | None:
        return self.sm.by_unique(kind, field, value)

    def by_index(self, kind: str, field: str, value: Any) -> _List[dict]:
        return self.sm.by_index(kind, field, value)

    def task_counts(self, service_id: str) -> tuple[int, int]:
        return self.sm.task_counts(service_id)

    @property
    def index(self) -> int:
        return self.sm.index

    def watch(self) -> Watcher:
        return self.hub.watch()

    # -- writes -------------------------------------------------------------------
    def _pending(self, ops: Iterable[dict], rid: str | RequestId | None,
                 waiter: _Waiter | None = None) -> _Pending:
        """The transaction, encoded once, ready to queue."""
        ops = self._compact(ops) if self._patches_allowed() else list(ops)
        key, digest = _rid_parts(rid)
        txn: dict[str, Any] = {"rid": key, "ts": time.time(), "ops": ops}
        if digest is not None:
            txn["rd"] = digest
        data = codec.pack(txn)
        if len(data) > MAX_BYTES_PER_ENTRY:
            raise TxnFailed({"code": "invalid",
                             "message": f"transaction too large ({len(data)} bytes)"})
        return _Pending(data, waiter or _Waiter(1))

    @staticmethod
    def _wait(waiter: _Waiter, timeout: float) -> None:
        assert waiter.event is not None     # a waiter without ``then``
        with admission.blocking():
            answered = waiter.event.wait(timeout)
        if not answered:
            raise CommitTimeout("no answer from the cluster in time; the write may or may not "
                                "have been applied (retry with the same request id)")

    @staticmethod
    def _result(pending: _Pending) -> dict:
        if pending.error is not None:
            raise pending.error
        result = pending.result
        assert result is not None           # answered with a result or an error
        if not result["ok"]:
            raise TxnFailed(result["error"])
        return result

    def commit(self, ops: Iterable[dict], rid: str | RequestId | None = None,
               timeout: float = 10.0) -> dict:
        """Apply ``ops`` atomically; returns {"index", "objects"} or raises."""
        raft = self.raft
        if raft is None or not raft.is_leader:
            raise NotLeader("this manager is not the leader")
        pending = self._pending(ops, rid)
        with self._ready:
            self._single.append(pending)
            self._ready.notify()
        self._wait(pending.waiter, timeout)
        return self._result(pending)

    def commit_many(self, transactions: Sequence[Iterable[dict]],
                    timeout: float = 10.0) -> _List[dict | Exception]:
        """Submit independent transactions together (they share Raft
        entries) and wait for all. Returns, per transaction, its result or
        the exception it failed with."""
        raft = self.raft
        if raft is None or not raft.is_leader:
            raise NotLeader("this manager is not the leader")
        if not transactions:
            return []
        waiter = _Waiter(len(transactions))
        pendings = self._submit_all(transactions, waiter)
        timed_out = None
        try:
            self._wait(waiter, timeout)
        except CommitTimeout as exc:
            timed_out = exc
        out: _List[dict | Exception] = []
        for p in pendings:
            if isinstance(p, Exception):
                out.append(p)
            elif p.result is None and p.error is None:
                assert timed_out is not None    # every transaction is answered otherwise
                out.append(timed_out)       # not answered in time: outcome unknown
            else:
                out.append(self._result_or_error(p))
        return out

    def submit_many(self, transactions: Sequence[Iterable[dict]],
                    then: Callable[[_List[dict | StoreError]], Any]) -> None:
        """Like commit_many() without waiting: ``then(results)`` is called
        on the Raft thread once every transaction is answered (keep it
        short). There is no timeout: an entry is always answered, applied
        or failed, when leadership is lost at the latest."""
        raft = self.raft
        if raft is None or not raft.is_leader:
            raise NotLeader("this manager is not the leader")
        box: _List[_Pending | StoreError] = []
        # One extra count, released once ``box`` is filled: ``then`` must not
        # run before (every transaction may fail at once, or be answered
        # while later ones are still being submitted).
        waiter = _Waiter(len(transactions) + 1, then=lambda: then(
            [p if isinstance(p, Exception) else self._result_or_error(p) for p in box]))
        box.extend(self._submit_all(transactions, waiter))
        waiter.one_done()

    def _submit_all(self, transactions: Iterable[Iterable[dict]],
                    waiter: _Waiter) -> _List[_Pending | StoreError]:
        pendings: _List[_Pending | StoreError] = []
        for ops in transactions:
            try:
                pendings.append(self._pending(ops, None, waiter))
            except StoreError as exc:
                pendings.append(exc)
                waiter.one_done()
        with self._ready:           # queued and notified once for the lot
            self._bulk.extend(p for p in pendings if isinstance(p, _Pending))
            self._ready.notify()
        return pendings

    def remembered(self, rid: str | RequestId | None) -> dict | None:
        """What the store remembers of request id ``rid`` (a str or a
        RequestId): None if it is new; else ``{"index", "removed"}``, the
        objects its transaction removed as ``(kind, id)`` pairs. Raises
        TxnFailed ("key_reused") if ``rid`` came with another request."""
        key, digest = _rid_parts(rid)
        if key is None:
            return None
        done = self.sm.remembered(key)
        if done is None or not done.get("ok"):
            return None
        if digest is not None and done.get("rd") not in (None, digest):
            raise TxnFailed(key_reused(key))
        return {"index": done["index"], "removed": list(done.get("gone", ()))}

    def _result_or_error(self, pending: _Pending) -> dict | StoreError:
        try:
            return self._result(pending)
        except StoreError as exc:
            return exc

    def update(self, kind: str, oid: str, change: Callable[[dict], dict | None], *,
               rid: str | RequestId | None = None, version: int | None = None,
               attempts: int = 10,
               extra_ops: Callable[[dict, dict], _List[dict]] | None = None) -> dict | None:
        """Read-modify-write with compare-and-set, retried on conflict.

        ``change(current)`` returns the new object, or None to leave it as
        is (then the current object is returned without a write). A given
        ``version`` must match, and a conflict is then not retried.
        ``extra_ops(current, new)`` may add operations to the same
        transaction. Raises TxnFailed("not_found") if the object is missing.

        A request id that was applied before is not evaluated again: the
        object is returned as it is now, once the state machine has checked
        that the id came with the same request (else "key_reused").
        """
        if self.remembered(rid) is not None:
            objects = self.commit([], rid=rid)["objects"]
            current = objects[0] if objects and objects[0].get("id") == oid else self.get(kind, oid)
            if current is None:
                raise TxnFailed({"code": "not_found", "kind": kind, "id": oid,
                                 "message": f"{kind} {oid} not found"})
            return current
        for _ in range(attempts):
            current = self.get(kind, oid)
            if current is None:
                raise TxnFailed({"code": "not_found", "kind": kind, "id": oid,
                                 "message": f"{kind} {oid} not found"})
            if version is not None and version != current.get("version"):
                raise TxnFailed({"code": "conflict", "kind": kind, "id": oid,
                                 "message": f"{kind} {oid} changed "
                                            f"(version {current.get('version')})"})
            new = change(current)
            if new is None or new == current:
                if rid is not None:
                    # Nothing to write, but the request id is remembered: a
                    # late copy of this request (a forward held up by a
                    # partition, a client's retry) must not apply it after
                    # a later write.
                    self.commit([], rid=rid)
                return current
            ops = [Op.update(kind, new, version=current["version"])]
            if extra_ops is not None:
                ops += extra_ops(current, new)
            try:
                objects = self.commit(ops, rid=rid)["objects"]
            except TxnFailed as exc:
                if exc.code != "conflict" or version is not None:
                    raise
                continue
            # Empty when this request id was seen before and changed nothing
            # then: it changes nothing now either.
            return objects[0] if objects else self.get(kind, oid)
        raise TxnFailed({"code": "conflict", "kind": kind, "id": oid,
                         "message": f"{kind} {oid} changed too often; retry"})

    def barrier(self, timeout: float = 10.0) -> int:
        """Commit an empty transaction: when it returns, this member has
        applied everything committed before it."""
        return self.commit([], timeout=timeout)["index"]

    def _spec_by_reference(self, op: dict) -> dict:
        obj = op.get("obj")
        if not isinstance(obj, dict) or "spec" not in obj:
            return op
        service = self.sm.get("service", obj.get("service_id"))
        if service is None or service.get("spec_version") != obj.get("spec_version") or \
                service["spec"].get("task") != obj["spec"]:
            return op
        return {"op": "create", "kind": "task", "spec_of": service["id"],
                "obj": {k: v for k, v in obj.items() if k != "spec"}}

    def _propose_loop(self) -> None:
        while True:
            with self._ready:
                while not self._single and not self._bulk and not self._stop.is_set():
                    self._ready.wait()
                if self._stop.is_set():
                    break
            # A place in flight first, then the entry: it takes what arrived
            # meanwhile too, single transactions ahead of bulk ones.
            self._slots.acquire()
            batch = self._take()
            raft = self.raft
            if raft is None or not raft.is_leader:
                self._slots.release()
                self._fail(batch, NotLeader("leadership lost before the write was proposed"))
                continue
            payload = codec.pack_batch("txns", [p.data for p in batch])
            self.entries_proposed += 1
            self.txns_proposed += len(batch)
            try:
                raft.propose(payload, functools.partial(self._done, batch))
            except Exception as exc:  # pragma: no cover - defensive
                self._slots.release()
                self._fail(batch, StoreError(str(exc)))

    def _take(self) -> _List[_Pending]:
        batch: _List[_Pending] = []
        size = 0
        with self._ready:
            for waiting in (self._single, self._bulk):
                while waiting and len(batch) < MAX_TXNS_PER_ENTRY and size < ENTRY_FILL_BYTES:
                    pending = waiting.popleft()
                    batch.append(pending)
                    size += pending.size
        return batch

    def _done(self, batch: _List[_Pending], results: Any, err: Any) -> None:
        # Runs on the Raft tick thread.
        self._slots.release()
        assert self.raft is not None        # it proposed the entry
        if err == FAIL_REASON.SUCCESS and isinstance(results, list) and len(results) == len(batch):
            self.raft.journal.sync()
            for pending, result in zip(batch, results):
                pending.answer(result=result)
            return
        if err == FAIL_REASON.SUCCESS and isinstance(results, dict) and not results.get("ok"):
            # Every member refused the entry as a whole (state.py, node.py):
            # nothing of it was applied.
            self.raft.journal.sync()
            self._fail(batch, TxnFailed(results.get("error") or {"code": "refused"}))
            return
        reason = FAIL_TEXT.get(err, f"raft error {err}")
        exc: StoreError
        if err in (FAIL_REASON.NOT_LEADER, FAIL_REASON.MISSING_LEADER, FAIL_REASON.DISCARDED,
                   FAIL_REASON.QUEUE_FULL):
            exc = NotLeader(reason)  # definitely not applied: safe to retry anywhere
        else:
            exc = CommitTimeout(f"write outcome unknown: {reason}")
        self._fail(batch, exc)

    @staticmethod
    def _fail(batch: Iterable[_Pending], exc: Exception) -> None:
        for pending in batch:
            pending.answer(error=exc)


def new_id() -> str:
    """Random object id: 120 random bits as 24 lowercase base-32 characters."""
    return base64.b32encode(os.urandom(15)).decode().lower()
