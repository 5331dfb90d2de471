"""A manager cut off from the others does not depose the leader when it
comes back.

Three real Raft members (mutual TLS on loopback, journals on disk) in this
process. One follower is cut off: everything it sends is dropped and
everything it receives is ignored, while its connections stay up. Its
election timer runs out again and again; it asks for pre-votes, nobody
answers, and its term does not move. Once it hears again, it follows the
same leader at the same term and catches up.
"""

import threading
import time

import pytest
from pysyncobj.monotonic import monotonic as raft_clock   # not time.monotonic's clock

from flotilla.manager.store.store import Op, new_id
from tests.helpers.cluster import wait_for
from tests.helpers.raftmembers import raft_members


@pytest.fixture
def members(tmp_path):
    with raft_members(tmp_path, "prevotecluster", prevote_when=lambda: True) as out:
        yield out


class Cut:
    """Cuts a member off at the message level, and counts the election
    requests it tried to send meanwhile."""

    def __init__(self, raft):
        self._transport = raft.raft_transport
        self._send = self._transport.send
        self._deliver = self._transport._onMessageReceivedCallback
        self._lock = threading.Lock()
        self.asked: dict[str, int] = {}

    def __enter__(self):
        def send(node, message):
            if isinstance(message, dict) and message.get("type") in ("pre_vote", "request_vote"):
                with self._lock:
                    self.asked[message["type"]] = self.asked.get(message["type"], 0) + 1
            return True

        self._transport.send = send
        self._transport._onMessageReceivedCallback = lambda node, message: None
        return self

    def __exit__(self, *exc):
        self._transport.send = self._send
        self._transport._onMessageReceivedCallback = self._deliver

    def rounds(self) -> int:
        with self._lock:
            return sum(self.asked.values())


def _config(name):
    return [Op.create("config", {"id": new_id(), "name": name, "data": "eA==", "labels": {}})]


@pytest.mark.parametrize("slow_disk", [False, True], ids=["", "slow-disk"])
def test_a_member_that_was_cut_off_rejoins_without_deposing_the_leader(members, slow_disk):
    leader = wait_for(lambda: next((m for m in members if m[1].is_leader), None), 30,
                      what="a leader")
    leader[0].barrier()
    before = leader[1].status()
    cut_store, cut_raft = next(m for m in members if m is not leader)
    if slow_disk:
        # The election timer runs out while the tick is in the journal's
        # once-a-second sync: after the member last looked at the timer and
        # before the tick decides on an election. Here that happens on
        # every tick (the sync itself still runs once a second).
        journal = cut_raft.journal
        sync_each_second = journal.onOneSecondTimer
        synced = [time.monotonic()]

        def slow_sync():
            cut_raft.one_second_dumps -= 1
            if time.monotonic() - synced[0] >= 1.0:
                synced[0] = time.monotonic()
                sync_each_second()
            cut_raft.election_deadline = raft_clock() - 0.001
        journal.onOneSecondTimer = slow_sync
    with Cut(cut_raft) as cut:
        # Its election timer (0.3-0.7 s) runs out several times over.
        wait_for(lambda: cut.rounds() >= 3, 30, what="three election attempts while cut off")
        leader[0].commit(_config("while-cut-off"))
        cut_term = cut_raft.status()["term"]
    if slow_disk:
        journal.onOneSecondTimer = sync_each_second
    assert cut.asked.get("request_vote", 0) == 0, cut.asked
    assert cut_term == before["term"], (cut_term, before["term"], cut.asked)
    leader[0].commit(_config("after"))
    wait_for(lambda: {c["name"] for c in cut_store.list("config")} >= {"while-cut-off", "after"},
             15, what="the member back in step")
    after = leader[1].status()
    assert leader[1].is_leader
    assert after["term"] == before["term"]
    assert cut_raft.status()["term"] == before["term"]
    assert cut_raft.status()["leader"] == leader[1].self_address
