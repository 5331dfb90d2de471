"""Encrypted networks between hosts: a WireGuard tunnel in user space.

The kernel here has no WireGuard and no IPsec, so the tunnel is Debian's
``wireguard-go`` (a TUN device driven by a process) configured with
``wg`` (``wireguard-tools``). An encrypted network is a VXLAN network like
any other, but its VXLAN packets go from one engine to another inside the
tunnel, never on the underlay itself:

- each engine taking part in an encrypted network that spans hosts has one
  WireGuard interface ``flw-<node id10>`` (one per engine, not per network:
  the VXLAN ids keep the networks apart inside it, and ``wireguard-go`` is a
  process per interface), listening on the node's WireGuard port (51820
  unless ``node run --wireguard-port`` says otherwise);
- its *tunnel address* is an IPv6 address made of a fixed unique-local
  prefix and the engine's underlay IPv4 address
  (``fd66:6c6f:7469:6c61::c000:20b`` for 192.0.2.11): unique wherever the
  underlay addresses are, known to every node from the pictures alone, and
  never routed anywhere but into the tunnel;
- the VXLAN device of an encrypted network sends from this engine's tunnel
  address to the other engines' tunnel addresses; each peer's allowed IPs
  are its tunnel address alone, so what comes out of the tunnel from a peer
  carries that peer's address and no other;
- a guard in nftables (``table ip6 flotilla``) drops packets for tunnel
  addresses that would leave by any other interface (no tunnel: nothing
  goes, rather than in clear) and IPv6 VXLAN that arrives by any other
  interface (nobody on the underlay speaks into an encrypted network).

Keys: each node makes its own private key (X25519, as ``wg genkey``) the
first time it starts, in ``<data-dir>/agent/wireguard.key`` (0600, written
whole and renamed into place), and publishes only the public key, with its
port, when it registers; the managers hand it to the other nodes in the
pictures of encrypted networks. The private key goes only to the local
``wg`` through a pipe. WireGuard itself makes new session keys every two
minutes (its handshake); the node's own key is replaced when the managers
ask (every 12 hours by default, ``manager/networkkeys.py``): the new one is
written aside (``wireguard.key.next``, 0600), published, and renamed over
the old one when the tunnel switches to it. A new key found aside at start
is taken (it may have been published already).

A switch of keys, this engine's or a peer's, is followed by one empty UDP
datagram from this engine's tunnel address to each peer concerned (port 9,
discard): WireGuard makes a handshake when it has something to send, so
traffic does not wait for its next retry (5 s) once both ends hold the new
key.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import errno
import ipaddress
import logging
import os
import shutil
import socket
import subprocess
from collections.abc import Callable, Sequence
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from ...common import fsutil
from ...common.config import DEFAULT_WIREGUARD_PORT
from ...model.network import valid_wireguard_key
from .linux import IFF_UP, VXLAN_OVERHEAD, VXLAN_PORT, LinkError, Links
from .names import short_id

log = logging.getLogger(__name__)

DEFAULT_PORT = DEFAULT_WIREGUARD_PORT
IFACE_PREFIX = "flw-"
KEY_FILE = "wireguard.key"
NEXT_SUFFIX = ".next"
DISCARD_PORT = 9
# Tunnel addresses: this unique-local /96 and the engine's underlay IPv4 address.
TUNNEL_PREFIX = ipaddress.IPv6Network("fd66:6c6f:7469:6c61::/96")
# WireGuard's own headers over an IPv4 underlay: IPv4 (20), UDP (8), its
# header (16) and authentication tag (16).
WG_OVERHEAD = 60
# The Debian packages and the commands they bring.
WIREGUARD_GO = "wireguard-go"
WG = "wg"
PACKAGES = "wireguard-go wireguard-tools"
COMMAND_TIMEOUT = 10.0
GUARD_TABLE = "flotilla"
# Where the commands are looked for besides $PATH (nft is in sbin).
_SBIN = "/usr/sbin:/sbin"
IFA_F_NODAD = 0x02


class WireGuardError(RuntimeError):
    """The tunnel cannot be made or configured (the message says why)."""


# -- keys -------------------------------------------------------------------------------

def _raw_key(key: str, what: str = "key") -> bytes:
    try:
        raw = base64.b64decode(key.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise WireGuardError(f"{what} is not base64") from None
    if len(raw) != 32:
        raise WireGuardError(f"{what} is {len(raw)} bytes, not 32")
    return raw


def valid_key(key: object) -> bool:
    """``key`` is a WireGuard key as ``wg`` writes them (32 bytes, base64)."""
    return valid_wireguard_key(key)


def generate_private_key() -> str:
    """A new private key, as ``wg genkey`` makes one."""
    raw = X25519PrivateKey.generate().private_bytes_raw()
    return base64.b64encode(raw).decode()


def public_key(private_key: str) -> str:
    """The public key of ``private_key``, as ``wg pubkey`` gives it."""
    raw = _raw_key(private_key, "the private key")
    pub = X25519PrivateKey.from_private_bytes(raw).public_key().public_bytes_raw()
    return base64.b64encode(pub).decode()


def load_or_create_key(path: str) -> str:
    """This node's private key, made and written (0600, atomically) the
    first time. A file that holds no key is an error, not replaced: the
    node's public key was published. A new key left aside by a rotation
    (``path.next``) replaces it first."""
    adopt_next_key(path)
    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        key = generate_private_key()
        fsutil.atomic_write(path, key + "\n", 0o600)
        log.info("made this node's WireGuard key (%s)", path)
        return key
    try:
        _raw_key(text, f"{path}")
    except WireGuardError as exc:
        raise WireGuardError(f"{exc}: not a WireGuard private key (remove it to make a new "
                             "one, then restart the node)") from None
    if os.stat(path).st_mode & 0o077:
        os.chmod(path, 0o600)
    return text.strip()


def make_next_key(path: str) -> str:
    """A new private key, written aside (``path.next``, 0600, atomically)
    while ``path`` stays in use; returned."""
    key = generate_private_key()
    fsutil.atomic_write(path + NEXT_SUFFIX, key + "\n", 0o600)
    return key


def adopt_next_key(path: str) -> bool:
    """The key aside replaces ``path`` (a rename: the old key is gone);
    False if there is none, or it holds no key (then it is removed)."""
    nxt = path + NEXT_SUFFIX
    try:
        with open(nxt) as f:
            _raw_key(f.read(), nxt)
    except FileNotFoundError:
        return False
    except WireGuardError as exc:
        log.warning("%s; removed", exc)
        discard_next_key(path)
        return False
    os.replace(nxt, path)
    fsutil.fsync_dir(os.path.dirname(os.path.abspath(path)))
    return True


def discard_next_key(path: str) -> None:
    """The key aside is not wanted (the managers moved on)."""
    try:
        os.unlink(path + NEXT_SUFFIX)
    except FileNotFoundError:
        return
    fsutil.fsync_dir(os.path.dirname(os.path.abspath(path)))


def poke(source: ipaddress.IPv6Address, targets: Sequence[ipaddress.IPv6Address]) -> None:
    """One empty datagram from ``source`` to each of ``targets`` (tunnel
    addresses): WireGuard makes a handshake with each of them at once."""
    if not targets:
        return
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
            sock.bind((str(source), 0))
            for target in targets:
                try:
                    sock.sendto(b"", (str(target), DISCARD_PORT))
                except OSError as exc:
                    log.debug("handshake with %s not started: %s", target, exc)
    except OSError as exc:
        log.debug("no handshakes started from %s: %s", source, exc)


# -- addresses and names ------------------------------------------------------------------

def tunnel_address(underlay: str | ipaddress.IPv4Address) -> ipaddress.IPv6Address:
    """The tunnel address of the engine at ``underlay`` (an IPv4 address)."""
    v4 = ipaddress.IPv4Address(str(underlay))
    return TUNNEL_PREFIX.network_address + int(v4)


def interface_name(node_id: str) -> str:
    """``flw-`` and the first 10 letters and digits of the node's id."""
    return IFACE_PREFIX + short_id("".join(c for c in node_id if c.isalnum()) or "0")


