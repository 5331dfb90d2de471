"""The filter pipeline a node must pass to receive a task.

Filters, in order (a filter that does not apply to the task is skipped):

1. ready        node status ``ready`` and availability ``active``
2. resources    reserved CPUs and memory fit in what active tasks leave free
3. constraints  every placement constraint matches
4. platform     the node's os/arch is among ``placement.platforms`` (if any)
5. host ports   no active task on the node publishes the same port/protocol
6. max replicas active tasks of the service on the node < ``max_replicas``

The pipeline stops at the first failing filter and returns a Reason for
it. Reasons are grouped over nodes to explain why a task stays pending,
most frequent first::

    no suitable node (2 nodes lack 512 MB memory; 1 node fails constraint node.labels.disk==ssd)
"""

from __future__ import annotations

from dataclasses import dataclass

from ...model import constraint as syntax
from ...model.task import UNSCHEDULABLE
from .constraint import matches
from .nodeinfo import NANO, host_ports, memory_bytes, nano_cpus

NO_SUITABLE_NODE = UNSCHEDULABLE


# -- wording ---------------------------------------------------------------

def format_bytes(n: int) -> str:
    """1024-based, integer when whole: 512 MB, 1.5 GB, 100 B."""
    units = ("B", "KB", "MB", "GB", "TB", "PB")
    value = float(n)
    i = 0
    while value >= 1024 and i < len(units) - 1:
        value /= 1024
        i += 1
    if value == int(value):
        text = str(int(value))
    else:
        text = f"{value:.2f}".rstrip("0").rstrip(".")
    return f"{text} {units[i]}"


def format_cpus(nano: int) -> str:
    """2 CPUs, 1 CPU, 0.5 CPUs."""
    value = nano / NANO
    text = f"{value:.3f}".rstrip("0").rstrip(".")
    return f"{text} CPU" if text == "1" else f"{text} CPUs"


@dataclass(frozen=True)
class Reason:
    """Why a node was refused. ``one`` and ``many`` are the phrases for one
    and for several nodes; ``{n}`` stands for the count."""

    order: int
    one: str
    many: str

    def render(self, n: int) -> str:
        return (self.one if n == 1 else self.many).format(n=n)


def explain(counts: dict) -> str:
    """Join per-reason node counts, most frequent first ("; "-separated)."""
    items = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0].order, kv[0].many))
    return "; ".join(r.render(n) for r, n in items)


def no_suitable_node(detail: str = "") -> str:
    return f"{NO_SUITABLE_NODE} ({detail})" if detail else NO_SUITABLE_NODE


NOT_READY = Reason(0, "{n} node not ready", "{n} nodes not ready")
_not_active: dict[str, Reason] = {}


def _not_active_reason(availability: str) -> Reason:
    r = _not_active.get(availability)
    if r is None:
        r = _not_active[availability] = Reason(
            0, f"{{n}} node not active (availability {availability})",
            f"{{n}} nodes not active (availability {availability})")
    return r


# -- what a task needs -------------------------------------------------------

_ARCH_ALIASES = {"x86_64": "amd64", "aarch64": "arm64", "armhf": "arm", "armv7l": "arm"}


def _norm_arch(arch) -> str:
    a = str(arch or "").lower()
    return _ARCH_ALIASES.get(a, a)


class Requirements:
    """What the filters and the placement need from a task. Tasks with equal
    ``signature`` are interchangeable for placement."""

    __slots__ = ("service_id", "spec_version", "nano_cpus", "memory", "ports",
                 "constraints", "platforms", "max_replicas", "spreads", "error",
                 "signature")

    def __init__(self, task: dict):
        spec = task.get("spec") or {}
        res = (spec.get("resources") or {}).get("reservations") or {}
        placement = spec.get("placement") or {}
        self.service_id = task.get("service_id")
        self.spec_version = task.get("spec_version")
        self.nano_cpus = nano_cpus(res.get("cpus"))
        self.memory = memory_bytes(res.get("memory"))
        self.ports = host_ports(task)
        self.error = None
        try:
            self.constraints = tuple(syntax.parse_constraints(placement.get("constraints") or []))
        except syntax.ConstraintError as e:
            self.constraints = ()
            self.error = str(e)
        plats = []
        for p in placement.get("platforms") or ():
            if isinstance(p, dict):
                pair = (str(p.get("os") or "").lower(),
                        _norm_arch(p.get("arch") or p.get("architecture")))
                if pair != ("", "") and pair not in plats:
                    plats.append(pair)
        self.platforms = tuple(plats)
        try:
            self.max_replicas = max(0, int(placement.get("max_replicas") or 0))
        except (TypeError, ValueError):
            self.max_replicas = 0
        self.spreads = syntax.spread_levels(placement.get("preferences"))
        self.signature = (self.nano_cpus, self.memory, self.ports,
                          tuple(c.expr for c in self.constraints), self.platforms,
                          self.max_replicas, self.spreads, self.error)


