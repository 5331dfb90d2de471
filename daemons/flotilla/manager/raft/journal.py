"""A Raft journal that is on disk before anything depending on it is sent.

pysyncobj's file journal is an mmap that is never synced, so an entry a member
acknowledged can vanish on power loss. This journal appends checksummed
records to a plain file and tracks whether anything is unsynced; the Raft
transport calls ``sync()`` before sending any message and the store calls it
before acknowledging a commit, so "acknowledged" always means "fsynced on a
majority".

File format (``log``): an 8-byte magic, then records of
``<u32 length><u32 crc32><payload>`` where payload is ``b"E" idx term command``
(an entry) or ``b"T" idx`` (entries with index >= idx were dropped). A torn
tail left by a crash is cut off on open; a bad record with intact records
after it is damage, and the journal refuses to open (``scan_journal``). Term and vote live in
``meta`` (JSON, replaced atomically and fsynced before any vote is sent).

Cutting the log after a snapshot happens in memory at once; the file keeps
the covered records in front until a helper thread has copied the live
records into ``log.compact`` (and fsynced it). The Raft thread then appends
what came since, syncs, and renames the copy over ``log`` in its next
``sync()``, so the tick waits for a small sync and a rename, not for the whole
rewrite. A crash before the rename leaves the covered records in front of
the live ones, which ``align()`` drops on the next start.

The commit index (``commit``: ``<u64 index><u32 crc32>``, overwritten in
place about once a second) only lets a restarted member apply what it
knows was committed before it hears from a leader. Any value it ever held
is safe, however old, so it is written without fsync; a torn or missing
file reads as the last index recorded in ``meta`` by older versions, or 1.
"""

from __future__ import annotations

import json
import logging
import os
import struct
import threading
import time
import zlib
from collections.abc import Iterable
from typing import Any, overload

from ...common import fsutil
from .codec import Entry

log = logging.getLogger(__name__)

MAGIC = b"FLTLOG1\n"
RECORD = struct.Struct("<II")
ENTRY = struct.Struct("<QQ")
TRUNC = struct.Struct("<Q")
COMMIT = struct.Struct("<QI")
COPY_CHUNK = 1 << 20


