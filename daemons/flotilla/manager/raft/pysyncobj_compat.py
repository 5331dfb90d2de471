"""Everything Flotilla relies on inside pysyncobj, in one place.

pysyncobj's public API (``SyncObj``'s constructor, ``doTick``,
``getStatus``, ``transferLeadership``, ``forceLogCompaction``, the
``raftCurrentTerm``/``raftCommitIndex``/``raftLastApplied``/``selfNode``/
``otherNodes`` properties, ``SyncObjConf``, ``FAIL_REASON``) is not enough
to make a member durable, safe and quick to recover: ``node.py`` also reads
and sets its Raft state, replaces some of its private methods and hands it
our own journal. Every such reach is here, behind named and typed
accessors, and nowhere else; ``tests/unit/test_pysyncobj_pins.py`` checks
each of them against the installed pysyncobj, so an upgrade fails loudly in
that one test, naming what moved.

What this module relies on:
- private attributes of ``SyncObj`` (set in its ``__init__``): the Raft
  state, term, leader, election deadline, the transfer flag, the set of
  other nodes, the transport, the commands waiting for their commit, the
  next index per follower and the snapshot serializer;
- private methods of ``SyncObj`` it calls (the log's last term and index,
  log entries, the election timeout, setting the term and the state) and
  the ones it replaces (see *hooks* below);
- ``SyncObj._applyCommand``, ``_isLeader``, ``_getLeader``, ``_doDestroy``
  and the ``_poller`` it builds;
- ``pysyncobj.syncobj.createJournal``, the module-level factory
  ``SyncObj.__init__`` builds its journal with, swapped for the duration of
  the constructor;
- the private enums ``_RAFT_STATE`` and ``_COMMAND_TYPE`` and
  ``tcp_connection._getAddrType``.

The transport (``transport.py``) subclasses pysyncobj's ``TCPTransport``
through its documented extension points; the methods and attributes of
``TCPTransport`` it relies on are pinned by the same test.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pysyncobj.syncobj as _syncobj
from pysyncobj import SyncObj
from pysyncobj.node import Node
from pysyncobj.syncobj import _COMMAND_TYPE, _RAFT_STATE
from pysyncobj.tcp_connection import _getAddrType

# The pysyncobj release this module was written against (requirements.txt
# pins it). Anything else must pass tests/unit/test_pysyncobj_pins.py first.
PYSYNCOBJ_VERSION = "0.3.17"

# Kinds of log entries.
REGULAR: int = _COMMAND_TYPE.REGULAR
MEMBERSHIP: int = _COMMAND_TYPE.MEMBERSHIP

# Raft states, as ``raft_state`` and ``getStatus()["state"]`` give them.
FOLLOWER: int = _RAFT_STATE.FOLLOWER
CANDIDATE: int = _RAFT_STATE.CANDIDATE
LEADER: int = _RAFT_STATE.LEADER

# The module attribute ``SyncObj.__init__`` builds its journal with.
JOURNAL_FACTORY = "createJournal"

_factory_lock = threading.Lock()

# A log entry as pysyncobj keeps it: (command, index, term).
Entry = tuple[bytes, int, int]
Callback = Callable[[Any, int], None]


def address_family(host: str) -> int:
    """The socket family (``AF_INET`` or ``AF_INET6``) for ``host``, as
    pysyncobj's own connections choose it."""
    return _getAddrType(host)


def poller_of(sync_obj: SyncObj) -> Any:
    """The poller a ``SyncObj`` waits on in ``doTick``; the transport's
    sockets subscribe to it."""
    return sync_obj._poller


@contextlib.contextmanager
def journal_factory(journal: Any) -> Iterator[None]:
    """pysyncobj builds its journal inside ``__init__`` from a module-level
    factory; hand it ``journal`` for the duration of the constructor. One
    constructor at a time swaps it."""
    with _factory_lock:
        original = getattr(_syncobj, JOURNAL_FACTORY)
        setattr(_syncobj, JOURNAL_FACTORY, lambda _path: journal)
        try:
            yield
        finally:
            setattr(_syncobj, JOURNAL_FACTORY, original)


