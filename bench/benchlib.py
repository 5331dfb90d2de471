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


def machine_cpu() -> tuple[float, float]:
    """Busy and total CPU seconds of the whole machine so far (all cores)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:9]]  # user .. steal
    hz = os.sysconf("SC_CLK_TCK")
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields) - idle) / hz, sum(fields) / hz


def _stat(pid) -> list[str]:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()  # fields from "state" on


def _ticks(fields) -> int:
    # utime + stime, and cutime + cstime: the children it has waited for (a
    # manager forks a short-lived child to write each snapshot).
    return sum(int(x) for x in fields[11:15])


def process_cpu(pid: int) -> float:
    """User + system CPU seconds that one process and its finished children
    have used so far (0 once it is gone)."""
    try:
        fields = _stat(pid)
    except OSError:
        return 0.0
    return _ticks(fields) / os.sysconf("SC_CLK_TCK")


def group_cpu(pgids) -> float:
    """User + system CPU seconds used so far by the live processes of some
    process groups (with their finished children)."""
    pgids, ticks = set(pgids), 0
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                fields = _stat(pid)
            except OSError:
                continue
            if int(fields[2]) in pgids:
                ticks += _ticks(fields)
    return ticks / os.sysconf("SC_CLK_TCK")


def write_result(name: str, payload: dict, path: str | None = None) -> str:
    payload = dict(payload, machine=machine(),
                   timestamp=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    path = path or os.path.join(RESULTS, f"{name}.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(payload, f, indent=2)
    return path
