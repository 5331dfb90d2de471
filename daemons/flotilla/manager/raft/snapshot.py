"""Snapshots of the replicated state, written without pickle and without
stalling Raft.

This object stands in for pysyncobj's ``Serializer``. When pysyncobj decides
to compact the log it calls ``serialize()`` on its tick thread, the only
thread that changes the state. It forks there: the child process has the
state as it was at that moment (copy-on-write memory), writes it to a
temporary file of its own, fsyncs it and exits, at a low priority, while
this process goes on without spending its interpreter lock on the encoding
(about 0.14 CPU-s for 30,000 tasks on an idle machine, several times that
on a loaded one, and on every member at about the same time: see
``bench/snapshot_write.py``). A thread here waits for the child,
then renames the file over the snapshot and fsyncs the directory. Only
after that does ``checkSerializing()`` report success, which is when
pysyncobj drops the journal entries the snapshot covers. The child gets
SIGKILL if its parent dies. Where fork is not possible, a shallow copy of
the state is written by a thread of this process instead (the state machine
never mutates stored objects in place, so a shallow copy is a consistent
view).

The same file is streamed in chunks to followers that are too far behind
(``getTransmissionData``) and received the same way (``setTransmissionData``).
A snapshot of a member's own that was begun before one from the leader was
installed is older than it: it is dropped, not renamed over it.

File layout: magic, then a msgpack stream: a header map
``{"last": entry, "prev": entry, "members": [addr, ...]}`` followed by the
state machine's own records.
"""

from __future__ import annotations

import gc
import glob
import logging
import os
import queue
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import IO, Any, Protocol

import msgpack

from pysyncobj.config import SERIALIZER_STATE
from pysyncobj.node import TCPNode

from ...common import fsutil, procutil
from . import codec

log = logging.getLogger(__name__)

MAGIC = b"FLTSNAP1"
WRITE_BUFFER = 1 << 20
CHILD_NICE = 10


class SnapshotState(Protocol):
    """The state a snapshot holds (``store.state.StateMachine``); it may also
    have ``snapshot_view()``, the state without a copy, for a forked writer."""

    def snapshot_capture(self) -> Any: ...

    def snapshot_write(self, captured: Any, f: IO[bytes]) -> None: ...

    def snapshot_load(self, unpacker: Iterator[Any]) -> None: ...


