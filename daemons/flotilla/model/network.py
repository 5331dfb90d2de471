"""Networks: what a user asks for, and what the cluster decides.

A network is one layer-2 segment spanning every node that runs a task on
it (VXLAN between nodes), with one IPv4 subnet. The managers decide every
address: the network's subnet, its gateway and VXLAN id when it is created;
a virtual IP per service per network (``endpoint.mode`` vip); an address per
task per network. Agents only apply what they are given. Every engine's
bridge on a network has the network's gateway address (no broadcast carries
it to another host): containers route through it and ask their node's
resolver there.

Network (kind ``network``)::

    {id, name, spec: NetworkSpec (canonical), subnet, gateway, vni}

The cluster's spec holds the pool that subnets are cut from when a network
does not name its own: ``spec.network: {default_addr_pool: [CIDR...],
subnet_size: prefix length}`` (Swarm's defaults: 10.0.0.0/8 in /24s).

A service's allocation (set by the allocator)::

    service.virtual_ips: [{network_id, addr}]      addr: "10.0.1.2/24"

A task's (the task stays ``new`` until it has them, then ``pending``)::

    task.networks: [{network_id, addr, aliases}]
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
from typing import Any, Literal, Optional, Self

from pydantic import Field, field_validator, model_validator

from .names import DNS_LABEL, NETWORK_NAME
from .validation import Model, Text, check_labels

DEFAULT_ADDR_POOL = ("10.0.0.0/8",)
DEFAULT_SUBNET_SIZE = 24
# The smallest and largest subnets a network may have: room for a handful
# of tasks, and at most the 65,534 hosts of a /16.
MIN_PREFIX, MAX_PREFIX = 16, 29
# VXLAN ids: 24 bits; the low ones are left to whoever else runs VXLAN here.
VNI_FIRST, VNI_LAST = 4096, (1 << 24) - 1
DRIVERS = ("overlay",)
# Options a network takes (-o KEY[=VALUE]).
OPTIONS = ("encrypted",)
MAX_ALIASES = 16
MAX_NETWORKS_PER_SERVICE = 16


def dns_label(value: str, what: str = "name") -> str:
    """``value`` if it is one DNS label; else a ValueError saying why."""
    if not DNS_LABEL.match(value):
        raise ValueError(f"{what} {value[:70]!r} is not a DNS label (1-63 letters, digits, "
                         "'-' and '_', starting and ending with a letter or digit)")
    return value


def parse_subnet(value: str) -> ipaddress.IPv4Network:
    try:
        net = ipaddress.ip_network(value, strict=True)
    except ValueError as exc:
        raise ValueError(f"{value[:50]!r} is not an IPv4 subnet in CIDR form "
                         f"(e.g. 10.1.0.0/24): {exc}") from None
    if not isinstance(net, ipaddress.IPv4Network):
        raise ValueError("only IPv4 subnets are supported")
    return net


class NetworkSpec(Model):
    name: str = Field(max_length=63)
    driver: Literal["overlay"] = "overlay"
    subnet: Optional[str] = Field(default=None, max_length=18)
    gateway: Optional[str] = Field(default=None, max_length=15)
    attachable: bool = False
    internal: bool = False
    encrypted: bool = False
    labels: dict[str, Text] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not NETWORK_NAME.match(v):
            raise ValueError("must be 1-63 characters: letters, digits, '_', '.', '-'")
        return v

    @field_validator("subnet")
    @classmethod
    def _subnet(cls, v: Optional[str]) -> Optional[str]:
        if v is None:
            return v
        net = parse_subnet(v)
        if not MIN_PREFIX <= net.prefixlen <= MAX_PREFIX:
            raise ValueError(f"the prefix length must be between /{MIN_PREFIX} and "
                             f"/{MAX_PREFIX}")
        return str(net)

    @field_validator("gateway")
    @classmethod
    def _gateway(cls, v: Optional[str]) -> Optional[str]:
        if v is None:
            return v
        try:
            return str(ipaddress.IPv4Address(v))
        except ValueError:
            raise ValueError(f"{v[:20]!r} is not an IPv4 address") from None

    @field_validator("labels")
    @classmethod
    def _labels(cls, v: dict[str, str]) -> dict[str, str]:
        return check_labels(v)

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.gateway is not None:
            if self.subnet is None:
                raise ValueError("a gateway needs a subnet")
            net = ipaddress.IPv4Network(self.subnet)
            gw = ipaddress.IPv4Address(self.gateway)
            if gw not in net or gw in (net.network_address, net.broadcast_address):
                raise ValueError(f"gateway {gw} is not a host address of {net}")
        return self


class NetworkAttachment(Model):
    """A service's place on a network: ``target`` is the network's name or
    id (stored as the id), ``aliases`` more names for the service there."""
    target: str = Field(max_length=64)
    aliases: list[str] = Field(default_factory=list, max_length=MAX_ALIASES)

    @field_validator("aliases")
    @classmethod
    def _aliases(cls, v: list[str]) -> list[str]:
        seen: set[str] = set()
        for alias in v:
            dns_label(alias, "alias")
            if alias.lower() in seen:
                raise ValueError(f"alias {alias!r} is listed twice")
            seen.add(alias.lower())
        return v


class AddressPool(Model):
    """The cluster's pool for networks that do not name a subnet."""
    default_addr_pool: list[str] = Field(default_factory=lambda: list(DEFAULT_ADDR_POOL),
                                         min_length=1, max_length=16)
    subnet_size: int = Field(default=DEFAULT_SUBNET_SIZE, ge=MIN_PREFIX, le=MAX_PREFIX)

    @field_validator("default_addr_pool")
    @classmethod
    def _pools(cls, v: list[str]) -> list[str]:
        nets = [parse_subnet(p) for p in v]
        for i, a in enumerate(nets):
            for b in nets[i + 1:]:
                if a.overlaps(b):
                    raise ValueError(f"pools {a} and {b} overlap")
        return [str(n) for n in nets]

    @model_validator(mode="after")
    def _fits(self) -> Self:
        for p in self.default_addr_pool:
            if ipaddress.IPv4Network(p).prefixlen > self.subnet_size:
                raise ValueError(f"pool {p} is smaller than one /{self.subnet_size} subnet")
        return self


def default_network_settings() -> dict[str, Any]:
    return AddressPool().model_dump(mode="json")


def view_addr(addr: str) -> str:
    """The address part of ``10.0.1.5/24``."""
    return addr.split("/", 1)[0]


def valid_wireguard_key(key: object) -> bool:
    """``key`` is a WireGuard key as ``wg`` writes one: 32 bytes in base64
    (44 characters). Nodes publish their public key for encrypted networks."""
    if not isinstance(key, str) or len(key) != 44:
        return False
    try:
        return len(base64.b64decode(key, validate=True)) == 32
    except (binascii.Error, ValueError):
        return False
