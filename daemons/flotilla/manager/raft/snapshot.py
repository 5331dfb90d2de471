"""Snapshots of the replicated state, written without pickle and without
stalling Raft.

This object stands in for pysyncobj's ``Serializer``. When pysyncobj decides
to compact the log it calls ``serialize()`` on its tick thread; we take a cheap
copy of the state there (the state machine never mutates stored objects in
place, so a shallow copy is a consistent view) and write it to disk on a
background thread: a temporary file, fsync, rename, fsync of the directory.
Only after that does ``checkSerializing()`` report success, which is when
pysyncobj drops the journal entries the snapshot covers.

The same file is streamed in chunks to followers that are too far behind
(``getTransmissionData``) and received the same way (``setTransmissionData``).

File layout: magic, then a msgpack stream: a header map
``{"last": entry, "prev": entry, "members": [addr, ...]}`` followed by the
state machine's own records.
"""

from __future__ import annotations

import logging
import os
import threading

import msgpack

from pysyncobj.config import SERIALIZER_STATE
from pysyncobj.node import TCPNode

from ...common import fsutil
from . import codec

log = logging.getLogger(__name__)

MAGIC = b"FLTSNAP1"


class SnapshotSerializer:
    def __init__(self, path: str, chunk_size: int, state_machine):
        self._path = path
        self._chunk_size = chunk_size
        self._sm = state_machine
        self._lock = threading.Lock()
        self._state = SERIALIZER_STATE.NOT_SERIALIZING
        self._current_id = 0
        self._transmissions: dict = {}
        self._incoming = None
        # Membership in effect when this member last ran (persisted at every
        # change). The snapshot's list may be older: changes take effect when
        # appended, and later ones live only in the journal. Used once, for
        # the load at start-up; an installed snapshot brings its own list.
        self.startup_members: list[str] | None = None
        self._installing = False
        self.snapshots_written = 0
        self.snapshots_installed = 0

    # -- writing ------------------------------------------------------------
    def serialize(self, data, id):
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
        captured = self._sm.snapshot_capture()
        thread = threading.Thread(target=self._write, args=(header, captured),
                                  name="raft-snapshot", daemon=True)
        thread.start()

    def _write(self, header, captured):
        tmp = self._path + ".writing"
        try:
            with open(tmp, "wb") as f:
                os.fchmod(f.fileno(), 0o600)
                f.write(MAGIC)
                f.write(codec.pack(header))
                self._sm.snapshot_write(captured, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self._path)
            fsutil.fsync_dir(os.path.dirname(self._path))
            state = SERIALIZER_STATE.SUCCESS
            self.snapshots_written += 1
        except Exception:
            log.exception("writing snapshot failed")
            state = SERIALIZER_STATE.FAILED
        with self._lock:
            self._state = state

    def checkSerializing(self):
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
    def deserialize(self):
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
    def _close_transmissions(self):
        for t in self._transmissions.values():
            try:
                t.close()
            except OSError:
                pass
        self._transmissions = {}

    def getTransmissionData(self, transmissionID):
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

    def setTransmissionData(self, data):
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
        os.replace(tmp, self._path)
        fsutil.fsync_dir(os.path.dirname(self._path))
        self._installing = True
        return True

    def cancelTransmisstion(self, id):  # (sic) pysyncobj's spelling
        f = self._transmissions.pop(id, None)
        if f is not None:
            f.close()


def _entry(value):
    if not (isinstance(value, (list, tuple)) and len(value) == 3):
        raise codec.CodecError("bad snapshot entry")
    command, idx, term = value
    return (bytes(command), int(idx), int(term))


def read_boundary(path: str):
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
