"""The agent's session with the dispatcher on the leader.

Register, then heartbeat at the period the dispatcher hands out, to the
leader's dispatcher port when the registration names one (see
``dispatcherlink.py``). Any manager will do for the rest: followers forward
to the leader, and the list of managers
learned from each answer is kept so the session follows the cluster when
managers come and go. Each answer also carries this node's desired and
observed role, which the node uses to promote or demote itself, and what
the managers hold of its WireGuard key: while the node has made a new key
they have not recorded (they asked for it), each heartbeat reports it, and
the first goes at once (:meth:`Session.beat_soon`).
"""

from __future__ import annotations

import logging
import os
import random
import threading
from typing import TYPE_CHECKING, Any, Callable

from .. import __version__
from ..common.component import Component
from ..common.httpclient import ApiError
from .describe import local_platform

if TYPE_CHECKING:
    from ..common.config import NodeConfig
    from ..common.httpclient import Client
    from .dispatcherlink import DispatcherLink
    from .trust import Trust

log = logging.getLogger(__name__)

MAX_BACKOFF = 2.0


class NodeRemoved(Exception):
    pass


class Session(Component):
    name = "agent-session"

    def __init__(self, cfg: NodeConfig, client: Client, link: DispatcherLink,
                 on_update: Callable[[dict], None], on_removed: Callable[[], None],
                 describe: Callable[[], dict] | None = None,
                 on_registered: Callable[[dict], None] | None = None,
                 trust: Trust | None = None,
                 wireguard: Callable[[], dict | None] | None = None,
                 network_key: Callable[[], dict | None] | None = None) -> None:
        super().__init__()
        self._cfg = cfg
        self._trust = trust
        self._client = client
        self._link = link
        self._on_update = on_update
        self._on_removed = on_removed
        self._describe = describe
        self._on_registered = on_registered
        self._wireguard = wireguard
        self._network_key = network_key
        self._beat = threading.Event()
        self.registered = 0
        self.heartbeats = 0
        self.connected = False      # the last registration or heartbeat succeeded
        self.last_view: dict | None = None
        self.session_id: str | None = None
        # A leader of an earlier release refuses these fields: register without them.
        self._plain_register = False
        self._no_wireguard = False

    def _description(self) -> dict[str, Any]:
        desc: dict[str, Any] = {
            "hostname": self._cfg.hostname,
            "platform": local_platform(),
            "resources": {"cpus": float(os.cpu_count() or 1),
                          "memory": _memory_bytes()},
        }
        if self._describe is not None:
            try:
                found = self._describe()
            except Exception as exc:  # the engine may be down: register anyway
                log.warning("cannot describe the container engine: %s", exc)
                found = {}
            for key in ("platform", "resources", "engine"):
                if found.get(key):
                    desc[key] = found[key]
        desc["hostname"] = self._cfg.hostname or desc.get("hostname")
        desc["version"] = __version__
        desc["addr"] = self._cfg.advertise
        if getattr(self._cfg, "agent_advertise", ""):
            desc["agent_addr"] = self._cfg.agent_advertise
        if getattr(self._cfg, "advertise_explicit", False) and not self._plain_register:
            desc["advertise_explicit"] = True
        wg = self._wireguard() if self._wireguard is not None else None
        if wg and not self._no_wireguard:
            desc["wireguard"] = wg
        return desc

    def run(self) -> None:
        backoff = 0.1
        while not self.stopping.is_set():
            try:
                reply = self._client.post("/v1/dispatcher/register", self._description(),
                                          timeout=10, retry_for=2)
                self.registered += 1
                self.connected = True
                session_id = reply["session_id"]
                self.session_id = session_id
                period = float(reply["heartbeat_period"])
                self._link.use(reply.get("dispatcher_addr"))
                if self._on_registered is not None:
                    self._on_registered(reply)
                self._handle(reply)
                backoff = 0.1
                log.info("session %s registered (heartbeat every %.2fs)", session_id[:8], period)
                while not self._wait_beat(period):
                    beat = {"session_id": session_id}
                    if self._trust is not None and self._trust.version and not self._trust.legacy:
                        beat["trust"] = self._trust.version
                    key = self._network_key() if self._network_key is not None else None
                    if key:
                        beat["network_key"] = key
                    reply = self._link.post("/v1/dispatcher/heartbeat", beat,
                                            timeout=max(2.0, period), retry_for=period)
                    self.heartbeats += 1
                    period = float(reply["heartbeat_period"])
                    self._handle(reply)
            except ApiError as exc:
                self.connected = False
                if exc.code == "revoked":
                    log.error("this node was removed from the cluster")
                    self._on_removed()
                    return
                if exc.code == "session_invalid":
                    continue
                if exc.field == "advertise_explicit" and not self._plain_register:
                    self._plain_register = True
                    continue
                if (exc.field or "").startswith("wireguard") and not self._no_wireguard:
                    # an older leader: this node's tasks stay off encrypted
                    # networks that span hosts until it is upgraded
                    log.warning("the leader does not take this node's WireGuard key: %s", exc)
                    self._no_wireguard = True
                    continue
                # "certificate_revoked": the certificate this request went
                # out with was revoked (a demotion: the worker certificate
                # that replaces it is being written); retried below.
                log.info("session with the cluster interrupted: %s", exc)
                if self.sleep(backoff * random.uniform(0.8, 1.2)):
                    return
                backoff = min(backoff * 2 + 0.1, MAX_BACKOFF)
            except Exception:
                self.connected = False
                log.exception("agent session failed")
                if self.sleep(1.0):
                    return

    def beat_soon(self) -> None:
        """Send the next heartbeat now (a new key to report)."""
        self._beat.set()

    def wake(self) -> None:
        self._beat.set()

    def _wait_beat(self, period: float) -> bool:
        """Wait for the next heartbeat; True if the session is stopping."""
        self._beat.wait(period)
        self._beat.clear()
        return self.stopping.is_set()

    def _handle(self, reply: dict) -> None:
        self.last_view = reply.get("node")
        if self._trust is not None:
            self._trust.update(reply)
        self._on_update(reply)


def _memory_bytes() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0
