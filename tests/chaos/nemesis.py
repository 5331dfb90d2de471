"""The nemesis: faults injected at seeded random times, one at a time.

Kinds:

- ``kill``: ``kill -9`` of a node's process group (a manager or an agent,
  like a host crash), restarted at the heal;
- ``pause``: ``SIGSTOP`` of a node's process group, ``SIGCONT`` at the heal;
- ``partition-leader-minority``: the leader, maybe with an agent, cut off from
  everyone else (the other two managers keep a majority);
- ``partition-leader-majority``: a follower, maybe with an agent, cut off; the
  leader stays on the majority side;
- ``partition-oneway``: one host stops receiving from some others, while
  they still receive from it;
- ``dockerd-restart``: a host's Docker engine is stopped (SIGTERM, its
  containers stop with it) and started again;
- ``kill-after-join``: an agent is promoted, and within a second of the
  moment the leader adds it to Raft, a manager (mostly the leader) gets
  ``kill -9``. The heal restarts it, which must then rejoin as a reachable
  manager within 30 s (a manager restarted with a store older than the
  membership it knows must still let the new member in), and demotes the
  promoted node to a worker again.

Each fault holds for a seeded random time, then heals. The same seed gives
the same schedule of kinds, targets and durations.
"""

from __future__ import annotations

import random
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from tests.helpers.cluster import wait_for

PROBE_PORT = 24242   # every node's agent listener

KINDS = ("kill", "pause", "partition-leader-minority", "partition-leader-majority",
         "partition-oneway", "dockerd-restart", "kill-after-join")
# kill-after-join: how long the promoted node may take to join Raft, the
# restarted manager to rejoin, and the promoted node to be a worker again.
JOIN_TIMEOUT = 90.0
REJOIN_TIMEOUT = 30.0
DEMOTE_TIMEOUT = 90.0


@dataclass
class Fault:
    number: int
    kind: str
    targets: list[str]
    detail: str = ""
    hold: float = 0.0
    injected_at: float = 0.0
    healed_at: float = 0.0
    write_settled_after: float = 0.0   # heal -> workload idle
    converged_after: float | None = None  # heal -> desired state reached
    violations: list[str] = field(default_factory=list)

    def describe(self) -> str:
        return f"#{self.number} {self.kind} {','.join(self.targets)} {self.detail}".strip()


