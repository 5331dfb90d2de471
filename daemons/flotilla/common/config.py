"""A node's identity and addresses, kept in ``<data-dir>/node.json``.

Ports: ``--listen HOST:PORT`` is the manager API (HTTPS, mTLS). Unless set
explicitly, the Raft port is PORT+10000, the agent port PORT+20000 and the
dispatcher port (where the leader takes agents' heartbeats and status
reports) PORT+30000 on the same host (or PORT minus the offset when that
would pass 65535). The WireGuard port (UDP, encrypted networks between
hosts) is 51820 unless ``--wireguard-port`` says otherwise.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import socket

from . import fsutil

DEFAULT_PORT = 4242
RAFT_OFFSET = 10000
AGENT_OFFSET = 20000
DISPATCHER_OFFSET = 30000
DEFAULT_WIREGUARD_PORT = 51820


class ConfigError(ValueError):
    pass


def split_addr(addr: str, default_port: int | None = DEFAULT_PORT) -> tuple[str, int]:
    """'host:port', '[v6]:port', 'host' -> (host, port)."""
    if not addr or not isinstance(addr, str):
        raise ConfigError("address is empty")
    addr = addr.strip()
    if addr.startswith("["):
        host, _, rest = addr[1:].partition("]")
        port_s = rest[1:] if rest.startswith(":") else ""
    elif addr.count(":") == 1:
        host, port_s = addr.split(":")
    elif addr.count(":") > 1:
        host, port_s = addr, ""
    else:
        host, port_s = addr, ""
    if not host:
        raise ConfigError(f"address {addr!r} has no host")
    if port_s:
        try:
            port = int(port_s)
        except ValueError:
            raise ConfigError(f"address {addr!r}: port is not a number") from None
    elif default_port is None:
        raise ConfigError(f"address {addr!r} needs a port")
    else:
        port = default_port
    if not 0 < port < 65536:
        raise ConfigError(f"address {addr!r}: port out of range")
    return host, port


def join_addr(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def address_family(host: str) -> int:
    """The socket family for a host as ``split_addr`` returns it."""
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def derived(addr: str, offset: int) -> str:
    host, port = split_addr(addr)
    other = port + offset if port + offset < 65536 else port - offset
    return join_addr(host, other)


def is_unspecified(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False


@dataclasses.dataclass
class NodeConfig:
    data_dir: str
    node_id: str = ""
    cluster_id: str = ""
    hostname: str = ""
    listen: str = f"0.0.0.0:{DEFAULT_PORT}"       # manager API bind address
    advertise: str = ""                            # manager API address others use
    raft_listen: str = ""
    raft_advertise: str = ""
    agent_listen: str = ""
    agent_advertise: str = ""
    dispatcher_listen: str = ""
    dispatcher_advertise: str = ""
    # The operator gave the API or agent advertise address (behind NAT):
    # managers use it as given rather than the address the node connects from.
    advertise_explicit: bool = False
    # UDP port of this node's WireGuard tunnel (encrypted networks)
    wireguard_port: int = DEFAULT_WIREGUARD_PORT
    role: str = "worker"                           # role of the certificate we hold
    managers: list[str] = dataclasses.field(default_factory=list)  # known API addresses

    # -- paths ------------------------------------------------------------------
    @property
    def path(self) -> str:
        return os.path.join(self.data_dir, "node.json")

    @property
    def certs_dir(self) -> str:
        return os.path.join(self.data_dir, "certs")

    @property
    def ca_path(self) -> str:
        return os.path.join(self.certs_dir, "ca.pem")

    @property
    def bundle_path(self) -> str:
        return os.path.join(self.certs_dir, "node.pem")

    @property
    def raft_dir(self) -> str:
        return os.path.join(self.data_dir, "raft")

    @property
    def admin_dir(self) -> str:
        return os.path.join(self.data_dir, "admin")

    @property
    def control_socket(self) -> str:
        return os.path.join(self.data_dir, "control.sock")

    @property
    def bootstrap_path(self) -> str:
        return os.path.join(self.data_dir, "bootstrap.json")

    # -- persistence ----------------------------------------------------------------
    def save(self) -> None:
        fsutil.ensure_private_dir(self.data_dir)
        data = dataclasses.asdict(self)
        data.pop("data_dir")
        fsutil.atomic_write_json(self.path, data)

    @classmethod
    def load(cls, data_dir: str) -> "NodeConfig | None":
        data = fsutil.read_json(os.path.join(data_dir, "node.json"))
        if data is None:
            return None
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(data_dir=data_dir, **{k: v for k, v in data.items() if k in fields})

    def initialised(self) -> bool:
        return bool(self.node_id) and os.path.exists(self.bundle_path)

    def fill_addresses(self, listen: str | None, advertise: str | None,
                       raft_listen: str | None, raft_advertise: str | None,
                       agent_listen: str | None = None, agent_advertise: str | None = None,
                       dispatcher_listen: str | None = None,
                       dispatcher_advertise: str | None = None) -> None:
        if listen:
            host, port = split_addr(listen)
            self.listen = join_addr(host, port)
        host, port = split_addr(self.listen)
        if advertise or agent_advertise:
            self.advertise_explicit = True
        if advertise:
            ahost, aport = split_addr(advertise, default_port=port)
            self.advertise = join_addr(ahost, aport)
        elif not self.advertise:
            if is_unspecified(host):
                host = _guess_address()
            self.advertise = join_addr(host, port)
        for name, offset, given_listen, given_advertise in (
                ("raft", RAFT_OFFSET, raft_listen, raft_advertise),
                ("agent", AGENT_OFFSET, agent_listen, agent_advertise),
                ("dispatcher", DISPATCHER_OFFSET, dispatcher_listen, dispatcher_advertise)):
            self._fill_derived(name, offset, given_listen, given_advertise)

    def _fill_derived(self, name: str, offset: int, listen: str | None,
                      advertise: str | None) -> None:
        """``<name>_listen`` and ``<name>_advertise``: as given, else as
        already set, else the API's addresses with the port moved by
        ``offset``."""
        if listen:
            self._set(f"{name}_listen", listen)
        elif not getattr(self, f"{name}_listen"):
            setattr(self, f"{name}_listen", derived(self.listen, offset))
        if advertise:
            self._set(f"{name}_advertise", advertise)
        elif not getattr(self, f"{name}_advertise"):
            ahost, _ = split_addr(self.advertise)
            _, port = split_addr(getattr(self, f"{name}_listen"))
            setattr(self, f"{name}_advertise", join_addr(ahost, port))

    def _set(self, field: str, addr: str) -> None:
        host, port = split_addr(addr, default_port=None)
        setattr(self, field, join_addr(host, port))

    # -- a restart with flags ---------------------------------------------------------
    def apply_restart_flags(self, flags: dict, manager: bool) -> list[str]:
        """Apply to this (saved) node the address and name flags given to
        ``node run`` when it resumes; returns what changed, as
        ``field old -> new (from --flag)`` lines.

        An address that followed another one when the node was created (the
        Raft port as the API port + 10000, an advertised port as the listen
        port) follows it again, as on a first start. Listen addresses and
        the hostname are applied; so are advertised addresses that every
        registration announces again (agent, dispatcher, and a worker's
        API and Raft addresses). A manager's API and Raft addresses are
        recorded in the cluster's Raft membership: changing them is refused
        (ConfigError, one line naming the flag).
        """
        old = dataclasses.replace(self)
        new: dict[str, str] = {}
        cause: dict[str, str] = {}

        def given(field):
            value = flags.get(field)
            return value if value else None

        value = given("listen")
        if value:
            host, port = split_addr(value)
            new["listen"], cause["listen"] = join_addr(host, port), "--listen"
        else:
            new["listen"], cause["listen"] = old.listen, ""
        lhost, lport = split_addr(old.listen)
        nhost, nport = split_addr(new["listen"])
        value = given("advertise")
        if value:
            host, port = split_addr(value, default_port=nport)
            new["advertise"], cause["advertise"] = join_addr(host, port), "--advertise"
        else:
            ahost, aport = split_addr(old.advertise)
            if aport == lport:
                aport = nport
            if ahost == lhost and not is_unspecified(nhost):
                ahost = nhost
            new["advertise"], cause["advertise"] = join_addr(ahost, aport), "--listen"
        for name, offset in (("raft", RAFT_OFFSET), ("agent", AGENT_OFFSET),
                             ("dispatcher", DISPATCHER_OFFSET)):
            lf, af = f"{name}_listen", f"{name}_advertise"
            flag = name.replace("_", "-")
            value = given(lf)
            if value:
                host, port = split_addr(value, default_port=None)
                new[lf], cause[lf] = join_addr(host, port), f"--{flag}-listen"
            elif getattr(old, lf) == derived(old.listen, offset):
                new[lf], cause[lf] = derived(new["listen"], offset), "--listen"
            else:
                new[lf], cause[lf] = getattr(old, lf), ""
            value = given(af)
            if value:
                host, port = split_addr(value, default_port=None)
                new[af], cause[af] = join_addr(host, port), f"--{flag}-advertise"
            elif getattr(old, af) == join_addr(split_addr(old.advertise)[0],
                                               split_addr(getattr(old, lf))[1]):
                new[af] = join_addr(split_addr(new["advertise"])[0], split_addr(new[lf])[1])
                cause[af] = (cause[lf] if split_addr(new[lf])[1] != split_addr(getattr(old, lf))[1]
                             else cause["advertise"])
            else:
                new[af], cause[af] = getattr(old, af), ""

        changes = []
        for field, value in new.items():
            before = getattr(old, field)
            if value == before:
                continue
            flag = cause[field]
            if manager and field in ("advertise", "raft_advertise"):
                what = "API" if field == "advertise" else "Raft"
                shown = flags.get(flag[2:].replace("-", "_"))
                raise ConfigError(
                    f"{flag} {shown}: would move this manager's {what} address from {before} "
                    f"to {value}, the address the other managers know it by (Raft "
                    "membership); managers cannot move yet: keep the current address, or "
                    "demote the node to a worker first")
            changes.append(f"{field.replace('_', '-')} {before} -> {value} (from {flag})")
        hostname = given("hostname")
        if hostname and hostname != old.hostname:
            changes.append(f"hostname {old.hostname or '(none)'} -> {hostname} (from --hostname)")
            self.hostname = hostname
        if given("advertise") or given("agent_advertise"):
            # Managers then reach the agent where it was told, not where it
            # connects from (see ``advertise_explicit``).
            self.advertise_explicit = True
        for field, value in new.items():
            setattr(self, field, value)
        return changes


def _guess_address() -> str:
    """The address this host uses to reach others (no packet is sent)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("10.255.255.255", 1))
            return s.getsockname()[0]
    except OSError:
        return "127.0.0.1"
