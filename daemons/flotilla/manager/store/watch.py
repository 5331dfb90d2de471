"""Watch feed: every applied change becomes an event in a bounded ring.

Leader-only components subscribe and consume events in order. A watcher that
falls further behind than the ring holds, or sees a snapshot being installed,
gets a ``reset`` event and must re-read the state it cares about.

Events every live watcher has read are dropped from the ring at once: an
event holds the old version of the object it changed, and a full ring of
them (65,536 at 30,000 tasks) was 60 MB that nobody would read again. The
ring's size only bounds how far a slow watcher may fall behind.
"""

from __future__ import annotations

import collections
import itertools
import threading
import weakref
from collections.abc import Iterable

from .state import Event


class EventHub:
    def __init__(self, size: int = 65536) -> None:
        self._cond = threading.Condition()
        self._ring: collections.deque[Event] = collections.deque(maxlen=size)
        self._seq = 0
        self._watchers: weakref.WeakSet[Watcher] = weakref.WeakSet()

    @property
    def seq(self) -> int:
        return self._seq

    def publish(self, events: Iterable[Event]) -> None:
        with self._cond:
            for event in events:
                self._seq += 1
                event.seq = self._seq
                self._ring.append(event)
            self._trim()
            self._cond.notify_all()

    def _trim(self) -> None:
        """Drop the events every live watcher has read."""
        low = self._seq
        for watcher in list(self._watchers):
            if watcher._seq < low:
                low = watcher._seq
        ring = self._ring
        while ring and ring[0].seq <= low:
            ring.popleft()

    def watch(self) -> Watcher:
        with self._cond:
            watcher = Watcher(self, self._seq)
            self._watchers.add(watcher)
            return watcher

    def _since(self, seq: int, timeout: float | None) -> tuple[int, list[Event]]:
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

    def wake_all(self) -> None:
        with self._cond:
            self._cond.notify_all()


class Watcher:
    def __init__(self, hub: EventHub, seq: int) -> None:
        self._hub = hub
        self._seq = seq

    def next(self, timeout: float | None = None) -> list[Event]:
        """Events after the last call; empty if none arrived within timeout."""
        self._seq, events = self._hub._since(self._seq, timeout)
        return events
