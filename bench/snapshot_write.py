"""What writing a snapshot costs the manager that writes it.

Builds a state like the scale run's (services, nodes, tasks of 1,000
replicas each), then has the Raft layer's serializer write snapshots of
it, alternately in a forked child (what managers do) and in a thread of
this process from a shallow copy (what they did before, and still do where
fork is not possible). For each it reports:

- the time ``serialize()`` held its caller, the Raft thread;
- the time until the snapshot was on disk and in place;
- the CPU this process spent meanwhile (its other threads idle);
- while a thread of this process spins, as the leader's components do under
  load: how late a thread sleeping 1 ms at a time gets the interpreter back
  (API requests and Raft messages wait the same way).

    python bench/snapshot_write.py                  # 30,000 tasks, 3 rounds
    python bench/snapshot_write.py --tasks 100000 --rounds 5
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import tempfile
import threading
import time

from benchlib import pct, write_result

from pysyncobj.config import SERIALIZER_STATE
from pysyncobj.node import TCPNode

from flotilla.manager.raft import codec
from flotilla.manager.raft.snapshot import SnapshotSerializer
from flotilla.manager.store.state import StateMachine
from flotilla.manager.store.store import Op, new_id

TASK_SPEC = {
    "container": {"image": "flotilla-test/busybox:1", "command": None,
                  "args": ["sleep", "3600"], "env": [], "labels": {}, "workdir": None,
                  "user": None, "hostname": None, "mounts": [], "healthcheck": None,
                  "stop_grace_period": 10.0, "stop_signal": None, "init": None},
    "resources": {"limits": {"cpus": 0.0, "memory": 0},
                  "reservations": {"cpus": 0.1, "memory": 64 << 20}},
    "restart": {"condition": "any", "delay": 5.0, "max_attempts": 0, "window": 0.0},
    "placement": {"constraints": [], "preferences": [], "max_replicas": 0},
    "force_update": 0,
}


def build_state(tasks: int, nodes: int, per_service: int) -> StateMachine:
    sm = StateMachine()

    def apply(ops):
        sm.apply(codec.pack({"txns": [{"rid": None, "ts": time.time(), "ops": ops}]}))

    node_ids = [new_id() for _ in range(nodes)]
    for i in range(0, nodes, 500):
        apply([Op.create("node", {
            "id": nid, "hostname": f"node-{i + k}", "role": "worker",
            "spec": {"availability": "active", "labels": {}, "role": "worker"},
            "status": {"state": "ready", "message": ""},
            "description": {"platform": {"os": "linux", "arch": "amd64"},
                            "hostname": f"node-{i + k}", "version": "0.3.0",
                            "resources": {"cpus": 8.0, "memory": 32 << 30}}})
            for k, nid in enumerate(node_ids[i:i + 500])])
    made = 0
    while made < tasks:
        count = min(per_service, tasks - made)
        sid, name = new_id(), f"svc{made // per_service:04d}"
        apply([Op.create("service", {"id": sid, "name": name, "spec_version": 1, "spec": {
            "name": name, "mode": "replicated", "replicas": count, "task": TASK_SPEC,
            "endpoint": {"ports": []}}})])
        for first in range(0, count, 500):
            apply([Op.create("task", {
                "id": new_id(), "service_id": sid, "service_name": name, "slot": slot + 1,
                "node_id": node_ids[slot % nodes], "spec_version": 1, "ports": [],
                "desired_state": "running", "spec": TASK_SPEC,
                "status": {"state": "running", "message": "started", "err": None,
                           "exit_code": None, "container_id": new_id(),
                           "timestamp": time.time()}})
                for slot in range(first, min(first + 500, count))])
        made += count
    return sm


def _write(ser, index):
    started = time.perf_counter()
    ser.serialize((None, (b"", index, 1), (b"", index - 1, 1), [TCPNode("127.0.0.1:1")]),
                  index)
    held = time.perf_counter() - started
    while ser.checkSerializing()[0] not in (SERIALIZER_STATE.SUCCESS, SERIALIZER_STATE.FAILED):
        time.sleep(0.002)
    return held, time.perf_counter() - started


def _cpu_self():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def one(sm, directory, fork: bool, index: int) -> dict:
    ser = SnapshotSerializer(os.path.join(directory, "snapshot"), 1 << 16, sm)
    ser.fork = fork
    # Quiet: what this process itself spends.
    cpu0 = _cpu_self()
    held_quiet, written_quiet = _write(ser, index)
    own_cpu = _cpu_self() - cpu0
    # Busy: a spinning thread, and a sleeper that measures how late it wakes.
    stop, late = threading.Event(), []

    def spin():
        x = 0
        while not stop.is_set():
            for i in range(2000):
                x += i

    def sleeper():
        while not stop.is_set():
            t = time.perf_counter()
            time.sleep(0.001)
            late.append(time.perf_counter() - t - 0.001)

    threads = [threading.Thread(target=spin), threading.Thread(target=sleeper)]
    for t in threads:
        t.start()
    time.sleep(0.3)
    before = len(late)
    held_busy, written_busy = _write(ser, index + 1)
    during = late[before:]
    stop.set()
    for t in threads:
        t.join()
    return {"fork": fork, "held_ms": round(held_quiet * 1e3, 1),
            "written_ms": round(written_quiet * 1e3, 1),
            "own_cpu_ms": round(own_cpu * 1e3, 1),
            "bytes": os.path.getsize(os.path.join(directory, "snapshot")),
            "busy_held_ms": round(held_busy * 1e3, 1),
            "busy_written_ms": round(written_busy * 1e3, 1),
            "busy_wake_late_p99_ms": round(pct(during, 99) * 1e3, 1),
            "busy_wake_late_max_ms": round(max(during) * 1e3, 1)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=30000)
    ap.add_argument("--nodes", type=int, default=1000)
    ap.add_argument("--per-service", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--dir", default=None, help="where the snapshots are written")
    args = ap.parse_args()
    t0 = time.perf_counter()
    sm = build_state(args.tasks, args.nodes, args.per_service)
    print(f"state: {args.tasks} tasks, {args.nodes} nodes, built in "
          f"{time.perf_counter() - t0:.1f} s")
    directory = tempfile.mkdtemp(prefix="flotilla-snapshot-", dir=args.dir)
    runs = []
    try:
        for r in range(args.rounds):
            for fork in (True, False):
                runs.append(one(sm, directory, fork, 10 + 2 * len(runs)))
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    keys = ("held_ms", "written_ms", "own_cpu_ms", "busy_held_ms", "busy_written_ms",
            "busy_wake_late_p99_ms", "busy_wake_late_max_ms")
    medians = {}
    for fork in (True, False):
        mine = [x for x in runs if x["fork"] is fork]
        medians["fork" if fork else "thread"] = {
            k: round(statistics.median(x[k] for x in mine), 1) for k in keys}
    labels = {"held_ms": "serialize() holds the Raft thread (ms)",
              "written_ms": "until written and in place (ms)",
              "own_cpu_ms": "CPU of this process meanwhile (ms)",
              "busy_held_ms": "with a busy thread: serialize() holds (ms)",
              "busy_written_ms": "with a busy thread: written (ms)",
              "busy_wake_late_p99_ms": "with a busy thread: 1 ms sleeper late, p99 (ms)",
              "busy_wake_late_max_ms": "with a busy thread: 1 ms sleeper late, max (ms)"}
    print(f"snapshot of {runs[0]['bytes']:,} bytes, median of {args.rounds} rounds each")
    print(f"{'':52s} {'forked child':>13s} {'thread here':>12s}")
    for k in keys:
        print(f"{labels[k]:52s} {medians['fork'][k]:13.1f} {medians['thread'][k]:12.1f}")
    print("wrote", write_result("snapshot-write", {
        "tasks": args.tasks, "nodes": args.nodes, "rounds": args.rounds,
        "snapshot_bytes": runs[0]["bytes"], "median": medians, "runs": runs,
        "command": "bench/snapshot_write.py " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v is not None)}))


if __name__ == "__main__":
    main()
