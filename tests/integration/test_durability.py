"""Acknowledged writes survive kill -9 of every manager at a random moment."""

import base64
import random
import os
import signal
import threading

from flotilla.common.httpclient import ApiError
from flotilla.manager.raft.journal import DurableJournal, scan_journal
from flotilla.manager.raft.snapshot import read_boundary
from tests.helpers.cluster import wait_for


def test_acknowledged_writes_survive_killing_all_managers(make_cluster):
    # Small compaction threshold: snapshots and log truncation happen during the run.
    c = make_cluster(env={"FLOTILLA_RAFT_COMPACTION_ENTRIES": "300"})
    c.init("m1")
    c.join("m2")
    c.join("m3")
    managers = list(c.nodes.values())
    acked: set[str] = set()
    lock = threading.Lock()
    stop = threading.Event()
    kill_after = 1000 + random.randint(0, 500)
    killed = threading.Event()

    def writer(wid):
        client = c.admin(managers, timeout=5, retry_for=0)
        n = 0
        while not stop.is_set():
            name = f"w{wid}-{n}"
            n += 1
            try:
                client.post("/v1/configs", {"name": name, "data": base64.b64encode(b"d").decode()})
            except ApiError:
                continue
            if killed.is_set():
                return   # answers racing the kill do not count
            with lock:
                acked.add(name)
                if len(acked) >= kill_after:
                    stop.set()

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    wait_for(stop.is_set, 300, interval=0.01, what=f"{kill_after} acknowledged writes")
    for m in managers:        # kill -9 every manager, as close together as possible
        os.killpg(m.proc.pid, signal.SIGKILL)
    killed.set()
    for t in threads:
        t.join(30)
    for m in managers:
        m.kill()
    with lock:
        acknowledged = set(acked)
    print(f"\n{len(acknowledged)} writes acknowledged before kill -9 of all managers")
    assert len(acknowledged) >= 1000

    for m in managers:
        m.restart()
    c.wait_leader_ready(60)
    present = {x["name"] for x in c.admin().get("/v1/configs")}
    missing = acknowledged - present
    assert not missing, f"{len(missing)} acknowledged writes lost, e.g. {sorted(missing)[:5]}"
    # Every manager converges on the same state.
    index = c.health(c.leader())["store_index"]
    for m in managers:
        wait_for(lambda: c.health(m)["store_index"] >= index, 30, what=f"{m.name} caught up")


def _three_managers_compacting_by_size(make_cluster):
    c = make_cluster(env={"FLOTILLA_RAFT_COMPACTION_BYTES": str(256 * 1024)})
    c.init("m1")
    c.join("m2")
    c.join("m3")
    return c, list(c.nodes.values())


def test_a_log_of_large_entries_is_compacted_by_size(make_cluster):
    # Entries are few but large: the size limit (not the entry count) makes
    # every manager write a snapshot and cut its log, and nothing is lost.
    c, managers = _three_managers_compacting_by_size(make_cluster)
    client = c.admin(managers)
    blob = base64.b64encode(os.urandom(6000)).decode()
    names = [f"big-{i}" for i in range(300)]        # 2.4 MB of configs
    for name in names:
        client.post("/v1/configs", {"name": name, "data": blob})

    def raft_files(m):
        d = os.path.join(m.data_dir, "raft")
        return (os.path.getsize(os.path.join(d, "log")),
                os.path.exists(os.path.join(d, "snapshot")))

    def compacted():
        sizes = {m.name: raft_files(m) for m in managers}
        return sizes if all(snap and size < 1024 * 1024 for size, snap in sizes.values()) else None

    wait_for(compacted, 60, what="a snapshot and a log under 1 MB on every manager")
    # They took turns: each wrote its last snapshot at an entry of its own.
    lasts = [read_boundary(os.path.join(m.data_dir, "raft", "snapshot"))[1][1]
             for m in managers]
    assert len(set(lasts)) == len(managers), lasts
    victim = managers[-1]
    victim.kill()           # kill -9: it comes back from its snapshot and short log
    victim.restart()
    index = c.health(c.leader())["store_index"]
    wait_for(lambda: c.health(victim)["store_index"] >= index, 60, what="the restarted manager")
    present = {x["name"] for x in c.admin([victim]).get("/v1/configs")}
    assert set(names) <= present


