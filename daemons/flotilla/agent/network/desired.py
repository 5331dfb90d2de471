"""What an engine should have: the networks it takes part in, checked.

The agent hands :class:`~.driver.NetworkDriver` one mapping per network (as
the dispatcher sends them, extra keys ignored)::

    {id, name, subnet: "10.0.1.0/24", vni, internal, attachment: "10.0.1.254/24",
     endpoints: [{addr: "10.0.1.5/24", node_underlay_ip: "192.0.2.11"}, ...],
     peers: [{underlay_ip, attachment}, ...],          (peers optional)
     encrypted: false, local: null}                    (both optional)

``attachment`` is this node's address on the network (its bridge's).
``endpoints`` may list every task of the network: those on this engine (same
underlay address) are skipped. An encrypted network's VXLAN goes through
the engines' WireGuard tunnel: ``local`` is then this engine's tunnel
address (IPv6, see ``wireguard.py``), and each endpoint's
``node_underlay_ip`` its engine's tunnel address. ``peers`` are the nodes' bridges, reached like
endpoints (this node's own is skipped). Everything is checked before anything is changed; a bad
field is a :class:`DesiredStateError` naming it (``networks[1].vni: ...``).
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Iterable, Mapping
from typing import Any

from ...model.names import NETWORK_NAME
from .names import mac_for, short_id

VNI_MAX = (1 << 24) - 1


class DesiredStateError(ValueError):
    """A desired network that cannot be applied, with the path of the bad field."""


IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclasses.dataclass(frozen=True, order=True)
class Endpoint:
    """An address on the network and where the engine holding it receives
    VXLAN (its underlay address, or its tunnel address)."""
    addr: ipaddress.IPv4Address
    underlay_ip: IPAddress

    @property
    def mac(self) -> str:
        return mac_for(self.addr)


@dataclasses.dataclass(frozen=True)
class NetworkState:
    id: str
    name: str
    subnet: ipaddress.IPv4Network
    vni: int
    internal: bool
    attachment: ipaddress.IPv4Interface
    endpoints: tuple[Endpoint, ...] = ()
    encrypted: bool = False
    # the VXLAN source when not the node's underlay address (an encrypted
    # network's: this engine's tunnel address)
    local: IPAddress | None = None

    @property
    def short_id(self) -> str:
        return short_id(self.id)

    def source(self, underlay_ip: IPAddress) -> IPAddress:
        """Where this engine's VXLAN for the network comes from."""
        return self.local if self.local is not None else underlay_ip

    def remote(self, underlay_ip: IPAddress) -> list[Endpoint]:
        """The endpoints on other engines than this one (whose underlay
        address is ``underlay_ip``), sorted."""
        here = self.source(underlay_ip)
        return sorted(e for e in self.endpoints if e.underlay_ip != here)


def _field(obj: Mapping[str, Any], key: str, path: str, kind: type | tuple[type, ...],
           default: Any = dataclasses.MISSING) -> Any:
    if key not in obj or obj[key] is None:
        if default is dataclasses.MISSING:
            raise DesiredStateError(f"{path}.{key}: missing")
        return default
    value = obj[key]
    # bool is an int: a VXLAN id of True is a mistake
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise DesiredStateError(f"{path}.{key}: expected {names}, got {type(value).__name__}")
    return value


def _ipv4(value: Any, path: str) -> ipaddress.IPv4Address:
    if not isinstance(value, str):
        raise DesiredStateError(f"{path}: expected an IPv4 address, got {type(value).__name__}")
    try:
        return ipaddress.IPv4Address(value.split("/", 1)[0])
    except ValueError:
        raise DesiredStateError(f"{path}: {value[:50]!r} is not an IPv4 address") from None


def _ip(value: Any, path: str) -> IPAddress:
    """An IPv4 or IPv6 address (a tunnel address is IPv6)."""
    if not isinstance(value, str):
        raise DesiredStateError(f"{path}: expected an IP address, got {type(value).__name__}")
    try:
        return ipaddress.ip_address(value.split("/", 1)[0])
    except ValueError:
        raise DesiredStateError(f"{path}: {value[:50]!r} is not an IP address") from None


def _host_in(addr: ipaddress.IPv4Address, subnet: ipaddress.IPv4Network, path: str) -> None:
    if addr not in subnet or (subnet.prefixlen < 31 and addr in (subnet.network_address,
                                                                  subnet.broadcast_address)):
        raise DesiredStateError(f"{path}: {addr} is not a host address of {subnet}")


