"""The agent's side of the assignment stream.

The registration answer carries the complete set of tasks (sequence 1) for
the new session. After that the leader's dispatcher pushes increments to
this agent's listener; each says which sequence it applies to. An
increment that does not follow on (a gap) or names another session is
refused with 409, which makes the dispatcher send a complete set. A
repeated message (same sequence) is acknowledged without being applied
twice.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from .netstate import NetworkState

if TYPE_CHECKING:
    from .worker import Worker


class Refused(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class AssignmentStream:
    def __init__(self, worker: Worker, networks: NetworkState | None = None) -> None:
        self._worker = worker
        self.networks = networks or NetworkState(None)
        self._lock = threading.Lock()
        self.session_id: str | None = None
        self.seq = 0
        self.completes = 0
        self.increments = 0

    def reset(self, session_id: str, complete: dict) -> None:
        """A new session: apply its complete set."""
        with self._lock:
            self._worker.assign(complete.get("tasks", []), complete=True)
            self.networks.apply(complete, complete=True)
            self.session_id = session_id
            self.seq = int(complete.get("seq", 1))
            self.completes += 1

    def push(self, msg: dict) -> int:
        with self._lock:
            if self.session_id is None or msg.get("session_id") != self.session_id:
                raise Refused("session", "unknown session")
            seq = msg.get("seq")
            if not isinstance(seq, int):
                raise Refused("invalid", "no sequence number")
            if msg.get("type") == "complete":
                self._worker.assign(msg.get("tasks", []), complete=True)
                self.networks.apply(msg, complete=True)
                self.seq = seq
                self.completes += 1
                return self.seq
            if msg.get("type") != "incremental":
                raise Refused("invalid", "unknown assignment type")
            if seq == self.seq:
                return self.seq          # already applied
            if msg.get("applies_to") != self.seq:
                raise Refused("gap", f"have {self.seq}, "
                                     f"got an increment for {msg.get('applies_to')}")
            self._worker.assign(msg.get("tasks", []), complete=False,
                                removed=list(msg.get("removed", [])))
            self.networks.apply(msg, complete=False)
            self.seq = seq
            self.increments += 1
            return self.seq
