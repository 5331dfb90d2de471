"""Base for long-running components.

A component has a cheap constructor (starts nothing), a blocking ``run()``,
``start()`` which runs it on a thread, and an idempotent ``stop()``.

A component whose ``run()`` fails with an unexpected error is logged and
run again after a pause (1 s, doubling up to 30 s while it keeps failing
within a minute of its start): a leader whose dispatcher died would
otherwise keep its leadership and never push another assignment.
"""

from __future__ import annotations

import logging
import threading
import time

log = logging.getLogger(__name__)


RESTART_FIRST = 1.0
RESTART_MAX = 30.0
RESTART_RESET = 60.0


class Component:
    name = "component"

    def __init__(self) -> None:
        self.stopping = threading.Event()
        self.crashes = 0
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def run(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _main(self):
        pause = RESTART_FIRST
        while not self.stopping.is_set():
            started = time.monotonic()
            try:
                self.run()
                return
            except Exception:
                if self.stopping.is_set():
                    return
                if time.monotonic() - started > RESTART_RESET:
                    pause = RESTART_FIRST
                self.crashes += 1
                log.exception("%s crashed; running it again in %.0f s", self.name, pause)
            if self.stopping.wait(pause):
                return
            pause = min(pause * 2, RESTART_MAX)

    def start(self) -> None:
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self.stopping.clear()
            self._thread = threading.Thread(target=self._main, name=self.name, daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self.stopping.set()
        self.wake()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def wake(self) -> None:
        """Interrupt a wait in run(); override when run() blocks elsewhere."""

    def sleep(self, seconds: float) -> bool:
        """Wait up to ``seconds``; True if the component is stopping."""
        return self.stopping.wait(seconds)
