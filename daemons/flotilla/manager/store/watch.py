"""Watch feed: every applied change becomes an event in a bounded ring.

Leader-only components subscribe and consume events in order. A watcher that
falls further behind than the ring holds, or sees a snapshot being installed,
gets a ``reset`` event and must re-read the state it cares about.
"""

from __future__ import annotations

import collections
import itertools
import threading

from .state import Event


class EventHub:
    def __init__(self, size: int = 65536):
        self._cond = threading.Condition()
        self._ring: collections.deque[Event] = collections.deque(maxlen=size)
        self._seq = 0

    @property
    def seq(self) -> int:
        return self._seq

    def publish(self, events):
        with self._cond:
            for event in events:
                self._seq += 1
                event.seq = self._seq
                self._ring.append(event)
            self._cond.notify_all()

    def watch(self) -> "Watcher":
        with self._cond:
            return Watcher(self, self._seq)

    def _since(self, seq, timeout):
        with self._cond:
            if self._seq <= seq:
                self._cond.wait(timeout)
            if self._seq <= seq:
                return seq, []
            first = self._ring[0].seq if self._ring else self._seq + 1
            if seq + 1 < first:
                reset = Event(None, "reset", None, None, None, None)
                reset.seq = self._seq
                return self._seq, [reset]
            # The last k events, copied from the right end: indexing a deque
            # walks it block by block, which made a watcher k events behind
            # cost O(k^2).
            events = list(itertools.islice(reversed(self._ring), self._seq - seq))[::-1]
            return self._seq, events

    def wake_all(self):
        with self._cond:
            self._cond.notify_all()


class Watcher:
    def __init__(self, hub: EventHub, seq: int):
        self._hub = hub
        self._seq = seq

    def next(self, timeout: float | None = None) -> list[Event]:
        """Events after the last call; empty if none arrived within timeout."""
        self._seq, events = self._hub._since(self._seq, timeout)
        return events