class SyncObjAdapter(SyncObj):
    """A ``SyncObj`` with its private state behind named accessors and its
    private methods replaced by overridable hooks.

    The hooks are called by pysyncobj where it would call its own private
    method; by default each does what pysyncobj does (``stock_*``):

    ============================  ============================================
    hook                          replaces ``SyncObj.__...``
    ============================  ============================================
    ``apply_entry(command)``      ``__doApplyCommand``: apply one entry
    ``apply_committed()``         ``__applyLogEntries``: apply what is committed
    ``on_message(node, msg)``     ``__onMessageReceived``: a peer's message
    ``parse_membership(cmd)``     ``__parseChangeClusterRequest``
    ``may_start_election()``      ``__connectedToAnyone``, asked right before
                                  an election starts
    ============================  ============================================
    """

    # -- construction ---------------------------------------------------------
    def __init__(self, self_node: str, other_nodes: list[str], conf: Any, *,
                 journal: Any, transport_class: Any):
        """Build the member with ``journal`` as its journal (instead of the
        file journal pysyncobj would create)."""
        with journal_factory(journal):
            super().__init__(self_node, other_nodes, conf, transportClass=transport_class)

    def install_serializer(self, serializer: Any) -> None:
        """Use ``serializer`` (the interface of ``pysyncobj.serializer.
        Serializer``) for snapshots instead of pysyncobj's pickling one."""
        self._SyncObj__serializer = serializer

    @property
    def serializer(self) -> Any:
        return self._SyncObj__serializer

    # -- Raft state -----------------------------------------------------------
    @property
    def raft_state(self) -> int:
        """FOLLOWER, CANDIDATE or LEADER."""
        return self._SyncObj__raftState

    def set_raft_state(self, state: int) -> None:
        """Change the state as pysyncobj does (``onStateChanged`` is called)."""
        self._SyncObj__setState(state)

    def set_raft_term(self, term: int, voted_for: str | None) -> None:
        """Move to ``term`` (persisted in the journal with the vote)."""
        self._SyncObj__setCurrentTerm(term, voted_for)

    @property
    def raft_leader(self) -> Node | None:
        """The last known leader (``None`` when not known)."""
        return self._SyncObj__raftLeader

    def forget_leader(self) -> None:
        self._SyncObj__raftLeader = None

    @property
    def leading(self) -> bool:
        """Whether this member is in the leader state (``_isLeader``)."""
        return self._isLeader()

    @property
    def leader_node(self) -> Node | None:
        """The last known leader node (``_getLeader``)."""
        return self._getLeader()

    @property
    def election_deadline(self) -> float:
        """When this member starts an election, on pysyncobj's monotonic
        clock (``pysyncobj.monotonic.monotonic``)."""
        return self._SyncObj__raftElectionDeadline

    @election_deadline.setter
    def election_deadline(self, value: float) -> None:
        self._SyncObj__raftElectionDeadline = value

    @property
    def one_second_dumps(self) -> int:
        """How many times the once-a-second timer (the journal's sync) has
        run; the tick runs it again when a second has passed beyond that."""
        return self._SyncObj__numOneSecondDumps

    @one_second_dumps.setter
    def one_second_dumps(self, value: int) -> None:
        self._SyncObj__numOneSecondDumps = value

    def new_election_timeout(self) -> float:
        """A random election timeout between the configured bounds."""
        return self._SyncObj__generateRaftTimeout()

    @property
    def transfer_in_progress(self) -> bool:
        """Whether a leadership transfer (TimeoutNow) is pending."""
        return self._SyncObj__transferInProgress

    @property
    def voting_nodes(self) -> set[Node]:
        """The other members (the live set, not a copy: read it on the tick
        thread only)."""
        return self._SyncObj__otherNodes

    def last_log(self) -> tuple[int, int]:
        """(term, index) of the last entry in the log."""
        return self._SyncObj__getCurrentLogTerm(), self._SyncObj__getCurrentLogIndex()

    def log_entries(self, first: int, count: int) -> list[Entry]:
        """Up to ``count`` entries from index ``first`` on."""
        return self._SyncObj__getEntries(first, count)

    @property
    def next_index(self) -> dict[Node, int]:
        """The leader's next index per follower (the live dict)."""
        return self._SyncObj__raftNextIndex

    def commands_waiting_commit(self) -> dict[int, list[tuple[int, Callback]]]:
        """Callbacks of this member's commands by log index: (term, callback).
        A method, not a property: ``SyncObj.__init__`` reads every attribute
        of the object before it sets this one."""
        return self._SyncObj__commandsWaitingCommit

    def mark_applied(self) -> None:
        """One more entry has been applied."""
        self._SyncObj__raftLastApplied += 1

    # -- transport, commands, lifecycle --------------------------------------
    @property
    def raft_transport(self) -> Any:
        return self._SyncObj__transport

    def send_to(self, node: Node, message: dict) -> None:
        """Send a Raft message to a member over the transport."""
        self._SyncObj__transport.send(node, message)

    def append_command(self, command: bytes, callback: Callback | None, kind: int) -> None:
        """Queue a command of ``kind`` (REGULAR or MEMBERSHIP) for the log;
        ``callback(result, fail_reason)`` runs on the tick thread."""
        self._applyCommand(command, callback, kind)

    def poll_messages(self, timeout: float = 0.0) -> None:
        """Read what arrived on the transport's sockets, handling it."""
        self._poller.poll(timeout)

    def destroy_now(self) -> None:
        """Close connections, the journal and the server (on the tick
        thread, which is ours: ``autoTick`` is off)."""
        self._doDestroy()

    # -- pysyncobj's own behaviour, for hooks that add to it -------------------
    def stock_connected_to_anyone(self) -> bool:
        return SyncObj._SyncObj__connectedToAnyone(self)

    def stock_on_message(self, node: Node, message: dict) -> None:
        SyncObj._SyncObj__onMessageReceived(self, node, message)

    def stock_apply_committed(self) -> bool:
        return SyncObj._SyncObj__applyLogEntries(self)

    def stock_apply_entry(self, command: bytes) -> Any:
        return SyncObj._SyncObj__doApplyCommand(self, command)

    def stock_parse_membership(self, command: bytes) -> Any:
        return SyncObj._SyncObj__parseChangeClusterRequest(self, command)

    # -- hooks ------------------------------------------------------------------
    def apply_entry(self, command: bytes) -> Any:
        return self.stock_apply_entry(command)

    def apply_committed(self) -> bool:
        return self.stock_apply_committed()

    def on_message(self, node: Node, message: dict) -> None:
        self.stock_on_message(node, message)

    def parse_membership(self, command: bytes) -> Any:
        return self.stock_parse_membership(command)

    def may_start_election(self) -> bool:
        return self.stock_connected_to_anyone()

    # The name-mangled private methods pysyncobj calls on itself. Defined
    # here, they take the place of SyncObj's and call the hooks above.
    def _SyncObj__doApplyCommand(self, command: bytes) -> Any:
        return self.apply_entry(command)

    def _SyncObj__applyLogEntries(self) -> bool:
        return self.apply_committed()

    def _SyncObj__onMessageReceived(self, node: Node, message: dict) -> None:
        return self.on_message(node, message)

    def _SyncObj__parseChangeClusterRequest(self, command: bytes) -> Any:
        return self.parse_membership(command)

    def _SyncObj__connectedToAnyone(self) -> bool:
        return self.may_start_election()
