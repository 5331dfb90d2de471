"""Placement constraints and spread descriptors: their syntax.

How a node is matched against them is the scheduler's
(``manager/scheduler/constraint.py``).

A constraint is ``key op value`` with ``op`` either ``==`` or ``!=``; a
task's constraints are AND-ed. Keys (matched case-insensitively)::

    node.id  node.hostname  node.ip  node.role  node.platform.os
    node.platform.arch  node.labels.<label>  engine.labels.<label>

- Label names are case-sensitive; values are compared ignoring case.
- ``node.ip`` takes a single address or a CIDR network.
- A well-formed but unknown key parses (``known`` is false) but never
  matches; the service spec refuses it.

A spread descriptor (placement preference) names a node label the same way:
``node.labels.<label>`` or ``engine.labels.<label>``.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable

EQ = "=="
NE = "!="
NODE_LABEL_PREFIX = "node.labels."
ENGINE_LABEL_PREFIX = "engine.labels."

_KEY_RE = re.compile(r"^[a-z_][a-z0-9\-_.]+$", re.IGNORECASE)
_FORBIDDEN_IN_VALUE = frozenset("<>~=!")

# Attribute kinds a key resolves to.
ID, HOSTNAME, IP, ROLE, OS, ARCH, NODE_LABEL, ENGINE_LABEL = range(8)
_SIMPLE_KEYS = {
    "node.id": ID,
    "node.hostname": HOSTNAME,
    "node.ip": IP,
    "node.role": ROLE,
    "node.platform.os": OS,
    "node.platform.arch": ARCH,
}


class ConstraintError(ValueError):
    """A placement constraint or preference that cannot be parsed."""


def _classify(key: str) -> tuple[int | None, str | None]:
    """(kind, label name) for a key; kind None for an unknown key."""
    lowered = key.lower()
    kind = _SIMPLE_KEYS.get(lowered)
    if kind is not None:
        return kind, None
    if lowered.startswith(NODE_LABEL_PREFIX):
        return NODE_LABEL, key[len(NODE_LABEL_PREFIX):]
    if lowered.startswith(ENGINE_LABEL_PREFIX):
        return ENGINE_LABEL, key[len(ENGINE_LABEL_PREFIX):]
    return None, None


class Constraint:
    """One parsed ``key op value`` expression: the kind of attribute its key
    names (None when unknown), the label name for a label key, the value
    case-folded and, for ``node.ip``, the address or network."""

    __slots__ = ("key", "op", "value", "kind", "label", "folded", "ip", "net")

    def __init__(self, key: str, op: str, value: str) -> None:
        self.key = key
        self.op = op
        self.value = value
        self.kind, self.label = _classify(key)
        self.folded = value.lower()
        self.ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None
        self.net: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None
        if self.kind == IP:
            try:
                self.ip = ipaddress.ip_address(value)
            except ValueError:
                try:
                    self.net = ipaddress.ip_network(value, strict=False)
                except ValueError:
                    raise ConstraintError(
                        f"invalid constraint {self.expr!r}: node.ip takes an IP address "
                        "or a CIDR network") from None

    @property
    def expr(self) -> str:
        return f"{self.key}{self.op}{self.value}"

    @property
    def known(self) -> bool:
        """Whether the key names something a node has (a label key must
        not be empty); an unknown key parses but never matches."""
        return self.kind is not None and self.label != ""

    def __str__(self) -> str:
        return self.expr

    def __repr__(self) -> str:
        return f"Constraint({self.expr!r})"

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, Constraint) and self.key == other.key
                and self.op == other.op and self.value == other.value)

    def __hash__(self) -> int:
        return hash((self.key, self.op, self.value))


def parse_constraint(expr: object) -> Constraint:
    if not isinstance(expr, str):
        raise ConstraintError(f"invalid constraint {expr!r}: expected a string")
    positions = [(expr.find(op), op) for op in (EQ, NE) if op in expr]
    if not positions:
        raise ConstraintError(
            f"invalid constraint {expr!r}: expected key==value or key!=value")
    at, op = min(positions)
    key = expr[:at].strip()
    value = expr[at + len(op):].strip()
    if not _KEY_RE.match(key):
        raise ConstraintError(f"invalid constraint {expr!r}: invalid key {key!r}")
    if not value:
        raise ConstraintError(f"invalid constraint {expr!r}: empty value")
    bad = sorted(set(value) & _FORBIDDEN_IN_VALUE)
    if bad:
        raise ConstraintError(
            f"invalid constraint {expr!r}: value may not contain {''.join(bad)!r}")
    if any(ch in value for ch in "\r\n\t\0"):
        raise ConstraintError(f"invalid constraint {expr!r}: control character in value")
    return Constraint(key, op, value)


def parse_constraints(exprs: object) -> list[Constraint]:
    """Parse a list of expressions; ConstraintError names the first bad one."""
    if exprs is None:
        return []
    if isinstance(exprs, str) or not isinstance(exprs, (list, tuple)):
        raise ConstraintError(f"invalid constraints {exprs!r}: expected a list of strings")
    return [parse_constraint(e) for e in exprs]


def parse_spread(descriptor: object) -> tuple[str, str] | None:
    """``("node", label)`` or ``("engine", label)`` for a spread descriptor,
    or None when it is not a label descriptor."""
    if not isinstance(descriptor, str):
        return None
    d = descriptor.strip()
    lowered = d.lower()
    for source, prefix in (("node", NODE_LABEL_PREFIX), ("engine", ENGINE_LABEL_PREFIX)):
        if lowered.startswith(prefix) and len(d) > len(prefix):
            return source, d[len(prefix):]
    return None


def spread_levels(preferences: Iterable[object] | None) -> tuple[tuple[str, str], ...]:
    """The usable spread levels of a placement's preferences, in order;
    entries that are not label spreads are skipped."""
    levels = []
    for pref in preferences or ():
        if isinstance(pref, dict):
            level = parse_spread(pref.get("spread"))
            if level is not None:
                levels.append(level)
    return tuple(levels)


def validate_placement(placement: object) -> None:
    """Check a TaskSpec placement: constraints, spread preferences and
    max_replicas. Raises ConstraintError with a one-line message."""
    if placement is None:
        return
    if not isinstance(placement, dict):
        raise ConstraintError("invalid placement: expected an object")
    parse_constraints(placement.get("constraints") or [])
    prefs = placement.get("preferences") or []
    if not isinstance(prefs, (list, tuple)):
        raise ConstraintError("invalid placement preferences: expected a list")
    for pref in prefs:
        spread = pref.get("spread") if isinstance(pref, dict) else None
        if parse_spread(spread) is None:
            raise ConstraintError(
                f"invalid placement preference {pref!r}: expected "
                "{'spread': 'node.labels.<label>'} or {'spread': 'engine.labels.<label>'}")
    mr = placement.get("max_replicas") or 0
    if isinstance(mr, bool) or not isinstance(mr, int) or mr < 0:
        raise ConstraintError(f"invalid max_replicas {mr!r}: expected an integer >= 0")
