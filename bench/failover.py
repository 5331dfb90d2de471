#!/usr/bin/env python3
"""Leader kill -9 -> next acknowledged write, on 3 local managers.

Each round: find the leader, kill -9 its node (and its manager child), and
time how long until a write is acknowledged through the surviving managers
(the client polls every 10 ms with short timeouts). Then restart the old
leader, wait until it is a caught-up follower, and go again.

    python bench/failover.py [--rounds 7]

Prints a table and writes bench/results/failover.json.
"""

from __future__ import annotations

import argparse
import base64
import statistics
import tempfile
import time

from benchlib import write_result

from flotilla.common.httpclient import ApiError
from tests.helpers.cluster import LocalCluster, wait_for


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--out", default=None, help="JSON path (default bench/results/failover.json)")
    args = ap.parse_args()
    base = tempfile.mkdtemp(prefix="flotilla-failover-")
    c = LocalCluster(base, heartbeat="5s")
    results = []
    try:
        c.init("m1")
        c.join("m2")
        c.join("m3")
        n = 0
        for rnd in range(args.rounds):
            leader = c.wait_leader_ready(60)
            survivors = [x for x in c.nodes.values() if x is not leader]
            client = c.admin(survivors, timeout=1, retry_for=0)

            def write():
                nonlocal n
                n += 1
                try:
                    client.post("/v1/configs", {"name": f"fo-{n}",
                                                "data": base64.b64encode(b"x").decode()})
                    return True
                except ApiError:
                    return False

            assert write()
            t0 = time.monotonic()
            leader.signal_group()
            wait_for(write, 60, interval=0.01, what="acknowledged write")
            elapsed = time.monotonic() - t0
            results.append(elapsed)
            print(f"round {rnd + 1}: killed {leader.name}; next acknowledged write after "
                  f"{elapsed * 1000:.0f} ms", flush=True)
            leader.kill()      # reap it before starting it again
            leader.restart()
            c.wait_node_ready(leader, manager=True, timeout=60)
    finally:
        c.stop_all()
    summary = {
        "benchmark": "failover",
        "what": "leader kill -9 -> next acknowledged write (3 managers, loopback, TLS, fsync)",
        "rounds": len(results),
        "seconds": [round(r, 4) for r in results],
        "median_s": round(statistics.median(results), 4),
        "max_s": round(max(results), 4),
        "min_s": round(min(results), 4),
        "target_s": 1.0,
        "reference": "Docker Swarm: 16 s on a 3-manager cluster of test hosts on this kind of machine",
    }
    print()
    print(f"{'metric':<28}{'value':>10}")
    print(f"{'rounds':<28}{summary['rounds']:>10}")
    print(f"{'median (s)':<28}{summary['median_s']:>10.3f}")
    print(f"{'min (s)':<28}{summary['min_s']:>10.3f}")
    print(f"{'max (s)':<28}{summary['max_s']:>10.3f}")
    print(f"{'target (s)':<28}{1.0:>10.3f}")
    print(f"\nwrote {write_result('failover', summary, args.out)}")


if __name__ == "__main__":
    main()
