"""A pysyncobj member made safe and durable for Flotilla.

What changes compared with a stock ``SyncObj``:
- the journal is :class:`DurableJournal` (fsync before any message leaves);
- snapshots go through :class:`SnapshotSerializer` (msgpack, written off the
  tick thread, fsynced before the log is truncated);
- the transport is :class:`TlsTransport` (mutual TLS tied to node certificates);
- commands, membership changes and snapshots are msgpack, never pickle: the
  stock ``@replicated`` decorator is not used; the store proposes opaque
  payloads through :meth:`propose` and the state machine applies them;
- the tick loop is ours (``autoTick`` off), so everything is in place before
  the first tick and shutdown is orderly;
- a member asks for pre-votes before it starts an election (``prevote.py``),
  once ``prevote_when()`` says every member answers them.

Every reach into pysyncobj's private state and methods goes through
``pysyncobj_compat.SyncObjAdapter``; this module uses that and pysyncobj's
public API only.
"""

from __future__ import annotations

import functools
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from typing import Any, NoReturn, Protocol

from pysyncobj import SyncObjConf
from pysyncobj.config import FAIL_REASON
from pysyncobj.node import TCPNode
from pysyncobj.monotonic import monotonic as _monotonic

from . import codec
from .journal import DurableJournal
from .prevote import PreVote
from .pysyncobj_compat import FOLLOWER, LEADER, MEMBERSHIP, REGULAR, Callback, SyncObjAdapter
from .security import RaftSecurity
from .snapshot import SnapshotSerializer, SnapshotState, read_boundary
from .transport import TlsTransport

log = logging.getLogger(__name__)

# Entries are kept well below this, so pysyncobj never falls back to its
# pickled "transmission" path for a single oversized entry.
APPEND_BATCH_BYTES = 16 * 1024 * 1024
MAX_COMMAND_BYTES = 4 * 1024 * 1024
TICK_STALL = 0.25
# Seconds of applying committed entries per tick (the rest goes on next tick).
APPLY_BUDGET = 0.05
# How much the Raft thread's nice value is lowered (if permitted).
PRIORITY_BOOST = 10
# A gap between ticks longer than this is treated as a stall of this member.
STALL_RECOVERY = 0.15
# Seconds between two compaction requests of this member, and after a
# snapshot that could not be written.
COMPACTION_RETRY = 0.5
COMPACTION_FAILED_BACKOFF = 5.0
# pysyncobj's own triggers are off: this module decides when to compact.
_NEVER_ENTRIES = 2 ** 62
_NEVER_SECONDS = 10.0 ** 9

# The result of an entry that could not be applied (see _apply_regular).
APPLY_REFUSED = {"ok": False, "error": {"code": "refused",
                                        "message": "the replicated store could not apply this "
                                                   "write (see the managers' logs)"}}


def compaction_due(position: float, held: float, limit: float, rank: int,
                   members: int) -> bool:
    """Whether a member should write a snapshot and cut its log.

    ``position`` is how much the cluster has applied since it began (the
    same on every member at the same entry), ``held`` how much of it this
    member's log still holds, ``limit`` how much a log is allowed to hold.
    Each member's snapshot points are ``limit`` apart, shifted by
    ``rank / members`` of ``limit``: the members of a cluster do not all
    write their snapshot at the same entry, so while one of them is busy
    writing, a majority without it still answers at full speed. A member
    is due once its log still holds a quarter of ``limit`` from before its
    last point (it has not written a snapshot since), so a log never holds
    much more than 1.25 ``limit``, and a log under a quarter of ``limit``
    is never cut."""
    if held < limit / 4:
        return False
    since_point = (position - rank * limit / members) % limit
    return held > since_point + limit / 4


class ReplicatedState(SnapshotState, Protocol):
    """What Raft replicates into (``store.state.StateMachine``)."""

    @property
    def applied_bytes(self) -> int: ...

    def apply(self, payload: bytes) -> Any: ...


def _unused_serializer(*_args: Any, **_kwargs: Any) -> NoReturn:  # pragma: no cover
    raise RuntimeError("snapshot serializer not installed")


