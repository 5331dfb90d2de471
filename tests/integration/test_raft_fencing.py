"""Raft members take writes only from their own leader role.

Three real Raft members (mutual TLS on loopback, journals on disk) in this
process. A member that is not the leader must not get a command committed
by handing it to the leader over the Raft connection: that is how a deposed
leader's last decisions would otherwise be applied by its successor.
"""

import os
import socket
import threading

import pytest

from flotilla.ca import certs
from flotilla.manager.raft import codec
from flotilla.manager.raft.node import RaftNode, RaftSettings
from flotilla.manager.raftsecurity import RaftSecurity, SecurityCounters
from flotilla.manager.store.store import Op, Store, new_id
from pysyncobj.config import FAIL_REASON
from tests.helpers.cluster import wait_for


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def members(tmp_path):
    cluster_id = "fencingcluster"
    root = certs.RootCA.create(cluster_id)
    ca = tmp_path / "ca.pem"
    ca.write_bytes(root.cert_pem)
    addrs = [f"127.0.0.1:{_free_port()}" for _ in range(3)]
    ids = [f"member{i}" for i in range(3)]
    out = []
    for i in range(3):
        d = tmp_path / f"m{i}"
        (d / "raft").mkdir(parents=True, mode=0o700)
        key, cert = root.issue(certs.ROLE_MANAGER, ids[i], cluster_id, 3600)
        certs.write_node_bundle(str(d / "node.pem"), key, cert)
        store = Store()
        security = RaftSecurity(bundle_path=str(d / "node.pem"), ca_path=str(ca),
                                cluster_id=cluster_id, store=store,
                                members_path=str(d / "raft" / "members.json"),
                                counters=SecurityCounters())
        security.remember(dict(zip(addrs, ids)))
        raft = RaftNode(addrs[i], addrs, str(d / "raft"), store.sm, security, RaftSettings())
        store.attach(raft)
        out.append((store, raft))
    for store, raft in out:
        store.start()
        raft.start()
    yield out
    for store, raft in out:
        raft.stop()
        store.stop()


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
