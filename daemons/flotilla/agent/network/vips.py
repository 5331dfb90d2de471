"""Virtual IPs: a service's address on a network, spread over its tasks.

This kernel has no IPVS, so a VIP is two things on the engine that the
service's clients share a bridge with:

* the VIP as a /32 address on the network's bridge ``flb-<id10>``, so a
  local container's ARP for it is answered by the engine (the address is
  marked with the address protocol :data:`ADDR_PROTO`, which is how a later
  :meth:`VirtualIPs.apply` knows the addresses it may remove);
* rules in Flotilla's own nftables table ``ip flotilla``: a new connection
  (TCP or UDP, any port) to the VIP arriving from that bridge is DNATed to
  one of the backends, chosen by ``numgen random mod N``; a VIP without
  backends, and anything else sent to a VIP (ICMP...), is rejected by the
  engine (TCP reset, ICMP port unreachable) instead of hanging or reaching
  a service of the engine host listening on all addresses.

Input, replaced as a whole by every :meth:`VirtualIPs.apply`: per bridge,
its VIPs and each VIP's backends (the addresses of the service's running,
healthy tasks on that network)::

    {"flb-2x0ab4c9d1": {"10.0.1.2": ["10.0.1.5", "10.0.1.6"], "10.0.1.3": []}}

The rules of the input's bridges change in one nftables transaction
(``nft -f -``): once :meth:`VirtualIPs.apply` returns (in fact from the
middle of it), no new connection goes to a backend that is no longer
listed. Connections already established stay where conntrack put them (a
UDP flow too, for as long as its conntrack entry lives).

Why ``numgen random``: it keeps no state, so replacing the rules (every
apply) does not bias the spread, and no counter is shared between CPUs;
over many connections it is as even as round robin (``numgen inc``, whose
counter restarts at 0 with every replacement and so favours the first
backends when backends change often). Nothing here needs a client to stick
to a backend (``jhash`` of the client's address would).

The table holds, per bridge, a DNAT chain, a hairpin chain, a reject chain
and two sets, reached from three base chains through maps keyed by the
bridge's name. An apply replaces the objects of the bridges it is given
(flushed and filled again in the same transaction); then, in a second
transaction that the first does not wait for, a bridge that is in the
table but not in the input is removed, with its VIP addresses, once no
container is attached to it (no veth port) or it is gone: several nodes
can share one engine (``make cluster``), each agent applying its own
networks, and a network another agent of the engine still serves keeps
its VIPs. Agents of one engine apply the same content for a network they
share, so the last apply wins harmlessly.

What the kernel does with this, as verified on this machine's kernel
(``tests/integration/test_vips.py``; clients, backends and the engine in
network namespaces of their own):

* **br_netfilter is what makes it work** (``bridge-nf-call-iptables = 1``,
  per network namespace; a new namespace starts with 1 here). A client's
  frame to the VIP carries the bridge's MAC; br_netfilter runs the IPv4
  prerouting hooks as the frame enters the bridge, so the DNAT happens
  there, and since the backend is reached through the same bridge the frame
  is then *bridged* to the backend's port (``bridged DNAT``: no IP
  forwarding, so no ``ip_forward`` needed and no ICMP redirect sent). The
  backend answers the client's MAC directly; that reply is bridged too, but
  br_netfilter passes it through conntrack and the postrouting hook, which
  puts the VIP back as its source. So the client sees the VIP answer and
  the backend sees the client's own address (no SNAT), even with client and
  backend on the same bridge (the engine's ``IpForwDatagrams`` stays 0).
  With ``bridge-nf-call-iptables = 0`` every connection through a VIP
  times out (the reply keeps the backend's address, and the client's
  kernel does not know that flow), so :meth:`VirtualIPs.apply` refuses to
  run without it.
* **Hairpin: a task connecting to its own service's VIP.** When the random
  pick is the client itself, the DNATed frame must leave through the port
  it came in by, which a bridge only does for a port in hairpin mode; and
  even then the task would answer itself over loopback (source and
  destination are both its own address), where its socket, connected to
  the VIP, never sees the answer. Without the SNAT, the connections that
  pick their own client hang; without hairpin mode, their first packet is
  lost (TCP's retransmission picks again, after a second). So
  :meth:`VirtualIPs.apply` turns hairpin mode on for every veth port of
  the bridge (Docker leaves it off while its userland proxy is on, its
  default), and the hairpin chain SNATs
  a connection whose client is its own backend to the VIP (the task sees
  the VIP as the client: the one case where the backend does not see the
  client's address, as with Docker's own hairpin NAT). The VXLAN port is
  left alone (hairpin there would send frames back to the peers).
* No IPVS, no ``statistic`` match needed: ``numgen`` and maps are nftables
  core features here. Rules match the bridge as ``iifname``/``oifname``:
  for bridged frames br_netfilter gives the bridge device, not the port.
  The base chains run just before the usual NAT and filter priorities
  (``dstnat - 10``, ``srcnat - 10``, ``filter - 10``), so other NAT rules on
  the engine (Docker's) never see a VIP's connection first.
* With Docker's own rules in place (Docker 20.10 with iptables on, in a
  namespace of its own, adopting the bridge; FORWARD policy DROP) the same
  holds for containers: Docker accepts traffic that enters and leaves the
  same bridge, and masquerades only what leaves it.
* Connections from the engine host itself to a VIP are not DNATed (they
  never cross the bridge): they stay on the host.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import re
import shutil
import subprocess
import threading
from collections.abc import Iterable, Mapping
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

log = logging.getLogger(__name__)

TABLE = "flotilla"
# The address protocol (IFA_PROTO, ``ip -d addr`` shows "proto 0xf1") of the
# VIP addresses this module adds: the only addresses it ever removes.
ADDR_PROTO = 0xF1
BR_NETFILTER = "/proc/sys/net/bridge/bridge-nf-call-iptables"
NFT_TIMEOUT = 30.0

# Linux interface names: at most 15 characters. Stricter than the kernel
# (no ':' or '/'), since the name is written into nftables' input.
_IFNAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,14}\Z")
_ENOENT_TABLE = "No such file or directory"

Spec = Mapping[str, Mapping[str, Iterable[str]]]
Desired = dict[str, dict[ipaddress.IPv4Address, tuple[ipaddress.IPv4Address, ...]]]


_BROADCAST = ipaddress.IPv4Address("255.255.255.255")


class VipError(Exception):
    """Bad input, or the engine cannot carry virtual IPs (the message says why)."""


# -- input -----------------------------------------------------------------------------

def _address(value: object, where: str) -> ipaddress.IPv4Address:
    """``10.0.1.5`` or ``10.0.1.5/24`` (the allocator's form) as an address."""
    if not isinstance(value, str):
        raise VipError(f"{where}: {value!r} is not an IPv4 address")
    try:
        addr = ipaddress.ip_interface(value.strip()).ip
    except ValueError:
        raise VipError(f"{where}: {value[:50]!r} is not an IPv4 address") from None
    if not isinstance(addr, ipaddress.IPv4Address):
        raise VipError(f"{where}: {value[:50]!r} is not an IPv4 address")
    if addr.is_unspecified or addr.is_loopback or addr.is_multicast or addr == _BROADCAST:
        raise VipError(f"{where}: {addr} is not a unicast address")
    return addr


def parse(spec: Spec) -> Desired:
    """The input checked and in canonical form: VIPs and backends as
    addresses, backends sorted and without duplicates. A VipError names the
    first bad part."""
    if not isinstance(spec, Mapping):
        raise VipError("the input is a mapping of bridge names to their VIPs")
    desired: Desired = {}
    seen: dict[ipaddress.IPv4Address, str] = {}
    for bridge, vips in spec.items():
        if not isinstance(bridge, str) or not _IFNAME.match(bridge):
            raise VipError(f"{str(bridge)[:40]!r} is not a bridge name (1-15 letters, digits, "
                           "'_', '.', '-')")
        if not isinstance(vips, Mapping):
            raise VipError(f"{bridge}: the VIPs are a mapping of VIP to backends")
        out: dict[ipaddress.IPv4Address, tuple[ipaddress.IPv4Address, ...]] = {}
        for vip_text, backends in vips.items():
            vip = _address(vip_text, bridge)
            where = f"{bridge}: VIP {vip}"
            if vip in seen:
                raise VipError(f"{where} is listed twice (also on {seen[vip]})")
            seen[vip] = bridge
            if isinstance(backends, (str, bytes)) or not isinstance(backends, Iterable):
                raise VipError(f"{where}: the backends are a list of addresses")
            addrs = sorted({_address(b, f"{where}: backend") for b in backends})
            if vip in addrs:
                raise VipError(f"{where} is its own backend")
            out[vip] = tuple(addrs)
        desired[bridge] = out
    return desired


# -- nftables --------------------------------------------------------------------------

def _objects(bridge: str) -> tuple[list[str], list[str]]:
    """The per-bridge chains and sets, each as ``add`` would create it."""
    chains = [f"add chain ip {TABLE} {kind}-{bridge}" for kind in ("dnat", "hairpin", "reject")]
    sets = [f"add set ip {TABLE} vips-{bridge} {{ type ipv4_addr; }}",
            f"add set ip {TABLE} self-{bridge} {{ type ipv4_addr . ipv4_addr; }}"]
    return chains, sets


_MAPS = (("vip_dnat", "dnat"), ("vip_hairpin", "hairpin"), ("vip_reject", "reject"))


def render(desired: Desired, drop: Iterable[str] = ()) -> str:
    """The nftables transaction that makes the table say ``desired`` for
    its bridges and forget the bridges in ``drop``; other bridges in the
    table are left as they are. Idempotent: ``add`` of an existing object
    is no change, and every object a bridge has is flushed and filled
    again."""
    t = f"ip {TABLE}"
    lines = [
        f"add table {t}",
        *(f"add map {t} {name} {{ type ifname : verdict; }}" for name, _ in _MAPS),
        f"add chain {t} prerouting {{ type nat hook prerouting priority dstnat - 10; "
        "policy accept; }",
        f"add chain {t} postrouting {{ type nat hook postrouting priority srcnat - 10; "
        "policy accept; }",
        f"add chain {t} input {{ type filter hook input priority filter - 10; policy accept; }}",
        f"flush chain {t} prerouting",
        f"flush chain {t} postrouting",
        f"flush chain {t} input",
        f"add rule {t} prerouting meta l4proto {{ tcp, udp }} iifname vmap @vip_dnat",
        f"add rule {t} postrouting ct status dnat oifname vmap @vip_hairpin",
        f"add rule {t} input iifname vmap @vip_reject",
    ]
    for bridge in sorted(desired):
        vips = desired[bridge]
        chains, sets = _objects(bridge)
        lines += chains + sets
        lines += [f"flush chain {t} {kind}-{bridge}" for kind in ("dnat", "hairpin", "reject")]
        lines += [f"flush set {t} vips-{bridge}", f"flush set {t} self-{bridge}"]
        if vips:
            lines.append(f"add element {t} vips-{bridge} {{ {', '.join(map(str, sorted(vips)))} }}")
        backends = sorted({b for addrs in vips.values() for b in addrs})
        if backends:
            pairs = ", ".join(f"{b} . {b}" for b in backends)
            lines.append(f"add element {t} self-{bridge} {{ {pairs} }}")
        for vip in sorted(vips):
            addrs = vips[vip]
            if len(addrs) == 1:
                lines.append(f"add rule {t} dnat-{bridge} ip daddr {vip} dnat ip to {addrs[0]}")
            elif addrs:
                spread = ", ".join(f"{i} : {b}" for i, b in enumerate(addrs))
                lines.append(f"add rule {t} dnat-{bridge} ip daddr {vip} "
                             f"dnat ip to numgen random mod {len(addrs)} map {{ {spread} }}")
        lines += [
            f"add rule {t} hairpin-{bridge} ct original ip daddr @vips-{bridge} "
            f"ip saddr . ip daddr @self-{bridge} snat ip to ct original ip daddr",
            f"add rule {t} reject-{bridge} ip daddr @vips-{bridge} meta l4proto tcp "
            "reject with tcp reset",
            f"add rule {t} reject-{bridge} ip daddr @vips-{bridge} "
            "reject with icmp type port-unreachable",
        ]
        lines += [f'add element {t} {name} {{ "{bridge}" : goto {kind}-{bridge} }}'
                  for name, kind in _MAPS]
    for bridge in sorted(set(drop) - set(desired)):
        # Deleting what does not exist is an error: add everything first
        # (no change if it exists), then delete it, in the same transaction.
        chains, sets = _objects(bridge)
        lines += chains + sets
        lines += [f'add element {t} {name} {{ "{bridge}" : goto {kind}-{bridge} }}'
                  for name, kind in _MAPS]
        lines += [f'delete element {t} {name} {{ "{bridge}" }}' for name, _ in _MAPS]
        for kind in ("dnat", "hairpin", "reject"):
            lines += [f"flush chain {t} {kind}-{bridge}", f"delete chain {t} {kind}-{bridge}"]
        lines += [f"delete set {t} vips-{bridge}", f"delete set {t} self-{bridge}"]
    return "\n".join(lines) + "\n"


def bridges_in_table(listing: Mapping[str, Any]) -> set[str]:
    """The bridges that have objects in the table, from ``nft -j list table``."""
    found = set()
    for item in listing.get("nftables", []):
        chain = item.get("chain") if isinstance(item, dict) else None
        if isinstance(chain, dict) and chain.get("table") == TABLE:
            name = str(chain.get("name", ""))
            if name.startswith("dnat-"):
                found.add(name[len("dnat-"):])
    return found


# -- the engine ------------------------------------------------------------------------

class VirtualIPs:
    """The VIPs of this engine's bridges. ``netns`` (a name under
    /var/run/netns) runs everything in that network namespace instead of
    this process's (tests)."""

    def __init__(self, netns: str | None = None) -> None:
        self.netns = netns
        self._lock = threading.Lock()

    # -- commands ---------------------------------------------------------------------
    def _argv(self, argv: list[str]) -> list[str]:
        if self.netns is None:
            return argv
        # nsenter enters only the network namespace (``ip netns exec`` would
        # also set up a mount namespace, for nothing here).
        return ["nsenter", f"--net=/var/run/netns/{self.netns}", *argv]

    def _nft(self, *args: str, script: str | None = None) -> subprocess.CompletedProcess[str]:
        nft = shutil.which("nft") or shutil.which("nft", path="/usr/sbin:/sbin")
        if nft is None:
            raise VipError("virtual IPs need nftables' nft command (Debian: apt install nftables)")
        try:
            return subprocess.run(self._argv([nft, *args]), input=script, capture_output=True,
                                  text=True, timeout=NFT_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise VipError(f"nft {' '.join(args)} did not finish within {NFT_TIMEOUT:.0f} s") \
                from None

    def listing(self) -> str:
        """``nft list table ip flotilla`` ("" when there is no table yet)."""
        res = self._nft("list", "table", "ip", TABLE)
        if res.returncode != 0:
            if _ENOENT_TABLE in res.stderr:
                return ""
            raise VipError(f"nft list table failed: {res.stderr.strip()[:500]}")
        return res.stdout

    def _programmed(self) -> set[str]:
        res = self._nft("-j", "list", "table", "ip", TABLE)
        if res.returncode != 0:
            if _ENOENT_TABLE in res.stderr:
                return set()
            raise VipError(f"nft list table failed: {res.stderr.strip()[:500]}")
        try:
            return bridges_in_table(json.loads(res.stdout))
        except ValueError as exc:
            raise VipError(f"nft's listing of table {TABLE} is not JSON: {exc}") from None

    def _check_br_netfilter(self) -> None:
        if self.netns is None:
            try:
                with open(BR_NETFILTER) as f:
                    value = f.read().strip()
            except OSError:
                value = ""
        else:
            res = subprocess.run(self._argv(["cat", BR_NETFILTER]), capture_output=True,
                                 text=True, timeout=NFT_TIMEOUT)
            value = res.stdout.strip() if res.returncode == 0 else ""
        if value != "1":
            state = "missing (no br_netfilter)" if value == "" else value
            raise VipError("virtual IPs need bridged traffic to pass netfilter: "
                           f"{BR_NETFILTER} is {state}; set net.bridge.bridge-nf-call-iptables=1")

    def _iproute(self) -> Any:
        if self.netns is None:
            return IPRoute(groups=0)
        # flags=0: never create the namespace (pyroute2's default would).
        return IPRoute(netns=self.netns, flags=0, groups=0)

    # -- apply ------------------------------------------------------------------------
    def apply(self, spec: Spec) -> None:
        """Make the engine's VIPs what ``spec`` says (see the module's
        docstring). Bad input, a bridge that does not exist or an engine
        that cannot carry VIPs raise VipError before anything is changed."""
        desired = parse(spec)
        with self._lock:
            self._check_br_netfilter()
            with self._iproute() as ipr:
                self._apply(ipr, desired)

    def _apply(self, ipr: Any, desired: Desired) -> None:
        bridges: dict[str, int] = {}
        ports: dict[int, list[Any]] = {}
        for link in ipr.get_links():
            if _kind(link) == "bridge":
                bridges[link.get("ifname")] = link["index"]
            master = link.get("IFLA_MASTER")
            if master is not None:
                ports.setdefault(master, []).append(link)
        missing = sorted(b for b in desired if b not in bridges)
        if missing:
            raise VipError(f"no such bridge: {', '.join(missing)}")

        # 1. VIPs that go: their address first, so the engine never holds a VIP
        # address without the rules that keep it from the host's own services.
        addrs = {b: _addresses(ipr, bridges[b]) for b in desired}
        for bridge, vips in desired.items():
            self._remove_addresses(ipr, bridge, bridges[bridge], addrs[bridge], keep=set(vips))
        # 2. Hairpin on every container port, before any of them is a backend.
        for bridge in desired:
            for port in ports.get(bridges[bridge], []):
                if _kind(port) == "veth" and _brport_mode(port) != 1:
                    ipr.brport("set", index=port["index"], mode=1)
        # 3. The rules, in one transaction: from here on, no new connection
        # goes to a backend that is not listed.
        self._commit(render(desired))
        # 4. New VIPs' addresses, now that their rules are in place.
        for bridge, vips in desired.items():
            present = {a for a, _ in addrs[bridge]}
            for vip in sorted(set(vips) - present):
                try:
                    ipr.addr("add", index=bridges[bridge], address=str(vip), prefixlen=32,
                             proto=ADDR_PROTO)
                except NetlinkError as exc:
                    if exc.code != 17:      # EEXIST: added meanwhile by another agent
                        raise
                log.info("VIP %s added to %s", vip, bridge)
        # 5. Bridges in the table but not in the input, once no container is
        # attached to them any more (or they are gone): after the commit above,
        # which it does not delay.
        def in_use(bridge: str) -> bool:
            index = bridges.get(bridge)
            return index is not None and any(_kind(p) == "veth" for p in ports.get(index, []))

        drop = {b for b in self._programmed() - set(desired) if not in_use(b)}
        if drop:
            for bridge in sorted(drop):
                if bridge in bridges:
                    self._remove_addresses(ipr, bridge, bridges[bridge],
                                           _addresses(ipr, bridges[bridge]), keep=set())
            self._commit(render({}, drop))
            log.info("VIPs of %s forgotten (no container left)", ", ".join(sorted(drop)))

    def forget(self, bridges: Iterable[str]) -> list[str]:
        """Remove the rules of these bridges (their networks are being
        removed) in one transaction; the bridges that had rules."""
        with self._lock:
            drop = sorted(set(bridges) & self._programmed())
            if drop:
                self._commit(render({}, drop))
        return drop

    def _commit(self, script: str) -> None:
        res = self._nft("-f", "-", script=script)
        if res.returncode != 0:
            raise VipError(f"nft refused the VIP rules: {res.stderr.strip()[:1000]}")

    @staticmethod
    def _remove_addresses(ipr: Any, bridge: str, index: int,
                          addrs: set[tuple[ipaddress.IPv4Address, bool]],
                          keep: set[ipaddress.IPv4Address]) -> None:
        for addr, ours in sorted(addrs):
            if ours and addr not in keep:
                _ignore_gone(ipr.addr, "del", index=index, address=str(addr), prefixlen=32)
                log.info("VIP %s removed from %s", addr, bridge)


def _addresses(ipr: Any, index: int) -> set[tuple[ipaddress.IPv4Address, bool]]:
    """The IPv4 addresses of a link, each with whether it is one of our VIPs
    (a /32 with our address protocol)."""
    out = set()
    for a in ipr.get_addr(index=index, family=2):
        addr = ipaddress.IPv4Address(a.get("IFA_LOCAL") or a.get("IFA_ADDRESS"))
        out.add((addr, a["prefixlen"] == 32 and a.get("IFA_PROTO") == ADDR_PROTO))
    return out


def _kind(link: Any) -> str | None:
    info = link.get("IFLA_LINKINFO")
    return None if info is None else info.get("IFLA_INFO_KIND")


def _brport_mode(link: Any) -> int | None:
    info = link.get("IFLA_LINKINFO")
    data = None if info is None else info.get("IFLA_INFO_SLAVE_DATA")
    return None if data is None else data.get("IFLA_BRPORT_MODE")


def _ignore_gone(call: Any, *args: Any, **kwargs: Any) -> None:
    try:
        call(*args, **kwargs)
    except NetlinkError as exc:
        if exc.code not in (99, 19):   # EADDRNOTAVAIL, ENODEV: already gone
            raise


__all__ = ["ADDR_PROTO", "TABLE", "VipError", "VirtualIPs", "parse", "render"]
