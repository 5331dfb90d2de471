"""The agent side of a node: session, task execution, status, listener.

    session ── register ──► dispatcher (complete set of tasks) ──► assignment stream ──► worker
            ── heartbeat ─►                 pushes to listener ──┘                       │
    reporter ◄── status changes ─────────────────────────────────────────────────────────┘
             ── batches ──► dispatcher
    networks (from the stream) ──► networking: engine bridges, VIPs, resolver ◄── executor waits
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Callable

from ..common.config import DEFAULT_WIREGUARD_PORT
from .assignments import AssignmentStream
from .dispatcherlink import DispatcherLink
from .executor import DockerExecutor
from .metrics import AgentMetrics
from .netstate import NetworkState
from .network.wireguard import KEY_FILE
from .networking import Networking
from .reporter import Reporter
from .server import AgentServer
from .session import Session
from .trust import Trust
from .worker import Worker

if TYPE_CHECKING:
    import docker

    from ..common.config import NodeConfig
    from ..common.httpclient import Client

log = logging.getLogger(__name__)


class Agent:
    def __init__(self, cfg: NodeConfig, client: Client, on_update: Callable[[dict], None],
                 on_removed: Callable[[], None],
                 docker_client: docker.DockerClient | None = None) -> None:
        self.cfg = cfg
        # Enough engine connections for the worker's stop pool (see worker.py).
        self.executor = DockerExecutor(cfg.node_id, docker_client, max_pool_size=160,
                                       hostname=cfg.hostname)
        self.link = DispatcherLink(client)
        self.reporter = Reporter(self.link)
        # The node's overlay networks: programmed from networks.json at
        # start, then as the assignment stream changes them.
        netstate = NetworkState(os.path.join(cfg.data_dir, "agent", "networks.json"))
        self.networking = Networking(cfg.node_id, lambda: self.executor.client,
                                     views=netstate.networks, cluster_id=cfg.cluster_id,
                                     underlay_hint=cfg.agent_advertise or cfg.advertise)
        netstate.on_change = self.networking.update
        self.executor.networks = self.networking
        self.worker = Worker(cfg.node_id, os.path.join(cfg.data_dir, "agent"), self.executor,
                             self._report)
        self.stream = AssignmentStream(self.worker, netstate)
        self.trust = Trust(os.path.join(cfg.data_dir, "agent", "trust.json"))
        self.metrics = AgentMetrics(self)
        self.server = AgentServer(cfg, self.stream, self.metrics, executor=self.executor,
                                  trust=self.trust)
        self._on_update = on_update
        self.session = Session(cfg, client, self.link, self._answered, on_removed,
                               describe=self.executor.describe, on_registered=self._registered,
                               trust=self.trust, wireguard=self.networking.wireguard_info,
                               network_key=self.networking.key_report)
        # a new WireGuard key the managers asked for goes with a heartbeat at once
        self.networking.on_new_key = self.session.beat_soon

    def _report(self, task_id: str, status: dict) -> None:
        # a task of this node that stopped leaves its services' VIPs and
        # answers here at once; the managers tell the other nodes
        self.networking.task_status(task_id, status)
        self.reporter.report(task_id, status)

    def _answered(self, reply: dict) -> None:
        # every answer says what the managers hold of this node's key
        self.networking.key_order((reply.get("node") or {}).get("network_key"))
        self._on_update(reply)

    def _registered(self, reply: dict) -> None:
        # The leader of the new session first: its first push may follow at once.
        self.trust.update(reply)
        self.stream.reset(reply["session_id"], reply.get("assignments") or {"tasks": []})
        self.reporter.new_session(reply["session_id"], self.worker.statuses())

    def start(self) -> None:
        os.makedirs(os.path.join(self.cfg.data_dir, "agent"), mode=0o700, exist_ok=True)
        # the key the session publishes (made the first time)
        self.networking.load_wireguard(
            os.path.join(self.cfg.data_dir, "agent", KEY_FILE),
            getattr(self.cfg, "wireguard_port", DEFAULT_WIREGUARD_PORT))
        self.networking.start()
        self.worker.start()
        self.reporter.start()
        self.server.start()
        self.session.start()

    def stop(self) -> None:
        self.session.stop(timeout=2)
        self.server.stop(timeout=2)
        self.reporter.flush()
        self.reporter.stop(timeout=2)
        self.worker.stop(timeout=5)
        self.networking.stop(timeout=5)
