"""Admission: how many request threads may run Python code at once.

A manager serves requests on many threads (so that requests waiting for a
Raft commit, a forwarded answer or a long poll do not hold up the rest),
but CPython runs one thread at a time, and a thread that wants the GIL
back competes with every other runnable thread for it. With dozens of
runnable request threads, the Raft thread, which needs the GIL several
times per tick, could be held up long enough for the other managers to
start an election.

So a request thread takes one of a few slots while it runs and gives it
back while it waits (``blocking()``): blocked threads sleep on a lock
instead of competing for the GIL, and the Raft thread and the leader's
components compete with a handful of threads rather than with all of them.
Waiting requests are let in by lane: urgent first (see ``Admission``).
"""

from __future__ import annotations

import contextlib
import threading

_local = threading.local()


class Admission:
    """``slots`` request threads at a time; requests on the urgent lane
    (operators, other managers) are let in before the others (agents) when
    both wait, so that a backlog of agent traffic does not hold up the API."""

    def __init__(self, slots: int, is_urgent=lambda environ: True):
        self.slots = slots
        self._is_urgent = is_urgent
        self._lock = threading.Lock()
        self._urgent = threading.Condition(self._lock)
        self._normal = threading.Condition(self._lock)
        self._free = slots
        self._urgent_waiting = 0

    def acquire(self, urgent: bool) -> None:
        with self._lock:
            if urgent:
                self._urgent_waiting += 1
                try:
                    while self._free == 0:
                        self._urgent.wait()
                finally:
                    self._urgent_waiting -= 1
            else:
                while self._free == 0 or self._urgent_waiting:
                    self._normal.wait()
            self._free -= 1

    def release(self) -> None:
        with self._lock:
            self._free += 1
            if self._urgent_waiting:
                self._urgent.notify()
            else:
                self._normal.notify()

    def wrap(self, wsgi_app):
        """A WSGI app that runs ``wsgi_app`` holding a slot."""
        def app(environ, start_response):
            self.acquire(self._is_urgent(environ))
            _local.slot = self
            try:
                return wsgi_app(environ, start_response)
            finally:
                _local.slot = None
                self.release()
        return app


class Budget:
    """At most ``limit`` requests of one kind at a time, beside the slots
    (joins: each signs a certificate, and nobody needs a certificate to ask).
    Up to ``queue`` more wait at most ``wait`` seconds for a turn; beyond
    that ``enter()`` says no at once."""

    def __init__(self, limit: int, queue: int = 0, wait: float = 0.0):
        self.limit = limit
        self.queue = queue
        self.wait = wait
        self._cond = threading.Condition(threading.Lock())
        self._running = 0
        self._waiting = 0

    def enter(self) -> bool:
        with self._cond:
            if self._running >= self.limit:
                if self._waiting >= self.queue:
                    return False
                self._waiting += 1
                try:
                    if not self._cond.wait_for(lambda: self._running < self.limit, self.wait):
                        return False
                finally:
                    self._waiting -= 1
            self._running += 1
            return True

    def leave(self) -> None:
        with self._cond:
            self._running -= 1
            self._cond.notify()


@contextlib.contextmanager
def blocking():
    """Give this thread's slot back while it waits for something slow (a
    commit, another manager, a long poll); a no-op outside a request."""
    slot = getattr(_local, "slot", None)
    if slot is None:
        yield
        return
    _local.slot = None
    slot.release()
    try:
        yield
    finally:
        # Work already under way finishes first: back in on the urgent lane.
        slot.acquire(True)
        _local.slot = slot
