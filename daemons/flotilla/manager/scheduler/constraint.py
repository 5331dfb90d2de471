"""Placement constraints and spread descriptors.

A constraint is ``key op value`` with ``op`` either ``==`` or ``!=``; a
task's constraints are AND-ed. Keys (matched case-insensitively)::

    node.id  node.hostname  node.ip  node.role  node.platform.os
    node.platform.arch  node.labels.<label>  engine.labels.<label>

- Values are compared ignoring case; label names are case-sensitive.
- A missing attribute (an absent label, an unknown platform...) is "".
- ``node.role`` is the observed role, ``manager`` or ``worker``.
- ``node.ip`` takes a single address or a CIDR network and is compared with
  the address the node's agent connected from (as SwarmKit does; the node
  cannot choose it); a node without one (it never registered) matches
  neither ``==`` nor ``!=``.
- A well-formed but unknown key never matches, whatever the operator.

A spread descriptor (placement preference) names a node label the same way:
``node.labels.<label>`` or ``engine.labels.<label>``.
"""

from __future__ import annotations

import ipaddress
import re

EQ = "=="
NE = "!="
NODE_LABEL_PREFIX = "node.labels."
ENGINE_LABEL_PREFIX = "engine.labels."

_KEY_RE = re.compile(r"^[a-z_][a-z0-9\-_.]+$", re.IGNORECASE)
_FORBIDDEN_IN_VALUE = frozenset("<>~=!")

# Attribute kinds a key resolves to.
_ID, _HOSTNAME, _IP, _ROLE, _OS, _ARCH, _NODE_LABEL, _ENGINE_LABEL = range(8)
_SIMPLE_KEYS = {
    "node.id": _ID,
    "node.hostname": _HOSTNAME,
    "node.ip": _IP,
    "node.role": _ROLE,
    "node.platform.os": _OS,
    "node.platform.arch": _ARCH,
}


class ConstraintError(ValueError):
    """A placement constraint or preference that cannot be parsed."""


def _classify(key: str):
    """(kind, label name) for a key; kind None for an unknown key."""
    lowered = key.lower()
    kind = _SIMPLE_KEYS.get(lowered)
    if kind is not None:
        return kind, None
    if lowered.startswith(NODE_LABEL_PREFIX):
        return _NODE_LABEL, key[len(NODE_LABEL_PREFIX):]
    if lowered.startswith(ENGINE_LABEL_PREFIX):
        return _ENGINE_LABEL, key[len(ENGINE_LABEL_PREFIX):]
    return None, None


def _text(value) -> str:
    return "" if value is None else str(value)


def node_hostname(node: dict) -> str:
    return _text(node.get("hostname") or (node.get("description") or {}).get("hostname"))


def node_role(node: dict) -> str:
    return _text(node.get("role") or (node.get("spec") or {}).get("role"))


def node_platform(node: dict) -> dict:
    return (node.get("description") or {}).get("platform") or {}


def node_labels(node: dict) -> dict:
    return (node.get("spec") or {}).get("labels") or {}


def engine_labels(node: dict) -> dict:
    return ((node.get("description") or {}).get("engine") or {}).get("labels") or {}


def node_ip(node: dict):
    """The address the node's agent connected from when it last registered
    (recorded by the dispatcher, never taken from what the node reports),
    as an ip_address, or None."""
    addr = (node.get("status") or {}).get("addr")
    if not addr or not isinstance(addr, str):
        return None
    host = addr.strip()
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    if host.startswith("["):                        # [v6]:port
        host = host[1:].split("]", 1)[0]
    elif host.count(":") == 1:                      # v4:port or name:port
        host = host.rsplit(":", 1)[0]
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


class Constraint:
    """One parsed ``key op value`` expression."""

    __slots__ = ("key", "op", "value", "_kind", "_label", "_folded", "_ip", "_net")

    def __init__(self, key: str, op: str, value: str):
        self.key = key
        self.op = op
        self.value = value
        self._kind, self._label = _classify(key)
        self._folded = value.lower()
        self._ip = self._net = None
        if self._kind == _IP:
            try:
                self._ip = ipaddress.ip_address(value)
            except ValueError:
                try:
                    self._net = ipaddress.ip_network(value, strict=False)
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
        return self._kind is not None and self._label != ""

    def __str__(self) -> str:
        return self.expr

    def __repr__(self) -> str:
        return f"Constraint({self.expr!r})"

    def __eq__(self, other) -> bool:
        return (isinstance(other, Constraint) and self.key == other.key
                and self.op == other.op and self.value == other.value)

    def __hash__(self) -> int:
        return hash((self.key, self.op, self.value))

    def matches(self, node: dict) -> bool:
        kind = self._kind
        if kind is None:
            return False
        if kind == _IP:
            ip = node_ip(node)
            if ip is None:
                return False
            if self._ip is not None:
                equal = ip == self._ip
            else:
                equal = ip.version == self._net.version and ip in self._net
            return equal if self.op == EQ else not equal
        if kind == _ID:
            actual = _text(node.get("id"))
        elif kind == _HOSTNAME:
            actual = node_hostname(node)
        elif kind == _ROLE:
            actual = node_role(node)
        elif kind == _OS:
            actual = _text(node_platform(node).get("os"))
        elif kind == _ARCH:
            actual = _text(node_platform(node).get("arch"))
        elif kind == _NODE_LABEL:
            actual = _text(node_labels(node).get(self._label))
        else:
            actual = _text(engine_labels(node).get(self._label))
        equal = actual.lower() == self._folded
        return equal if self.op == EQ else not equal


def parse_constraint(expr) -> Constraint:
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


def parse_constraints(exprs) -> list[Constraint]:
    """Parse a list of expressions; ConstraintError names the first bad one."""
    if exprs is None:
        return []
    if isinstance(exprs, str) or not isinstance(exprs, (list, tuple)):
        raise ConstraintError(f"invalid constraints {exprs!r}: expected a list of strings")
    return [parse_constraint(e) for e in exprs]


def match_all(constraints, node: dict) -> Constraint | None:
    """The first constraint the node fails, or None when it satisfies all."""
    for c in constraints:
        if not c.matches(node):
            return c
    return None


def parse_spread(descriptor):
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


def spread_levels(preferences) -> tuple:
    """The usable spread levels of a placement's preferences, in order;
    entries that are not label spreads are skipped."""
    levels = []
    for pref in preferences or ():
        if isinstance(pref, dict):
            level = parse_spread(pref.get("spread"))
            if level is not None:
                levels.append(level)
    return tuple(levels)


def validate_placement(placement) -> None:
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
