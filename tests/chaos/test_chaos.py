"""The chaos suite: a real cluster of 3 managers and 3 agents, each on its
own network namespace with its own Docker engine, under a seeded nemesis
while a client creates, scales and updates services.

    FLOTILLA_CHAOS_SEED    the nemesis's and the workload's seed
    FLOTILLA_CHAOS_FAULTS  how many faults to inject
    FLOTILLA_CHAOS_DIR     where nodes and engines live (default /tmp/flotilla-chaos)
    FLOTILLA_CHAOS_KINDS   comma-separated fault kinds to draw from (default: all)

The short run (8 faults, every kind at least once) runs in CI; the full run
(100 faults) is marked slow. Each writes its report to
tests/chaos/results/chaos-<seed>-<faults>.json and prints it.
"""

import os

import pytest

from .nemesis import KINDS
from .runner import ChaosRun

HERE = os.path.dirname(os.path.abspath(__file__))


def _setting(name: str, default: int) -> int:
    return int(os.environ.get(f"FLOTILLA_CHAOS_{name}", default))


def _run(faults_default: int, seed_default: int):
    if os.geteuid() != 0:
        pytest.fail("the chaos suite needs root: network namespaces, iptables, Docker engines")
    seed = _setting("SEED", seed_default)
    faults = _setting("FAULTS", faults_default)
    base = os.environ.get("FLOTILLA_CHAOS_DIR", "/tmp/flotilla-chaos")
    kinds = tuple(k for k in os.environ.get("FLOTILLA_CHAOS_KINDS", "").split(",") if k)
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        pytest.fail(f"FLOTILLA_CHAOS_KINDS: unknown kind(s) {', '.join(unknown)}; "
                    f"known: {', '.join(KINDS)}")
    path = os.path.join(HERE, "results", f"chaos-{seed}-{faults}.json")
    run = ChaosRun(base, seed, faults, path, kinds=kinds or None)
    try:
        report = run.run()
    finally:
        print(run.report.text())
        print(f"report: {path}; node logs: {base}")
    assert report.faults and len(report.faults) == faults
    assert report.writes["acknowledged"] > 0, "the workload had no write acknowledged"
    assert report.violations == [], "\n".join(report.violations)


@pytest.mark.timeout(1800)
def test_chaos_short():
    _run(faults_default=8, seed_default=1)


@pytest.mark.slow
@pytest.mark.timeout(4 * 3600)
def test_chaos_full():
    _run(faults_default=100, seed_default=100)
