#!/usr/bin/env python3
"""Commit latency while the leader's Raft port refuses a flood of connections.

A real cluster of 3 managers on loopback (``tests/helpers/cluster.py``).
One client writes configs through the leader's API, one write after the
other (``POST /v1/configs``: store commit, fsync on a majority), and the
latency of each write is recorded. Phases alternate: *idle*, then *flood*:
a separate process opens connections to the leader's Raft port at
``--rate`` a second, every one of which the leader must refuse (TCP closed
at once, TLS without a certificate, a certificate from another CA, the
cluster's admin certificate; see ``tests/helpers/raftflood.py``). Prints
p50/p99 of each condition and the ratio flood/idle, the refusals the leader
counted, and how many log lines they made.

    python bench/raft_flood.py [--rate 200] [--rounds 5] [--writes 300]

Writes bench/results/raft-flood.json.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid

from benchlib import ROOT, group_cpu, pct, process_cpu, write_result

from tests.helpers.cluster import LocalCluster, wait_for

RUN = uuid.uuid4().hex[:8]


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def raft_refusals(c, node) -> int:
    return sum(n for k, n in c.health(node)["refused"].items() if k.startswith("raft."))


def refusal_lines(node) -> int:
    return sum(1 for line in node.log().splitlines() if "raft connection refused" in line)


class Cpu:
    """CPU seconds used during the phases of one kind, by the leader's node
    (node and manager processes) and by the flooder."""

    def __init__(self):
        self.leader = 0.0
        self.flooder = 0.0
        self.seconds = 0.0


def write_phase(client, n: int, tag: str) -> list[float]:
    out = []
    data = base64.b64encode(b"x").decode()
    for i in range(n):
        started = time.perf_counter()
        client.post("/v1/configs", {"name": f"flood-{RUN}-{tag}-{i}", "data": data})
        out.append(time.perf_counter() - started)
    return out


def start_flooder(c, leader, rate: float) -> subprocess.Popen:
    admin = c.admin_dir
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [os.path.join(ROOT, "daemons"), ROOT, os.environ.get("PYTHONPATH", "")]))
    return subprocess.Popen(
        [sys.executable, "-m", "tests.helpers.raftflood", leader.raft_addr, "--rate", str(rate),
         "--seconds", "3600", "--cert", os.path.join(admin, "cert.pem"),
         "--key", os.path.join(admin, "key.pem")],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)


def stop_flooder(proc: subprocess.Popen) -> dict:
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    return json.loads(out.strip().splitlines()[-1])


def summary(values: list[float]) -> dict:
    return {"writes": len(values), "p50_ms": round(pct(values, 50) * 1000, 2),
            "p99_ms": round(pct(values, 99) * 1000, 2), "max_ms": round(max(values) * 1000, 2)}


def run(args) -> dict:
    base = tempfile.mkdtemp(prefix="flotilla-raftflood-")
    c = LocalCluster(base)
    idle: list[float] = []
    flood: list[float] = []
    floods = []
    try:
        c.init("m1")
        c.join("m2")
        c.join("m3")
        leader = c.wait_leader_ready(60)
        client = c.admin([leader], timeout=10, retry_for=0)
        write_phase(client, 50, "warmup")
        refused_before = raft_refusals(c, leader)
        lines_before = refusal_lines(leader)
        flood_seconds = 0.0
        cpu = {"idle": Cpu(), "flood": Cpu()}
        for r in range(args.rounds):
            t, c0 = time.monotonic(), group_cpu([leader.proc.pid])
            idle += write_phase(client, args.writes, f"idle{r}")
            cpu["idle"].seconds += time.monotonic() - t
            cpu["idle"].leader += group_cpu([leader.proc.pid]) - c0
            print(f"round {r + 1}: idle p99 {pct(idle[-args.writes:], 99) * 1000:.1f} ms",
                  flush=True)
            proc = start_flooder(c, leader, args.rate)
            try:
                # the flood is on once the leader counts its refusals
                seen = raft_refusals(c, leader)
                wait_for(lambda: raft_refusals(c, leader) > seen + args.rate / 4, 30,
                         interval=0.05, what="the flood to reach the leader")
                started = time.monotonic()
                c0, f0 = group_cpu([leader.proc.pid]), process_cpu(proc.pid)
                flood += write_phase(client, args.writes, f"flood{r}")
                flood_seconds += time.monotonic() - started
                cpu["flood"].seconds += time.monotonic() - started
                cpu["flood"].leader += group_cpu([leader.proc.pid]) - c0
                cpu["flood"].flooder += process_cpu(proc.pid) - f0
            finally:
                floods.append(stop_flooder(proc))
            print(f"round {r + 1}: flood p99 {pct(flood[-args.writes:], 99) * 1000:.1f} ms "
                  f"({floods[-1]['rate']:.0f} connections/s)", flush=True)
            if not c.health(leader)["is_leader"]:
                raise RuntimeError(f"{leader.name} lost its leadership during the flood")
        refused = raft_refusals(c, leader) - refused_before
        lines = refusal_lines(leader) - lines_before
        flood_total = sum(f["total"] for f in floods)
    finally:
        c.stop_all()
        shutil.rmtree(base, ignore_errors=True)
    idle_s, flood_s = summary(idle), summary(flood)
    return {
        "benchmark": "raft-flood",
        "what": "store write latency through the leader's API (3 local managers, loopback, TLS, "
                "fsync), idle and while the leader's Raft port refuses a flood of connections",
        "rate_target": args.rate, "rounds": args.rounds, "writes_per_phase": args.writes,
        "flood_rate_achieved": round(sum(f["rate"] for f in floods) / len(floods), 1),
        "flood_attempts": flood_total,
        "flood_seconds_measured": round(flood_seconds, 1),
        "leader_refusals_counted": refused,
        "leader_refusal_log_lines": lines,
        "idle": idle_s, "flood": flood_s,
        "cpu_share": {k: {"leader_node": round(v.leader / v.seconds, 3),
                          "flooder": round(v.flooder / v.seconds, 3)}
                      for k, v in cpu.items()},
        "p99_ratio": round(flood_s["p99_ms"] / idle_s["p99_ms"], 2),
        "p50_ratio": round(flood_s["p50_ms"] / idle_s["p50_ms"], 2),
        "target_p99_ratio": 2.0,
        "load_end": loadavg(),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rate", type=float, default=200, help="refused connections a second")
    ap.add_argument("--rounds", type=int, default=5, help="idle/flood pairs of phases")
    ap.add_argument("--writes", type=int, default=300, help="writes per phase")
    ap.add_argument("--out", default=None, help="JSON path (default bench/results/raft-flood.json)")
    args = ap.parse_args()
    load_start = loadavg()
    res = dict(run(args), load_start=load_start)
    print()
    print(f"{'':<10}{'writes':>8}{'p50 ms':>10}{'p99 ms':>10}{'max ms':>10}")
    for name in ("idle", "flood"):
        s = res[name]
        print(f"{name:<10}{s['writes']:>8}{s['p50_ms']:>10.2f}{s['p99_ms']:>10.2f}"
              f"{s['max_ms']:>10.2f}")
    print(f"\np99 flood/idle: {res['p99_ratio']:.2f} (target <= 2); p50: {res['p50_ratio']:.2f}")
    print(f"flood: {res['flood_rate_achieved']:.0f} connections/s achieved "
          f"({res['flood_attempts']} "
          f"in all); the leader counted {res['leader_refusals_counted']} refusals and logged "
          f"{res['leader_refusal_log_lines']} lines about them")
    share = res["cpu_share"]
    print(f"CPU (cores) of the leader's node: idle {share['idle']['leader_node']:.2f}, flood "
          f"{share['flood']['leader_node']:.2f}; of the flooder: {share['flood']['flooder']:.2f}")
    print(f"load average: start {res['load_start']}, end {res['load_end']}")
    print(f"wrote {write_result('raft-flood', res, args.out)}")


if __name__ == "__main__":
    main()
