"""A manager's Raft peers are the members of the configuration in effect.

- A restarted manager replays its store only up to the commit index it
  saved last (about once a second, without fsync); a manager that joined
  just before the crash is in the membership it restarts with, but not yet
  a manager in that store. It must still be let in: it may be the only
  peer able to bring the store forward.
- ``has_quorum`` means contact with a majority (a leader heard from within
  the contact window), not connections.
- The agent of a manager whose own manager does not serve reaches the
  other managers, which its manager recorded with the Raft membership, even
  when no answer named them to it yet.
"""

import base64
import json
import os
import socket
import struct
import threading
import zlib

from flotilla.manager.raft import journal as raftjournal
from flotilla.manager.raft.node import REGULAR
from flotilla.manager.store.store import Op, new_id
from tests.helpers.cluster import wait_for
from tests.helpers.raftmembers import raft_group


def _config(name):
    return Op.create("config", {"id": new_id(), "name": name,
                                "data": base64.b64encode(b"x").decode(), "labels": {}})


def _journal_entries(raft_dir):
    """(index, command) of every entry in a stopped manager's journal."""
    with open(os.path.join(raft_dir, "log"), "rb") as f:
        data = f.read()
    assert data.startswith(raftjournal.MAGIC)
    pos, out = len(raftjournal.MAGIC), []
    while pos + raftjournal.RECORD.size <= len(data):
        length, crc = raftjournal.RECORD.unpack_from(data, pos)
        payload = data[pos + raftjournal.RECORD.size:pos + raftjournal.RECORD.size + length]
        if len(payload) != length or zlib.crc32(payload) != crc:
            break
        if payload[:1] == b"E":
            idx, _term = raftjournal.ENTRY.unpack_from(payload, 1)
            out.append((idx, payload[1 + raftjournal.ENTRY.size:]))
        pos += raftjournal.RECORD.size + length
    return out


def _save_commit_index(raft_dir, index):
    """What a crash leaves when the once-a-second write of the commit index
    last ran at ``index``."""
    with open(os.path.join(raft_dir, "commit"), "r+b") as f:
        f.write(raftjournal.COMMIT.pack(index, zlib.crc32(raftjournal.TRUNC.pack(index))))


def test_a_restarted_manager_lets_in_a_member_its_replayed_store_does_not_know_yet(make_cluster):
    c = make_cluster(heartbeat="5s")
    m1 = c.init("m1")
    m2 = c.join("m2")
    m3 = c.join("m3")
    m3_id = m3.config()["node_id"]
    # m1 and m2 crash together.
    for node in (m1, m2):
        node.signal_group()
    for node in (m1, m2):
        node.kill()
    # m1's saved commit index falls after m3's node was created and before
    # the entry that made it a manager with its Raft address.
    raft_dir = os.path.join(m1.data_dir, "raft")
    entries = [(i, cmd) for i, cmd in _journal_entries(raft_dir) if cmd[:1] == bytes([REGULAR])]
    created = next(i for i, cmd in entries if m3_id.encode() in cmd)
    patched = next(i for i, cmd in entries if m3.raft_addr.encode() in cmd)
    assert created < patched
    _save_commit_index(raft_dir, created)
    with open(os.path.join(raft_dir, "members.json")) as f:
        assert m3.raft_addr in json.load(f)["members"]

    m1.restart()
    # m1 and m3 are a majority of three: they must elect a leader and take
    # writes, which needs m1 to accept m3.
    client = c.admin([m1, m3], timeout=5, retry_for=60)
    client.post("/v1/configs", {"name": "after-restart", "data": base64.b64encode(b"x").decode()})
    health = wait_for(lambda: (lambda h: h if h["raft"]["has_quorum"] else None)(c.health(m1)),
                      10, what="m1 in contact with a majority")
    assert m3.raft_addr in health["raft"]["connected"], health["raft"]
    assert health["leader"] is not None
    assert "raft.not_member" not in health["refused"], health["refused"]


def test_a_member_connected_only_to_a_follower_has_no_quorum(tmp_path):
    # As in a manager, a member whose timer runs out asks for pre-votes
    # first: without them, x's elections would depose the leader.
    with raft_group(tmp_path, "quorumcluster", prevote_when=lambda: True) as g:
        leader = g.leader()
        x, y = [i for i in range(3) if i != leader]
        path = g.dirs[x] / "raft" / "members.json"

        def misattribute_the_leader():
            # x's record says another node stands behind the leader's
            # address: x refuses the leader (and the leader's connection),
            # keeps its connection to the other follower.
            saved = json.loads(path.read_text())
            saved["ids"][g.addrs[leader]] = "someone-else"
            path.write_text(json.dumps(saved))

        _store, raft = g.restart(x, while_stopped=misattribute_the_leader)
        g.members[leader][0].commit([_config("while-x-is-refused")])
        status = wait_for(lambda: (lambda st: st if st["connected"] == [g.addrs[y]] else None)(
            raft.status()), 15, what="x connected to the other follower")
        assert status["leader"] is None
        assert status["has_quorum"] is False, status
        assert g.members[leader][1].status()["has_quorum"] is True
        assert g.members[y][1].status()["has_quorum"] is True


def _refusing_listener(addr):
    """Holds ``addr``: every connection is accepted and closed at once, as
    by a program that took the port of a manager that cannot start."""
    host, port = addr.rsplit(":", 1)
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((host, int(port)))
    srv.listen(64)
    stop = threading.Event()

    def serve():
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                continue
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()

    def close():
        stop.set()
        t.join(2)
        srv.close()
    return close


def test_the_agent_of_a_manager_that_does_not_serve_reaches_the_others(make_cluster):
    c = make_cluster()
    m1 = c.init("m1")
    m2 = c.join("m2")
    m3 = c.join("m3")
    others = c.admin([m2, m3], retry_for=10)

    def m1_state():
        return others.get(f"/v1/nodes/{m1.node_id}")["state"]

    m1.signal_group()
    m1.kill()
    wait_for(lambda: m1_state() == "down", 30, what="m1 marked down")
    # As when m1 is killed right after the others joined: no answer has
    # named them to m1's agent yet.
    path = os.path.join(m1.data_dir, "node.json")
    with open(path) as f:
        cfg = json.load(f)
    cfg["managers"] = [m1.addr]
    with open(path, "w") as f:
        json.dump(cfg, f)
    # m1's own manager cannot serve: a program took its API port.
    release = _refusing_listener(m1.addr)
    try:
        m1.restart()
        wait_for(lambda: m1_state() == "ready", 60,
                 what="m1's agent registered through another manager")
    finally:
        release()