# -- filters ---------------------------------------------------------------

class ReadyFilter:
    order = 0

    @staticmethod
    def applies(req: Requirements) -> bool:
        return True

    def __init__(self, req: Requirements):
        pass

    def check(self, info):
        if info.state != "ready":
            return NOT_READY
        if info.availability != "active":
            return _not_active_reason(info.availability)
        return None


class ResourceFilter:
    order = 1

    @staticmethod
    def applies(req: Requirements) -> bool:
        return req.nano_cpus > 0 or req.memory > 0

    def __init__(self, req: Requirements):
        self.cpus = req.nano_cpus
        self.memory = req.memory
        cpus = format_cpus(self.cpus)
        mem = format_bytes(self.memory)
        self.cpu_reason = Reason(1, f"{{n}} node lacks {cpus}", f"{{n}} nodes lack {cpus}")
        self.mem_reason = Reason(1, f"{{n}} node lacks {mem} memory",
                                 f"{{n}} nodes lack {mem} memory")

    def check(self, info):
        if self.cpus and info.nano_cpus - info.reserved_nano_cpus < self.cpus:
            return self.cpu_reason
        if self.memory and info.memory - info.reserved_memory < self.memory:
            return self.mem_reason
        return None


class ConstraintFilter:
    order = 2

    @staticmethod
    def applies(req: Requirements) -> bool:
        return bool(req.constraints)

    def __init__(self, req: Requirements):
        self.items = [(c, Reason(2, f"{{n}} node fails constraint {c.expr}",
                                 f"{{n}} nodes fail constraint {c.expr}"))
                      for c in req.constraints]

    def check(self, info):
        node = info.node
        for c, reason in self.items:
            if not matches(c, node):
                return reason
        return None


class PlatformFilter:
    order = 3

    @staticmethod
    def applies(req: Requirements) -> bool:
        return bool(req.platforms)

    def __init__(self, req: Requirements):
        self.platforms = req.platforms
        wanted = ", ".join("/".join(x for x in p if x) for p in req.platforms)
        self.reason = Reason(3, f"{{n}} node not on platform {wanted}",
                             f"{{n}} nodes not on platform {wanted}")

    def check(self, info):
        arch = _norm_arch(info.arch)
        for os_, arch_ in self.platforms:
            if (not os_ or os_ == info.os) and (not arch_ or arch_ == arch):
                return None
        return self.reason


class HostPortFilter:
    order = 4

    @staticmethod
    def applies(req: Requirements) -> bool:
        return bool(req.ports)

    def __init__(self, req: Requirements):
        self.items = [(p, Reason(4, f"host port {p[0]}/{p[1]} in use on {{n}} node",
                                 f"host port {p[0]}/{p[1]} in use on {{n}} nodes"))
                      for p in req.ports]

    def check(self, info):
        used = info.ports
        if not used:
            return None
        for p, reason in self.items:
            if p in used:
                return reason
        return None


class MaxReplicasFilter:
    order = 5

    @staticmethod
    def applies(req: Requirements) -> bool:
        return req.max_replicas > 0

    def __init__(self, req: Requirements):
        self.service_id = req.service_id
        self.limit = req.max_replicas
        self.reason = Reason(5, f"max replicas per node ({self.limit}) reached on {{n}} node",
                             f"max replicas per node ({self.limit}) reached on {{n}} nodes")

    def check(self, info):
        if info.by_service.get(self.service_id, 0) >= self.limit:
            return self.reason
        return None


FILTERS = (ReadyFilter, ResourceFilter, ConstraintFilter, PlatformFilter,
           HostPortFilter, MaxReplicasFilter)


class Pipeline:
    """The filters that apply to one set of requirements."""

    __slots__ = ("filters",)

    def __init__(self, req: Requirements):
        self.filters = [f(req) for f in FILTERS if f.applies(req)]

    def check(self, info):
        """None when the node can take the task, else the first Reason."""
        if info.node is None:
            return NOT_READY
        for f in self.filters:
            reason = f.check(info)
            if reason is not None:
                return reason
        return None

    def passes(self, info) -> bool:
        return self.check(info) is None

    def explain(self, infos) -> str:
        """The "no suitable node (...)" message for these candidate nodes."""
        counts: dict[Reason, int] = {}
        for info in infos:
            reason = self.check(info)
            if reason is not None:
                counts[reason] = counts.get(reason, 0) + 1
        return no_suitable_node(explain(counts))
