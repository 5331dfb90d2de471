"""The rate-limited log: the first event at once, then one line per interval
with the count by reason."""

import logging

from flotilla.common.ratelog import RateLimitedLog


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_first_event_at_once_then_one_line_per_interval_with_counts(caplog):
    clock = Clock()
    rl = RateLimitedLog(logging.getLogger("ratelog-test"), "refused", interval=5.0, clock=clock)
    caplog.set_level(logging.WARNING, logger="ratelog-test")
    rl.note("no_cert", "first")
    for i in range(300):
        clock.now += 0.01
        rl.note("no_cert" if i % 3 else "unknown_ca", f"n{i}")
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["refused (no_cert): first"]
    rl.flush()                      # the interval has not passed
    assert len(caplog.records) == 1
    clock.now += 5.0
    rl.flush()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2
    assert lines[1].startswith("refused: 300 in the last 8s (no_cert 200, unknown_ca 100)")
    assert lines[1].endswith("the last (no_cert): n299")
    rl.flush()                      # nothing new
    assert len(caplog.records) == 2
    assert rl.lines == 2