def test_a_crash_between_snapshot_and_log_cut_loses_nothing(make_cluster):
    # Each manager writes its snapshot, then cuts its log. Every manager is
    # killed in between (as a crash would leave it: the snapshot on disk,
    # the log still holding the entries before it), and the writes
    # acknowledged after the snapshot are still there on restart.
    c, managers = _three_managers_compacting_by_size(make_cluster)
    client = c.admin(managers)
    client.post("/v1/configs", {"name": "early", "data": "eA=="})
    raft_dirs = {m.name: os.path.join(m.data_dir, "raft") for m in managers}
    early = {}
    for m in managers:
        j = DurableJournal(raft_dirs[m.name])
        early[m.name] = list(j[:])
        j._destroy()
    blob = base64.b64encode(os.urandom(6000)).decode()
    for i in range(120):                                # about 1 MB of configs
        client.post("/v1/configs", {"name": f"big-{i}", "data": blob})

    def compacted():
        return all(os.path.exists(os.path.join(d, "snapshot")) and
                   os.path.getsize(os.path.join(d, "log")) < 512 * 1024
                   for d in raft_dirs.values())

    wait_for(compacted, 60, what="a snapshot and a cut log on every manager")
    after = [f"after-{i}" for i in range(10)]
    for name in after:
        client.post("/v1/configs", {"name": name, "data": "eA=="})
    for m in managers:
        m.kill()
    for m in managers:
        d = raft_dirs[m.name]
        j = DurableJournal(d)
        current = list(j[:])
        j._destroy()
        assert early[m.name][-1][1] < current[0][1]
        rebuilt = os.path.join(m.data_dir, "raft-rebuilt")
        j = DurableJournal(rebuilt)
        for command, idx, term in early[m.name] + current:
            j.add(command, idx, term)
        j._destroy()
        os.replace(os.path.join(rebuilt, "log"), os.path.join(d, "log"))
    for m in managers:
        m.restart()
    c.wait_leader_ready(60)
    present = {x["name"] for x in c.admin().get("/v1/configs")}
    assert set(after) <= present, f"lost {sorted(set(after) - present)}"


def test_a_damaged_journal_refuses_to_start_until_repaired(make_cluster):
    # A bad record in the middle of a manager's journal, with intact ones
    # after it, is not what a crash leaves: the node refuses to start,
    # naming the file and the byte, until the operator asks for the cut;
    # the entries after it then come back from the leader.
    c = make_cluster()
    c.init("m1")
    c.join("m2")
    c.join("m3")
    client = c.admin()
    names = [f"cfg-{i}" for i in range(30)]
    for name in names:
        client.post("/v1/configs", {"name": name, "data": "eA=="})
    victim = next(m for m in c.nodes.values() if m is not c.leader())
    index = c.health(c.leader())["store_index"]
    wait_for(lambda: c.health(victim)["store_index"] >= index, 30, what="the victim caught up")
    victim.stop()
    path = os.path.join(victim.data_dir, "raft", "log")
    with open(path, "rb") as f:
        scan = scan_journal(path, f.read())
    bad = scan.offsets[len(scan.offsets) // 2]
    last_before = scan.entries[-1][1]
    _flip(path, bad + 30)

    victim.start()
    assert victim.proc.wait(60) == 1
    last = victim.log().strip().splitlines()[-1]
    assert last == (f"Error: raft journal {path} is damaged at byte {bad} (a bad record, "
                    f"intact ones after it from byte {scan.offsets[len(scan.offsets) // 2 + 1]}):"
                    f" start with --repair-journal to cut it there; this manager then gets the"
                    f" entries after it from the leader"), last

    client.post("/v1/configs", {"name": "meanwhile", "data": "eA=="})
    victim.start("--repair-journal")
    wait_for(lambda: f"raft journal {path} cut at byte {bad}" in victim.log(), 30,
             what="the repair reported")
    index = c.health(c.leader())["store_index"]
    wait_for(lambda: c.health(victim)["store_index"] >= index, 60,
             what="the repaired manager caught up")
    with open(path, "rb") as f:       # what was cut came back from the leader
        scan = scan_journal(path, f.read())
    assert scan.entries[-1][1] > last_before

    # Damage found by a manager the node restarts (here after kill -9 of
    # the manager alone) stops the node too: starting again would not help.
    _flip(path, scan.offsets[len(scan.offsets) // 2] + 30)
    os.kill(_manager_child(victim.proc.pid), signal.SIGKILL)
    assert victim.proc.wait(60) == 2
    assert f"flotilla-manager: raft journal {path} is damaged at byte" in victim.log()


def _flip(path, at):
    with open(path, "r+b") as f:
        f.seek(at)
        byte = f.read(1)
        f.seek(at)
        f.write(bytes([byte[0] ^ 0x55]))


def _manager_child(node_pid):
    for pid in os.listdir("/proc"):
        try:
            with open(f"/proc/{pid}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read()
        except (OSError, ValueError, IndexError):
            continue
        if ppid == node_pid and b"flotilla.manager.server" in cmdline:
            return int(pid)
    raise AssertionError(f"no manager child of node process {node_pid}")
