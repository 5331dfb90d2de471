"""Base for long-running components.

A component has a cheap constructor (starts nothing), a blocking ``run()``,
``start()`` which runs it on a thread, and an idempotent ``stop()``.
"""

from __future__ import annotations

import logging
import threading

log = logging.getLogger(__name__)


class Component:
    name = "component"

    def __init__(self):
        self.stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def run(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _main(self):
        try:
            self.run()
        except Exception:
            log.exception("%s crashed", self.name)

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
