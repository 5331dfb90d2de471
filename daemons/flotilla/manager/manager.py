"""Everything a manager runs in its process.

The Raft member and the store run on every manager. The leader-only
components (dispatcher, role manager, network key manager, and the CA
signer used by the API, ...) are built when this member becomes leader and
has caught up, and stopped when it loses leadership.
"""

from __future__ import annotations

import logging
import os
import threading
import time

from ..common import fsutil
from ..common.component import Component
from ..common.config import NodeConfig
from .caserver import CAServer
from .dispatcher.dispatcher import Dispatcher
from .events import EventLog
from .metrics import ManagerMetrics
from .raft.membership import Membership
from .raft.node import RaftNode, RaftSettings
from .raft.security import RaftSecurity, SecurityCounters, node_by_raft_addr, saved_members
from .rolemanager import RoleManager
from .store import queries
from .store.store import Op, RequestId, Store, StoreError

log = logging.getLogger(__name__)


class Manager:
    def __init__(self, cfg: NodeConfig, settings: RaftSettings | None = None, join_members=None,
                 join_apis=None):
        self.cfg = cfg
        self.settings = settings or RaftSettings()
        self.counters = SecurityCounters()
        self.metrics = ManagerMetrics(self)
        self.store = Store()
        self.store.patch_when(queries.managers_apply_patches)
        self.events = EventLog(self.store)
        self.raft: RaftNode | None = None
        self.membership: Membership | None = None
        self.ca = CAServer(self.store, self.counters)
        self.dispatcher: Dispatcher | None = None
        self.scheduler = None
        self.orchestrator = None
        self._components: list[Component] = []
        self._leading = False
        self.leader_ready = threading.Event()
        self._state_changed = threading.Event()
        self._stop = threading.Event()
        self._join_members = join_members
        self._join_apis = join_apis
        self._thread = threading.Thread(target=self._leadership_loop, name="leadership",
                                        daemon=True)
        fsutil.ensure_private_dir(cfg.raft_dir)
        self.security = RaftSecurity(
            bundle_path=cfg.bundle_path, ca_path=cfg.ca_path, cluster_id=cfg.cluster_id,
            store=self.store, members_path=os.path.join(cfg.raft_dir, "members.json"),
            counters=self.counters)

    # -- lifecycle ---------------------------------------------------------------------
    def start(self):
        self.events.start()   # first: it records the changes replayed from disk too
        members_path = os.path.join(self.cfg.raft_dir, "members.json")
        peers = saved_members(members_path)
        if not peers:
            if self._join_members:
                self.security.remember(self._join_members, self._join_apis)
                peers = sorted(self._join_members)
            else:
                peers = [self.cfg.raft_advertise]
                self.security.remember({self.cfg.raft_advertise: self.cfg.node_id},
                                       {self.cfg.raft_advertise: self.cfg.advertise})
        log.info("starting raft member %s (bind %s) with peers %s",
                 self.cfg.raft_advertise, self.cfg.raft_listen, peers)
        self.raft = RaftNode(self.cfg.raft_advertise, peers, self.cfg.raft_dir, self.store.sm,
                             self.security, self.settings,
                             on_state_changed=lambda _o, _n: self._state_changed.set(),
                             bind_address=self.cfg.raft_listen,
                             prevote_when=lambda: queries.managers_answer_prevotes(self.store))
        self.membership = Membership(self.raft)
        self.store.attach(self.raft)
        self.store.start()
        self.raft.start()
        self._thread.start()

    def stop(self):
        if self._stop.is_set():
            return
        self._stop.set()
        self._state_changed.set()
        self._stop_components()
        self.events.stop()
        self.store.stop()
        if self.raft is not None:
            self.raft.stop()

    # -- leadership ------------------------------------------------------------------------
    @property
    def is_leader(self) -> bool:
        return self.raft is not None and self.raft.is_leader

    def leader_api_addr(self) -> str | None:
        if self.raft is None:
            return None
        addr = self.raft.leader_address
        if addr is None:
            return None
        if addr == self.cfg.raft_advertise:
            return self.cfg.advertise
        node = node_by_raft_addr(self.store, addr)
        return (node.get("manager") or {}).get("api_addr") if node else None

    def leader_node_id(self) -> str | None:
        if self.raft is None or self.raft.leader_address is None:
            return None
        if self.raft.leader_address == self.cfg.raft_advertise:
            return self.cfg.node_id
        node = node_by_raft_addr(self.store, self.raft.leader_address)
        return node["id"] if node else None

    def _leadership_loop(self):
        while not self._stop.is_set():
            self._state_changed.wait(0.1)
            self._state_changed.clear()
            if self._stop.is_set():
                break
            leader = self.is_leader
            if leader and not self._leading:
                try:
                    self.store.barrier(timeout=5.0)
                    self._bootstrap_if_needed()
                except StoreError as exc:
                    log.info("not ready to lead yet: %s", exc)
                    time.sleep(0.1)
                    self._state_changed.set()
                    continue
                if not self.is_leader:
                    continue
                self._start_components()
            elif not leader and self._leading:
                self._stop_components()

    def _start_components(self):
        from .allocator.allocator import Allocator
        from .networkkeys import NetworkKeyManager
        from .orchestrator.orchestrator import Orchestrator
        from .orchestrator.taskreaper import TaskReaper
        from .orchestrator.updater import Updater
        from .scheduler.scheduler import Scheduler, constraint_matcher

        log.info("became leader: starting leader components")
        front = None
        if self.cfg.dispatcher_listen and self.cfg.dispatcher_advertise:
            front = (self.cfg.dispatcher_listen, self.cfg.dispatcher_advertise,
                     self.cfg.cluster_id)
        self.dispatcher = Dispatcher(self.store, (self.cfg.bundle_path, self.cfg.ca_path), front,
                                     node_id=self.cfg.node_id)
        self.scheduler = Scheduler(self.store, on_placed=self.metrics.observe_scheduling)
        self.orchestrator = Orchestrator(self.store, constraint_matcher())
        self._components = [self.dispatcher,
                            RoleManager(self.store, self.raft, self.membership),
                            self.orchestrator, Allocator(self.store), Updater(self.store),
                            self.scheduler,
                            TaskReaper(self.store), NetworkKeyManager(self.store)]
        for c in self._components:
            c.start()
        self._leading = True
        self.leader_ready.set()

    def _stop_components(self):
        if not self._leading and not self._components:
            return
        log.info("leadership lost: stopping leader components")
        self.leader_ready.clear()
        for c in self._components:
            c.stop()
        self._components = []
        self.dispatcher = None
        self.scheduler = None
        self.orchestrator = None
        self._leading = False

    def _bootstrap_if_needed(self):
        """The first leader of a new cluster writes the objects prepared by
        ``init`` (cluster, root CA, tokens, this node)."""
        path = self.cfg.bootstrap_path
        if not os.path.exists(path):
            return
        if queries.cluster(self.store) is None:
            data = fsutil.read_json(path)
            self.store.commit([Op.create("cluster", data["cluster"]),
                               Op.create("node", data["node"])],
                              rid=RequestId("bootstrap", b"bootstrap"))
            log.info("cluster %s bootstrapped", data["cluster"]["id"])
        os.unlink(path)
        fsutil.fsync_dir(os.path.dirname(path))