# -- configuration ------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True, order=True)
class Peer:
    """Another engine: its key, where its tunnel listens, its tunnel address."""
    public_key: str
    endpoint: str                       # underlay ip:port
    address: ipaddress.IPv6Address

    @property
    def allowed_ips(self) -> str:
        return f"{self.address}/128"


@dataclasses.dataclass(frozen=True)
class TunnelSpec:
    """What this engine's WireGuard interface should be."""
    private_key: str = dataclasses.field(repr=False)
    port: int
    underlay: ipaddress.IPv4Address
    peers: tuple[Peer, ...] = ()

    @property
    def address(self) -> ipaddress.IPv6Address:
        return tunnel_address(self.underlay)

    def wanted(self) -> tuple[str, int, frozenset[tuple[str, str, str]]]:
        return (self.private_key, self.port,
                frozenset((p.public_key, p.endpoint, p.allowed_ips) for p in self.peers))


def render_config(spec: TunnelSpec) -> str:
    """The ``wg syncconf`` configuration of ``spec`` (holds the private key)."""
    lines = ["[Interface]", f"PrivateKey = {spec.private_key}", f"ListenPort = {spec.port}"]
    for peer in sorted(spec.peers):
        lines += ["", "[Peer]", f"PublicKey = {peer.public_key}",
                  f"Endpoint = {peer.endpoint}", f"AllowedIPs = {peer.allowed_ips}"]
    return "\n".join(lines) + "\n"


