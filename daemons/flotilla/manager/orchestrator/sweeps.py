"""How often the orchestrator and the task reaper sweep: every service or
task looked at again, whatever the watch feed said (a safety net: events
drive the work). At least every FULL_PASS seconds; in a large cluster a
sweep walks every task, so it takes at most one SWEEP_SHARE-th of the time."""

from __future__ import annotations

FULL_PASS = 10.0
SWEEP_SHARE = 30


def next_sweep_after(took: float) -> float:
    """Seconds until the next sweep, after one that took ``took`` seconds."""
    return max(FULL_PASS, SWEEP_SHARE * took)
