"""Per-node scheduling state, kept incrementally.

A NodeInfo holds the node object (None while only tasks or failures are
known for that id) and what the node's active tasks take from it: reserved
CPUs and memory, the count of active tasks per service and in total, and
the host ports in use. Each task's share is remembered under its id so that
adding the same task again replaces it and removing it gives back exactly
what it took.

CPUs are counted in integer nano-CPUs so that adding and removing
reservations never drifts.
"""

from __future__ import annotations

from collections import deque

from . import constraint

NANO = 1_000_000_000
FAILURE_WINDOW = 300.0      # seconds a failure counts as recent
MAX_FAILURES = 5            # recent failures that push a node to the end


def nano_cpus(cpus) -> int:
    try:
        value = float(cpus or 0)
    except (TypeError, ValueError):
        return 0
    return max(0, round(value * NANO))


def memory_bytes(memory) -> int:
    try:
        value = int(memory or 0)
    except (TypeError, ValueError):
        return 0
    return max(0, value)


def host_ports(task: dict) -> tuple:
    """The (published port, protocol) pairs a task binds on its node."""
    out = []
    for p in task.get("ports") or ():
        if not isinstance(p, dict):
            continue
        mode = p.get("publish_mode") or p.get("mode")
        if mode and str(mode).lower() == "ingress":
            continue
        try:
            published = int(p.get("published") or 0)
        except (TypeError, ValueError):
            continue
        if published <= 0:
            continue
        pair = (published, str(p.get("protocol") or "tcp").lower())
        if pair not in out:
            out.append(pair)
    return tuple(sorted(out))


class Share:
    """What one active task takes from its node."""

    __slots__ = ("service_id", "nano_cpus", "memory", "ports")

    def __init__(self, service_id, nano_cpus=0, memory=0, ports=()):
        self.service_id = service_id
        self.nano_cpus = nano_cpus
        self.memory = memory
        self.ports = ports

    @classmethod
    def of_task(cls, task: dict) -> "Share":
        spec = task.get("spec") or {}
        res = (spec.get("resources") or {}).get("reservations") or {}
        return cls(task.get("service_id"), nano_cpus(res.get("cpus")),
                   memory_bytes(res.get("memory")), host_ports(task))


class NodeInfo:
    __slots__ = (
        "id", "node", "hostname", "state", "availability", "labels", "engine_labels",
        "os", "arch", "nano_cpus", "memory",
        "shares", "reserved_nano_cpus", "reserved_memory", "total", "by_service",
        "ports", "failures",
    )

    def __init__(self, node_id: str):
        self.id = node_id
        self.node: dict | None = None
        self.hostname = ""
        self.state = "unknown"
        self.availability = "active"
        self.labels: dict[str, str] = {}
        self.engine_labels: dict[str, str] = {}
        self.os = ""
        self.arch = ""
        self.nano_cpus = 0
        self.memory = 0
        self.shares: dict[str, Share] = {}
        self.reserved_nano_cpus = 0
        self.reserved_memory = 0
        self.total = 0
        self.by_service: dict[str, int] = {}
        self.ports: dict[tuple, int] = {}
        self.failures: dict[tuple, deque] = {}

    # -- the node object -------------------------------------------------

    def set_node(self, node: dict) -> None:
        self.node = node
        self.hostname = constraint.node_hostname(node)
        self.state = str((node.get("status") or {}).get("state") or "unknown").lower()
        self.availability = str((node.get("spec") or {}).get("availability") or "active").lower()
        self.labels = constraint.node_labels(node)
        self.engine_labels = constraint.engine_labels(node)
        platform = constraint.node_platform(node)
        self.os = str(platform.get("os") or "").lower()
        self.arch = str(platform.get("arch") or "").lower()
        res = (node.get("description") or {}).get("resources") or {}
        self.nano_cpus = nano_cpus(res.get("cpus"))
        self.memory = memory_bytes(res.get("memory"))

    def label(self, source: str, name: str) -> str:
        labels = self.labels if source == "node" else self.engine_labels
        value = labels.get(name)
        return "" if value is None else str(value)

    # -- tasks -----------------------------------------------------------

    def add(self, task_id: str, share: Share) -> None:
        if task_id in self.shares:
            self.remove(task_id)
        self.shares[task_id] = share
        self.reserved_nano_cpus += share.nano_cpus
        self.reserved_memory += share.memory
        self.total += 1
        self.by_service[share.service_id] = self.by_service.get(share.service_id, 0) + 1
        for p in share.ports:
            self.ports[p] = self.ports.get(p, 0) + 1

    def remove(self, task_id: str) -> bool:
        share = self.shares.pop(task_id, None)
        if share is None:
            return False
        self.reserved_nano_cpus -= share.nano_cpus
        self.reserved_memory -= share.memory
        self.total -= 1
        left = self.by_service[share.service_id] - 1
        if left:
            self.by_service[share.service_id] = left
        else:
            del self.by_service[share.service_id]
        for p in share.ports:
            left = self.ports[p] - 1
            if left:
                self.ports[p] = left
            else:
                del self.ports[p]
        return True

    # -- failures --------------------------------------------------------

    def note_failure(self, key: tuple, now: float) -> None:
        q = self.failures.get(key)
        if q is None:
            q = self.failures[key] = deque()
        q.append(now)
        self._prune(key, q, now)

    def recent_failures(self, key: tuple, now: float) -> int:
        q = self.failures.get(key)
        if not q:
            return 0
        return self._prune(key, q, now)

    def _prune(self, key, q, now) -> int:
        horizon = now - FAILURE_WINDOW
        while q and q[0] <= horizon:
            q.popleft()
        if not q:
            del self.failures[key]
        return len(q)

    def prune_failures(self, now: float) -> None:
        for key, q in list(self.failures.items()):
            self._prune(key, q, now)

    def idle(self) -> bool:
        """Nothing is known about this id any more."""
        return self.node is None and not self.shares and not self.failures

    def usage(self) -> dict:
        return {
            "reserved": {"cpus": self.reserved_nano_cpus / NANO, "memory": self.reserved_memory},
            "tasks": self.total,
            "services": dict(self.by_service),
            "ports": set(self.ports),
        }
