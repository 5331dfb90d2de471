"""Raft members take writes only from their own leader role.

Three real Raft members (mutual TLS on loopback, journals on disk) in this
process. A member that is not the leader must not get a command committed
by handing it to the leader over the Raft connection: that is how a deposed
leader's last decisions would otherwise be applied by its successor.
"""

import threading

import pytest

from flotilla.manager.raft import codec
from flotilla.manager.store.store import Op, new_id
from pysyncobj.config import FAIL_REASON
from tests.helpers.cluster import wait_for
from tests.helpers.raftmembers import raft_members


@pytest.fixture
def members(tmp_path):
    with raft_members(tmp_path, "fencingcluster") as out:
        yield out


def test_a_follower_cannot_get_a_command_committed_through_the_leader(members):
    leader = wait_for(lambda: next((m for m in members if m[1].is_leader), None), 30,
                      what="a leader")
    leader[0].barrier()
    follower_store, follower_raft = next(m for m in members if m is not leader)
    name = f"from-a-follower-{new_id()}"
    txn = [Op.create("config", {"id": new_id(), "name": name, "data": "eA==", "labels": {}})]
    outcome = {}
    done = threading.Event()

    def callback(result, err):
        outcome["err"] = err
        done.set()

    follower_raft.propose(codec.pack({"txns": [txn]}), callback)
    assert done.wait(10), "the follower's command got no answer"
    assert outcome["err"] == FAIL_REASON.NOT_LEADER
    # A write through the leader afterwards is applied everywhere; the
    # follower's command is nowhere.
    leader[0].commit([Op.create("config", {"id": new_id(), "name": "after", "data": "eA==",
                                           "labels": {}})])
    for store, _ in members:
        wait_for(lambda s=store: any(c["name"] == "after" for c in s.list("config")), 10,
                 what="the leader's write on every member")
        assert not any(c["name"] == name for c in store.list("config"))
