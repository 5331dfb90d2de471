"""Where the members of a cluster place their snapshots (``compaction_due``)."""

import random

import pytest

from flotilla.manager.raft.node import RaftSettings, compaction_due

LIMIT = 1000


class Member:
    """A member's log: what it holds, and where it wrote its snapshots. A
    snapshot takes ``delay`` entries to write; the log is cut to what came
    after the entry it was taken at."""

    def __init__(self, rank, count, delay=0):
        self.rank, self.count, self.delay = rank, count, delay
        self.log: list[int] = []           # sizes of the entries it holds
        self.points: list[int] = []        # position of each snapshot taken
        self.writing = None                # (entries to go, entries covered)

    def append(self, position, size):
        self.log.append(size)
        if self.writing is not None:
            left, covered = self.writing
            if left > 1:
                self.writing = (left - 1, covered)
                return
            del self.log[:covered]
            self.writing = None
        if compaction_due(position, sum(self.log), LIMIT, self.rank, self.count):
            self.points.append(position)
            if self.delay:
                self.writing = (self.delay, len(self.log))
            else:
                self.log.clear()


def run(members, sizes):
    position, most = 0, 0
    for size in sizes:
        position += size
        for m in members:
            m.append(position, size)
            most = max(most, sum(m.log))
    return position, most


@pytest.mark.parametrize("count", [3, 5, 7])
def test_members_take_turns_and_keep_their_logs_bounded(count):
    rng = random.Random(count)
    sizes = [rng.randint(1, 40) for _ in range(20000)]
    members = [Member(rank, count) for rank in range(count)]
    total, most = run(members, sizes)
    # Each member writes a snapshot about every LIMIT.
    for m in members:
        assert total // LIMIT - 1 <= len(m.points) <= total // LIMIT + 1
    # No two members write theirs at the same place: points are spread
    # over the period, at least most of a share apart.
    share = LIMIT / count
    points = sorted(p for m in members for p in m.points)
    gaps = [b - a for a, b in zip(points, points[1:])]
    assert min(gaps) >= share - 2 * max(sizes)
    assert most <= 1.25 * LIMIT + max(sizes)


def test_one_member_snapshots_at_its_limit():
    members = [Member(0, 1)]
    total, most = run(members, [10] * 1000)
    assert members[0].points == list(range(LIMIT, total + 1, LIMIT))
    assert most <= LIMIT + 10


def test_writes_meanwhile_stay_in_the_log_and_turns_hold():
    # Entries that arrive while a snapshot is written are not covered by it.
    members = [Member(rank, 3, delay=15) for rank in range(3)]
    total, most = run(members, [10] * 3000)
    for m in members:
        assert len(m.points) >= total // LIMIT - 1
    points = sorted(p for m in members for p in m.points)
    assert min(b - a for a, b in zip(points, points[1:])) >= LIMIT / 3 - 20
    assert most <= 1.25 * LIMIT + 15 * 10 + 10


def test_a_small_log_is_never_cut_and_a_missed_turn_is_made_up():
    assert not compaction_due(10 * LIMIT + 1, LIMIT / 4 - 1, LIMIT, 0, 3)
    # Just past its point, with a full period's entries held: due.
    assert compaction_due(LIMIT + 5, LIMIT, LIMIT, 0, 3)
    # Not written then (busy, or it failed): still due later in the period.
    assert compaction_due(LIMIT + 600, LIMIT + 600, LIMIT, 0, 3)
    # Written at its point: not due again until the next one.
    assert not compaction_due(LIMIT + 600, 600, LIMIT, 0, 3)
    assert compaction_due(2 * LIMIT + 1, LIMIT + 1, LIMIT, 0, 3)


def test_a_member_that_restarts_keeps_its_turn():
    # Positions are the cluster's, so a member coming back with the log it
    # had goes on at its own points: the first entry past a third of the
    # period, for the second of three members.
    m = Member(1, 3)
    run([m], [10] * 500)
    again = Member(1, 3)
    again.log = list(m.log)
    position = 5000
    for _ in range(500):
        position += 10
        again.append(position, 10)
    assert m.points and again.points
    assert {p % LIMIT for p in m.points + again.points} == {340}


def test_compaction_limits_that_make_no_sense_are_refused():
    for bad in ({"compaction_bytes": 0}, {"compaction_entries": 1},
                {"compaction_seconds": 0}):
        with pytest.raises(ValueError):
            RaftSettings(**bad)
    assert RaftSettings().compaction_bytes == 16 * 1024 * 1024
