"""A log line for events that may come by the thousand.

A listener that refuses connections logs why; when someone floods it, one
line per refusal would fill the disk and cost the process more than the
refusals themselves. :class:`RateLimitedLog` logs the first event at once
and then at most one line per interval: how many events there were since
the last line, by reason, and the last one's detail. Events of an interval
that no later event follows are logged by :meth:`flush`, which the owner
calls now and then. Thread-safe.
"""

from __future__ import annotations

import logging
import math
import threading
import time


class RateLimitedLog:
    def __init__(self, logger: logging.Logger, what: str, interval: float = 5.0,
                 level: int = logging.WARNING, clock=time.monotonic):
        self._log = logger
        self._what = what
        self._interval = interval
        self._level = level
        self._clock = clock
        self._lock = threading.Lock()
        self._counts: dict[str, int] = {}
        self._last: tuple[str, str] | None = None
        self._logged_at = -math.inf
        self.lines = 0              # lines written so far

    def note(self, reason: str, detail: str = "") -> None:
        with self._lock:
            self._counts[reason] = self._counts.get(reason, 0) + 1
            self._last = (reason, detail)
            line = self._take(self._clock())
        if line is not None:
            self._emit(*line)

    def flush(self, force: bool = False) -> None:
        """Log what was counted since the last line, once the interval has
        passed (or now, with ``force``)."""
        if not self._counts:        # read without the lock: called every tick
            return
        with self._lock:
            if not self._counts:
                return
            line = self._take(self._clock(), force)
        if line is not None:
            self._emit(*line)

    def _take(self, now: float, force: bool = False):
        if not force and now - self._logged_at < self._interval:
            return None
        elapsed = now - self._logged_at
        counts, last = self._counts, self._last
        self._counts, self._last = {}, None
        self._logged_at = now
        self.lines += 1
        return counts, last, elapsed

    def _emit(self, counts, last, elapsed):
        total = sum(counts.values())
        reason, detail = last
        if total == 1:
            self._log.log(self._level, "%s (%s): %s", self._what, reason, detail)
            return
        by_reason = ", ".join(f"{r} {n}" for r, n in sorted(counts.items(), key=lambda kv: -kv[1]))
        span = f"in the last {elapsed:.0f}s" if math.isfinite(elapsed) else "so far"
        self._log.log(self._level, "%s: %d %s (%s); the last (%s): %s", self._what, total, span,
                      by_reason, reason, detail)
