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
  containers stop with it) and started again.

Each fault holds for a seeded random time, then heals. The same seed gives
the same schedule of kinds, targets and durations.
"""

from __future__ import annotations

import random
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field

PROBE_PORT = 24242   # every node's agent listener

KINDS = ("kill", "pause", "partition-leader-minority", "partition-leader-majority",
         "partition-oneway", "dockerd-restart")


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


def _verify_blocked(fabric, src: str, dst: str) -> None:
    """The partition must be real: ``src`` gets no answer from ``dst``."""
    if not fabric.blocked(src, fabric.hosts[dst], PROBE_PORT):
        raise AssertionError(f"partition not in effect: {src} still reaches {dst}")
