"""Pre-vote: a member asks whether it could win before it starts an election.

Without it, a manager cut off from the others (a partition, a long pause)
keeps starting elections, each at a higher term. When it comes back, its
term is above the leader's, and the first vote request it sends makes a
healthy leader step down: writes stop for an election, every agent
registers again, and the rejoining manager, whose log is behind, cannot
even win.

With it, a member whose election timer runs out first sends ``pre_vote``
(the term it would stand at, and its last log entry) and changes nothing.
Another member grants it only if it has not heard from a leader within the
shortest election timeout, is not the leader, and the asker's log is at
least as complete as its own; it changes nothing either. Only with a
majority of grants (its own included) does the asker start the real
election. A member that answers no tells the asker its own term: an asker
below it moves up to that term, so two members whose terms drifted apart
cannot refuse each other for ever.

An election asked for by the leader (a leadership transfer) skips the
pre-vote: followers hear from the leader until the very end.

The pure decisions live here; ``node.py`` sends and receives the messages.
"""

from __future__ import annotations

import math
from collections.abc import Hashable


class PreVote:
    def __init__(self, election_min: float) -> None:
        self.election_min = election_min
        self.leader_contact = -math.inf     # when a leader was last heard from
        self.term: int | None = None        # the term the current round asks for
        self.granted: set[Hashable] = set()     # the members (pysyncobj nodes) that granted
        self.won_term: int | None = None    # the round that reached a majority

    # -- this member as voter ---------------------------------------------------------
    def heard_from_leader(self, now: float) -> None:
        self.leader_contact = now

    def grant(self, *, term: int, last: tuple[int, int], my_term: int,
              my_last: tuple[int, int], leading: bool, now: float) -> bool:
        """Would this member vote for an asker standing at ``term`` whose
        log ends at ``last`` (term, index)?"""
        if leading or now - self.leader_contact < self.election_min:
            return False
        if term <= my_term:
            return False
        return tuple(last) >= tuple(my_last)

    # -- this member as asker ---------------------------------------------------------
    def start(self, term: int, me: Hashable) -> None:
        self.term = term
        self.granted = {me}
        self.won_term = None

    def answer(self, term: int, granted: bool, voter: Hashable, members: int) -> bool:
        """Count a grant for the round at ``term``; True once it reaches a
        majority of ``members`` (this member included) for the first time."""
        if not granted or term != self.term or self.won_term == term:
            return False
        self.granted.add(voter)
        if len(self.granted) * 2 > members:
            self.won_term = term
            return True
        return False

    def clear(self) -> None:
        self.term = None
        self.granted = set()
        self.won_term = None