class Nemesis:
    def __init__(self, cluster, seed: int, managers: list[str], agents: list[str]):
        self.cluster = cluster
        self.rng = random.Random(f"nemesis-{seed}")
        self.managers = managers
        self.agents = agents
        self.count = 0

    # -- schedule ------------------------------------------------------------------
    def plan(self, total: int, kinds_allowed: tuple[str, ...] = KINDS) -> list[str]:
        """``total`` kinds: every allowed kind at least once when total
        allows, the rest drawn at random, in a seeded random order."""
        pool = tuple(kinds_allowed)
        kinds = list(pool[:total]) + [self.rng.choice(pool) for _ in range(total - len(pool))]
        self.rng.shuffle(kinds)
        return kinds

    def quiet_time(self) -> float:
        return self.rng.uniform(1.0, 4.0)

    # -- injection -----------------------------------------------------------------
    def inject(self, kind: str, leader: str | None) -> tuple[Fault, Callable[[], None]]:
        """Inject a fault of ``kind`` and return it with its heal function."""
        self.count += 1
        hold = round(self.rng.uniform(2.0, 8.0), 2)
        fault = Fault(self.count, kind, [], hold=hold)
        heal = getattr(self, "_" + kind.replace("-", "_"))(fault, leader)
        fault.injected_at = time.monotonic()
        return fault, heal

    def _node(self, name):
        return self.cluster.nodes[name]

    def _kill(self, fault, leader):
        name = self.rng.choice(self.managers + self.agents)
        fault.targets = [name]
        fault.detail = "(leader)" if name == leader else ""
        node = self._node(name)
        node.kill(signal.SIGKILL)

        def heal():
            node.restart()
        return heal

    def _pause(self, fault, leader):
        name = self.rng.choice(self.managers + self.agents)
        fault.targets = [name]
        fault.detail = "(leader)" if name == leader else ""
        node = self._node(name)
        node.signal_group(signal.SIGSTOP)

        def heal():
            node.signal_group(signal.SIGCONT)
        return heal

    def _partition(self, fault, side: list[str]):
        others = [h for h in self.managers + self.agents if h not in side]
        fabric = self.cluster.fabric
        for a in side:
            for b in others:
                fabric.block(a, fabric.hosts[b], "both")
                fabric.block(b, fabric.hosts[a], "both")
        fault.targets = side
        fault.detail = f"| {','.join(others)}"
        _verify_blocked(fabric, side[0], others[0])
        _verify_blocked(fabric, others[-1], side[-1])
        return fabric.heal

    def _partition_leader_minority(self, fault, leader):
        fallback = self.rng.choice(self.managers)   # drawn always: the same seed, the same draws
        side = [leader or fallback] + self.rng.sample(self.agents, self.rng.randint(0, 1))
        return self._partition(fault, side)

    def _partition_leader_majority(self, fault, leader):
        followers = [m for m in self.managers if m != leader]
        side = [self.rng.choice(followers)] + self.rng.sample(self.agents, self.rng.randint(0, 1))
        return self._partition(fault, side)

    def _partition_oneway(self, fault, leader):
        fabric = self.cluster.fabric
        everyone = self.managers + self.agents
        deaf = self.rng.choice(everyone)
        pool = [m for m in self.managers if m != deaf]
        senders = self.rng.sample(pool, self.rng.randint(1, len(pool)))
        for s in senders:
            fabric.block(deaf, fabric.hosts[s], "in")
        fault.targets = [deaf]
        fault.detail = (f"hears nothing from {','.join(senders)}"
                        + (" (leader deaf)" if deaf == leader else ""))
        _verify_blocked(fabric, senders[0], deaf)
        return fabric.heal

    def _dockerd_restart(self, fault, leader):
        name = self.rng.choice(self.agents + self.managers)
        fault.targets = [name]
        engine = self.cluster.hosts[name].engine
        engine.stop()

        def heal():
            engine.start()
            engine.restarts += 1
        return heal

    def _kill_after_join(self, fault, leader):
        name = self.rng.choice(self.agents)
        pick_leader = self.rng.random() < 2 / 3
        other = self.rng.choice([m for m in self.managers if m != leader] or self.managers)
        delay = round(self.rng.uniform(0.0, 1.0), 2)
        promoted = self._node(name)
        admin = self.cluster.admin([self._node(m) for m in self.managers], timeout=5,
                                   retry_for=15)
        admin.post(f"/v1/nodes/{promoted.node_id}/promote")

        def joined():
            for m in self.managers:
                try:
                    health = self.cluster.health(self._node(m))
                except Exception:       # noqa: BLE001 - ask the next one
                    continue
                if promoted.raft_addr in (health.get("raft") or {}).get("members", []):
                    return m if health.get("is_leader") else True
            return None

        found = wait_for(joined, JOIN_TIMEOUT, interval=0.02, what=f"{name} in Raft")
        time.sleep(delay)                       # the schedule: within a second of the join
        current = found if isinstance(found, str) else leader
        victim = (current or other) if pick_leader else other
        fault.targets = [victim, name]
        fault.detail = (f"{delay:.2f}s after {name} joined"
                        + (" (leader)" if victim == current else ""))
        node = self._node(victim)
        node.kill(signal.SIGKILL)

        def heal():
            node.restart()
            try:
                self.cluster.wait_node_ready(node, manager=True, timeout=REJOIN_TIMEOUT)
            except AssertionError as exc:
                fault.violations.append(f"{victim} did not rejoin as a reachable manager "
                                        f"within {REJOIN_TIMEOUT:.0f}s of its restart: {exc}")
            try:
                admin.post(f"/v1/nodes/{promoted.node_id}/demote")
                wait_for(lambda: (lambda v: v["role"] == "worker" and v["state"] == "ready")(
                    admin.get(f"/v1/nodes/{promoted.node_id}")), DEMOTE_TIMEOUT, interval=0.5,
                    what=f"{name} a worker again")
            except Exception as exc:    # noqa: BLE001 - reported, the run goes on
                fault.violations.append(f"{name} not demoted back to a worker: {exc}")
        return heal


def _verify_blocked(fabric, src: str, dst: str) -> None:
    """The partition must be real: ``src`` gets no answer from ``dst``."""
    if not fabric.blocked(src, fabric.hosts[dst], PROBE_PORT):
        raise AssertionError(f"partition not in effect: {src} still reaches {dst}")
