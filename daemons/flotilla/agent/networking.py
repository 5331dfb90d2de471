"""The node's overlay networks, kept as its managers describe them.

The dispatcher tells each node the whole picture of every network its tasks
are on (``manager/dispatcher/netviews.py``); the agent keeps it
(``netstate.py``, ``networks.json``). This component makes the node's
engine match it, on its own thread:

1. the VIPs (``network/vips.py``): on each network's bridge, each vip-mode
   service's VIP spread over its running, healthy tasks;
2. the resolver's table and addresses (``network/resolverproc.py``, a
   child process): the gateway of each network, port 53;
3. the engine (``network/driver.py``): per network a bridge holding the
   network's gateway (nodes take no address of their own), a VXLAN device
   from this node's underlay address (the address the managers see it at),
   the forwarding entries of every endpoint on another engine, and the
   Docker network ``flotilla-<name>`` its tasks' containers are put on.

Encrypted networks that span hosts first need the engine's WireGuard tunnel
(``network/wireguard.py``): made before anything else in a pass, with one
peer per other engine of those networks, and removed after the engine once
no encrypted network spans hosts any more. Their endpoints on an engine
the tunnel does not reach are left out everywhere (``network/views.py``).
A node that cannot carry them (no ``wireguard-go``, no key, or an engine
shared with another node of such a network) refuses their tasks at once:
:meth:`Networking.ready` says why.

The node's WireGuard key is replaced when the managers ask
(:meth:`Networking.key_order`, from the session's answers): a new key pair
is made aside and reported with the next heartbeat
(:meth:`Networking.key_report`) while the tunnel keeps the old key; once
the managers have recorded it, the tunnel switches in the pass that
follows the pictures listing the new key (the same push tells the other
engines of it), or at once when no picture lists this node; at the latest
at the repair pass ``SWITCH_WAIT`` after the managers recorded it.

A pass runs whenever the picture changes, whenever one of this node's own
tasks stops (its address leaves the VIPs and the answers at once, before
the managers' word comes back), and every 10 s as a repair (everything
applied again; each part changes only what differs), 2 s after a failure.
VIPs and answers go first, so a task that left is out of rotation before
the slower engine work; the engine work runs only when its input changed
(or to repair). The first pass runs from ``networks.json``, so a restarted
agent programs its engine before its session is back. Failures are logged
(rate-limited) and retried; they never stop the agent.

The executor asks :meth:`Networking.ready` before creating a task's
container: it waits (30 s at most) until this node has made the task's
networks on its engine, and says why not otherwise.

Several nodes may share one engine (``make cluster``): each programs the
same bridges, entries, VIP rules and Docker networks (the parts are
idempotent and compare with what is there), and their resolvers share the
gateway's port 53 (``SO_REUSEPORT``).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

import docker

from ..common.component import Component
from ..common.ratelog import RateLimitedLog
from ..model import task as taskmodel
from .network import views as nv
from .network.desired import DesiredStateError, NetworkState
from .network.dockernet import NetworkUnavailable, ReadyNetwork
from .network.driver import NetworkDriver
from .network.names import docker_network_name
from .network.resolver import DNS_PORT
from .network.resolverproc import ResolverProcess
from .network.vips import VipError, VirtualIPs
from .network import wireguard as wgmod

log = logging.getLogger(__name__)

REPAIR_EVERY = 10.0
RETRY_EVERY = 2.0
READY_TIMEOUT = 30.0
SWITCH_WAIT = 5.0


@dataclasses.dataclass(frozen=True)
class _NextKey:
    """A new key made for a rotation, not in use yet."""
    private: str = dataclasses.field(repr=False)
    public: str
    generation: int | None


def _host_ip(addr: str | None) -> str | None:
    """The IPv4 address in ``host:port`` or ``host``, if it is one."""
    if not addr:
        return None
    host = addr.rsplit(":", 1)[0] if addr.count(":") == 1 else addr
    try:
        return str(ipaddress.IPv4Address(host))
    except ValueError:
        return None


class Networking(Component):
    """See the module's description. ``client`` gives the engine's Docker
    client; ``underlay_hint`` is this node's address when no picture names
    it yet (its advertised address)."""

    name = "agent-networking"

    def __init__(self, node_id: str, client: Callable[[], docker.DockerClient],
                 views: Mapping[str, dict] | None = None, cluster_id: str | None = None,
                 underlay_hint: str | None = None, vips: Any | None = None,
                 resolver: Any | None = None, dns_port: int = DNS_PORT,
                 repair_every: float = REPAIR_EVERY,
                 driver: Callable[..., NetworkDriver] = NetworkDriver,
                 tunnel: Any | None = None) -> None:
        super().__init__()
        self.node_id = node_id
        self._client = client
        self.cluster_id = cluster_id or None
        self.underlay_hint = _host_ip(underlay_hint)
        self.dns_port = dns_port
        self.repair_every = repair_every
        self._make_driver = driver
        self._vips = vips
        self._resolver = resolver
        self._resolver_started = False
        # WireGuard (encrypted networks between hosts): see load_wireguard()
        self._tunnel = tunnel
        self._wg_key: str | None = None
        self.wireguard_port = wgmod.DEFAULT_PORT
        self._wg_public: str | None = None
        self._wg_why: str | None = "this node's WireGuard key is not loaded"
        self._key_path: str | None = None
        self._keys = threading.Lock()           # the key fields below
        self._wg_next: _NextKey | None = None
        self._wg_recorded: str | None = None    # the public key the managers hold
        self._wg_recorded_at = 0.0
        self._wg_sent: str | None = None        # published at the last registration
        self.on_new_key: Callable[[], None] | None = None
        self.key_switches = 0
        self._cond = threading.Condition()
        self._kick = threading.Event()
        # under _cond
        self._views: dict[str, dict] = {}
        self._tasks: set[str] = set()
        self._down: set[str] = set()            # own tasks seen leaving, not yet in the picture
        self._applied: dict[str, ReadyNetwork] = {}
        self._errors: dict[str, str] = {}
        self._blocked: dict[str, str] = {}      # networks this node cannot carry: why
        self._force = False
        self._started = 0
        self._done = 0
        # owned by the component's thread
        self._driver: NetworkDriver | None = None
        self._last_engine: tuple[Any, ...] | None = None
        self._engine_failed = False
        self._engine_clean = True               # nothing left in place to remove
        self._last_vips: dict[str, dict[str, list[str]]] | None = None
        self._last_table: Any = None
        self._last_listen: list[tuple[str, int]] | None = None
        self._last_tunnel: wgmod.TunnelSpec | None = None
        self._tunnel_made = False               # made (or found) by this agent
        self._tunnel_wanted = False
        self._tunnel_checked = False            # one left from before looked for
        self._failures = RateLimitedLog(log, "networks", interval=30.0)
        self.passes = 0
        self.update(views or {})

    # -- what the agent calls (any thread) ----------------------------------------------
    def load_wireguard(self, key_path: str, port: int = wgmod.DEFAULT_PORT,
                       unavailable: str | None | bool = True) -> None:
        """Load (or make) this node's WireGuard key; look for ``wireguard-go``
        and ``wg`` (``unavailable``: why not, None if they are there, True:
        look). Before the session registers, which publishes the key."""
        self.wireguard_port = port
        self._key_path = key_path
        why = wgmod.available() if unavailable is True else unavailable
        try:
            self._wg_key = wgmod.load_or_create_key(key_path)
            self._wg_public = wgmod.public_key(self._wg_key)
        except (wgmod.WireGuardError, OSError) as exc:
            self._wg_key = self._wg_public = None
            why = f"this node's WireGuard key: {exc}"
        if why:
            log.warning("encrypted networks between hosts: %s", why)
        self._wg_why = why if isinstance(why, str) else None

    def wireguard_info(self) -> dict[str, Any] | None:
        """What the node publishes when it registers: its WireGuard public key
        (a new one made for a rotation, if there is one: the managers record it
        then) and port, when it can carry encrypted networks between hosts
        (never the private key)."""
        if self._wg_why is not None or self._wg_public is None:
            return None
        with self._keys:
            self._wg_sent = self._wg_next.public if self._wg_next else self._wg_public
            return {"public_key": self._wg_sent, "port": self.wireguard_port}

    def key_order(self, info: Mapping[str, Any] | None) -> None:
        """What the session's last answer says of this node's key
        (``{generation, public_key, due}``; None from a leader that does not
        rotate keys: it holds what the last registration published). Makes
        a new key when one is due; drops one the managers no longer want."""
        if self._key_path is None or self._wg_key is None:
            return
        if isinstance(info, Mapping):
            recorded, due = info.get("public_key"), info.get("due")
            generation = info.get("generation")
        else:
            recorded, due, generation = self._wg_sent, None, None
        made = switch = False
        with self._keys:
            if recorded != self._wg_recorded:
                self._wg_recorded, self._wg_recorded_at = recorded, time.monotonic()
            nxt = self._wg_next
            if nxt is not None:
                if recorded == nxt.public:
                    switch = True
                elif due is None or due != nxt.generation:
                    wgmod.discard_next_key(self._key_path)
                    self._wg_next = None
                    log.info("wireguard: the new key made for generation %s is not wanted "
                             "any more", nxt.generation)
            elif isinstance(due, int) and not isinstance(due, bool) and \
                    recorded == self._wg_public and \
                    (not isinstance(generation, int) or due > generation):
                try:
                    private = wgmod.make_next_key(self._key_path)
                except OSError as exc:
                    log.warning("wireguard: cannot write a new key: %s", exc)
                    return
                self._wg_next = _NextKey(private, wgmod.public_key(private), due)
                made = True
        if made:
            log.info("wireguard: made a new key (generation %s) for the managers", due)
            if self.on_new_key is not None:
                self.on_new_key()
        if switch:
            self._kick.set()

    def key_report(self) -> dict[str, Any] | None:
        """The new key to report with the next heartbeat, until the managers
        have recorded it."""
        with self._keys:
            nxt = self._wg_next
            if nxt is None or nxt.generation is None or nxt.public == self._wg_recorded:
                return None
            return {"public_key": nxt.public, "generation": nxt.generation}

    def _switch_key(self, views: Mapping[str, dict]) -> None:
        """Take the new key into use once the managers hold it and the
        pictures tell the other engines (see the module's description)."""
        with self._keys:
            nxt = self._wg_next
            if nxt is None or self._key_path is None or self._wg_recorded != nxt.public:
                return
            listed = nv.own_keys(views, self.node_id)
            if listed and nxt.public not in listed and \
                    time.monotonic() - self._wg_recorded_at < SWITCH_WAIT:
                return
            try:
                adopted = wgmod.adopt_next_key(self._key_path)
            except OSError as exc:
                self._failures.note("wireguard key", f"cannot take the new key: {exc}")
                return
            self._wg_next = None
            if not adopted:                 # removed meanwhile: keep the key in use
                return
            self._wg_key, self._wg_public = nxt.private, nxt.public
            self.key_switches += 1
        log.info("wireguard: this node's key is now generation %s", nxt.generation)

    def update(self, views: Mapping[str, dict]) -> None:
        """The node's networks changed (``NetworkState``'s callback): cheap."""
        with self._cond:
            self._views = dict(views)
            self._tasks = nv.task_ids(self._views, self.node_id)
            self._down &= self._tasks
        self._kick.set()

    def task_status(self, task_id: str, status: Mapping[str, Any]) -> None:
        """One of this node's tasks reported ``status``: once it has stopped,
        its addresses serve no more, here, at once."""
        state = status.get("state")
        if not isinstance(state, str) or state not in taskmodel.STATE_VALUES \
                or not taskmodel.finished(state):
            return
        with self._cond:
            if task_id not in self._tasks or task_id in self._down:
                return
            self._down.add(task_id)
        self._kick.set()

    def ready(self, network_ids: Sequence[str],
              timeout: float = READY_TIMEOUT) -> list[ReadyNetwork]:
        """The networks ``network_ids`` as made on this engine, in that order,
        once they all are; :class:`NetworkUnavailable` after ``timeout``
        seconds, naming the first missing network and why."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                blocked = [nid for nid in network_ids if nid in self._blocked]
                if blocked:
                    raise NetworkUnavailable(self._refused(blocked[0]))
                missing = [nid for nid in network_ids if nid not in self._applied]
                if not missing:
                    return [self._applied[nid] for nid in network_ids]
                left = deadline - time.monotonic()
                if left <= 0 or self.stopping.is_set():
                    raise NetworkUnavailable(self._why(missing[0], timeout))
                self._cond.wait(min(left, 1.0))

    def reapply(self, timeout: float = READY_TIMEOUT) -> None:
        """Apply everything again now (the engine lost a network), and wait
        for that pass to finish."""
        deadline = time.monotonic() + timeout
        with self._cond:
            self._force = True
            target = self._started + 1
            self._kick.set()
            while self._done < target and not self.stopping.is_set():
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                self._cond.wait(min(left, 1.0))

    def _refused(self, nid: str) -> str:
        view = self._views.get(nid)
        what = f"network {view.get('name')} ({nid[:12]})" if view else f"network {nid[:12]}"
        return f"{what} cannot be used on this node: {self._blocked[nid]}"

    def _why(self, nid: str, timeout: float) -> str:
        view = self._views.get(nid)
        what = f"network {view.get('name')} ({nid[:12]})" if view else f"network {nid[:12]}"
        if self.stopping.is_set():
            return f"{what}: the agent is stopping"
        if view is None:
            why = "this node has not been told about it"
        else:
            why = self._errors.get(nid) or "not made yet"
        return f"{what} is not ready on this node after {timeout:g} s: {why}"

    def state(self) -> dict[str, Any]:
        """What is made and what failed (for operators and tests)."""
        with self._cond:
            return {"applied": sorted(self._applied), "errors": dict(self._errors),
                    "blocked": dict(self._blocked), "down": sorted(self._down),
                    "passes": self.passes,
                    "tunnel": sorted(p.endpoint for p in self._last_tunnel.peers)
                    if self._last_tunnel is not None else None}

    # -- the loop --------------------------------------------------------------------------
    def run(self) -> None:
        next_repair = 0.0
        while not self.stopping.is_set():
            self._kick.clear()
            with self._cond:
                self._started += 1
                force, self._force = self._force, False
            repair = force or time.monotonic() >= next_repair
            ok = False
            try:
                ok = self._pass(repair)
            except Exception as exc:        # never the agent's end: logged, tried again
                self._failures.note("pass", f"{type(exc).__name__}: {exc}")
                log.debug("networks: pass failed", exc_info=True)
            finally:
                with self._cond:
                    self._done += 1
                    self.passes += 1
                    self._cond.notify_all()
            self._failures.flush()
            now = time.monotonic()
            if repair:
                next_repair = now + (self.repair_every if ok else RETRY_EVERY)
            elif not ok:
                next_repair = min(next_repair, now + RETRY_EVERY)
            self._kick.wait(max(0.0, next_repair - now))

    def wake(self) -> None:
        self._kick.set()
        with self._cond:
            self._cond.notify_all()

    def stop(self, timeout: float = 5.0) -> None:
        super().stop(timeout)
        if self._resolver is not None and self._resolver_started:
            self._resolver.stop(timeout)
            self._resolver_started = False

    def _pass(self, repair: bool) -> bool:
        """One pass over VIPs, resolver and engine; True if all went well."""
        with self._cond:
            views = dict(self._views)
            down = set(self._down)
            applied = set(self._applied) & set(views)
        underlay = nv.underlay_of(views, self.node_id) or self.underlay_hint
        if underlay is None and self._driver is not None:
            underlay = str(self._driver.underlay_ip)
        self._switch_key(views)
        # 0: the tunnel of the encrypted networks that span hosts; their
        # endpoints on engines it does not reach are left out below
        plan = nv.tunnel_plan(views, self.node_id, underlay)
        blocked = dict(plan.blocked)
        if self._wg_why is not None:
            for nid, view in views.items():
                if view.get("encrypted"):
                    blocked.setdefault(nid, self._wg_why)
        reach, ok = self._tunnel_pass(plan, underlay, blocked, repair)
        with self._cond:
            self._blocked = blocked
        for at, why in sorted(plan.unreachable.items()):
            self._failures.note(f"peer {at}", f"encrypted networks: {why}: its tasks there are "
                                "left out")
        # 1-2: what serves, on the networks already made: first
        ok = self._serve(views, down, applied, underlay, repair, reach) and ok
        # 3: the engine, when its input changed, to repair, or after a failure
        nets, errors = nv.driver_networks(views, underlay, reach)
        key = (underlay, tuple(nets))
        if repair or key != self._last_engine or self._engine_failed:
            if nets or not self._engine_clean or (self._last_engine or (None, ()))[1]:
                ok = self._engine(nets, underlay, errors) and ok
            self._last_engine = key
            made = set(self._applied_ids())
            if made != applied:
                ok = self._serve(views, down, made, underlay, True, reach) and ok
        # no encrypted network spans hosts any more: the tunnel goes, after
        # the forwarding entries that used it
        if not self._tunnel_wanted and not self._engine_failed and \
                (self._tunnel_made or (repair and not self._tunnel_checked)):
            ok = self._tunnel_remove() and ok
        with self._cond:
            self._errors = errors
        for nid, why in sorted(errors.items()):
            self._failures.note(nid, why)
        return ok and not errors

    def _wireguard(self) -> Any:
        if self._tunnel is None:
            self._tunnel = wgmod.WireGuard(wgmod.interface_name(self.node_id))
        return self._tunnel

    def _tunnel_pass(self, plan: nv.TunnelPlan, underlay: str | None,
                     blocked: dict[str, str], repair: bool) -> tuple[set[str], bool]:
        """Make the tunnel reach ``plan``'s peers, if this node carries an
        encrypted network that spans hosts. Returns the underlay addresses
        it reaches, and False if it failed (the networks are then blocked)."""
        carried = plan.spans - set(blocked)
        self._tunnel_wanted = bool(carried) and underlay is not None and self._wg_key is not None
        if not self._tunnel_wanted or underlay is None or self._wg_key is None:
            self._last_tunnel = None
            return set(), True
        spec = wgmod.TunnelSpec(self._wg_key, self.wireguard_port,
                                ipaddress.IPv4Address(underlay),
                                tuple(sorted(plan.peers.values())))
        if spec == self._last_tunnel and not repair:
            return set(plan.peers), True
        try:
            changes = self._wireguard().apply(spec)
        except Exception as exc:            # the commands, the kernel: told, tried again
            self._last_tunnel = None
            why = f"this node's WireGuard tunnel failed: {exc}"
            for nid in carried:
                blocked.setdefault(nid, why)
            self._failures.note("wireguard", why)
            return set(), False
        for change in changes:
            log.info("wireguard: %s", change)
        self._last_tunnel = spec
        self._tunnel_made = self._tunnel_checked = True
        return set(plan.peers), True

    def _tunnel_remove(self) -> bool:
        try:
            changes = self._wireguard().remove()
        except Exception as exc:
            self._failures.note("wireguard", f"removing the WireGuard tunnel: {exc}")
            return False
        for change in changes:
            log.info("wireguard: %s", change)
        self._tunnel_made = False
        self._tunnel_checked = True
        return True

    def _applied_ids(self) -> list[str]:
        with self._cond:
            return list(self._applied)

    def _engine(self, nets: list[NetworkState], underlay: str | None,
                errors: dict[str, str]) -> bool:
        """Make the engine have exactly ``nets``; record which are made.
        True if none failed."""
        made: dict[str, ReadyNetwork] = {}
        failed = True
        try:
            if underlay is None:
                raise NetworkUnavailable("this node's address on the underlay is not known yet")
            if self._driver is None or str(self._driver.underlay_ip) != underlay:
                self._driver = self._make_driver(self._client(), underlay, self.cluster_id)
            result = self._driver.apply(nets)
            errors.update(result.errors)
            failed = bool(result.errors)
            # a network left in place (in use, or made just now by another
            # node sharing the engine) is looked at again at the next repair
            self._engine_clean = not result.errors and not result.kept
            for net in nets:
                if net.id not in result.errors:
                    made[net.id] = ReadyNetwork(net.id, net.name, docker_network_name(net.name),
                                                str(net.attachment.ip))
        except (DesiredStateError, NetworkUnavailable) as exc:
            for net in nets:
                errors[net.id] = str(exc)
            self._engine_clean = False
        except Exception as exc:         # the engine or the kernel refused: all of them
            why = f"{type(exc).__name__}: {exc}"
            for net in nets:
                errors[net.id] = why
            self._failures.note("engine", why)
            self._engine_clean = False
        with self._cond:
            self._applied = made
            self._cond.notify_all()
        self._engine_failed = failed
        return not failed

    def _serve(self, views: dict[str, dict], down: Collection[str], nids: Collection[str],
               underlay: str | None, repair: bool, reach: Collection[str] = ()) -> bool:
        """The VIPs and the resolver for the networks ``nids`` (made on the
        engine); ``reach``: the engines the tunnel reaches."""
        ok = True
        spec = nv.vip_spec(views, nids, underlay, down, reach)
        if spec != self._last_vips or (repair and spec):
            if not spec and not self._last_vips:
                self._last_vips = spec          # never had any: nothing to clear
            else:
                try:
                    if self._vips is None:
                        self._vips = VirtualIPs()
                    self._vips.apply(spec)
                    self._last_vips = spec
                except (VipError, OSError) as exc:
                    self._last_vips = None
                    self._failures.note("vips", str(exc))
                    ok = False
                except Exception as exc:       # netlink
                    self._last_vips = None
                    self._failures.note("vips", f"{type(exc).__name__}: {exc}")
                    ok = False
        table = nv.resolver_table({nid: views[nid] for nid in nids if nid in views},
                                  underlay, down, reach)
        listen = nv.listen_addresses(views, nids, self.dns_port)
        if table != self._last_table or listen != self._last_listen:
            if listen or self._resolver_started:
                resolver = self._resolver
                if resolver is None:
                    resolver = self._resolver = ResolverProcess(reuse_port=True)
                resolver.update(table)
                resolver.listen(listen)
                if not self._resolver_started:
                    resolver.start()
                    self._resolver_started = True
            self._last_table, self._last_listen = table, listen
        return ok
