"""The kernel side of a network on one engine, over netlink (pyroute2).

Per network: a bridge holding this node's attachment address, and a VXLAN
device enslaved to it (VXLAN id = the network's, UDP 4789, source = this
node's underlay address, or its tunnel address for an encrypted network
(``wireguard.py``), no learning, ARP answered from the neighbour table
(``proxy``)). For every endpoint on another engine, the VXLAN device has a
forwarding entry (its MAC -> that engine's underlay address) and a permanent
neighbour entry (its IP -> its MAC). There is no all-zeros forwarding entry:
no broadcast and no unknown unicast leaves the host.

Every operation compares with what the kernel has and changes only the
difference, so running it again with the same wishes changes nothing, and
two agents sharing one engine (one network namespace) programming the same
wishes do not disturb each other: an entry someone else just added or
removed is as good as done.
"""

from __future__ import annotations

import dataclasses
import errno
import ipaddress
import socket
from collections.abc import Iterable, Mapping
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from .names import mac_for, short_id_of

VXLAN_PORT = 4789
# Outer IPv4 (20) + UDP (8) + VXLAN (8) + inner Ethernet (14) headers.
VXLAN_OVERHEAD = 50
# An encrypted network's frames cross WireGuard's tunnel (60 more) in VXLAN
# over IPv6 (20 more than over IPv4).
ENCRYPTED_OVERHEAD = VXLAN_OVERHEAD + 80
# Largest underlay MTU taken into account (a loopback underlay has 65536).
MAX_UNDERLAY_MTU = 9000

IFF_UP = 0x1
NUD_NOARP = 0x40
NUD_PERMANENT = 0x80
NTF_SELF = 0x02


class LinkError(RuntimeError):
    """The kernel refused a change (the message says which and why)."""


@dataclasses.dataclass(frozen=True, order=True)
class FdbEntry:
    """A VXLAN forwarding entry: frames to ``mac`` go to the engine at ``dst``
    (its underlay address, or its tunnel address on an encrypted network)."""
    mac: str
    dst: str


def _canonical(addr: str) -> str:
    """An IPv4 or IPv6 address as ``ipaddress`` writes it."""
    try:
        return str(ipaddress.ip_address(addr))
    except ValueError:
        return addr


@dataclasses.dataclass(frozen=True, order=True)
class NeighEntry:
    """A neighbour entry on the VXLAN device: ``ip`` is at ``mac``."""
    ip: str
    mac: str
    permanent: bool = True


def fdb_changes(present: Iterable[FdbEntry],
                wanted: Iterable[FdbEntry]) -> tuple[list[FdbEntry], list[FdbEntry]]:
    """(entries to set, entries to delete) to go from ``present`` to ``wanted``.

    Setting replaces a MAC's destination, so an entry whose MAC is still
    wanted (at another destination) is not deleted first: the MAC's frames
    are never without a destination while it moves.
    """
    have, want = set(present), set(wanted)
    wanted_macs = {e.mac for e in want}
    to_set = sorted(want - have)
    to_delete = sorted(e for e in have - want if e.mac not in wanted_macs)
    return to_set, to_delete


def neigh_changes(present: Iterable[NeighEntry],
                  wanted: Iterable[NeighEntry]) -> tuple[list[NeighEntry], list[NeighEntry]]:
    """(entries to set, entries to delete): an address present with another
    MAC, or not permanent, is set again; an address not wanted is deleted."""
    have, want = set(present), set(wanted)
    wanted_ips = {e.ip for e in want}
    to_set = sorted(want - have)
    to_delete = sorted(e for e in have - want if e.ip not in wanted_ips)
    return to_set, to_delete


IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def remote_entries(remotes: Mapping[ipaddress.IPv4Address, IPAddress]
                   ) -> tuple[set[FdbEntry], set[NeighEntry]]:
    """The forwarding and neighbour entries for endpoints ``{addr: underlay}``."""
    fdb = {FdbEntry(mac_for(a), _canonical(str(u))) for a, u in remotes.items()}
    neigh = {NeighEntry(str(a), mac_for(a)) for a in remotes}
    return fdb, neigh


def _kind(link: Any) -> str | None:
    info = link.get("IFLA_LINKINFO")
    return info.get("IFLA_INFO_KIND") if info is not None else None


