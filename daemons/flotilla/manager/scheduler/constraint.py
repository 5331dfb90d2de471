"""Matching nodes against placement constraints.

The syntax (``key op value``, the keys, spread descriptors) is the model's
(``model/constraint.py``); here a parsed constraint is compared with what
a node is:

- Values are compared ignoring case; label names are case-sensitive.
- A missing attribute (an absent label, an unknown platform...) is "".
- ``node.role`` is the observed role, ``manager`` or ``worker``.
- ``node.ip`` is compared with the address the node's agent connected from
  (as SwarmKit does; the node cannot choose it); a node without one (it
  never registered) matches neither ``==`` nor ``!=``.
- A well-formed but unknown key never matches, whatever the operator.
"""

from __future__ import annotations

import ipaddress

from ...model.constraint import ARCH, EQ, HOSTNAME, ID, IP, NODE_LABEL, OS, ROLE, Constraint


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


def matches(c: Constraint, node: dict) -> bool:
    """Whether ``node`` satisfies ``c``."""
    kind = c.kind
    if kind is None:
        return False
    if kind == IP:
        ip = node_ip(node)
        if ip is None:
            return False
        if c.ip is not None:
            equal = ip == c.ip
        else:
            assert c.net is not None    # a node.ip constraint holds an address or a network
            equal = ip.version == c.net.version and ip in c.net
        return equal if c.op == EQ else not equal
    if kind == ID:
        actual = _text(node.get("id"))
    elif kind == HOSTNAME:
        actual = node_hostname(node)
    elif kind == ROLE:
        actual = node_role(node)
    elif kind == OS:
        actual = _text(node_platform(node).get("os"))
    elif kind == ARCH:
        actual = _text(node_platform(node).get("arch"))
    elif kind == NODE_LABEL:
        actual = _text(node_labels(node).get(c.label))
    else:
        actual = _text(engine_labels(node).get(c.label))
    equal = actual.lower() == c.folded
    return equal if c.op == EQ else not equal


def match_all(constraints, node: dict) -> Constraint | None:
    """The first constraint the node fails, or None when it satisfies all."""
    for c in constraints:
        if not matches(c, node):
            return c
    return None
