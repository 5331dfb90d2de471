"""A manager's Raft peers are the members of the configuration in effect.

- A restarted manager replays its store only up to the commit index it
  saved last (about once a second, without fsync); a manager that joined
  just before the crash is in the membership it restarts with, but not yet
  a manager in that store. It must still be let in: it may be the only
  peer able to bring the store forward.
"""

import base64
import json
import os
import zlib

from flotilla.manager.raft import journal as raftjournal
from flotilla.manager.raft.node import REGULAR
from tests.helpers.cluster import wait_for


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
