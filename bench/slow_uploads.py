#!/usr/bin/env python3
"""Slow uploads: ``service ls`` latency on a manager, idle and while 50
connections without a client certificate send their request bodies a byte
every few seconds.

A real cluster on this machine (1 manager, or 3 with ``--managers 3``),
started from the code in this checkout (or ``--daemons DIR``, another
checkout's ``daemons/``, to compare). ``service ls`` is what the CLI does:
a new connection with the admin bundle and ``GET /v1/services``, one after
another, timed for ``--idle`` seconds with nothing else going on, then for
``--duration`` seconds while the slow connections run against the same
manager (the leader). They are, by default (``--connections 50``):

* 80 %: join requests (no certificate needed) announcing a 4 KB body and
  sending a byte every ``--interval`` seconds; the manager answers 400
  when the body is not complete 30 s after the head, and each is then
  opened again (after ``--interval``), so that 50 stay open;
* 10 %: requests without a certificate for an endpoint that needs one
  (answered 401), opened again ``--interval`` after the answer;
* 10 %: join requests announcing a 16 MB body (answered 413), the same.

Prints p50/p99 of both runs and the ratio of the p99s, what the slow
connections were answered, and writes bench/results/slow_uploads.json
(``--out`` to change).

    python bench/slow_uploads.py [--managers 1] [--duration 60] [--idle 20]
                                 [--connections 50] [--interval 5] [--daemons DIR]
"""

from __future__ import annotations

import argparse
import collections
import os
import tempfile
import time

from benchlib import pct, write_result

from flotilla.common.httpclient import ApiError, Client

from tests.helpers.cluster import LocalCluster
from tests.helpers.slowuploads import SlowUploads

TIMEOUT = 30.0


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def service_ls(addr: str, tls_dir: str) -> tuple[float, bool]:
    """Seconds for one ``service ls`` on a new connection, and whether it worked."""
    client = Client([addr], tls_dir=tls_dir, timeout=TIMEOUT, retry_for=0)
    t0 = time.monotonic()
    try:
        client.get("/v1/services")
        ok = True
    except (ApiError, OSError):
        ok = False
    finally:
        client.close()
    return time.monotonic() - t0, ok


def time_service_ls(addr: str, tls_dir: str, seconds: float) -> dict:
    times, failed = [], 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        t, ok = service_ls(addr, tls_dir)
        times.append(t)
        failed += not ok
        time.sleep(0.02)
    return {"n": len(times), "failed": failed,
            "p50_ms": round(pct(times, 50) * 1000, 1), "p99_ms": round(pct(times, 99) * 1000, 1),
            "max_ms": round(max(times) * 1000, 1)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--managers", type=int, default=1, choices=(1, 3))
    ap.add_argument("--duration", type=float, default=60.0)
    ap.add_argument("--idle", type=float, default=20.0)
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--interval", type=float, default=5.0)
    ap.add_argument("--daemons", default=None,
                    help="run the cluster from this daemons/ directory instead (to compare)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    env = {"PYTHONPATH": os.path.abspath(args.daemons)} if args.daemons else None
    tenth = max(1, args.connections // 10)
    counts = {"join": args.connections - 2 * tenth, "control": tenth, "oversized": tenth}

    c = LocalCluster(tempfile.mkdtemp(prefix="flotilla-slow-uploads-"), env=env)
    try:
        c.init("m1")
        for i in range(2, args.managers + 1):
            c.join(f"m{i}")
        leader = c.wait_leader_ready(60)
        admin = c.admin()
        for i in range(5):
            admin.post("/v1/services", {"name": f"slow-bench-{i}", "replicas": 0,
                                        "task": {"container": {"image": "flotilla-test/busybox:1",
                                                               "args": ["sleep", "3600"]}}})
        host, port = leader.addr.rsplit(":", 1)
        print(f"{args.managers} manager(s); leader {leader.name} at {leader.addr}; "
              f"load {loadavg()}", flush=True)

        load_before = loadavg()
        idle = time_service_ls(leader.addr, c.admin_dir, args.idle)
        print(f"idle          service ls: p50 {idle['p50_ms']:.1f} ms, p99 {idle['p99_ms']:.1f} ms "
              f"({idle['n']} calls, {idle['failed']} failed)", flush=True)

        slow = SlowUploads(host, int(port), counts=counts, ca_path=leader.ca(),
                           interval=args.interval, reopen=True).start()
        try:
            busy = time_service_ls(leader.addr, c.admin_dir, args.duration)
            open_at_end = dict(slow.open_now())
        finally:
            slow.stop()
        load_after = loadavg()
        answers = collections.Counter(f"{kind} {status or 'closed'}"
                                      for kind, status, _, _ in slow.snapshot())
        first = {}
        for kind, status, seconds, sent in slow.snapshot():
            first.setdefault(kind, []).append(seconds)
        print(f"{args.connections} slow   service ls: p50 {busy['p50_ms']:.1f} ms, "
              f"p99 {busy['p99_ms']:.1f} ms ({busy['n']} calls, {busy['failed']} failed)")
        ratio = busy["p99_ms"] / idle["p99_ms"] if idle["p99_ms"] else float("inf")
        print(f"p99 ratio (slow / idle): {ratio:.2f}")
        print(f"slow connections opened: {dict(slow.opened)}; open at the end: {open_at_end}")
        print(f"answers they got: {dict(sorted(answers.items()))}")
        for kind, secs in sorted(first.items()):
            print(f"  {kind:9s} answered after p50 {pct(secs, 50):.2f} s, max {max(secs):.2f} s")
        print(f"load average before / after: {load_before} / {load_after}")

        path = write_result("slow_uploads", {
            "managers": args.managers, "duration_s": args.duration, "idle_s": args.idle,
            "connections": counts, "interval_s": args.interval,
            "daemons": os.path.abspath(args.daemons) if args.daemons else "this checkout",
            "idle": idle, "slow": busy, "p99_ratio": round(ratio, 2),
            "slow_opened": dict(slow.opened), "slow_open_at_end": open_at_end,
            "slow_answers": dict(answers),
            "slow_answer_seconds": {k: {"p50": round(pct(v, 50), 3), "max": round(max(v), 3)}
                                    for k, v in first.items()},
            "loadavg_before": load_before, "loadavg_after": load_after,
        }, args.out)
        print(f"wrote {path}")
    finally:
        c.stop_all()


if __name__ == "__main__":
    main()