def _raise_priority(boost: int) -> None:
    """Lower this thread's nice value by ``boost`` (Linux: per thread) where
    permitted (root, or CAP_SYS_NICE); otherwise leave it.

    The Raft thread sends the heartbeats that keep followers from starting
    elections, and it shares the process (and its GIL) with the API's
    request threads and the leader's components. When the machine is
    busy, the kernel runs it first and, when the GIL is handed over, it is
    the waiting thread most likely to get it."""
    try:
        tid = threading.get_native_id()
        current = os.getpriority(os.PRIO_PROCESS, tid)
        os.setpriority(os.PRIO_PROCESS, tid, max(-20, current - boost))
    except (OSError, AttributeError):
        pass


class RaftSettings:
    """Timing and size knobs. Defaults give sub-second failover on a LAN."""

    def __init__(self, *, election_min: float = 0.3, election_max: float = 0.7,
                 heartbeat: float = 0.05, connection_timeout: float = 3.0,
                 connection_retry: float = 0.5, leader_fallback: float = 2.0,
                 compaction_entries: int = 5000, compaction_seconds: float = 300,
                 compaction_bytes: int = 16 * 1024 * 1024,
                 snapshot_chunk: int = 256 * 1024) -> None:
        self.election_min = election_min
        self.election_max = election_max
        self.heartbeat = heartbeat
        self.connection_timeout = connection_timeout
        self.connection_retry = connection_retry
        self.leader_fallback = leader_fallback
        self.compaction_entries = compaction_entries
        self.compaction_seconds = compaction_seconds
        # Also compact when the log holds this many bytes of commands: a
        # burst of large entries (a thousand tasks each) would otherwise
        # stay in memory, on every member, until 5,000 entries accumulate.
        self.compaction_bytes = compaction_bytes
        self.snapshot_chunk = snapshot_chunk
        if (self.compaction_entries < 4 or self.compaction_bytes < 4
                or self.compaction_seconds <= 0):
            raise ValueError("compaction limits must be at least 4 entries, 4 bytes and a "
                             "positive number of seconds")


