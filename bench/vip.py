#!/usr/bin/env python3
"""Virtual IPs (nftables DNAT on the engine's bridge, no IPVS): what a VIP
costs a connection, and how fast a backend leaves it.

The setup is the one of tests/integration/test_vips.py (tests/helpers/viplab.py):
an "engine" network namespace holding the network's bridge, three backend
namespaces each running a small Python TCP server that answers its name, and
a client namespace, on one /24. The VIP code runs against the engine
namespace.

* **Connections.** One client process opens TCP connections one after the
  other (connect, read the answer, close), 50 in turn to each of: a backend
  directly; a VIP whose one backend is that backend; the three backends
  directly, one connection each in turn; a VIP spread over the three (so
  the load of the machine, which others share, is the same for all), for
  ``--seconds``, ``--rounds`` times. Reported: connections per second (the
  client's rate while on that target; the median of the rounds) and the
  latency of one connection, connect to answer read (p50, p90, p99 of all
  rounds). The VIP's added latency is its p50 minus the p50 of the direct
  target with the same backends (spreading over three server processes
  costs by itself: each is woken less often).
* **A backend leaves.** While the client connects to the VIP (3 backends)
  one connection after the other, ``apply()`` is called without one of
  them. Reported per round: how long apply() took, and the time from
  apply()'s start to the start of the last connection that still reached
  the removed backend (0 if none did after the start); any connection
  started after apply() returned that reached it is a failure of the
  guarantee and is counted. The backend is then added back.

    python bench/vip.py [--seconds 10] [--rounds 3] [--removals 10] [--out PATH]

Prints a table and writes bench/results/vip.json, with the machine's load
(1, 5, 15 min averages) at the start and at the end: the numbers are from a
shared 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

from benchlib import pct, write_result

from flotilla.agent.network.vips import VirtualIPs

from tests.helpers.viplab import BRIDGE, VipLab


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def uptime() -> str:
    with open("/proc/loadavg") as f:
        return f.read().strip()


def run_watch(lab: VipLab, addr: str, seconds: float) -> list[tuple[float, float, str]]:
    proc = lab.watch("c", addr, seconds)
    out, err = proc.communicate(timeout=seconds + 60)
    if proc.returncode != 0:
        raise RuntimeError(f"client failed: {err.strip()}")
    return [(float(t0), float(took), str(a)) for t0, took, a in json.loads(out)]


def connections(lab: VipLab, vips: VirtualIPs, seconds: float, rounds: int) -> dict:
    b1 = lab.backend("b1")
    vip1, vip3 = lab.addr(100), lab.addr(101)
    vips.apply({BRIDGE: {vip1: [b1], vip3: [lab.backend(n) for n in ("b1", "b2", "b3")]}})
    targets = {"direct": b1, "vip_1_backend": vip1,
               "direct_rotating_3": ",".join(lab.backend(n) for n in ("b1", "b2", "b3")),
               "vip_3_backends": vip3}
    samples: dict[str, list[float]] = {k: [] for k in targets}
    rates: dict[str, list[float]] = {k: [] for k in targets}
    failed: dict[str, int] = {k: 0 for k in targets}
    for rnd in range(rounds):
        res = lab.mix("c", list(targets.values()), seconds)
        line = []
        for name, addr in targets.items():
            ok = [took for took, a in res[addr] if not a.endswith("Error")]
            samples[name] += ok
            failed[name] += len(res[addr]) - len(ok)
            # The client spends sum(ok) seconds on this target: its rate.
            rates[name].append(len(ok) / sum(ok))
            line.append(f"{name} {rates[name][-1]:.0f}/s p50 {statistics.median(ok) * 1e3:.3f} ms")
        print(f"round {rnd + 1}: " + "; ".join(line) + f" (load {loadavg()[0]})", flush=True)
    out = {}
    for name in targets:
        s = samples[name]
        out[name] = {"connections": len(s), "failed": failed[name],
                     "conn_per_s_rounds": [round(r) for r in rates[name]],
                     "conn_per_s": round(statistics.median(rates[name]), 1),
                     "p50_ms": round(pct(s, 50) * 1e3, 3), "p90_ms": round(pct(s, 90) * 1e3, 3),
                     "p99_ms": round(pct(s, 99) * 1e3, 3)}
    out["vip_1_backend"]["added_p50_ms"] = round(
        out["vip_1_backend"]["p50_ms"] - out["direct"]["p50_ms"], 3)
    out["vip_3_backends"]["added_p50_ms"] = round(
        out["vip_3_backends"]["p50_ms"] - out["direct_rotating_3"]["p50_ms"], 3)
    return out


def removals(lab: VipLab, vips: VirtualIPs, vip: str, rounds: int) -> dict:
    all3 = [lab.backend(n) for n in ("b1", "b2", "b3")]
    gone = "b2"
    rows = []
    for rnd in range(rounds):
        vips.apply({BRIDGE: {vip: all3}})
        lab.connect("c", vip, 10)
        proc = lab.watch("c", vip, 2.5)
        time.sleep(1.0)      # the client is connecting meanwhile (a python start takes a while)
        t0 = time.monotonic()
        vips.apply({BRIDGE: {vip: [a for a in all3 if a != lab.backend(gone)]}})
        t1 = time.monotonic()
        out, err = proc.communicate(timeout=60)
        res = [(float(s), float(took), str(a)) for s, took, a in json.loads(out)]
        before = [r for r in res if r[0] < t0]
        hits = [s for s, _, a in res if a.startswith(f"{gone} ") and s >= t0]
        late = [s for s in hits if s >= t1]
        reached_before = sum(1 for s, _, a in before if a.startswith(f"{gone} "))
        row = {"apply_s": round(t1 - t0, 4),
               "last_hit_after_apply_start_s": round(max(hits) - t0, 4) if hits else 0.0,
               "hits_during_apply": len(hits) - len(late), "hits_after_apply_returned": len(late),
               "connections": len(res), "reached_removed_before": reached_before,
               "load1": loadavg()[0]}
        rows.append(row)
        print(f"removal {rnd + 1}: apply() {row['apply_s'] * 1e3:.0f} ms; last connection to "
              f"the removed backend started {row['last_hit_after_apply_start_s'] * 1e3:.0f} ms "
              f"after apply() started; {len(late)} after it returned "
              f"({len(res)} connections, {reached_before} reached it before)", flush=True)
    applies = [r["apply_s"] for r in rows]
    cut = [r["last_hit_after_apply_start_s"] for r in rows]
    return {"rounds": rows,
            "apply_median_s": round(statistics.median(applies), 4),
            "apply_max_s": round(max(applies), 4),
            "cutover_median_s": round(statistics.median(cut), 4),
            "cutover_max_s": round(max(cut), 4),
            "hits_after_apply_returned": sum(r["hits_after_apply_returned"] for r in rows)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=10.0, help="per round")
    ap.add_argument("--rounds", type=int, default=3, help="connection rounds")
    ap.add_argument("--removals", type=int, default=10, help="backend removals measured")
    ap.add_argument("--out", default=None, help="JSON path (default bench/results/vip.json)")
    args = ap.parse_args()

    load_start, up_start = loadavg(), uptime()
    print(f"load at start: {up_start}", flush=True)
    lab = VipLab()
    try:
        lab.create()
        vips = VirtualIPs(netns=lab.engine)
        vip = lab.addr(100)
        conn = connections(lab, vips, args.seconds, args.rounds)
        rem = removals(lab, vips, vip, args.removals)
    finally:
        lab.destroy()
    load_end = loadavg()

    print("\ntarget             conn/s   p50 ms   p90 ms   p99 ms  failed  (conn/s: median "
          "of rounds)")
    for name, r in conn.items():
        print(f"{name:18s} {r['conn_per_s']:6.0f} {r['p50_ms']:8.3f} {r['p90_ms']:8.3f} "
              f"{r['p99_ms']:8.3f} {r['failed']:7d}")
    print(f"added latency (p50): {conn['vip_1_backend']['added_p50_ms']:.3f} ms with one "
          f"backend, {conn['vip_3_backends']['added_p50_ms']:.3f} ms spread over three (vs "
          "the client rotating over them itself)")
    print(f"backend removal ({args.removals} rounds): apply() median "
          f"{rem['apply_median_s'] * 1e3:.0f} ms (max {rem['apply_max_s'] * 1e3:.0f}); last new "
          f"connection to it at +{rem['cutover_median_s'] * 1e3:.0f} ms median "
          f"(max {rem['cutover_max_s'] * 1e3:.0f}); after apply() returned: "
          f"{rem['hits_after_apply_returned']}")
    print(f"load: start {load_start}, end {load_end}")
    payload = {"benchmark": "vip",
               "what": "TCP connections through an nftables VIP on a bridge (br_netfilter, "
                       "numgen random DNAT) vs direct; time for a removed backend to get no "
                       "new connection",
               "seconds_per_target_round": args.seconds, "rounds": args.rounds,
               "connections": conn, "removal": rem,
               "load": {"start": load_start, "end": load_end, "proc_loadavg_start": up_start}}
    print(f"wrote {write_result('vip', payload, args.out)}")


if __name__ == "__main__":
    main()
