"""Acknowledged writes survive a power cut of every manager.

``kill -9`` keeps the page cache, so the durability tests that kill
managers cannot see a missing fsync. Here the managers' data directories
are on a file system that loses whatever was not synced when the power is
cut (``tests/helpers/crashfs.py``, a FUSE file system in the manner of
lazyfs): the managers are real processes writing through the API, the
power is cut at a moment of the test's choosing while writes are being
answered, every manager is killed, the files are put back as a disk would
hold them, and every write that was acknowledged before the cut must be
there after the restart.
"""

import base64
import os
import random
import threading

import pytest

from flotilla.common.httpclient import ApiError
from flotilla.manager.raft.snapshot import read_boundary
from tests.helpers.cluster import wait_for
from tests.helpers.crashfs import CrashFS


@pytest.fixture
def crashfs(tmp_path):
    fs = CrashFS(str(tmp_path / "crashfs")).mount()
    try:
        yield fs
    finally:
        fs.unmount()


def _snapshot_points(nodes) -> dict:
    """The last entry each manager's snapshot on disk covers (0: none)."""
    out = {}
    for node in nodes:
        boundary = read_boundary(os.path.join(node.data_dir, "raft", "snapshot"))
        out[node.name] = boundary[1][1] if boundary else 0
    return out


def _power_cut(fs, make_cluster, managers: int, cut_after: int, env=None,
               snapshots=False):
    c = make_cluster(data_root=fs.mountpoint, env=env or {})
    c.init("m1")
    for i in range(2, managers + 1):
        c.join(f"m{i}")
    nodes = list(c.nodes.values())
    # What the cluster wrote while it was set up is on disk, as the kernel
    # would have flushed it by now: only what follows is under test.
    fs.checkpoint()
    before = _snapshot_points(nodes)

    acked: set[str] = set()
    lock = threading.Lock()
    cutting = threading.Event()
    enough = threading.Event()

    def writer(wid):
        client = c.admin(nodes, timeout=5, retry_for=0)
        n = 0
        while not cutting.is_set():
            name = f"w{wid}-{n}"
            n += 1
            try:
                client.post("/v1/configs", {"name": name, "data": base64.b64encode(b"d").decode()})
            except (ApiError, OSError):
                continue
            with lock:
                if cutting.is_set():
                    return      # answered after the cut began: not counted
                acked.add(name)
                if len(acked) >= cut_after:
                    enough.set()

    threads = [threading.Thread(target=writer, args=(i,), daemon=True) for i in range(8)]
    for t in threads:
        t.start()
    wait_for(enough.is_set, 240, interval=0.01, what=f"{cut_after} acknowledged writes")
    with lock:
        cutting.set()
        acknowledged = set(acked)
    fs.cut()                    # the power goes: nothing more reaches the disk
    for node in nodes:
        node.signal_group()
    for node in nodes:
        node.kill()
    for t in threads:
        t.join(30)
    fs.restore()                # the disks as they were at the cut
    print(f"\n{len(acknowledged)} writes acknowledged before the power cut")
    if snapshots:
        # Snapshots and log cuts (file renames) were part of what was cut.
        after = _snapshot_points(nodes)
        assert any(after[n] > before[n] for n in after), (before, after)

    for node in nodes:
        node.restart()
    c.wait_leader_ready(90)
    present = {x["name"] for x in c.admin(retry_for=30).get("/v1/configs")}
    missing = acknowledged - present
    assert not missing, (f"{len(missing)} of {len(acknowledged)} acknowledged writes lost in "
                         f"the power cut, e.g. {sorted(missing)[:5]}")


def test_acknowledged_writes_survive_a_power_cut_of_a_single_manager(crashfs, make_cluster):
    # Alone, the manager's only sync before it answers is the store's.
    _power_cut(crashfs, make_cluster, managers=1, cut_after=150 + random.randint(0, 100))


def test_acknowledged_writes_survive_a_power_cut_of_every_manager(crashfs, make_cluster):
    # Small compaction threshold: snapshots, log cuts and their renames
    # happen while the writes are being answered.
    _power_cut(crashfs, make_cluster, managers=3, cut_after=300 + random.randint(0, 200),
               env={"FLOTILLA_RAFT_COMPACTION_ENTRIES": "150"}, snapshots=True)