def parse_dump(text: str) -> tuple[str, int, frozenset[tuple[str, str, str]]]:
    """``wg show IFACE dump`` as (private key, port, {(public key, endpoint,
    allowed IPs)}), comparable with :meth:`TunnelSpec.wanted`."""
    rows = [line.split("\t") for line in text.splitlines() if line.strip()]
    if not rows or len(rows[0]) < 3:
        raise WireGuardError(f"cannot read wg's dump: {text[:200]!r}")
    private, _, port = rows[0][:3]
    peers = set()
    for row in rows[1:]:
        if len(row) < 4:
            raise WireGuardError(f"cannot read wg's dump line {row[:1]!r}")
        allowed = ",".join(sorted(a for a in row[3].split(",") if a and a != "(none)"))
        peers.add((row[0], "" if row[2] == "(none)" else row[2], allowed))
    return (private if private != "(none)" else "", int(port) if port.isdigit() else 0,
            frozenset(peers))


def rekeyed_peers(before: tuple[str, int, frozenset[tuple[str, str, str]]],
                  spec: TunnelSpec) -> list[ipaddress.IPv6Address]:
    """The tunnel addresses of the peers that need a new handshake once
    ``spec`` replaces ``before`` (:func:`parse_dump`): all of them when this
    engine's key changed, else those whose key is new here."""
    private, _, peers = before
    if private and private != spec.private_key:
        return [p.address for p in sorted(spec.peers)]
    known = {key for key, _, _ in peers}
    return [p.address for p in sorted(spec.peers) if p.public_key not in known]


def guard_script(present: bool) -> str:
    """The ``nft -f`` input that makes the guard table exist (or not)."""
    head = f"table ip6 {GUARD_TABLE}\ndelete table ip6 {GUARD_TABLE}\n"
    if not present:
        return head
    prefix = str(TUNNEL_PREFIX)
    wild = f'"{IFACE_PREFIX}*"'
    return head + (
        f"table ip6 {GUARD_TABLE} {{\n"
        "  chain wireguard-out {\n"
        "    type filter hook output priority filter; policy accept;\n"
        f"    ip6 daddr {prefix} oifname \"lo\" accept\n"
        f"    ip6 daddr {prefix} oifname != {wild} drop\n"
        "  }\n"
        "  chain wireguard-in {\n"
        "    type filter hook input priority filter; policy accept;\n"
        f"    udp dport {VXLAN_PORT} iifname != {wild} drop\n"
        "  }\n"
        "}\n")


