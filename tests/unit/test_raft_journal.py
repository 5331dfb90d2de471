import os
import time

import pytest

from flotilla.manager.raft.journal import (DurableJournal, JournalDamaged, check_journal,
                                             repair_journal)


def test_entries_survive_reopen(tmp_path):
    j = DurableJournal(str(tmp_path))
    for i in range(1, 101):
        j.add(b"cmd%d" % i, i, 1)
    j.sync()
    j._destroy()
    j2 = DurableJournal(str(tmp_path))
    assert len(j2) == 100
    assert j2[0] == (b"cmd1", 1, 1)
    assert j2[-1] == (b"cmd100", 100, 1)


def test_truncation_is_replayed(tmp_path):
    j = DurableJournal(str(tmp_path))
    for i in range(1, 11):
        j.add(b"a", i, 1)
    j.deleteEntriesFrom(5)          # drops idx 6..10
    j.add(b"b", 6, 2)
    j._destroy()
    j2 = DurableJournal(str(tmp_path))
    assert [e[1] for e in j2[:]] == [1, 2, 3, 4, 5, 6]
    assert j2[-1] == (b"b", 6, 2)


def test_compaction_keeps_tail(tmp_path):
    j = DurableJournal(str(tmp_path))
    for i in range(1, 11):
        j.add(b"x", i, 1)
    j.deleteEntriesTo(8)
    assert [e[1] for e in j[:]] == [9, 10]
    j.add(b"y", 11, 1)
    j._destroy()
    assert [e[1] for e in DurableJournal(str(tmp_path))[:]] == [9, 10, 11]


def test_torn_tail_is_cut(tmp_path):
    j = DurableJournal(str(tmp_path))
    for i in range(1, 4):
        j.add(b"payload", i, 1)
    j._destroy()
    path = os.path.join(str(tmp_path), "log")
    size = os.path.getsize(path)
    with open(path, "ab") as f:          # half a record, as a crash would leave
        f.write(b"\x40\x00\x00\x00\x12\x34")
    j2 = DurableJournal(str(tmp_path))
    assert len(j2) == 3
    assert os.path.getsize(path) == size
    j2.add(b"next", 4, 1)
    j2._destroy()
    assert len(DurableJournal(str(tmp_path))) == 4


def test_corrupt_record_stops_replay(tmp_path):
    j = DurableJournal(str(tmp_path))
    for i in range(1, 4):
        j.add(b"payload-%d" % i, i, 1)
    j._destroy()
    path = os.path.join(str(tmp_path), "log")
    data = bytearray(open(path, "rb").read())
    data[-3] ^= 0xFF                     # flip a byte in the last record
    open(path, "wb").write(bytes(data))
    assert len(DurableJournal(str(tmp_path))) == 2


def _journal_of(tmp_path, count, size=40):
    j = DurableJournal(str(tmp_path))
    for i in range(1, count + 1):
        j.add(b"%04d" % i + b"x" * size, i, 1)
    offsets = list(j._offsets)
    j._destroy()
    return os.path.join(str(tmp_path), "log"), offsets


def _damage(path, at, data):
    with open(path, "r+b") as f:
        f.seek(at)
        f.write(data)


def test_a_bad_record_followed_by_intact_ones_refuses_to_open(tmp_path):
    path, offsets = _journal_of(tmp_path, 10)
    size = os.path.getsize(path)
    _damage(path, offsets[4] + 20, b"\xff")          # one byte of entry 5's command
    with pytest.raises(JournalDamaged) as damaged:
        DurableJournal(str(tmp_path))
    message = str(damaged.value)
    assert f"{path} is damaged at byte {offsets[4]}" in message
    assert "--repair-journal" in message and "\n" not in message
    assert os.path.getsize(path) == size                # nothing was cut
    assert check_journal(str(tmp_path)).offset == offsets[4]
    # Repair cuts at the bad record; the entries after it are gone here
    # (Raft fetches them again from the leader).
    said = repair_journal(str(tmp_path))
    assert f"cut at byte {offsets[4]}" in said and "5 intact records" in said
    j = DurableJournal(str(tmp_path))
    assert [e[1] for e in j] == [1, 2, 3, 4]
    j.add(b"next", 5, 2)
    j._destroy()
    assert [e[1] for e in DurableJournal(str(tmp_path))] == [1, 2, 3, 4, 5]
    assert check_journal(str(tmp_path)) is None and repair_journal(str(tmp_path)) is None


