"""Shared by the benchmark scripts: machine description, percentiles, output."""

from __future__ import annotations

import json
import os
import platform
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for path in (os.path.join(ROOT, "daemons"), ROOT):
    if path not in sys.path:
        sys.path.insert(0, path)

RESULTS = os.path.join(ROOT, "bench", "results")


def machine() -> dict:
    mem = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal"):
                mem = int(line.split()[1]) // 1024 // 1024
    return {"cores": os.cpu_count(), "memory_gb": mem, "python": platform.python_version(),
            "kernel": platform.release()}


def pct(values, p: float) -> float:
    if not values:
        return 0.0
    values = sorted(values)
    k = min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))
    return values[k]


def write_result(name: str, payload: dict, path: str | None = None) -> str:
    payload = dict(payload, machine=machine(),
                   timestamp=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    path = path or os.path.join(RESULTS, f"{name}.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(payload, f, indent=2)
    return path
