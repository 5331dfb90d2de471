"""A stand-in for one engine and its containers, for virtual IPs: network
namespaces of our own, nothing of the machine's touched.

* ``engine``: a namespace holding the network's bridge (``flb-lab0000001``,
  with the engine's address ``.1/24`` on it, as a node's attachment address)
  and a second bridge with no port (``flb-lab0000002``: a network whose
  containers are gone). The VIP code runs against this namespace.
* ``b1``, ``b2``, ``b3`` ("backends", addresses ``.11``-``.13``) and ``c``
  (a client, ``.21``): one namespace each, with a veth into the bridge, the
  engine's address as default route, as a container has. Each backend runs
  :mod:`tests.helpers.vipnode` ``serve`` on :data:`PORT` (its own
  namespace: no port is shared with anything else on the machine).

The subnet is the first of :data:`SUBNETS` that no address or route of the
machine's own namespace overlaps. Namespace names carry this process's id,
so parallel runs never meet, and a run finds and removes namespaces left by
a run that died (its process is gone).
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import subprocess
import sys
import time

from .netns import kill_namespace_processes, run

PORT = 8080
BRIDGE = "flb-lab0000001"
EMPTY_BRIDGE = "flb-lab0000002"
SUBNETS = ("10.123.0.0/24", "10.124.0.0/24", "10.125.0.0/24", "10.126.0.0/24")
BACKENDS = {"b1": 11, "b2": 12, "b3": 13}
CLIENTS = {"c": 21}
VIPNODE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "vipnode.py")
_OURS = re.compile(r"fv(\d+)-")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def _machine_networks() -> list[ipaddress.IPv4Network]:
    nets = []
    for line in run("ip", "-4", "-o", "addr", "show").stdout.splitlines():
        m = re.search(r"inet (\S+)", line)
        if m:
            nets.append(ipaddress.ip_interface(m.group(1)).network)
    for line in run("ip", "-4", "route", "show", "table", "all").stdout.splitlines():
        dest = line.split()[0] if line.split() else ""
        if dest in ("default", "local", "broadcast", "unreachable", "prohibit", "blackhole"):
            continue
        try:
            nets.append(ipaddress.ip_network(dest, strict=False))
        except ValueError:
            pass
    return [n for n in nets if isinstance(n, ipaddress.IPv4Network)]


def free_subnet() -> ipaddress.IPv4Network:
    used = _machine_networks()
    for cand in SUBNETS:
        net = ipaddress.IPv4Network(cand)
        if not any(net.overlaps(u) for u in used):
            return net
    raise RuntimeError(f"every test subnet {SUBNETS} overlaps a network of this machine")


class VipLab:
    def __init__(self) -> None:
        self.prefix = f"fv{os.getpid()}"
        self.subnet = free_subnet()
        self.servers: list[subprocess.Popen] = []

    # -- names and addresses ---------------------------------------------------------
    def ns(self, name: str) -> str:
        return f"{self.prefix}-{name}"

    @property
    def engine(self) -> str:
        return self.ns("engine")

    def addr(self, octet: int) -> str:
        return str(self.subnet.network_address + octet)

    @property
    def gateway(self) -> str:
        return self.addr(1)

    def backend(self, name: str) -> str:
        return self.addr(BACKENDS[name])

    @property
    def client(self) -> str:
        return self.addr(CLIENTS["c"])

    def in_ns(self, name: str, *argv: str) -> list[str]:
        return ["nsenter", f"--net=/var/run/netns/{self.ns(name)}", *argv]

    def sh(self, name: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
        return run(*self.in_ns(name, *argv), check=check)

    # -- building ------------------------------------------------------------------
    def create(self) -> "VipLab":
        remove_leftovers()
        eng = self.engine
        run("ip", "netns", "add", eng)
        run("ip", "-n", eng, "link", "set", "lo", "up")
        for br in (BRIDGE, EMPTY_BRIDGE):
            run("ip", "-n", eng, "link", "add", br, "type", "bridge")
            run("ip", "-n", eng, "link", "set", br, "up")
        run("ip", "-n", eng, "addr", "add", f"{self.gateway}/{self.subnet.prefixlen}",
            "dev", BRIDGE)
        for name, octet in {**BACKENDS, **CLIENTS}.items():
            ns = self.ns(name)
            run("ip", "netns", "add", ns)
            run("ip", "-n", eng, "link", "add", f"v-{name}", "type", "veth",
                "peer", "name", "eth0", "netns", ns)
            run("ip", "-n", eng, "link", "set", f"v-{name}", "master", BRIDGE, "up")
            run("ip", "-n", ns, "addr", "add", f"{self.addr(octet)}/{self.subnet.prefixlen}",
                "dev", "eth0")
            run("ip", "-n", ns, "link", "set", "eth0", "up")
            run("ip", "-n", ns, "link", "set", "lo", "up")
            run("ip", "-n", ns, "route", "add", "default", "via", self.gateway)
        for name in BACKENDS:
            self.serve(name, name)
        return self

    def serve(self, ns_name: str, answer: str) -> subprocess.Popen:
        """Start a vipnode server in a namespace; return once it listens."""
        proc = subprocess.Popen(self.in_ns(ns_name, sys.executable, VIPNODE, "serve", answer,
                                           str(PORT)),
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                start_new_session=True)
        self.servers.append(proc)
        assert proc.stdout is not None
        line = proc.stdout.readline()      # "ready", or "" if it died
        if line.strip() != "ready":
            raise RuntimeError(f"the server in {ns_name} did not start")
        return proc

    # -- traffic ---------------------------------------------------------------------
    def connect(self, ns_name: str, addr: str, n: int, udp: bool = False,
                timeout: float = 5.0) -> list[tuple[float, str]]:
        """``n`` connections (or datagrams) from ``ns_name`` to ``addr``:
        [(seconds, "NAME PEER" or an error's name)]."""
        argv = [sys.executable, VIPNODE, "connect", addr, str(PORT), str(n),
                "--timeout", str(timeout)] + (["--udp"] if udp else [])
        res = subprocess.run(self.in_ns(ns_name, *argv), capture_output=True, text=True,
                             timeout=60 + n * timeout)
        if res.returncode != 0:
            raise RuntimeError(f"client in {ns_name} failed: {res.stderr.strip()}")
        return [(float(t), str(a)) for t, a in json.loads(res.stdout)]

    def mix(self, ns_name: str, addrs: list[str], seconds: float,
            batch: int = 50) -> dict[str, list[tuple[float, str]]]:
        """TCP connections from ``ns_name`` for ``seconds``, ``batch`` to
        each of ``addrs`` in turn: {addr: [(seconds, answer)]}."""
        argv = [sys.executable, VIPNODE, "mix", str(PORT), str(seconds), str(batch), *addrs]
        res = subprocess.run(self.in_ns(ns_name, *argv), capture_output=True, text=True,
                             timeout=seconds + 120)
        if res.returncode != 0:
            raise RuntimeError(f"client in {ns_name} failed: {res.stderr.strip()}")
        return {a: [(float(t), str(x)) for t, x in v] for a, v in json.loads(res.stdout).items()}

    def watch(self, ns_name: str, addr: str, seconds: float) -> subprocess.Popen:
        """Connections from ``ns_name`` to ``addr`` one after the other for
        ``seconds``; the process prints [(monotonic start, seconds, answer)]."""
        return subprocess.Popen(self.in_ns(ns_name, sys.executable, VIPNODE, "watch", addr,
                                           str(PORT), str(seconds)),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    # -- teardown --------------------------------------------------------------------
    def destroy(self) -> None:
        for proc in self.servers:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)
            if proc.stdout:
                proc.stdout.close()
        self.servers.clear()
        remove_namespaces(self.prefix)


def our_namespaces() -> list[str]:
    out = run("ip", "netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines()
            if line.strip() and _OURS.match(line.split()[0])]


def remove_namespaces(prefix: str) -> None:
    for ns in our_namespaces():
        if ns.startswith(f"{prefix}-"):
            kill_namespace_processes(ns)
            run("ip", "netns", "del", ns, check=False)


def remove_leftovers() -> None:
    """Namespaces of runs whose process is gone."""
    for ns in our_namespaces():
        m = _OURS.match(ns)
        if m and not _alive(int(m.group(1))):
            kill_namespace_processes(ns)
            run("ip", "netns", "del", ns, check=False)


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)