def test_a_bad_record_header_followed_by_intact_ones_refuses_to_open(tmp_path):
    path, offsets = _journal_of(tmp_path, 10)
    _damage(path, offsets[2], b"\x13\x37\x13\x37")   # entry 3's length
    with pytest.raises(JournalDamaged) as damaged:
        DurableJournal(str(tmp_path))
    assert damaged.value.offset == offsets[2] and damaged.value.next_record == offsets[3]


def test_unwritten_blocks_before_intact_records_are_a_torn_tail(tmp_path):
    # A power cut can leave some blocks of the records appended since the
    # last sync on disk and not others, which read as zeros: never synced,
    # never acknowledged, so cut like any torn tail.
    path, offsets = _journal_of(tmp_path, 60, size=100)
    sector = -(-offsets[30] // 512) * 512
    _damage(path, sector, bytes(512))
    first_bad = max(o for o in offsets if o <= sector)
    j = DurableJournal(str(tmp_path))
    assert [e[1] for e in j] == list(range(1, offsets.index(first_bad) + 1))
    assert os.path.getsize(path) == first_bad


def test_term_and_vote_are_durable_immediately(tmp_path):
    j = DurableJournal(str(tmp_path))
    j.setCurrentTerm(7, "127.0.0.1:1")
    # no destroy/flush: the meta must already be on disk
    j2 = DurableJournal(str(tmp_path))
    assert j2.getCurrentTerm() == 7
    assert j2.getVotedForNodeId() == "127.0.0.1:1"


def test_sync_only_when_dirty(tmp_path):
    j = DurableJournal(str(tmp_path))
    j.sync()
    assert j.syncs == 0
    j.add(b"a", 1, 1)
    assert j.dirty
    j.sync()
    j.sync()
    assert j.syncs == 1 and not j.dirty


def test_files_are_private(tmp_path):
    d = tmp_path / "raft"
    j = DurableJournal(str(d))
    j.add(b"a", 1, 1)
    j.setCurrentTerm(1, None)
    assert (os.stat(d).st_mode & 0o777) == 0o700
    assert (os.stat(d / "log").st_mode & 0o777) == 0o600
    assert (os.stat(d / "meta").st_mode & 0o777) == 0o600


def test_bytes_held_follow_appends_truncations_and_compaction(tmp_path):
    j = DurableJournal(str(tmp_path))
    for i in range(1, 11):
        j.add(b"x" * 100, i, 1)
    assert j.bytes == 1000
    j.deleteEntriesFrom(8)          # drops idx 9, 10
    assert j.bytes == 800
    j.deleteEntriesTo(5)            # keeps idx 6..8
    assert j.bytes == 300
    j._destroy()
    assert DurableJournal(str(tmp_path)).bytes == 300


def test_commit_index_is_written_each_second_and_read_back(tmp_path):
    j = DurableJournal(str(tmp_path))
    assert j.getRaftCommitIndex() == 1
    for i in range(1, 6):
        j.add(b"a", i, 1)
    j.setRaftCommitIndex(5)
    j.onOneSecondTimer()
    j.setRaftCommitIndex(6)        # not yet written: a restart sees 5
    assert DurableJournal(str(tmp_path)).getRaftCommitIndex() == 5
    j._destroy()
    assert DurableJournal(str(tmp_path)).getRaftCommitIndex() == 6
    assert (os.stat(tmp_path / "commit").st_mode & 0o777) == 0o600


def test_a_torn_commit_index_falls_back_to_the_meta_one(tmp_path):
    j = DurableJournal(str(tmp_path))
    j.setRaftCommitIndex(9)
    j._destroy()
    path = tmp_path / "commit"
    data = bytearray(path.read_bytes())
    data[0] ^= 0x01
    path.write_bytes(bytes(data))
    assert DurableJournal(str(tmp_path)).getRaftCommitIndex() == 1
    # A journal written by a version that kept the commit index in meta.
    path.unlink()
    (tmp_path / "meta").write_text('{"term": 2, "voted_for": null, "commit_index": 4}')
    j = DurableJournal(str(tmp_path))
    assert (j.getRaftCommitIndex(), j.getCurrentTerm()) == (4, 2)


def test_the_commit_index_costs_no_fsync(tmp_path, monkeypatch):
    j = DurableJournal(str(tmp_path))
    j.add(b"a", 1, 1)
    j.sync()
    calls = []
    monkeypatch.setattr(os, "fsync", lambda fd: calls.append(fd))
    monkeypatch.setattr(os, "fdatasync", lambda fd: calls.append(fd))
    for i in range(2, 12):
        j.setRaftCommitIndex(i)
        j.onOneSecondTimer()
    assert calls == []
    assert DurableJournal(str(tmp_path)).getRaftCommitIndex() == 11


def test_align_drops_what_a_snapshot_covers_when_a_crash_left_it(tmp_path):
    j = DurableJournal(str(tmp_path))
    for i in range(1, 11):
        j.add(b"e%d" % i, i, 1)
    # The snapshot ends with entries 6 and 7; the crash came before the cut.
    assert j.align((b"e6", 6, 1), (b"e7", 7, 1)) == 5
    assert [e[1] for e in j[:]] == [6, 7, 8, 9, 10]
    j._destroy()
    assert [e[1] for e in DurableJournal(str(tmp_path))[:]] == [6, 7, 8, 9, 10]


def test_align_leaves_a_journal_that_does_not_hold_the_boundary(tmp_path):
    j = DurableJournal(str(tmp_path))
    for i in range(1, 6):
        j.add(b"e%d" % i, i, 1)
    assert j.align((b"e1", 1, 1), (b"e2", 2, 1)) == 0       # already aligned
    assert j.align((b"e3", 3, 2), (b"e4", 4, 2)) == 0       # other terms
    assert j.align((b"e3", 3, 1), (b"e5", 5, 1)) == 0       # not consecutive
    assert len(j) == 5


def _wait_for_copy(j, seconds=10.0):
    deadline = time.monotonic() + seconds
    while j._job is not None and not j._ready:
        assert time.monotonic() < deadline, "the compaction copy did not finish"
        time.sleep(0.005)


def test_a_cut_log_is_copied_aside_and_put_in_place_at_the_next_sync(tmp_path):
    j = DurableJournal(str(tmp_path))
    for i in range(1, 1001):
        j.add(b"x" * 200, i, 1)
    j.sync()
    path = tmp_path / "log"
    before = os.path.getsize(path)
    j.deleteEntriesTo(990)              # in memory at once; the file follows
    assert [e[1] for e in j[:]] == list(range(991, 1001))
    assert os.path.getsize(path) == before
    _wait_for_copy(j)
    j.add(b"y", 1001, 1)               # came while the copy was made
    j.deleteEntriesFrom(10)             # and a truncation of it
    j.add(b"z", 1001, 2)
    j.sync()
    assert j.compactions == 1 and not j.dirty
    assert os.path.getsize(path) < 3000
    assert not (tmp_path / "log.compact").exists()
    j.add(b"w", 1002, 2)
    j.sync()
    expected = list(j[:])
    j2 = DurableJournal(str(tmp_path))       # as after a crash: no _destroy
    assert j2[:] == expected
    assert j2[-2:] == [(b"z", 1001, 2), (b"w", 1002, 2)]
    assert (os.stat(path).st_mode & 0o777) == 0o600


def test_a_crash_before_the_copy_is_in_place_keeps_every_entry(tmp_path):
    j = DurableJournal(str(tmp_path))
    for i in range(1, 101):
        j.add(b"e%d" % i, i, 1)
    j.sync()
    j.deleteEntriesTo(50)
    _wait_for_copy(j)
    j.add(b"e101", 101, 1)
    os.fdatasync(j._fd)                 # the append is on disk; no rename yet
    j2 = DurableJournal(str(tmp_path))
    assert [e[1] for e in j2[:]] == list(range(1, 102))
    assert not (tmp_path / "log.compact").exists()
    assert j2.align((b"e51", 51, 1), (b"e52", 52, 1)) == 50
    j2._destroy()
    assert [e[1] for e in DurableJournal(str(tmp_path))[:]] == list(range(51, 102))


def test_a_copy_made_before_the_log_was_cleared_is_dropped(tmp_path):
    j = DurableJournal(str(tmp_path))
    for i in range(1, 101):
        j.add(b"e%d" % i, i, 1)
    j.deleteEntriesTo(50)
    j.clear()                           # a snapshot from the leader replaces it all
    j.add(b"s1", 500, 3)
    j.add(b"s2", 501, 3)
    _wait_for_copy(j)
    j.sync()
    assert j.compactions == 0
    assert not (tmp_path / "log.compact").exists()
    j._destroy()
    assert DurableJournal(str(tmp_path))[:] == [(b"s1", 500, 3), (b"s2", 501, 3)]


def test_compactions_follow_one_another(tmp_path):
    j = DurableJournal(str(tmp_path))
    index = 0
    for _ in range(5):
        for _ in range(200):
            index += 1
            j.add(b"c%d" % index, index, 1)
        j.sync()
        j.deleteEntriesTo(len(j) - 2)
        _wait_for_copy(j)
        j.sync()
    assert j.compactions == 5
    assert [e[1] for e in j[:]] == [index - 1, index]
    assert [e[1] for e in DurableJournal(str(tmp_path))[:]] == [index - 1, index]
    j._destroy()
