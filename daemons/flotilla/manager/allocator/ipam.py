"""Address management, as pure functions and one small pool class: which
subnet a new network gets, which VXLAN id, and which address in a subnet.

Everything here is computed from what the store holds, so a new leader
rebuilds the same state from the store and never hands out an address that
is in use.
"""

from __future__ import annotations

import bisect
import hashlib
import ipaddress
from collections.abc import Iterable

from ...model.network import VNI_FIRST, VNI_LAST

Net = ipaddress.IPv4Network


class Exhausted(Exception):
    """No subnet, VXLAN id or address is left."""


def overlapping(candidate: Net, taken: Iterable[Net]) -> Net | None:
    """The first of ``taken`` that overlaps ``candidate``, if any."""
    return next((t for t in taken if t.overlaps(candidate)), None)


def choose_subnet(pools: Iterable[Net], prefixlen: int, taken: Iterable[Net]) -> Net:
    """The first /``prefixlen`` subnet of the pools, in order, that overlaps
    none of ``taken``. Jumps past taken ranges (a binary search over them),
    so a pool of 65,536 subnets nearly all taken is searched quickly."""
    used = sorted((int(n.network_address), int(n.broadcast_address)) for n in taken)
    starts = [u[0] for u in used]
    reach: list[int] = []           # reach[i]: the highest end among used[:i + 1]
    for _start, end in used:
        reach.append(max(end, reach[-1]) if reach else end)
    size = 1 << (32 - prefixlen)
    for pool in pools:
        if pool.prefixlen > prefixlen:
            continue
        at, end = int(pool.network_address), int(pool.broadcast_address)
        while at + size - 1 <= end:
            i = bisect.bisect_right(starts, at + size - 1) - 1
            if i < 0 or reach[i] < at:
                return Net((at, prefixlen))
            # the next aligned subnet after everything that starts before
            # this candidate ends
            at = (reach[i] + 1 + size - 1) // size * size
    raise Exhausted(f"no /{prefixlen} subnet is left in "
                    f"{', '.join(str(p) for p in pools) or 'the pool'}")


def vni_start(cluster_id: str) -> int:
    """Where a cluster starts looking for free VXLAN ids: a point of the
    range that its id decides. Two clusters whose nodes share a network
    namespace (a local cluster beside another, as tests and demos run them)
    would otherwise both give their first network the id 4096, and a
    namespace holds one VXLAN device per id and port."""
    digest = hashlib.sha256(cluster_id.encode()).digest()
    return VNI_FIRST + int.from_bytes(digest[:4], "big") % (VNI_LAST - VNI_FIRST + 1)


def choose_vni(taken: Iterable[int], start: int = VNI_FIRST) -> int:
    """The first VXLAN id from ``start`` up, then from the first one up,
    that ``taken`` does not hold."""
    used = set(taken)
    start = min(max(start, VNI_FIRST), VNI_LAST)
    for first, last in ((start, VNI_LAST), (VNI_FIRST, start - 1)):
        for vni in range(first, last + 1):
            if vni not in used:
                return vni
    raise Exhausted("no VXLAN id is left")


def host(addr: str) -> ipaddress.IPv4Address:
    """The address of ``10.0.1.5/24`` or ``10.0.1.5``."""
    return ipaddress.IPv4Address(addr.split("/", 1)[0])


class AddressPool:
    """The host addresses of one subnet: the network and broadcast
    addresses and the gateway are never handed out. Addresses are handed
    out in a ring, from the one after the last given, so an address just
    released is the last to be given again (a stale entry somewhere in the
    cluster then points nowhere rather than at a new task)."""

    def __init__(self, subnet: str, gateway: str | None = None) -> None:
        self.subnet = Net(subnet)
        self._first = int(self.subnet.network_address) + 1
        self._last = int(self.subnet.broadcast_address) - 1
        self._used: set[int] = set()
        if gateway is not None:
            self._used.add(int(host(gateway)))
        self._next = self._first

    @property
    def free(self) -> int:
        return self._last - self._first + 1 - len(self._used)

    def _cidr(self, value: int) -> str:
        return f"{ipaddress.IPv4Address(value)}/{self.subnet.prefixlen}"

    def mark(self, addr: str) -> bool:
        """Record ``addr`` as in use (rebuilding from the store); False if it
        already was or is not a host address of the subnet."""
        value = int(host(addr))
        if not self._first <= value <= self._last or value in self._used:
            return False
        self._used.add(value)
        return True

    def allocate(self) -> str:
        span = self._last - self._first + 1
        for i in range(span):
            value = self._first + (self._next - self._first + i) % span
            if value not in self._used:
                self._used.add(value)
                self._next = value + 1 if value < self._last else self._first
                return self._cidr(value)
        raise Exhausted(f"no address is left in {self.subnet}")

    def release(self, addr: str) -> None:
        self._used.discard(int(host(addr)))

    def in_use(self, addr: str) -> bool:
        return int(host(addr)) in self._used
