"""Promotion and demotion at run time, and the quorum guard."""

import os
import socket

from flotilla.ca import certs
from tests.helpers.cluster import wait_for


def cert_role(node):
    return certs.identity_from_pem(open(node.bundle(), "rb").read()).role


def members(c):
    return c.health(c.wait_leader_ready())["raft"]["members"]


def api_open(node):
    host, port = node.addr.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=1):
            return True
    except OSError:
        return False


def test_promote_and_demote_a_worker(make_cluster):
    c = make_cluster()
    c.init("m1")
    c.join("m2")
    c.join("m3")
    w1 = c.join("w1", "worker")
    pid = w1.proc.pid
    assert cert_role(w1) == "worker" and not api_open(w1)

    c.cli("node", "promote", "w1")
    c.wait_node_ready(w1, manager=True)
    assert len(members(c)) == 4 and w1.raft_addr in members(c)
    assert cert_role(w1) == "manager"
    assert c.health(w1)["raft"]["state"] == "follower"
    assert w1.proc.pid == pid and w1.running          # same process, no restart

    c.cli("node", "demote", "w1")
    wait_for(lambda: c.node_view(w1)["role"] == "worker", 30, what="demotion")
    wait_for(lambda: len(members(c)) == 3, 30, what="raft membership 3")
    wait_for(lambda: cert_role(w1) == "worker", 30, what="worker certificate")
    wait_for(lambda: not api_open(w1), 30, what="manager stopped on w1")
    wait_for(lambda: not os.path.exists(os.path.join(w1.data_dir, "raft")), 15,
             what="raft data removed")
    assert w1.proc.pid == pid and w1.running
    assert c.node_view(w1)["state"] == "ready"
    # The cluster still takes writes.
    c.cli("cluster", "join-token", "worker", "--rotate", "-q")


def test_quorum_guard(make_cluster):
    c = make_cluster()
    c.init("m1")
    m2 = c.join("m2")
    m3 = c.join("m3")
    m3.kill()
    wait_for(lambda: c.node_view(m3)["manager"]["reachability"] == "unreachable", 20,
             what="m3 unreachable")
    # Demoting m2 would leave {m1, m3} with only m1 reachable: refused.
    res = c.cli("node", "demote", "m2", check=False)
    assert res.returncode == 1 and "quorum" in res.stderr and "--force" in res.stderr
    assert c.node_view(m2)["desired_role"] == "manager"
    # Demoting the dead m3 leaves {m1, m2}, both reachable: allowed.
    c.cli("node", "demote", "m3")
    wait_for(lambda: len(members(c)) == 2, 30, what="m3 out of raft")
    wait_for(lambda: c.node_view(m3)["role"] == "worker", 30, what="m3 worker")
    # Two managers left; the cluster still works, and demoting one more
    # (the last but one) is refused only when it would break quorum.
    c.cli("cluster", "update", "--heartbeat-period", "1s")
    res = c.cli("node", "demote", "m1", check=False)
    assert res.returncode == 0, res.stderr     # {m2} alone remains and is reachable


def test_demote_the_leader(make_cluster):
    c = make_cluster()
    m1 = c.init("m1")
    c.join("m2")
    c.join("m3")
    c.cli("node", "demote", "m1")
    wait_for(lambda: (c.leader() or m1) is not m1, 30, what="leadership to move")
    wait_for(lambda: c.node_view(m1)["role"] == "worker", 30, what="old leader demoted")
    wait_for(lambda: len(members(c)) == 2, 30)
    wait_for(lambda: cert_role(m1) == "worker", 30)
    c.wait_node_ready(m1)


def test_five_managers_survive_two_failures(make_cluster):
    c = make_cluster()
    c.init("m1")
    for name in ("m2", "m3", "m4", "m5"):
        c.join(name)
    assert len(members(c)) == 5
    leader = c.wait_leader_ready()
    # Role changes through the node update endpoint too.
    w = c.join("w1", "worker")
    c.admin().patch(f"/v1/nodes/{w.config()['node_id']}", {"role": "manager", "labels_add": {"a": "b"}})
    c.wait_node_ready(w, manager=True)
    assert c.node_view(w)["labels"] == {"a": "b"}
    c.admin().patch(f"/v1/nodes/{w.config()['node_id']}", {"role": "worker"})
    wait_for(lambda: c.node_view(w)["role"] == "worker" and len(members(c)) == 5, 30)
    # Two managers down (one of them the leader): the other three carry on.
    others = [n for n in c.nodes.values() if n is not leader and n.name != "w1"]
    for victim in (leader, others[0]):
        victim.kill()
    survivors = [n for n in c.nodes.values() if n.running and n.name != "w1"]
    c.admin(survivors).post("/v1/configs", {"name": "after-two-failures", "data": "eA=="})
    assert c.leader() in survivors
