"""Batches task status changes and sends them to the dispatcher.

The latest status per task is kept. A change is sent at once; changes that
arrive while a send is in flight go together in the next one (at most 200
per request, after a 5 ms pause to gather a burst). If the dispatcher does
not know our session (a new leader), the statuses wait for the next
registration; after each registration every known status is sent again, so
a new leader learns the node's real state. A batch that was in flight while
the agent registered again is sent again too.
"""

from __future__ import annotations

import logging
import threading

from ..common.component import Component
from ..common.httpclient import ApiError
from .dispatcherlink import DispatcherLink

log = logging.getLogger(__name__)

GATHER = 0.005
RETRY = 1.0
BATCH = 200


class Reporter(Component):
    name = "status-reporter"

    def __init__(self, link: DispatcherLink) -> None:
        super().__init__()
        self._link = link
        self._lock = threading.Lock()
        self._pending: dict[str, dict] = {}
        self._kick = threading.Event()
        self.session_id: str | None = None
        self.sent = 0

    def report(self, task_id: str, status: dict) -> None:
        with self._lock:
            self._pending[task_id] = dict(status)
        self._kick.set()

    def new_session(self, session_id: str, statuses: dict[str, dict]) -> None:
        with self._lock:
            self.session_id = session_id
            for task_id, status in statuses.items():
                self._pending.setdefault(task_id, dict(status))
        self._kick.set()

    def wake(self) -> None:
        self._kick.set()

    def run(self) -> None:
        while not self.stopping.is_set():
            self._kick.wait(RETRY)
            if self.stopping.is_set():
                return
            self.stopping.wait(GATHER)
            self._kick.clear()
            while self.flush():
                pass

    def flush(self) -> bool:
        """Send one batch; True if more are waiting and the send went well."""
        with self._lock:
            if not self._pending or self.session_id is None:
                return False
            batch = dict(list(self._pending.items())[:BATCH])
            session_id = self.session_id
        updates = [{"task_id": k, "status": v} for k, v in batch.items()]
        try:
            self._link.post("/v1/dispatcher/status",
                            {"session_id": session_id, "updates": updates},
                            timeout=10, retry_for=1)
        except ApiError as exc:
            if exc.code == "session_invalid":
                with self._lock:
                    if self.session_id == session_id:
                        self.session_id = None
            else:
                log.info("status report failed (will retry): %s", exc)
            return False
        with self._lock:
            # A registration while this batch was in flight means another
            # leader: the one that took the batch may never write it, so
            # the new session gets it as well.
            if self.session_id == session_id:
                for task_id, status in batch.items():
                    if self._pending.get(task_id) == status:
                        del self._pending[task_id]
            more = bool(self._pending)
        self.sent += len(updates)
        return more
