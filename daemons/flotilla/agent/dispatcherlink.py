"""Where the agent sends its heartbeats and status reports.

The leader serves them on a port of its own (the dispatcher's front, see
``manager/dispatcher/front.py``), named in each registration's answer. They go there
while it answers; when it cannot be reached or sends a request back (the
leader changed, the node's state must change first) they go to the API,
which any manager serves, and the front is tried again after the next
registration. Answers about the session itself (unknown session, removed
node) are the same on both paths and are passed on.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from ..common.httpclient import ApiError, Client

log = logging.getLogger(__name__)

# Answers the agent acts on, whichever path gave them.
SESSION_CODES = {"session_invalid", "revoked"}


class DispatcherLink:
    def __init__(self, client: Client):
        self._client = client
        self._lock = threading.Lock()
        self._front: Client | None = None

    def use(self, addr: str | None) -> None:
        """The front named by the last registration (None: the API only)."""
        with self._lock:
            if addr is None:
                self._front = None
            elif self._front is None or self._front.addresses != [addr]:
                self._front = Client([addr], self._client.bundle_path, self._client.ca_path,
                                     retry_for=0)

    def post(self, path: str, body: dict, *, timeout: float, retry_for: float) -> Any:
        front = self._front
        if front is not None:
            try:
                return front.post(path, body, timeout=timeout, retry_for=0)
            except ApiError as exc:
                if exc.code in SESSION_CODES:
                    raise
                if exc.code != "misdirected":
                    log.info("dispatcher at %s: %s; using the API", front.addresses[0], exc)
                    with self._lock:
                        if self._front is front:
                            self._front = None
        return self._client.post(path, body, timeout=timeout, retry_for=retry_for)