def parse_network(obj: Mapping[str, Any] | NetworkState, path: str = "network") -> NetworkState:
    """One desired network, checked (a :class:`NetworkState` is returned as is)."""
    if isinstance(obj, NetworkState):
        return obj
    if not isinstance(obj, Mapping):
        raise DesiredStateError(f"{path}: expected an object, got {type(obj).__name__}")
    net_id = _field(obj, "id", path, str)
    try:
        short_id(net_id)
    except ValueError as exc:
        raise DesiredStateError(f"{path}.id: {exc}") from None
    name = _field(obj, "name", path, str)
    if not NETWORK_NAME.match(name):
        raise DesiredStateError(f"{path}.name: {name[:70]!r} is not a network name (1-63 "
                                "letters, digits, '_', '.', '-')")
    raw_subnet = _field(obj, "subnet", path, str)
    try:
        subnet = ipaddress.IPv4Network(raw_subnet, strict=True)
    except ValueError as exc:
        raise DesiredStateError(f"{path}.subnet: {raw_subnet[:50]!r} is not an IPv4 subnet: "
                                f"{exc}") from None
    vni = _field(obj, "vni", path, int)
    if not 1 <= vni <= VNI_MAX:
        raise DesiredStateError(f"{path}.vni: {vni} is not a VXLAN id (1-{VNI_MAX})")
    internal = _field(obj, "internal", path, bool, False)
    raw_att = _field(obj, "attachment", path, str)
    att_ip = _ipv4(raw_att, f"{path}.attachment")
    _host_in(att_ip, subnet, f"{path}.attachment")
    if "/" in raw_att and raw_att.split("/", 1)[1] != str(subnet.prefixlen):
        raise DesiredStateError(f"{path}.attachment: {raw_att[:50]!r} does not have the "
                                f"subnet's prefix length /{subnet.prefixlen}")
    attachment = ipaddress.IPv4Interface(f"{att_ip}/{subnet.prefixlen}")

    encrypted = _field(obj, "encrypted", path, bool, False)
    local = None if obj.get("local") is None else _ip(obj["local"], f"{path}.local")
    where: dict[ipaddress.IPv4Address, tuple[IPAddress, str]] = {}

    def add(addr: ipaddress.IPv4Address, underlay: IPAddress, p: str) -> None:
        _host_in(addr, subnet, p)
        if addr == att_ip:
            raise DesiredStateError(f"{p}: {addr} is this node's own attachment address")
        seen = where.get(addr)
        if seen is not None and seen[0] != underlay:
            raise DesiredStateError(f"{p}: {addr} is on {underlay} and on {seen[0]} "
                                    f"({seen[1]})")
        where[addr] = (underlay, p)

    for key, addr_key, underlay_key in (("endpoints", "addr", "node_underlay_ip"),
                                        ("peers", "attachment", "underlay_ip")):
        items = _field(obj, key, path, list, [])
        for i, item in enumerate(items):
            p = f"{path}.{key}[{i}]"
            if not isinstance(item, Mapping):
                raise DesiredStateError(f"{p}: expected an object, got {type(item).__name__}")
            if item.get(addr_key) is None:
                raise DesiredStateError(f"{p}.{addr_key}: missing")
            if item.get(underlay_key) is None:
                raise DesiredStateError(f"{p}.{underlay_key}: missing")
            addr = _ipv4(item[addr_key], f"{p}.{addr_key}")
            underlay = _ip(item[underlay_key], f"{p}.{underlay_key}")
            if underlay.version != (local.version if local is not None else 4):
                raise DesiredStateError(
                    f"{p}.{underlay_key}: {underlay} is not of the family of the network's "
                    f"VXLAN source ({local if local is not None else 'the IPv4 underlay'})")
            if key == "peers" and addr == att_ip:
                continue            # this node itself
            add(addr, underlay, p)
    endpoints = tuple(sorted(Endpoint(a, u) for a, (u, _) in where.items()))
    return NetworkState(id=net_id, name=name, subnet=subnet, vni=vni, internal=internal,
                        attachment=attachment, endpoints=endpoints, encrypted=encrypted,
                        local=local)


def parse_desired(items: Iterable[Mapping[str, Any] | NetworkState]) -> list[NetworkState]:
    """Every desired network, checked, and checked against each other: no two
    with the same id (first 10 characters), name or VXLAN id."""
    if isinstance(items, (str, bytes, Mapping)):
        raise DesiredStateError("networks: expected a list of networks")
    out: list[NetworkState] = []
    seen: dict[tuple[str, Any], int] = {}
    for i, item in enumerate(items):
        net = parse_network(item, f"networks[{i}]")
        for what, key in (("id", net.short_id), ("name", net.name), ("vni", net.vni)):
            other = seen.setdefault((what, key), i)
            if other != i:
                shown = "the first 10 characters of its id" if what == "id" else what
                raise DesiredStateError(f"networks[{i}].{what}: {shown} ({key}) is the same "
                                        f"as networks[{other}]'s")
        out.append(net)
    return out
