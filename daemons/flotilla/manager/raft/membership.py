"""Raft membership changes, one at a time, with a quorum guard.

Adding a member only waits until the change is appended on the leader: it
commits once the new member is up and has caught up, which may need the new
member itself (going from one manager to two). Removing a member waits for
the commit. A change is refused while the previous one has not committed.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from pysyncobj.config import FAIL_REASON

from .node import FAIL_TEXT, RaftNode


class MembershipBusy(Exception):
    pass


class MembershipError(Exception):
    pass


class QuorumError(Exception):
    pass


class _Outcome:
    """Collects a pysyncobj callback's result."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.err: Any = None             # a FAIL_REASON

    def __call__(self, _res: Any, err: Any) -> None:
        self.err = err
        self.done.set()

    def failed(self) -> bool:
        return self.done.is_set() and self.err != FAIL_REASON.SUCCESS

    def reason(self) -> str:
        return str(FAIL_TEXT.get(self.err, self.err))


class Membership:
    def __init__(self, raft: RaftNode) -> None:
        self._raft = raft
        self._lock = threading.Lock()
        self._pending: threading.Event | None = None

    def _wait_previous(self, timeout: float) -> None:
        pending = self._pending
        if pending is not None and not pending.wait(timeout):
            raise MembershipBusy("another manager membership change is still in progress")

    def add(self, address: str, timeout: float = 10.0, member: dict | None = None) -> None:
        """Add ``address``; ``member`` (``node_id``, ``api_addr``) is recorded
        with the change by every member (see ``security``)."""
        with self._lock:
            if address in self._raft.member_addresses():
                return
            self._wait_previous(timeout)
            outcome = _Outcome()
            self._raft.addNodeToCluster(address, callback=outcome, member=member)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if address in self._raft.member_addresses():
                    self._pending = outcome.done
                    return
                if outcome.failed():
                    raise MembershipError(f"adding {address} failed: {outcome.reason()}")
                time.sleep(0.01)
            raise MembershipError(f"adding {address} timed out")

    def remove(self, address: str, timeout: float = 10.0) -> None:
        with self._lock:
            if address not in self._raft.member_addresses():
                return
            self._wait_previous(timeout)
            outcome = _Outcome()
            self._raft.removeNodeFromCluster(address, callback=outcome)
            self._pending = outcome.done
            if not outcome.done.wait(timeout):
                raise MembershipError(f"removing {address} timed out")
            if outcome.failed():
                raise MembershipError(f"removing {address} failed: {outcome.reason()}")

    def check_removal(self, address: str | None) -> None:
        """Raise QuorumError if removing ``address`` would leave the remaining
        managers without a reachable majority."""
        members = set(self._raft.member_addresses())
        remaining = members - {address} if address else members
        if not remaining:
            raise QuorumError("cannot remove the last manager")
        reachable = self._raft.reachable_addresses() & remaining
        needed = len(remaining) // 2 + 1
        if len(reachable) < needed:
            raise QuorumError(
                f"unsafe: after this change {len(remaining)} managers remain and only "
                f"{len(reachable)} are reachable; {needed} are needed for quorum "
                f"(use --force to do it anyway)")
