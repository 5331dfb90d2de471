"""Network namespaces on one machine, joined by a Linux bridge: real hosts for
network faults.

Each host is a namespace with one veth into a bridge, on a private /24 that
only this module uses. The bridge lives in a "switch" namespace of its own,
so bridged traffic meets only that namespace's (empty) iptables, not the
machine's (where Docker's FORWARD policy is DROP); the test process reaches
every host through one more veth from the root namespace into the switch.
Partitions are iptables DROP rules inside the host namespaces, in a chain of
their own (``FLOTILLA-CHAOS``), so healing is a flush of that chain. Nothing
outside our own namespaces and veths is touched.

Every name starts with a prefix, so a fabric left over by a killed run is
found and removed before a new one is built.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time

CHAIN = "FLOTILLA-CHAOS"


def run(*cmd: str, check: bool = True, timeout: float = 30.0) -> subprocess.CompletedProcess:
    res = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout)
    if check and res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({res.returncode}): {res.stderr.strip()}")
    return res


def netns_path(name: str) -> str:
    return f"/var/run/netns/{name}"


def in_netns(name: str, argv: list[str]) -> list[str]:
    """``argv`` run inside the network namespace ``name``.

    ``nsenter --net`` enters only the network namespace; ``ip netns exec``
    would also remount /sys, which hides the cgroup mounts dockerd needs.
    """
    # by its full path: the command may be started with another PATH
    return [shutil.which("nsenter") or "nsenter", f"--net={netns_path(name)}", *argv]


class Fabric:
    """A bridge and a set of namespaces named ``{prefix}-{host}``."""

    def __init__(self, prefix: str = "flc", subnet: str = "10.77.0"):
        self.prefix = prefix
        self.subnet = subnet
        self.bridge = f"{prefix}br0"
        self.gateway = f"{subnet}.1"
        self.hosts: dict[str, str] = {}      # host name -> address

    # -- building ------------------------------------------------------------------
    def namespace(self, host: str) -> str:
        return f"{self.prefix}-{host}"

    @property
    def switch(self) -> str:
        return f"{self.prefix}-switch"

    def create(self) -> None:
        self.destroy_leftovers()
        sw = self.switch
        run("ip", "netns", "add", sw)
        run("ip", "-n", sw, "link", "add", self.bridge, "type", "bridge")
        run("ip", "-n", sw, "link", "set", self.bridge, "up")
        run("ip", "-n", sw, "link", "set", "lo", "up")
        # The root namespace's leg: the gateway address, as seen by the hosts.
        root_leg = f"{self.prefix}r0"
        run("ip", "link", "add", root_leg, "type", "veth", "peer", "name", "root0", "netns", sw)
        run("ip", "-n", sw, "link", "set", "root0", "master", self.bridge, "up")
        run("ip", "addr", "add", f"{self.gateway}/24", "dev", root_leg)
        run("ip", "link", "set", root_leg, "up")

    def add_host(self, host: str, octet: int) -> str:
        ns = self.namespace(host)
        addr = f"{self.subnet}.{octet}"
        veth = f"{self.prefix}v{octet}"
        run("ip", "netns", "add", ns)
        run("ip", "-n", self.switch, "link", "add", veth, "type", "veth",
            "peer", "name", "eth0", "netns", ns)
        run("ip", "-n", self.switch, "link", "set", veth, "master", self.bridge, "up")
        run("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", "eth0")
        run("ip", "-n", ns, "link", "set", "eth0", "up")
        run("ip", "-n", ns, "link", "set", "lo", "up")
        run("ip", "-n", ns, "route", "add", "default", "via", self.gateway)
        self._iptables(ns, "-N", CHAIN)
        self._iptables(ns, "-I", "INPUT", "-j", CHAIN)
        self._iptables(ns, "-I", "OUTPUT", "-j", CHAIN)
        self.hosts[host] = addr
        return addr

    # -- faults --------------------------------------------------------------------
    def block(self, host: str, peer_addr: str, direction: str = "both") -> None:
        """Drop traffic between ``host`` and ``peer_addr``, as seen from
        ``host``: ``in`` drops what arrives from the peer, ``out`` what is
        sent to it, ``both`` both."""
        ns = self.namespace(host)
        if direction in ("in", "both"):
            self._iptables(ns, "-A", CHAIN, "-s", peer_addr, "-j", "DROP")
        if direction in ("out", "both"):
            self._iptables(ns, "-A", CHAIN, "-d", peer_addr, "-j", "DROP")

    def blocked(self, host: str, addr: str, port: int, timeout: float = 1.0) -> bool:
        """True if a TCP connection from ``host`` to ``addr:port`` gets no
        answer at all (a refusal is an answer: the path is open)."""
        res = run("ip", "netns", "exec", self.namespace(host), "timeout", str(timeout), "bash",
                  "-c", f"exec 3<>/dev/tcp/{addr}/{port}", check=False, timeout=timeout + 10)
        return res.returncode == 124

    def heal(self) -> None:
        for host in self.hosts:
            self._iptables(self.namespace(host), "-F", CHAIN)

    def rules(self, host: str) -> str:
        return run("ip", "netns", "exec", self.namespace(host), "iptables", "-S", CHAIN).stdout

    @staticmethod
    def iptables(ns: str, *args: str) -> None:
        run("ip", "netns", "exec", ns, "iptables", "-w", "5", *args)

    _iptables = iptables

    # -- teardown --------------------------------------------------------------------
    def our_namespaces(self) -> list[str]:
        out = run("ip", "netns", "list", check=False).stdout
        names = [line.split()[0] for line in out.splitlines() if line.strip()]
        return [n for n in names if n.startswith(f"{self.prefix}-")]

    def destroy_leftovers(self) -> None:
        """Remove every namespace with our prefix (killing what still runs in
        it) and our bridge. Safe to call when nothing exists."""
        for ns in self.our_namespaces():
            kill_namespace_processes(ns)
            run("ip", "netns", "del", ns, check=False)
        out = run("ip", "-o", "link", "show", check=False).stdout
        for line in out.splitlines():
            name = line.split(":")[1].strip().split("@")[0] if ":" in line else ""
            if name.startswith(f"{self.prefix}r") or name.startswith(f"{self.prefix}v") \
                    or name == self.bridge:
                run("ip", "link", "del", name, check=False)
        self.hosts.clear()

    def destroy(self) -> None:
        self.destroy_leftovers()


def namespace_pids(ns: str) -> list[int]:
    out = run("ip", "netns", "pids", ns, check=False).stdout
    return [int(p) for p in out.split() if p.isdigit()]


def kill_namespace_processes(ns: str, timeout: float = 10.0) -> None:
    for pid in namespace_pids(ns):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    while namespace_pids(ns) and time.monotonic() < deadline:
        time.sleep(0.1)