def _vxlan_data(link: Any) -> dict[str, Any]:
    info = link.get("IFLA_LINKINFO")
    data = info.get("IFLA_INFO_DATA") if info is not None else None
    if data is None:
        return {}
    out = {k: data.get(k) for k in ("IFLA_VXLAN_ID", "IFLA_VXLAN_PORT",
                                     "IFLA_VXLAN_LEARNING", "IFLA_VXLAN_PROXY")}
    local = data.get("IFLA_VXLAN_LOCAL") or data.get("IFLA_VXLAN_LOCAL6")
    out["local"] = _canonical(local) if local else None
    return out


class Links:
    """Netlink access to this network namespace's devices; a context manager
    (the netlink socket is opened on first use and closed on exit)."""

    def __init__(self, ipr: Any | None = None) -> None:
        self._ipr = ipr
        self._own = ipr is None

    @property
    def ipr(self) -> Any:
        if self._ipr is None:
            self._ipr = IPRoute()
        return self._ipr

    def close(self) -> None:
        if self._own and self._ipr is not None:
            self._ipr.close()
            self._ipr = None

    def __enter__(self) -> Links:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def call(self, what: str, fn: Any, *args: Any, ok: tuple[int, ...] = (),
             **kwargs: Any) -> Any:
        """Run a netlink request; an error whose code is in ``ok`` is success."""
        try:
            return fn(*args, **kwargs)
        except NetlinkError as exc:
            if exc.code in ok:
                return None
            raise LinkError(f"{what}: {exc.args[1] if len(exc.args) > 1 else exc}") from None

    _call = call

    # -- lookups -------------------------------------------------------------------------
    def get(self, name: str) -> Any | None:
        """The link called ``name``, or None."""
        found = self.ipr.link_lookup(ifname=name)
        if not found:
            return None
        links = self._call(f"reading {name}", self.ipr.get_links, found[0], ok=(errno.ENODEV,))
        return links[0] if links else None

    def devices(self) -> dict[str, list[str]]:
        """The devices made here (``flb-*``, ``flv-*``), by short network id."""
        out: dict[str, list[str]] = {}
        for link in self.ipr.get_links():
            name = link.get("IFLA_IFNAME") or ""
            short = short_id_of(name)
            if short is not None:
                out.setdefault(short, []).append(name)
        return out

    def underlay_mtu(self, underlay_ip: ipaddress.IPv4Address) -> int:
        """The MTU left for a network's frames: the underlay device's, less VXLAN's headers."""
        ip = str(underlay_ip)
        for addr in self.ipr.get_addr(family=socket.AF_INET):
            if ip in (addr.get("IFA_LOCAL"), addr.get("IFA_ADDRESS")):
                links = self.ipr.get_links(addr["index"])
                mtu = int(links[0].get("IFLA_MTU") or 1500)
                return min(mtu, MAX_UNDERLAY_MTU) - VXLAN_OVERHEAD
        raise LinkError(f"the underlay address {underlay_ip} is not an address of this host")

    # -- the bridge ----------------------------------------------------------------------
    def ensure_bridge(self, name: str, mtu: int, mac: str) -> list[str]:
        """A bridge called ``name``, up, with this MTU; ``mac`` is its MAC when
        it is made here (see :meth:`ensure_mac` for one that exists)."""
        changes: list[str] = []
        link = self.get(name)
        if link is None:
            self._call(f"creating bridge {name}", self.ipr.link, "add", ifname=name,
                       kind="bridge", address=mac, mtu=mtu, ok=(errno.EEXIST,))
            changes.append(f"created bridge {name}")
            link = self.get(name)
            if link is None:
                raise LinkError(f"bridge {name} disappeared as it was made")
        if _kind(link) != "bridge":
            raise LinkError(f"{name} exists and is not a bridge ({_kind(link)})")
        if link.get("IFLA_MTU") != mtu:
            self._call(f"setting the MTU of {name}", self.ipr.link, "set", index=link["index"],
                       mtu=mtu)
            changes.append(f"{name}: mtu {mtu}")
        if not link["flags"] & IFF_UP:
            self._call(f"setting {name} up", self.ipr.link, "set", index=link["index"],
                       state="up")
            changes.append(f"{name}: up")
        return changes

    def ensure_mac(self, name: str, mac: str) -> list[str]:
        link = self.get(name)
        if link is None:
            raise LinkError(f"no device {name}")
        if (link.get("IFLA_ADDRESS") or "").lower() == mac:
            return []
        self._call(f"setting the MAC of {name}", self.ipr.link, "set", index=link["index"],
                   address=mac)
        return [f"{name}: mac {mac}"]

    def ensure_address(self, name: str, iface: ipaddress.IPv4Interface) -> list[str]:
        """``iface`` (address/prefix) on ``name``; other addresses stay (other
        nodes sharing this engine, virtual IPs)."""
        link = self.get(name)
        if link is None:
            raise LinkError(f"no device {name}")
        index = link["index"]
        changes: list[str] = []
        for addr in self.ipr.get_addr(family=socket.AF_INET, index=index):
            if addr.get("IFA_LOCAL") != str(iface.ip):
                continue
            if addr["prefixlen"] == iface.network.prefixlen:
                return []
            self._call(f"removing {iface.ip}/{addr['prefixlen']} from {name}", self.ipr.addr,
                       "del", index=index, address=str(iface.ip), prefixlen=addr["prefixlen"],
                       ok=(errno.EADDRNOTAVAIL,))
            changes.append(f"{name}: removed {iface.ip}/{addr['prefixlen']}")
        self._call(f"adding {iface} to {name}", self.ipr.addr, "add", index=index,
                   address=str(iface.ip), prefixlen=iface.network.prefixlen, ok=(errno.EEXIST,))
        changes.append(f"{name}: added {iface}")
        return changes

    # -- the VXLAN device ----------------------------------------------------------------
    def ensure_vxlan(self, name: str, bridge: str, vni: int, local: IPAddress,
                     mtu: int) -> list[str]:
        """A VXLAN device called ``name`` (id ``vni``, port 4789, source
        ``local``: IPv4, or IPv6 for an encrypted network, no learning,
        proxy ARP), with this MTU, enslaved to ``bridge`` and up. One with
        other VXLAN settings is made again."""
        changes: list[str] = []
        want = {"IFLA_VXLAN_ID": vni, "local": str(local),
                "IFLA_VXLAN_PORT": VXLAN_PORT, "IFLA_VXLAN_LEARNING": 0, "IFLA_VXLAN_PROXY": 1}
        source = ({"vxlan_local6": str(local)} if local.version == 6
                  else {"vxlan_local": str(local)})
        br = self.get(bridge)
        if br is None:
            raise LinkError(f"no bridge {bridge}")
        link = self.get(name)
        if link is not None and (_kind(link) != "vxlan" or _vxlan_data(link) != want):
            self.remove(name)
            changes.append(f"removed {name} (was {_kind(link)} {_vxlan_data(link)})")
            link = None
        if link is None:
            self._call(f"creating VXLAN device {name} (id {vni})", self.ipr.link, "add",
                       ifname=name, kind="vxlan", vxlan_id=vni, vxlan_port=VXLAN_PORT,
                       vxlan_learning=0, vxlan_proxy=1, mtu=mtu, ok=(errno.EEXIST,),
                       **source)
            changes.append(f"created VXLAN device {name} (id {vni}, local {local})")
            link = self.get(name)
            if link is None:
                raise LinkError(f"{name} disappeared as it was made")
            if _vxlan_data(link) != want:
                raise LinkError(f"{name} exists with other settings: {_vxlan_data(link)} "
                                f"(another VXLAN device may have id {vni})")
        if link.get("IFLA_MTU") != mtu:
            self._call(f"setting the MTU of {name}", self.ipr.link, "set", index=link["index"],
                       mtu=mtu)
            changes.append(f"{name}: mtu {mtu}")
        if link.get("IFLA_MASTER") != br["index"]:
            self._call(f"enslaving {name} to {bridge}", self.ipr.link, "set",
                       index=link["index"], master=br["index"])
            changes.append(f"{name}: master {bridge}")
        if not link["flags"] & IFF_UP:
            self._call(f"setting {name} up", self.ipr.link, "set", index=link["index"],
                       state="up")
            changes.append(f"{name}: up")
        return changes

    def fdb(self, name: str) -> set[FdbEntry]:
        """The VXLAN device's own forwarding entries (not the bridge's)."""
        link = self.get(name)
        if link is None:
            return set()
        out = set()
        for e in self.ipr.fdb("dump", ifindex=link["index"]):
            if e["ifindex"] != link["index"] or not e["flags"] & NTF_SELF:
                continue
            dst, mac = e.get("NDA_DST"), e.get("NDA_LLADDR")
            if dst is not None and mac is not None:
                out.add(FdbEntry(mac.lower(), _canonical(dst)))
        return out

    def neighbours(self, name: str) -> set[NeighEntry]:
        link = self.get(name)
        if link is None:
            return set()
        out = set()
        for e in self.ipr.get_neighbours(family=socket.AF_INET, ifindex=link["index"]):
            dst = e.get("NDA_DST")
            if e["ifindex"] != link["index"] or dst is None:
                continue
            out.add(NeighEntry(dst, (e.get("NDA_LLADDR") or "").lower(),
                               bool(e["state"] & NUD_PERMANENT)))
        return out

    def set_remotes(self, name: str,
                    remotes: Mapping[ipaddress.IPv4Address, IPAddress]) -> list[str]:
        """Make the VXLAN device's forwarding and neighbour entries exactly
        those of the endpoints ``{addr: underlay}``: add what is missing,
        replace what is wrong, delete what is not wanted any more."""
        link = self.get(name)
        if link is None:
            raise LinkError(f"no device {name}")
        index = link["index"]
        want_fdb, want_neigh = remote_entries(remotes)
        fdb_set, fdb_del = fdb_changes(self.fdb(name), want_fdb)
        neigh_set, neigh_del = neigh_changes(self.neighbours(name), want_neigh)
        changes: list[str] = []
        # Entries going away first; then forwarding before neighbours, so a
        # neighbour entry never points at a MAC the device cannot send to.
        for n in neigh_del:
            self._call(f"{name}: deleting neighbour {n.ip}", self.ipr.neigh, "del",
                       ifindex=index, dst=n.ip, ok=(errno.ENOENT,))
            changes.append(f"{name}: deleted neighbour {n.ip} {n.mac}")
        for f in fdb_del:
            self._call(f"{name}: deleting fdb {f.mac} dst {f.dst}", self.ipr.neigh, "del",
                       family=socket.AF_BRIDGE, ifindex=index, lladdr=f.mac, dst=f.dst,
                       flags=NTF_SELF, state=NUD_NOARP | NUD_PERMANENT, ok=(errno.ENOENT,))
            changes.append(f"{name}: deleted fdb {f.mac} dst {f.dst}")
        for f in fdb_set:
            self._call(f"{name}: setting fdb {f.mac} dst {f.dst}", self.ipr.neigh, "replace",
                       family=socket.AF_BRIDGE, ifindex=index, lladdr=f.mac, dst=f.dst,
                       flags=NTF_SELF, state=NUD_NOARP | NUD_PERMANENT)
            changes.append(f"{name}: set fdb {f.mac} dst {f.dst}")
        for n in neigh_set:
            self._call(f"{name}: setting neighbour {n.ip}", self.ipr.neigh, "replace",
                       ifindex=index, dst=n.ip, lladdr=n.mac, state=NUD_PERMANENT)
            changes.append(f"{name}: set neighbour {n.ip} {n.mac}")
        return changes

    # -- removal -------------------------------------------------------------------------
    def remove(self, name: str) -> list[str]:
        """Delete the device ``name`` (its entries go with it); nothing if absent."""
        link = self.get(name)
        if link is None:
            return []
        self._call(f"deleting {name}", self.ipr.link, "del", index=link["index"],
                   ok=(errno.ENODEV, errno.ENOENT))
        return [f"deleted {name}"]

    def show(self, names: Iterable[str]) -> dict[str, Any]:
        """What the devices ``names`` hold (for humans and tests)."""
        out: dict[str, Any] = {}
        for name in names:
            link = self.get(name)
            if link is None:
                continue
            info: dict[str, Any] = {"kind": _kind(link), "mtu": link.get("IFLA_MTU"),
                                    "mac": link.get("IFLA_ADDRESS"),
                                    "up": bool(link["flags"] & IFF_UP)}
            if info["kind"] == "bridge":
                info["addresses"] = sorted(
                    f"{a.get('IFA_LOCAL')}/{a['prefixlen']}"
                    for a in self.ipr.get_addr(family=socket.AF_INET, index=link["index"]))
            else:
                info["vxlan"] = _vxlan_data(link)
                master = link.get("IFLA_MASTER")
                info["master"] = (self.ipr.get_links(master)[0].get("IFLA_IFNAME")
                                  if master else None)
                info["fdb"] = [dataclasses.asdict(e) for e in sorted(self.fdb(name))]
                info["neighbours"] = [dataclasses.asdict(e)
                                      for e in sorted(self.neighbours(name))]
            out[name] = info
        return out
