"""Where the test lane's CPU goes: sums the per-test lines written under
``FLOTILLA_TEST_CPU_LOG`` by module, and compares them with the machine's own
count (``/proc/stat``) when given the two samples taken around the run.

    FLOTILLA_TEST_CPU_LOG=/tmp/cpu.jsonl make test
    python bench/testcpu.py /tmp/cpu.jsonl [--machine-cpu SECONDS] [--json out.json]

The worker's own CPU and that of the processes a test started and reaped are
counted; what containers and the Docker engine spend is not (the machine's
count minus the sum is that part).
"""

from __future__ import annotations

import argparse
import collections
import json


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("log")
    ap.add_argument("--machine-cpu", type=float, default=None,
                    help="CPU seconds the whole machine spent during the run")
    ap.add_argument("--json", default=None)
    ap.add_argument("--top", type=int, default=25)
    args = ap.parse_args()
    by_module: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0.0, 0])
    for line in open(args.log):
        rec = json.loads(line)
        mod = rec["test"].split("::", 1)[0]
        agg = by_module[mod]
        agg[0] += rec["cpu"]
        agg[1] += rec["wall"]
        agg[2] += 1
    total = sum(a[0] for a in by_module.values())
    rows = sorted(by_module.items(), key=lambda kv: -kv[1][0])
    print(f"{'module':60s} {'tests':>5s} {'cpu s':>8s} {'wall s':>8s} {'share':>6s}")
    for mod, (cpu, wall, n) in rows[:args.top]:
        print(f"{mod:60s} {n:5d} {cpu:8.1f} {wall:8.1f} {cpu / total:6.1%}")
    print(f"{'all ' + str(len(rows)) + ' modules':60s} {sum(a[2] for a in by_module.values()):5d} "
          f"{total:8.1f}")
    if args.machine_cpu is not None:
        print(f"machine CPU {args.machine_cpu:.0f} s; not counted above (containers, engines): "
              f"{args.machine_cpu - total:.0f} s")
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"modules": {m: {"cpu": a[0], "wall": a[1], "tests": a[2]} for m, a in rows},
                       "total_cpu": total, "machine_cpu": args.machine_cpu}, out, indent=1)


if __name__ == "__main__":
    main()