class RaftNode(SyncObjAdapter):
    """One Raft member. ``state_machine`` must provide ``apply(payload) ->
    result``, ``snapshot_capture()``, ``snapshot_write(captured, file)``,
    ``snapshot_load(unpacker)`` and ``applied_bytes`` (the bytes of all the
    payloads applied since the cluster began, restored from snapshots);
    ``security`` is described in ``transport``."""

    def __init__(self, self_address: str, peers: list[str], data_dir: str,
                 state_machine: ReplicatedState, security: RaftSecurity,
                 settings: RaftSettings | None = None,
                 on_state_changed: Callable[[int, int], None] | None = None,
                 bind_address: str | None = None,
                 prevote_when: Callable[[], bool] | None = None) -> None:
        settings = settings or RaftSettings()
        self._prevote = PreVote(settings.election_min)
        self._prevote_when = prevote_when
        self.flotilla_data_dir = data_dir
        self.flotilla_sm = state_machine
        self.flotilla_stopping = threading.Event()
        self.flotilla_stopped = threading.Event()
        self.journal = DurableJournal(data_dir)
        dump = os.path.join(data_dir, "snapshot")
        boundary = read_boundary(dump)
        if boundary is not None:
            # pysyncobj expects the journal to start with the snapshot's last
            # two entries, and empties it otherwise (see journal.align).
            dropped = self.journal.align(*boundary)
            if dropped:
                log.info("dropped %d journal entries the snapshot covers", dropped)
        security.attach_journal(self.journal)
        conf = SyncObjConf(
            autoTick=False,
            dynamicMembershipChange=True,
            appendEntriesUseBatch=False,
            appendEntriesBatchSizeBytes=APPEND_BATCH_BYTES,
            raftMinTimeout=settings.election_min,
            raftMaxTimeout=settings.election_max,
            appendEntriesPeriod=settings.heartbeat,
            connectionTimeout=settings.connection_timeout,
            connectionRetryTime=settings.connection_retry,
            leaderFallbackTimeout=settings.leader_fallback,
            logCompactionMinEntries=_NEVER_ENTRIES,
            logCompactionMinTime=_NEVER_SECONDS,
            logCompactionBatchSize=settings.snapshot_chunk,
            fullDumpFile=dump,
            serializer=_unused_serializer,
            deserializer=_unused_serializer,
            commandsQueueSize=100000,
            maxBindRetries=30,
            bindRetryTime=0.2,
            onStateChanged=on_state_changed,
            tcp_keepalive=None,
            bindAddress=bind_address,
        )
        transport = functools.partial(TlsTransport, security=security)
        super().__init__(self_address, [p for p in peers if p != self_address], conf,
                         journal=self.journal, transport_class=transport)
        serializer = SnapshotSerializer(dump, settings.snapshot_chunk, state_machine)
        serializer.startup_members = sorted(set(peers) | {self_address})
        self.install_serializer(serializer)
        self._tick_calls: queue.SimpleQueue = queue.SimpleQueue()
        self.tick_stalls = 0
        self._last_tick_work = 0.0
        self._last_tick_sync = 0.0
        self._compaction_bytes = settings.compaction_bytes
        self._compaction_entries = settings.compaction_entries
        self._compaction_seconds = settings.compaction_seconds
        self._compaction_period: int | None = None
        self._rank = (0, 1)
        self._rank_checked = float("-inf")
        self._compact_after = 0.0
        # When each peer's last message arrived (Raft address -> monotonic).
        self._heard: dict[str, float] = {}
        self._contact_window = settings.leader_fallback
        self._thread = threading.Thread(target=self._tick_loop, name="raft-tick", daemon=True)

    # -- lifecycle ------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def _tick_loop(self) -> None:
        _raise_priority(PRIORITY_BOOST)
        last = time.monotonic()
        logged = 0.0
        while not self.flotilla_stopping.is_set():
            now = time.monotonic()
            gap, last = now - last, now
            if gap > TICK_STALL:
                # Longer than this and followers start elections: worth a line.
                self.tick_stalls += 1
                if now - logged > 5.0:
                    logged = now
                    log.warning("raft thread stalled for %.2fs, %.2fs of it in its own work "
                                "(%.2fs syncing the journal; %d stalls so far)", gap,
                                self._last_tick_work, self._last_tick_sync, self.tick_stalls)
            try:
                if gap > STALL_RECOVERY:
                    self._after_stall()
                while True:
                    try:
                        fn = self._tick_calls.get_nowait()
                    except queue.Empty:
                        break
                    fn()
                self._prevote_tick()
                started, synced = time.monotonic(), self.journal.sync_seconds
                backlog = self.raftCommitIndex > self.raftLastApplied
                self.doTick(0.0 if backlog else 0.05)
                self._last_tick_work = time.monotonic() - started
                self._last_tick_sync = self.journal.sync_seconds - synced
                self._compact_when_due(started)
            except Exception:
                log.exception("raft tick failed")
                self.flotilla_stopping.wait(0.05)
        try:
            self.destroy_now()
        finally:
            self.flotilla_stopped.set()

    def _compact_when_due(self, now: float) -> None:
        """Ask for a snapshot when this member's turn has come: by the bytes
        or the number of entries its log holds (``compaction_due``), or
        every ``compaction_seconds``, each member in its own part of the
        period. The log is cut once the snapshot is on disk."""
        if now < self._compact_after:
            return
        if now >= self._rank_checked + 1.0:
            members = self.member_addresses()       # always holds this member
            self._rank = (members.index(self.self_address), len(members))
            self._rank_checked = now
        rank, count = self._rank
        seconds = self._compaction_seconds
        period = int((time.time() - rank * seconds / count) // seconds)
        if self._compaction_period is None:
            self._compaction_period = period
        held_bytes, held_entries = self.journal.bytes, len(self.journal)
        due = (compaction_due(self.flotilla_sm.applied_bytes, held_bytes,
                              self._compaction_bytes, rank, count)
               or compaction_due(self.raftLastApplied, held_entries,
                                 self._compaction_entries, rank, count)
               or period > self._compaction_period)
        serializer = self.serializer
        if not due or serializer.busy() or (
                serializer.failed_at is not None
                and time.monotonic() - serializer.failed_at < COMPACTION_FAILED_BACKOFF):
            return
        self._compaction_period = period
        self._compact_after = now + COMPACTION_RETRY
        self.forceLogCompaction()

    def _after_stall(self) -> None:
        """This thread did not run for a while (the process or the machine
        was busy). pysyncobj checks its election timer before it reads the
        messages that arrived meanwhile, so a follower would start an
        election although the leader's heartbeats are waiting in its
        socket, and a leader would step down for want of answers it has
        not read. Read them first; and if the leader's silence still looks
        too long, give it one more election timeout counted from now: time
        this member could not run says nothing about the leader (nor does
        it when a pre-vote request is read before the leader's heartbeats)."""
        if self.raft_leader is not None:
            self._prevote.heard_from_leader(_monotonic())
        self.poll_messages(0)
        if self.election_deadline < _monotonic():
            self.election_deadline = _monotonic() + self.new_election_timeout()

    # -- pre-vote (see prevote.py) ------------------------------------------------
    def _prevote_enabled(self) -> bool:
        if self._prevote_when is None:
            return False
        try:
            return bool(self._prevote_when())
        except Exception:       # the store is not readable yet: the plain election
            return False

    def _election_allowed(self) -> bool:
        """May pysyncobj start an election now? Without pre-vote, yes; with
        it, only after a won round or when the leader asked (a transfer)."""
        if self.transfer_in_progress or not self.voting_nodes:
            return True
        if self._prevote.won_term == self.raftCurrentTerm + 1:
            return True
        return not self._prevote_enabled()

    def may_start_election(self) -> bool:
        # pysyncobj asks this only right before it starts an election, after
        # finding its timer run out. Checking the timer ourselves before the
        # tick is not enough: between that check and pysyncobj's, the tick
        # may spend a while in the journal's once-a-second fsync.
        return self.stock_connected_to_anyone() and self._election_allowed()

    def _prevote_tick(self) -> None:
        """Runs before pysyncobj's tick: when the election timer has run
        out and no election is allowed yet, ask for pre-votes and put the
        timer back."""
        if self.raft_state == LEADER or self.selfNode is None:
            return
        now = _monotonic()
        if self.election_deadline >= now or self._election_allowed():
            return
        term = self.raftCurrentTerm
        pv = self._prevote
        self.election_deadline = now + self.new_election_timeout()
        if not self.stock_connected_to_anyone():
            return
        pv.start(term + 1, self.selfNode)
        last_term, last_index = self.last_log()
        message = {"type": "pre_vote", "term": term + 1, "last_log_index": last_index,
                   "last_log_term": last_term}
        for node in list(self.voting_nodes):
            self.send_to(node, message)

    def _answer_prevote(self, node: TCPNode, message: dict) -> None:
        if self.selfNode is None:
            return
        term = self.raftCurrentTerm
        granted = self._prevote.grant(
            term=message["term"], last=(message["last_log_term"], message["last_log_index"]),
            my_term=term, my_last=self.last_log(),
            leading=self.raft_state == LEADER, now=_monotonic())
        if granted:
            log.info("pre-vote for term %d granted to %s (at term %d, a leader last heard "
                     "%.2f s ago)", message["term"], getattr(node, "address", node), term,
                     _monotonic() - self._prevote.leader_contact)
        self.send_to(node, {"type": "pre_vote_response", "term": message["term"],
                            "current_term": term, "granted": granted})

    def _count_prevote(self, node: TCPNode, message: dict) -> None:
        term = self.raftCurrentTerm
        if not message["granted"] and message["current_term"] > term and \
                self.raft_state != LEADER:
            # Our term fell behind: move up, or no one would ever grant us.
            self.set_raft_term(message["current_term"], None)
            self.set_raft_state(FOLLOWER)
            self.forget_leader()
            self._prevote.clear()
            return
        if message["term"] != term + 1 or self.raft_state == LEADER:
            return
        members = len(self.voting_nodes) + 1
        if self._prevote.answer(message["term"], message["granted"], node, members):
            log.info("pre-vote for term %d granted by a majority: starting an election",
                     message["term"])
            self.election_deadline = 0     # the election starts next tick

    def stop(self, timeout: float = 5.0) -> None:
        self.flotilla_stopping.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self.flotilla_stopped.wait(timeout)

    # -- proposing ------------------------------------------------------------
    def propose(self, payload: bytes, callback: Callback) -> None:
        """Append a regular command; ``callback(result, fail_reason)`` runs on
        the tick thread once it is applied here (or failed)."""
        if len(payload) > MAX_COMMAND_BYTES:
            raise ValueError("command too large")
        self.append_command(payload, callback, REGULAR)

    def addNodeToCluster(self, node: TCPNode | str, callback: Callback | None = None,
                         member: dict | None = None) -> None:
        """Add a member. ``member`` (``node_id``, ``api_addr``) travels with
        the change: every member records who stands behind the address at
        the moment the change takes effect, whatever its store holds."""
        address = node.address if isinstance(node, TCPNode) else str(node)
        about = {k: str(v) for k, v in (member or {}).items()
                 if k in ("node_id", "api_addr") and v}
        # The third element was the address again; older releases ignore it.
        self.append_command(codec.pack(["add", address, about or address]), callback,
                            MEMBERSHIP)

    def removeNodeFromCluster(self, node: TCPNode | str,
                              callback: Callback | None = None) -> None:
        address = node.address if isinstance(node, TCPNode) else str(node)
        self.append_command(codec.pack(["rem", address, address]), callback, MEMBERSHIP)

    def setCodeVersion(self, newVersion: int, callback: Callback | None = None) -> NoReturn:
        raise NotImplementedError("code versions are not used by Flotilla")

    # -- pysyncobj hooks (see pysyncobj_compat.SyncObjAdapter) -------------------
    def apply_entry(self, command: bytes) -> Any:
        kind = command[0] if command else None
        if kind == REGULAR:
            return self._apply_regular(bytes(command[1:]))
        # Membership changes take effect when appended (pysyncobj does that on
        # append and on truncation); re-applying old ones at commit or replay
        # could resurrect a stale configuration, so nothing happens here.
        return None

    def _apply_regular(self, payload: bytes) -> Any:
        """Apply one entry. The state machine refuses what it cannot apply
        (the same way on every member) instead of raising; should it raise
        all the same, the entry is refused here and the members go on: an
        exception would leave this entry unapplied and retried at every
        tick, and the member would apply nothing after it, ever. Running out
        of memory is not a property of the entry (another member may apply
        it): then this member stops, and its manager restarts from disk
        rather than skip an entry the others applied."""
        try:
            return self.flotilla_sm.apply(payload)
        except MemoryError:
            log.critical("out of memory while applying a raft entry: stopping the manager")
            os._exit(70)
        except Exception:
            log.exception("raft entry of %d bytes could not be applied: refused", len(payload))
            return dict(APPLY_REFUSED)

    def apply_committed(self) -> bool:
        # pysyncobj applies every committed entry in one tick. A large
        # backlog (a burst of writes, a follower catching up) then kept the
        # thread from sending heartbeats and reading messages for seconds,
        # and the other members started elections. Here one tick applies
        # entries for at most APPLY_BUDGET seconds (at least one entry) and
        # the next tick goes on; what remains is applied in order, nothing
        # is skipped. Otherwise as pysyncobj's own.
        commit = self.raftCommitIndex
        applied = self.raftLastApplied
        if commit <= applied:
            return False
        waiting = self.commands_waiting_commit()
        deadline = time.monotonic() + APPLY_BUDGET
        for entry in self.log_entries(applied + 1, commit - applied):
            term = entry[2]
            result = self.apply_entry(entry[0])
            subscribers = waiting.pop(entry[1], [])
            for subscribed_term, callback in subscribers:
                if subscribed_term == term:
                    callback(result, FAIL_REASON.SUCCESS)
                else:
                    callback(None, FAIL_REASON.DISCARDED)
            self.mark_applied()
            if time.monotonic() > deadline:
                break
        return True

    def on_message(self, node: TCPNode, message: dict) -> None:
        # Writes reach the leader through its API, never through another
        # member's Raft connection. pysyncobj forwards a command to the
        # leader when its proposer is no longer leader by the time the tick
        # thread takes it from the queue: a deposed leader that has not
        # noticed yet (paused, partitioned) would have its leader
        # components' decisions (a node marked down, a task rescheduled)
        # applied by the new leader. Refuse it: the proposer's caller gets
        # "not the leader" and nothing is applied.
        address = getattr(node, "address", None)
        if address is not None:
            self._heard[address] = _monotonic()
        mtype = message.get("type")
        if mtype == "pre_vote":
            self._answer_prevote(node, message)
            return
        if mtype == "pre_vote_response":
            self._count_prevote(node, message)
            return
        if mtype == "append_entries" and message["term"] >= self.raftCurrentTerm:
            self._prevote.heard_from_leader(_monotonic())
        if mtype == "apply_command":
            if "request_id" in message:
                self.send_to(node, {
                    "type": "apply_command_response", "request_id": message["request_id"],
                    "error": FAIL_REASON.NOT_LEADER})
            return
        # pysyncobj pipelines entries to each follower but, on a success
        # acknowledgement, resets nextIndex to the acknowledged position even
        # when later entries are already in flight. The follower then gets
        # entries it has, truncates and re-appends them. A success ack may
        # only move nextIndex forward.
        if (message.get("type") == "next_node_idx" and message.get("success")
                and not message.get("reset") and self.leading):
            next_index = self.next_index
            before = next_index.get(node)
            self.stock_on_message(node, message)
            after = next_index.get(node)
            if before is not None and after is not None and after < before:
                next_index[node] = before
            return
        self.stock_on_message(node, message)

    def parse_membership(self, command: bytes) -> Any:
        if command[0] != MEMBERSHIP:
            return None
        try:
            request = codec.unpack(bytes(command[1:]))
        except codec.CodecError:
            log.error("undecodable membership change ignored")
            return None
        if (not isinstance(request, tuple) or len(request) != 3
                or request[0] not in ("add", "rem") or not isinstance(request[1], str)):
            log.error("malformed membership change ignored")
            return None
        about = request[2] if isinstance(request[2], dict) else {}
        member = {"address": request[1]}
        for key in ("node_id", "api_addr"):
            if isinstance(about.get(key), str):
                member[key] = about[key]
        # The transport records it when the change takes effect (addNode).
        return [request[0], request[1], TCPNode(request[1], flotilla_member=member)]

    # -- introspection ----------------------------------------------------------
    @property
    def is_leader(self) -> bool:
        return self.leading

    @property
    def leader_address(self) -> str | None:
        leader = self.leader_node
        return leader.address if leader is not None else None

    @property
    def self_address(self) -> str:
        return self.selfNode.address

    def member_addresses(self) -> list[str]:
        return sorted({n.address for n in self.otherNodes} | {self.self_address})

    def connected_addresses(self) -> set[str]:
        for _ in range(5):
            try:
                return self.raft_transport.connected_addresses()
            except RuntimeError:  # changed under us by the tick thread
                continue
        return set()

    def _heard_within(self, window: float) -> set[str]:
        now = _monotonic()
        for _ in range(5):
            try:
                heard = dict(self._heard)
                break
            except RuntimeError:  # changed under us by the tick thread
                continue
        else:
            heard = {}
        return {addr for addr, t in heard.items() if now - t < window}

    def reachable_addresses(self, window: float = 2.0) -> set[str]:
        """This member plus peers that are connected and, when we lead, have
        answered within ``window`` seconds."""
        out = {self.self_address}
        connected = self.connected_addresses()
        if not self.is_leader:
            return out | connected
        return out | (connected & self._heard_within(window))

    def has_quorum(self) -> bool:
        """Whether this member is in actual contact with a majority, not
        merely connected to one: a leader has heard from a majority of the
        members (itself included) within the contact window (it steps down
        when it has not for that long); any other member has heard from a
        leader within that window. A member that keeps connections to a
        follower but is cut off from the leader (or refused by it) has no
        quorum."""
        window = self._contact_window
        if self.is_leader:
            members = self.member_addresses()
            heard = self._heard_within(window) | {self.self_address}
            return 2 * len(heard.intersection(members)) > len(members)
        if self.raft_leader is None:
            return False
        return _monotonic() - self._prevote.leader_contact < window

    def transfer_leadership(self) -> bool:
        """Ask the most caught-up follower to take over; True if asked."""
        result: dict[str, Any] = {}
        done = threading.Event()

        def callback(_res: Any, err: Any) -> None:
            result["err"] = err
            done.set()

        self._tick_calls.put(lambda: self.transferLeadership(None, callback))
        done.wait(2.0)
        return result.get("err") == FAIL_REASON.SUCCESS

    def status(self) -> dict:
        for _ in range(5):
            try:
                st = self.getStatus()
                break
            except RuntimeError:  # dict changed size while the tick thread ran
                continue
        else:
            return {"state": "unknown"}
        return {
            "state": {0: "follower", 1: "candidate", 2: "leader"}.get(st["state"], "unknown"),
            "term": st["raft_term"],
            "leader": self.leader_address,
            "commit_index": st["commit_idx"],
            "last_applied": st["last_applied"],
            "log_length": st["log_len"],
            "members": self.member_addresses(),
            "connected": sorted(self.connected_addresses()),
            "has_quorum": self.has_quorum(),
        }


FAIL_TEXT = {
    FAIL_REASON.QUEUE_FULL: "raft queue full",
    FAIL_REASON.MISSING_LEADER: "no leader",
    FAIL_REASON.DISCARDED: "discarded by a new leader",
    FAIL_REASON.NOT_LEADER: "not the leader",
    FAIL_REASON.LEADER_CHANGED: "leader changed",
    FAIL_REASON.REQUEST_DENIED: "request denied",
    FAIL_REASON.UNKNOWN_OUTCOME: "outcome unknown",
}