def find_command(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path=_SBIN)


def available() -> str | None:
    """None if this host has what tunnels need, else why not."""
    missing = [c for c in (WIREGUARD_GO, WG) if find_command(c) is None]
    if missing:
        return (f"traffic between hosts on encrypted networks needs {' and '.join(missing)}, "
                f"not found on this node (Debian: apt install {PACKAGES}, then restart the node)")
    if not os.path.exists("/dev/net/tun"):
        return "traffic between hosts on encrypted networks needs /dev/net/tun (TUN devices)"
    return None


class WireGuard:
    """This engine's WireGuard interface ``name``: made (``wireguard-go``),
    configured (``wg syncconf``), given its tunnel address, and removed.
    Everything is compared with what is there, so applying the same spec
    again changes nothing."""

    def __init__(self, name: str, links: Callable[[], Links] = Links,
                 run: Callable[..., subprocess.CompletedProcess[str]] = subprocess.run,
                 find: Callable[[str], str | None] = find_command,
                 start_handshakes: Callable[[ipaddress.IPv6Address,
                                             Sequence[ipaddress.IPv6Address]], None] = poke
                 ) -> None:
        self.name = name
        self._links = links
        self._run = run
        self._find = find
        self._poke = start_handshakes

    def _command(self, name: str) -> str:
        path = self._find(name)
        if path is None:
            raise WireGuardError(available() or f"{name} not found on this node "
                                 f"(Debian: apt install {PACKAGES})")
        return path

    def _exec(self, argv: Sequence[str], what: str, stdin: str | None = None,
              env: dict[str, str] | None = None) -> str:
        try:
            res = self._run(list(argv), input=stdin, capture_output=True, text=True,
                            timeout=COMMAND_TIMEOUT, env=env)
        except subprocess.TimeoutExpired:
            raise WireGuardError(f"{what}: no answer within {COMMAND_TIMEOUT:.0f} s") from None
        except OSError as exc:
            raise WireGuardError(f"{what}: {exc}") from None
        if res.returncode != 0:
            said = " ".join((res.stderr or res.stdout or "").split())
            raise WireGuardError(f"{what} failed ({res.returncode}): {said[-300:]}")
        return res.stdout

    # -- apply ------------------------------------------------------------------------
    def apply(self, spec: TunnelSpec) -> list[str]:
        """Make the interface match ``spec``; returns what changed."""
        wg = self._command(WG)
        changes: list[str] = []
        changes += self._guard(True)
        with self._links() as links:
            link = links.get(self.name)
            if link is not None and _kind(link) != "tun":
                raise WireGuardError(f"{self.name} exists and is no WireGuard interface "
                                     f"({_kind(link)})")
            if link is None:
                changes += self._start()
            now = parse_dump(self._exec([wg, "show", self.name, "dump"],
                                        f"wg show {self.name}"))
            rekeyed: list[ipaddress.IPv6Address] = []
            if now != spec.wanted():
                self._exec([wg, "syncconf", self.name, "/dev/stdin"],
                           f"wg syncconf {self.name}", stdin=render_config(spec))
                changes.append(f"{self.name}: port {spec.port}, peers "
                               + (", ".join(p.endpoint for p in sorted(spec.peers)) or "none"))
                rekeyed = rekeyed_peers(now, spec)
                if now[0] and now[0] != spec.private_key:
                    changes.append(f"{self.name}: switched to this node's new key")
            changes += self._address(links, spec)
        self._poke(spec.address, rekeyed)
        return changes

    def _start(self) -> list[str]:
        binary = self._command(WIREGUARD_GO)
        # wireguard-go forks into the background once the interface is up;
        # with LOG_LEVEL set the background process would keep our pipes.
        env = {k: v for k, v in os.environ.items()
               if k not in ("LOG_LEVEL", "WG_PROCESS_FOREGROUND", "WG_TUN_FD", "WG_UAPI_FD")}
        self._exec([binary, self.name], f"starting {WIREGUARD_GO} {self.name}", env=env)
        return [f"started {WIREGUARD_GO} {self.name}"]

    def _address(self, links: Links, spec: TunnelSpec) -> list[str]:
        link = links.get(self.name)
        if link is None:
            raise WireGuardError(f"{self.name} disappeared (did {WIREGUARD_GO} exit?)")
        index = link["index"]
        # the underlay's MTU less WireGuard's headers
        mtu = links.underlay_mtu(spec.underlay) + VXLAN_OVERHEAD - WG_OVERHEAD
        changes: list[str] = []
        want = ipaddress.IPv6Interface(f"{spec.address}/{TUNNEL_PREFIX.prefixlen}")
        have = set()
        for a in links.ipr.get_addr(family=socket.AF_INET6, index=index):
            addr = a.get("IFA_ADDRESS")
            if addr and ipaddress.IPv6Address(addr) in TUNNEL_PREFIX:
                have.add((str(ipaddress.IPv6Address(addr)), a["prefixlen"]))
        # other tunnel addresses (the engine's underlay address changed) go
        for addr, plen in sorted(have - {(str(want.ip), want.network.prefixlen)}):
            links.call(f"removing {addr}/{plen} from {self.name}", links.ipr.addr, "del",
                       index=index, address=addr, prefixlen=plen, family=socket.AF_INET6,
                       ok=(errno.EADDRNOTAVAIL,))
            changes.append(f"{self.name}: removed {addr}/{plen}")
        if (str(want.ip), want.network.prefixlen) not in have:
            links.call(f"adding {want} to {self.name}", links.ipr.addr, "add", index=index,
                       address=str(want.ip), prefixlen=want.network.prefixlen,
                       family=socket.AF_INET6, flags=IFA_F_NODAD, ok=(errno.EEXIST,))
            changes.append(f"{self.name}: added {want}")
        if link.get("IFLA_MTU") != mtu:
            links.call(f"setting the MTU of {self.name}", links.ipr.link, "set", index=index,
                       mtu=mtu)
            changes.append(f"{self.name}: mtu {mtu}")
        if not link["flags"] & IFF_UP:
            links.call(f"setting {self.name} up", links.ipr.link, "set", index=index,
                       state="up")
            changes.append(f"{self.name}: up")
        return changes

    def _guard(self, present: bool) -> list[str]:
        nft = self._find("nft")
        if nft is None:
            if not present:
                return []
            raise WireGuardError("encrypted networks need nftables' nft command "
                                 "(Debian: apt install nftables)")
        listed = self._run([nft, "list", "table", "ip6", GUARD_TABLE], capture_output=True,
                           text=True, timeout=COMMAND_TIMEOUT)
        if (listed.returncode == 0) == present and (not present or "wireguard-in" in
                                                    listed.stdout):
            return []
        self._exec([nft, "-f", "-"], "nft (the encrypted networks' guard)",
                   stdin=guard_script(present))
        return [f"{'added' if present else 'removed'} table ip6 {GUARD_TABLE}"]

    # -- removal ----------------------------------------------------------------------
    def remove(self) -> list[str]:
        """No interface (its ``wireguard-go`` exits with it), and no guard
        unless another node sharing the engine still has a tunnel."""
        changes: list[str] = []
        with self._links() as links:
            try:
                changes += links.remove(self.name)
            except LinkError as exc:
                raise WireGuardError(str(exc)) from None
            others = [link.get("IFLA_IFNAME") for link in links.ipr.get_links()
                      if (link.get("IFLA_IFNAME") or "").startswith(IFACE_PREFIX)]
        if not others:
            changes += self._guard(False)
        return changes

    def show(self) -> str:
        """``wg show`` of the interface (for humans and tests); "" if there is none."""
        wg = self._find(WG)
        if wg is None:
            return ""
        res = self._run([wg, "show", self.name], capture_output=True, text=True,
                        timeout=COMMAND_TIMEOUT)
        return res.stdout if res.returncode == 0 else ""


def _kind(link: Any) -> str | None:
    info = link.get("IFLA_LINKINFO")
    return info.get("IFLA_INFO_KIND") if info is not None else None