class DurableJournal:
    """Implements the interface pysyncobj expects from a journal.

    Every method runs on the Raft thread, except the copy made by the
    compaction helper, which reads the file only and hands its result over
    through ``_ready``."""

    def __init__(self, directory: str):
        fsutil.ensure_private_dir(directory)
        self._dir = directory
        self._path = os.path.join(directory, "log")
        self._compact_path = os.path.join(directory, "log.compact")
        self._meta_path = os.path.join(directory, "meta")
        self._commit_path = os.path.join(directory, "commit")
        self._entries: list[tuple[bytes, int, int]] = []
        # Where each held entry's record starts, as a position in the
        # journal's history: the file offset plus ``_shift``, which grows by
        # what each compaction removes from the front.
        self._offsets: list[int] = []
        self._end = 0               # end of the file, same reckoning
        self._shift = 0
        self.bytes = 0              # commands held (in memory and in the file)
        self._dirty = False
        self._meta = fsutil.read_json(self._meta_path, {}) or {}
        self._meta_dirty = False
        self.syncs = 0
        self.sync_seconds = 0.0     # spent making writes durable, in total
        self.compactions = 0        # copies renamed over the log
        self._commit_index = self._read_commit_index()
        self._commit_written = self._commit_index
        self._commit_fd: int | None = None
        self._generation = 0        # changes whenever the file is replaced whole
        self._job: dict | None = None   # compaction handed to the helper, until it is used
        self._ready: dict = {}          # the helper's result for ``_job``
        self._wake = threading.Condition()
        self._helper: threading.Thread | None = None
        self._closing = False
        if os.path.exists(self._compact_path):
            os.unlink(self._compact_path)   # a copy that was never renamed
        self._load()

    # -- loading ---------------------------------------------------------
    def _load(self) -> None:
        if not os.path.exists(self._path):
            self._rewrite([])
            return
        with open(self._path, "rb") as f:
            data = f.read()
        scan = scan_journal(self._path, data)
        if scan.damaged:
            raise JournalDamaged(self._path, scan.good, scan.next_record)
        if scan.good != len(data):
            log.warning("journal %s: dropping %d bytes of torn tail at byte %d%s", self._path,
                        len(data) - scan.good, scan.good,
                        " (a record left unwritten by a crash, and what follows it)"
                        if scan.next_record is not None else "")
            _cut(self._path, scan.good)
        self._entries = scan.entries
        self._offsets = scan.offsets
        self._end = scan.good
        self._shift = 0
        self.bytes = sum(len(e[0]) for e in scan.entries)
        self._fd = os.open(self._path, os.O_WRONLY | os.O_APPEND)

    def _rewrite(self, entries: Iterable[Entry]) -> None:
        """Replace the whole file (creation, clear) atomically."""
        self._discard_job()
        self._generation += 1
        chunks = [MAGIC]
        offsets = []
        pos = len(MAGIC)
        for command, idx, term in entries:
            record = self._record(b"E" + ENTRY.pack(idx, term) + command)
            chunks.append(record)
            offsets.append(pos)
            pos += len(record)
        self._durable_write(self._path, b"".join(chunks))
        old = getattr(self, "_fd", None)
        self._fd = os.open(self._path, os.O_WRONLY | os.O_APPEND)
        if old is not None:
            os.close(old)
        self._entries = list(entries)
        self._offsets = offsets
        self._end = pos
        self._shift = 0
        self.bytes = sum(len(e[0]) for e in self._entries)
        self._dirty = False

    @staticmethod
    def _record(payload: bytes) -> bytes:
        return RECORD.pack(len(payload), zlib.crc32(payload)) + payload

    def _append(self, payload: bytes) -> None:
        data = self._record(payload)
        view = memoryview(data)
        while view:
            n = os.write(self._fd, view)
            view = view[n:]
        self._end += len(data)
        self._dirty = True

    # -- pysyncobj journal interface ---------------------------------------
    def add(self, command: bytes, idx: int, term: int) -> None:
        command = bytes(command)
        self._entries.append((command, idx, term))
        self._offsets.append(self._end)
        self.bytes += len(command)
        self._append(b"E" + ENTRY.pack(idx, term) + command)

    def clear(self) -> None:
        self._rewrite([])

    def deleteEntriesFrom(self, entryFrom: int) -> None:
        if entryFrom >= len(self._entries):
            return
        first_dropped = self._entries[entryFrom][1]
        self.bytes -= sum(len(e[0]) for e in self._entries[entryFrom:])
        del self._entries[entryFrom:]
        del self._offsets[entryFrom:]
        self._append(b"T" + TRUNC.pack(first_dropped))

    def deleteEntriesTo(self, entryTo: int) -> None:
        # Only called after a snapshot covering these entries is durable, so
        # the file may keep them until the helper's copy replaces it.
        self.bytes -= sum(len(e[0]) for e in self._entries[:entryTo])
        del self._entries[:entryTo]
        del self._offsets[:entryTo]
        self._request_compaction()

    def align(self, prev: Entry, last: Entry) -> int:
        """Start the journal at ``prev`` if it holds ``prev`` then ``last``
        further on; returns how many entries were dropped.

        After compaction the journal starts with the snapshot's last two
        entries, which pysyncobj checks when it loads the snapshot. A crash
        after the snapshot is on disk but before the journal is cut leaves
        the older entries in front; pysyncobj would then empty the journal
        and lose the entries that follow the snapshot."""
        for k in range(1, len(self._entries) - 1):
            if self._entries[k] == prev and self._entries[k + 1] == last:
                self.deleteEntriesTo(k)
                return k
        return 0

    @overload
    def __getitem__(self, item: int) -> Entry: ...

    @overload
    def __getitem__(self, item: slice) -> list[Entry]: ...

    def __getitem__(self, item: int | slice) -> Entry | list[Entry]:
        return self._entries[item]

    def __len__(self) -> int:
        return len(self._entries)

    def _destroy(self) -> None:
        self._stop_helper()
        self.sync()
        self._discard_job()
        if self._covered_bytes():
            # A clean stop leaves no covered records behind.
            job = self._job = self._new_job()
            self._copy_job(job)
            self._finish_job(job)
        self._flush_meta()
        self._write_commit_index()
        for name in ("_fd", "_commit_fd"):
            fd = getattr(self, name)
            if fd is not None:
                os.close(fd)
                setattr(self, name, None)

    # -- compaction of the file ---------------------------------------------
    def _live_start(self) -> int:
        """File offset of the first record still held (or of the end)."""
        return (self._offsets[0] if self._offsets else self._end) - self._shift

    def _covered_bytes(self) -> int:
        """Bytes at the front of the file that only hold dropped records."""
        return self._live_start() - len(MAGIC)

    def _new_job(self) -> dict:
        return {
            "generation": self._generation,
            "source": os.open(self._path, os.O_RDONLY),
            "start": self._live_start(),
            "end": self._end - self._shift,
        }

    def _request_compaction(self) -> None:
        if self._job is not None or self._closing or not self._covered_bytes():
            return
        self._job = self._new_job()
        with self._wake:
            if self._helper is None:
                self._helper = threading.Thread(target=self._helper_loop,
                                                name="raft-journal-compact", daemon=True)
                self._helper.start()
            self._wake.notify()

    def _helper_loop(self) -> None:
        while True:
            with self._wake:
                while not self._closing and (self._job is None or self._ready):
                    self._wake.wait()
                if self._closing:
                    return
                job = self._job
                assert job is not None      # the wait ends on closing or on a job to copy
            try:
                self._copy_job(job)
            except OSError as exc:
                log.warning("journal %s: compaction copy failed: %s", self._path, exc)
                job["failed"] = True
            with self._wake:
                self._ready = job

    def _copy_job(self, job: dict) -> None:
        """Write the live records known when the job was made to
        ``log.compact`` and make them durable (helper thread)."""
        fd = os.open(self._compact_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        job["target"] = fd
        os.write(fd, MAGIC)
        _copy(job["source"], fd, job["start"], job["end"], len(MAGIC))
        os.fdatasync(fd)
        job["copied"] = job["end"]

    def _finish_job(self, job: dict) -> None:
        """Bring the copy up to date, make it durable and put it in place of
        the log (Raft thread, inside ``sync()``)."""
        if job.get("failed") or job["generation"] != self._generation:
            self._discard_job()
            return
        end = self._end - self._shift
        offset = len(MAGIC) + job["copied"] - job["start"]
        try:
            _copy(job["source"], job["target"], job["copied"], end, offset)
            os.fdatasync(job["target"])
        except OSError as exc:
            log.warning("journal %s: compaction not finished: %s", self._path, exc)
            self._discard_job()
            return
        self._job, self._ready = None, {}
        os.replace(self._compact_path, self._path)
        fsutil.fsync_dir(self._dir)
        old = self._fd
        self._fd = os.open(self._path, os.O_WRONLY | os.O_APPEND)
        os.close(old)
        os.close(job["source"])
        os.close(job["target"])
        self._shift += job["start"] - len(MAGIC)
        self._dirty = False
        self.compactions += 1
        self._request_compaction()          # cut again since the job was made

    def _discard_job(self) -> None:
        job = self._job
        if job is None:
            return
        if self._helper is not None and not self._ready and not self._closing:
            return      # still copying: dropped when it is handed over
        self._job, self._ready = None, {}
        for name in ("source", "target"):
            if name in job:
                os.close(job[name])
        if "target" in job and os.path.exists(self._compact_path):
            os.unlink(self._compact_path)

    def _stop_helper(self) -> None:
        with self._wake:
            self._closing = True
            self._wake.notify()
        if self._helper is not None:
            self._helper.join()
            self._helper = None

    def setRaftCommitIndex(self, raftCommitIndex: int) -> None:
        self._commit_index = raftCommitIndex

    def getRaftCommitIndex(self) -> int:
        return self._commit_index

    def _read_commit_index(self) -> int:
        fallback = self._meta.get("commit_index", 1)
        try:
            with open(self._commit_path, "rb") as f:
                data = f.read(COMMIT.size)
        except FileNotFoundError:
            return fallback
        if len(data) != COMMIT.size:
            return fallback
        index, crc = COMMIT.unpack(data)
        if zlib.crc32(data[:8]) != crc:
            return fallback
        return index

    def _write_commit_index(self) -> None:
        if self._commit_index == self._commit_written:
            return
        if self._commit_fd is None:
            self._commit_fd = os.open(self._commit_path, os.O_WRONLY | os.O_CREAT, 0o600)
        index = self._commit_index
        os.pwrite(self._commit_fd, COMMIT.pack(index, zlib.crc32(TRUNC.pack(index))), 0)
        self._commit_written = self._commit_index

    def setCurrentTerm(self, term: int, votedForNodeId: Any) -> None:
        # Raft: term and vote are durable before any message reflecting them.
        self._meta["term"] = term
        self._meta["voted_for"] = votedForNodeId
        self._meta_dirty = True
        self._flush_meta()

    def getCurrentTerm(self) -> int:
        return self._meta.get("term", 0)

    def getVotedForNodeId(self) -> Any:
        return self._meta.get("voted_for")

    def onOneSecondTimer(self) -> None:
        self.sync()
        self._flush_meta()
        self._write_commit_index()

    def flush(self) -> None:
        self.sync()

    # -- durability ---------------------------------------------------------
    @property
    def dirty(self) -> bool:
        return self._dirty

    def sync(self) -> None:
        if self._ready and self._job is not None:
            started = time.monotonic()
            self._finish_job(self._job)
            self.sync_seconds += time.monotonic() - started
        if self._dirty and self._fd is not None:
            started = time.monotonic()
            os.fdatasync(self._fd)
            self.sync_seconds += time.monotonic() - started
            self._dirty = False
            self.syncs += 1

    def _flush_meta(self) -> None:
        if self._meta_dirty:
            self._durable_write(self._meta_path, json.dumps(self._meta).encode())
            self._meta_dirty = False

    def _durable_write(self, path: str, data: bytes) -> None:
        started = time.monotonic()
        fsutil.atomic_write(path, data)
        self.sync_seconds += time.monotonic() - started


# -- reading a journal file, telling a torn tail from damage --------------------------
SECTOR = 512
# The manager's exit status when it refuses a damaged journal (EX_DATAERR).
EXIT_JOURNAL_DAMAGED = 65


class JournalDamaged(RuntimeError):
    """A bad record with intact records after it: not what a crash leaves."""

    def __init__(self, path: str, offset: int, next_record: int | None):
        self.path, self.offset, self.next_record = path, offset, next_record
        super().__init__(
            f"raft journal {path} is damaged at byte {offset} (a bad record, intact ones "
            f"after it from byte {next_record}): start with --repair-journal to cut it "
            f"there; this manager then gets the entries after it from the leader")


class JournalScan:
    __slots__ = ("entries", "offsets", "good", "next_record", "damaged", "dropped")

    def __init__(self) -> None:
        self.entries: list[Entry] = []
        self.offsets: list[int] = []
        self.good = len(MAGIC)          # end of the last good record
        self.next_record: int | None = None     # first intact record after a bad one
        self.damaged = False
        self.dropped = 0                # intact records after the bad one


def _record_at(data: bytes, pos: int) -> tuple[bytes, int] | None:
    """The payload and end of the valid record at ``pos``, or None."""
    if pos + RECORD.size > len(data):
        return None
    length, crc = RECORD.unpack_from(data, pos)
    start = pos + RECORD.size
    end = start + length
    if not length or end > len(data):
        return None
    payload = data[start:end]
    if zlib.crc32(payload) != crc:
        return None
    kind = payload[:1]
    if (kind == b"E" and length >= 1 + ENTRY.size) or (kind == b"T" and length == 1 + TRUNC.size):
        return payload, end
    return None


def _next_record(data: bytes, pos: int) -> int | None:
    """Where the first valid record after the bad one at ``pos`` starts."""
    claimed = pos + RECORD.size + RECORD.unpack_from(data, pos)[0] \
        if pos + RECORD.size <= len(data) else len(data)
    if claimed < len(data) and _record_at(data, claimed) is not None:
        return claimed          # only the record's content is bad
    at = pos + 1
    while at + RECORD.size < len(data):
        # A record's payload starts with its kind: look only there.
        hits = [h for h in (data.find(b"E", at + RECORD.size), data.find(b"T", at + RECORD.size))
                if h >= 0]
        if not hits:
            return None
        candidate = min(hits) - RECORD.size
        if _record_at(data, candidate) is not None:
            return candidate
        at = candidate + 1
    return None


def _unwritten(data: bytes, start: int, end: int) -> bool:
    """Whether ``start:end`` looks like blocks a crash left unwritten: a
    zero record header, or a whole zero sector (a file extended by writes
    whose blocks never reached the disk reads as zeros there)."""
    if data[start:start + RECORD.size] == bytes(RECORD.size):
        return True
    zero = bytes(SECTOR)
    first = -(-start // SECTOR) * SECTOR
    return any(data[s:s + SECTOR] == zero for s in range(first, end - SECTOR + 1, SECTOR))


def scan_journal(path: str, data: bytes) -> JournalScan:
    """Read a journal file's records.

    A crash can leave the end of the file torn: a record cut short, or
    records appended since the last sync of which some blocks reached the
    disk and others did not (those read as zeros). Everything from the
    first bad record on is then a torn tail, never synced, so never
    acknowledged: it is cut. A bad record with intact records after it,
    and no sign of unwritten blocks in between, is damage (a bad disk, a
    stray write): those records may be acknowledged entries, so cutting
    them silently could lose committed writes. That is ``damaged``."""
    if not data.startswith(MAGIC):
        raise RuntimeError(f"{path}: not a Flotilla journal")
    scan = JournalScan()
    pos = len(MAGIC)
    while pos < len(data):
        record = _record_at(data, pos)
        if record is None:
            break
        payload, end = record
        if payload[:1] == b"E":
            idx, term = ENTRY.unpack_from(payload, 1)
            scan.entries.append((bytes(payload[1 + ENTRY.size:]), idx, term))
            scan.offsets.append(pos)
        else:
            (idx,) = TRUNC.unpack_from(payload, 1)
            while scan.entries and scan.entries[-1][1] >= idx:
                scan.entries.pop()
                scan.offsets.pop()
        pos = end
    scan.good = pos
    if pos < len(data):
        scan.next_record = _next_record(data, pos)
        if scan.next_record is not None:
            scan.damaged = not _unwritten(data, pos, scan.next_record)
            at = scan.next_record
            while (record := _record_at(data, at)) is not None:
                scan.dropped += 1
                at = record[1]
    return scan


def _cut(path: str, size: int) -> None:
    with open(path, "r+b") as f:
        f.truncate(size)
        os.fsync(f.fileno())


def check_journal(directory: str) -> JournalDamaged | None:
    """The damage in ``directory``'s journal, if any (reads only)."""
    path = os.path.join(directory, "log")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return None
    scan = scan_journal(path, data)
    return JournalDamaged(path, scan.good, scan.next_record) if scan.damaged else None


def repair_journal(directory: str) -> str | None:
    """Cut a damaged journal at its bad record; says what was cut, or None
    if the journal was not damaged. The records after it are lost on this
    member: Raft sends them again from the leader (which has every
    committed entry, as a majority of the members do)."""
    damage = check_journal(directory)
    if damage is None:
        return None
    with open(damage.path, "rb") as f:
        data = f.read()
    scan = scan_journal(damage.path, data)
    _cut(damage.path, damage.offset)
    return (f"raft journal {damage.path} cut at byte {damage.offset}: {scan.dropped} intact "
            f"records after the bad one dropped ({len(data) - damage.offset} bytes); this "
            f"manager gets them again from the leader")


def _copy(source: int, target: int, start: int, end: int, offset: int) -> None:
    """Copy bytes ``start:end`` of ``source`` to ``target`` at ``offset``."""
    while start < end:
        count = min(end - start, COPY_CHUNK)
        try:
            n = os.copy_file_range(source, target, count, start, offset)
        except OSError:
            data = os.pread(source, count, start)
            n = os.pwrite(target, data, offset) if data else 0
        if n <= 0:
            raise OSError(f"journal copy stopped at byte {start} of {end}")
        start += n
        offset += n