class SnapshotSerializer:
    def __init__(self, path: str, chunk_size: int, state_machine: SnapshotState) -> None:
        self._path = path
        self._chunk_size = chunk_size
        self._sm = state_machine
        self._lock = threading.Lock()
        self._state = SERIALIZER_STATE.NOT_SERIALIZING
        self._current_id = 0
        self._transmissions: dict[Any, IO[bytes]] = {}     # by pysyncobj's transmission id
        self._incoming: IO[bytes] | None = None
        # Membership in effect when this member last ran (persisted at every
        # change). The snapshot's list may be older: changes take effect when
        # appended, and later ones live only in the journal. Used once, for
        # the load at start-up; an installed snapshot brings its own list.
        self.startup_members: list[str] | None = None
        self._installing = False
        self.snapshots_written = 0
        self.snapshots_installed = 0
        self.failed_at: float | None = None     # monotonic time of the last failed write
        self.fork = True           # False: write from a shallow copy, in a thread here
        # One more for every snapshot installed from the leader: a snapshot of
        # our own begun before it is older and must not replace it.
        self._generation = 0
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._worker: threading.Thread | None = None
        # Left by a process that died while its child wrote.
        for stale in glob.glob(glob.escape(path) + ".writing*"):
            try:
                os.unlink(stale)
            except OSError:
                pass

    # -- writing ------------------------------------------------------------
    def serialize(self, data: tuple, id: int) -> None:
        with self._lock:
            if self._state == SERIALIZER_STATE.SERIALIZING:
                return
            self._state = SERIALIZER_STATE.SERIALIZING
            self._current_id = id
        _, last, prev, cluster = data
        header = {
            "last": list(last),
            "prev": list(prev),
            "members": sorted(node.address for node in cluster),
        }
        started = time.monotonic()
        generation = self._generation
        view = getattr(self._sm, "snapshot_view", None)
        if self.fork and view is not None:
            parent = os.getpid()
            try:
                pid = os.fork()
            except OSError as exc:
                log.warning("cannot fork to write the snapshot (%s): writing it here", exc)
            else:
                if pid == 0:
                    self._child(parent, header, view())     # does not return
                self._submit(self._reap, pid, header, started, generation)
                return
        captured = self._sm.snapshot_capture()
        self._submit(self._write_here, header, captured, started, generation)

    def _submit(self, fn: Callable[..., None], *args: Any) -> None:
        """Hand work to this serializer's thread, started once: starting a
        thread for each snapshot would make the Raft thread wait for it."""
        if self._worker is None:
            self._worker = threading.Thread(target=self._work, name="raft-snapshot",
                                            daemon=True)
            self._worker.start()
        self._jobs.put((fn, args))

    def _work(self) -> None:
        while True:
            fn, args = self._jobs.get()
            fn(*args)

    def _temporary(self, pid: int) -> str:
        return f"{self._path}.writing-{pid}"

    def _write_file(self, tmp: str, header: dict, captured: Any) -> None:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with open(fd, "wb", buffering=WRITE_BUFFER) as f:
            f.write(MAGIC)
            f.write(codec.pack(header))
            self._sm.snapshot_write(captured, f)
            f.flush()
            os.fsync(f.fileno())

    def _child(self, parent: int, header: dict, view: Any) -> None:
        """In the forked child: write, sync and exit, touching nothing the
        parent's other threads may have held at the fork (locks, logging)."""
        gc.disable()        # no finaliser of the parent's objects may run here
        code = 1
        try:
            procutil.die_with_parent()
            if os.getppid() != parent:
                return
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP,
                        signal.SIGUSR1, signal.SIGUSR2, signal.SIGCHLD):
                signal.signal(sig, signal.SIG_DFL)
            # Forked from the Raft thread, it would keep that thread's raised
            # priority: background work yields to the managers instead.
            try:
                os.setpriority(os.PRIO_PROCESS, 0,
                               max(CHILD_NICE, os.getpriority(os.PRIO_PROCESS, 0)))
            except OSError:
                pass
            self._write_file(self._temporary(os.getpid()), header, view)
            code = 0
        except BaseException as exc:      # noqa: BLE001 - reported through the exit code
            try:
                os.write(2, f"snapshot child: {exc!r}\n".encode())
            except BaseException:          # noqa: BLE001
                pass
        finally:
            os._exit(code)

    def _reap(self, pid: int, header: dict, started: float, generation: int) -> None:
        tmp = self._temporary(pid)
        try:
            _, status = os.waitpid(pid, 0)
            code = os.waitstatus_to_exitcode(status)
        except Exception:
            log.exception("writing snapshot failed")
            self._finish(tmp, SERIALIZER_STATE.FAILED)
            return
        if code != 0:       # it said why on stderr, or a signal stopped it
            log.warning("writing snapshot failed: its process %d %s", pid,
                        f"exited with {code}" if code > 0 else f"got signal {-code}")
            self._finish(tmp, SERIALIZER_STATE.FAILED)
            return
        self._install(tmp, header, started, generation)

    def _write_here(self, header: dict, captured: Any, started: float,
                    generation: int) -> None:
        tmp = self._temporary(os.getpid())
        try:
            _unlink(tmp)
            self._write_file(tmp, header, captured)
        except Exception:
            log.exception("writing snapshot failed")
            self._finish(tmp, SERIALIZER_STATE.FAILED)
            return
        self._install(tmp, header, started, generation)

    def _install(self, tmp: str, header: dict, started: float, generation: int) -> None:
        """Put a written snapshot in place, unless one from the leader was
        installed meanwhile; then tell pysyncobj how it went."""
        try:
            self._install_written(tmp, header, started, generation)
            state = SERIALIZER_STATE.SUCCESS
        except _Superseded:
            log.info("snapshot dropped: one from the leader was installed meanwhile")
            state = SERIALIZER_STATE.FAILED
        except Exception:
            log.exception("writing snapshot failed")
            state = SERIALIZER_STATE.FAILED
        self._finish(tmp, state)

    def _finish(self, tmp: str, state: int) -> None:
        if state == SERIALIZER_STATE.FAILED:
            _unlink(tmp)
            self.failed_at = time.monotonic()
        with self._lock:
            self._state = state

    def _install_written(self, tmp: str, header: dict, started: float,
                         generation: int) -> None:
        with self._lock:
            if generation != self._generation:
                raise _Superseded()
            os.replace(tmp, self._path)
        fsutil.fsync_dir(os.path.dirname(self._path))
        self.snapshots_written += 1
        log.info("snapshot at index %d written: %d bytes in %.2f s", header["last"][1],
                 os.path.getsize(self._path), time.monotonic() - started)

    def busy(self) -> bool:
        """A snapshot is being written, or its outcome not yet taken."""
        with self._lock:
            return self._state != SERIALIZER_STATE.NOT_SERIALIZING

    def checkSerializing(self) -> tuple[int, int | None]:
        with self._lock:
            state = self._state
            if state in (SERIALIZER_STATE.SUCCESS, SERIALIZER_STATE.FAILED):
                self._state = SERIALIZER_STATE.NOT_SERIALIZING
                if state == SERIALIZER_STATE.SUCCESS:
                    self._close_transmissions()
                return state, self._current_id
            if state == SERIALIZER_STATE.SERIALIZING:
                return state, self._current_id
            return SERIALIZER_STATE.NOT_SERIALIZING, None

    # -- reading ------------------------------------------------------------
    def deserialize(self) -> tuple[None, codec.Entry, codec.Entry, list[TCPNode]]:
        """Load the snapshot into the state machine; return what pysyncobj
        needs: (None, last entry, previous entry, member addresses)."""
        with open(self._path, "rb") as f:
            if f.read(len(MAGIC)) != MAGIC:
                raise codec.CodecError("not a Flotilla snapshot")
            unpacker = msgpack.Unpacker(f, raw=False, use_list=True, strict_map_key=False,
                                        max_buffer_size=codec.MAX_FRAME)
            header = next(unpacker)
            if not isinstance(header, dict):
                raise codec.CodecError("bad snapshot header")
            last = _entry(header.get("last"))
            prev = _entry(header.get("prev"))
            # Node objects, not strings: pysyncobj compares them with its own node.
            members = [m for m in header.get("members", []) if isinstance(m, str)]
            if not self._installing and self.startup_members is not None:
                members = list(self.startup_members)
            self._sm.snapshot_load(unpacker)
        self.startup_members = None
        self._installing = False
        self.snapshots_installed += 1
        # Node objects, not strings: pysyncobj compares them with its own node.
        members = [TCPNode(m) for m in members]
        return None, last, prev, members

    # -- streaming to and from peers ------------------------------------------
    def _close_transmissions(self) -> None:
        for t in self._transmissions.values():
            try:
                t.close()
            except OSError:
                pass
        self._transmissions = {}

    def getTransmissionData(self, transmissionID: Any) -> tuple[bytes, bool, bool] | None:
        with self._lock:
            if self._state == SERIALIZER_STATE.SERIALIZING:
                return None
        f = self._transmissions.get(transmissionID)
        if f is None:
            try:
                f = open(self._path, "rb")
            except OSError:
                log.warning("no snapshot to send to %s yet", transmissionID)
                return None
            self._transmissions[transmissionID] = f
            is_first = True
        else:
            is_first = False
        data = f.read(self._chunk_size)
        is_last = len(data) == 0
        if is_last:
            f.close()
            self._transmissions.pop(transmissionID, None)
        return data, is_first, is_last

    def setTransmissionData(self, data: Any) -> bool:
        if not (isinstance(data, (tuple, list)) and len(data) == 3):
            return False
        chunk, is_first, is_last = data
        if not isinstance(chunk, bytes):
            return False
        tmp = self._path + ".incoming"
        if is_first:
            if self._incoming is not None:
                self._incoming.close()
            self._incoming = open(tmp, "wb")
            os.fchmod(self._incoming.fileno(), 0o600)
        elif self._incoming is None:
            return False
        self._incoming.write(chunk)
        if not is_last:
            return False
        self._incoming.flush()
        os.fsync(self._incoming.fileno())
        self._incoming.close()
        self._incoming = None
        with self._lock:
            self._generation += 1
            os.replace(tmp, self._path)
        fsutil.fsync_dir(os.path.dirname(self._path))
        self._installing = True
        return True

    def cancelTransmisstion(self, id: Any) -> None:  # (sic) pysyncobj's spelling
        f = self._transmissions.pop(id, None)
        if f is not None:
            f.close()


class _Superseded(Exception):
    """A snapshot from the leader was installed while ours was written."""


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _entry(value: Any) -> codec.Entry:
    if not (isinstance(value, (list, tuple)) and len(value) == 3):
        raise codec.CodecError("bad snapshot entry")
    command, idx, term = value
    return (bytes(command), int(idx), int(term))


def read_boundary(path: str) -> tuple[codec.Entry, codec.Entry] | None:
    """(previous entry, last entry) of the snapshot at ``path``, or None if
    there is none or it cannot be read (loading it says why)."""
    try:
        with open(path, "rb") as f:
            if f.read(len(MAGIC)) != MAGIC:
                return None
            unpacker = msgpack.Unpacker(f, raw=False, use_list=True, strict_map_key=False,
                                        max_buffer_size=codec.MAX_FRAME)
            header = next(unpacker)
            return _entry(header.get("prev")), _entry(header.get("last"))
    except (OSError, StopIteration, ValueError, AttributeError, codec.CodecError,
            msgpack.UnpackException):
        return None
