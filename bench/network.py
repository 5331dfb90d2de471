#!/usr/bin/env python3
"""Overlay networks: throughput and latency between two tasks on different
hosts, against two floors; names from inside a task; how fast a dead task
leaves the names and the VIP; and Docker Swarm's overlay on the same hosts.

The hosts are those of tests/integration/test_service_networks.py: two
network namespaces (``a``, ``b``) on one bridge, each with a Docker engine
of its own managing its iptables (tests/helpers/nscluster.py); ``a``'s
engine also has Docker's default bridge. A Flotilla cluster runs a manager
on ``a`` and a worker on ``b``; on the overlay network ``bench``, the
service ``server`` (``flotilla-test/iperf3:1``, ``iperf3 -s``) runs on
``b`` and the service ``client`` (the same image, idle) on ``a``. Traffic
between them leaves ``a``'s engine as VXLAN (UDP 4789) to ``b``'s.

Four paths, measured in turn in each of ``--rounds`` rounds (the machine is
shared: interleaving gives each path the same load):

* ``floor``: host ``a`` to host ``b``'s own address, no overlay (iperf3 in
  containers with host networking; the probes in the hosts' namespaces);
* ``bridge``: two containers on ``a``'s engine, on Docker's default bridge
  (no overlay, no second host): the other floor;
* ``task``: the client task to the server task's address on the overlay;
* ``vip``: the client task to the server's virtual IP (nftables DNAT on the
  client's engine, then the overlay).

And three measures on each:

* **throughput**: ``iperf3 -t SECONDS``, one TCP stream (bits/s received,
  retransmits);
* **request/response**: one TCP connection, a 32-byte request and a 32-byte
  answer, one after the other for ``--seconds``: round trip p50/p99;
* **connection setup**: a new TCP connection per request (connect, request,
  answer, close), one after the other for ``--seconds``: p50/p99 and rate.

The probes are a Python echo server and client (this file's ``serve`` and
``probe`` commands) run with ``nsenter --net`` in the hosts' namespaces
(floor) or in the containers' namespaces: the same code on every path.

**Names.** In each round, from the client task's network namespace, one
lookup at a time over UDP (the ``dns`` command: a Python loop, no process
start-up in the times), ``--dns-queries`` of each of: ``server`` (its VIP),
``tasks.server`` (its task's address) and ``outside.flotilla-bench.test``,
a name no cluster knows, which the node's resolver forwards to the node's
name servers. Each asked as the container's C library asks (its
resolv.conf's server, Docker's embedded resolver on 127.0.0.11, which
forwards to the node's resolver on the network's gateway) and of the node's
resolver on the gateway directly; every answer is checked. The node on
``a`` sees a resolv.conf of the bench's (``nameserver 127.0.0.1``): its name
server is a stub on ``a``'s own loopback (this file's ``upstream``
command), so no query leaves the machine; the stub asked directly from
``a``'s namespace is the forwarded names' floor.

**Removal.** The service ``victim`` (2 tasks, on ``b``): ``--kills`` times,
one of its containers is killed (SIGKILL through ``b``'s engine) and the
bench times, from the kill, until ``tasks.victim`` asked from the client
task (on ``a``) no longer answers its address, and until the task's address
is no longer a backend of the service's VIP in the nftables rules of each
engine (``a``: the other host, where the client's connections are DNATed;
``b``: the task's own), polling every 10 ms, as
tests/integration/test_service_networks.py does; then waits for the
replacement to be in both before the next kill.

**Docker Swarm.** Then Flotilla is stopped, its containers and networks
removed, and the same two engines form a swarm (``docker swarm init`` on
``a``, ``b`` joins): an overlay network, ``sserver`` on ``b``, ``slocal``
on ``a`` (both ``iperf3 -s``), ``sclient`` on ``a`` and ``svictim`` (2
tasks on ``b``), all with ``--dns`` host ``a``'s address, where the stub
answers too (forwarded names stay on the machine), and
``--no-resolve-image`` (no registry is asked). The same measures are
tried from ``sclient``'s namespace: the three names, a connection to the
VIP, to the task on the other host and to the task on the same host,
throughput where a connection works, and
``tasks.svictim`` after kills. Every step's outcome is kept, with the error
where it fails; then ``docker swarm leave --force`` on both engines.

    python bench/network.py [--seconds 3] [--rounds 5] [--dns-queries 500]
                            [--kills 5] [--no-swarm] [--out PATH]

Builds the iperf3 image when missing (tests/images/iperf3.sh). Prints
tables and writes bench/results/network.json, with the machine's load at
the start, per round and at the end.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import threading
import time

from benchlib import ROOT, pct, write_result

IPERF_IMAGE = "flotilla-test/iperf3:1"
BASE = "/tmp/flotilla-bench-network"
HOSTS = {"a": 21, "b": 22}
PROBE_PORT = 7000
FLOOR_IPERF_PORT = 5202
MESSAGE = 32
WARMUP = 50
PATHS = ("floor", "bridge", "task", "vip")
# The stub name server on host a's loopback, and what it answers.
UPSTREAM = "127.0.0.1"
UPSTREAM_ZONE = "flotilla-bench.test"
UPSTREAM_ANSWER = "192.0.2.53"
OUTSIDE = f"outside.{UPSTREAM_ZONE}"
DNS_WARMUP = 20
POLL = 0.01
TARGETS = {"throughput_vs_floor": 0.90, "dns_p99_ms": 1.0, "removal_s": 1.0}


# -- run inside a namespace ---------------------------------------------------------------

def _recv_exactly(s: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = s.recv(n - len(data))
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return data


def serve(port: int) -> None:
    """Echo every MESSAGE-byte request back, on every connection, until killed."""
    srv = socket.create_server(("0.0.0.0", port), backlog=256)

    def one(conn: socket.socket) -> None:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with conn:
            try:
                while True:
                    conn.sendall(_recv_exactly(conn, MESSAGE))
            except (ConnectionError, OSError):
                pass

    print("ready", flush=True)
    while True:
        conn, _ = srv.accept()
        threading.Thread(target=one, args=(conn,), daemon=True).start()


def probe(mode: str, addr: str, port: int, seconds: float) -> dict:
    """Round trips (``rr``: one connection) or connections (``connect``: one
    per request) one after the other for ``seconds``; latencies in µs, and
    the last error if any failed."""
    msg = b"x" * MESSAGE
    lat: list[float] = []
    failed = 0
    error = None
    conn = None
    if mode == "rr":
        try:
            conn = socket.create_connection((addr, port), timeout=3)
        except OSError as exc:
            return {"count": 0, "failed": 1, "error": str(exc) or type(exc).__name__}
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    start = time.perf_counter()
    end = start + seconds
    n = 0
    while True:
        t0 = time.perf_counter()
        if t0 >= end:
            break
        try:
            if conn is not None:
                conn.sendall(msg)
                _recv_exactly(conn, MESSAGE)
            else:
                with socket.create_connection((addr, port), timeout=3) as c:
                    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    c.sendall(msg)
                    _recv_exactly(c, MESSAGE)
        except OSError as exc:
            failed += 1
            error = str(exc) or type(exc).__name__
            if conn is not None:
                break
            continue
        n += 1
        if n > WARMUP:
            lat.append((time.perf_counter() - t0) * 1e6)
    took = time.perf_counter() - start
    return {"count": len(lat), "failed": failed, "error": error, "rate": round(n / took, 1),
            "p50_us": round(pct(lat, 50), 1), "p90_us": round(pct(lat, 90), 1),
            "p99_us": round(pct(lat, 99), 1)}


def upstream(addrs: list[str]) -> None:
    """A name server on each of ``addrs``, port 53 (UDP), until killed: names
    under UPSTREAM_ZONE are UPSTREAM_ANSWER, anything else NXDOMAIN."""
    from dnslib import QTYPE, RCODE, RR, A, DNSRecord

    def answer(s: socket.socket) -> None:
        while True:
            data, peer = s.recvfrom(4096)
            try:
                query = DNSRecord.parse(data)
            except Exception:           # noqa: BLE001 (not DNS: dropped)
                continue
            reply = query.reply()
            if str(query.q.qname).lower().rstrip(".").endswith(UPSTREAM_ZONE):
                if query.q.qtype == QTYPE.A:
                    reply.add_answer(RR(query.q.qname, QTYPE.A, ttl=0,
                                        rdata=A(UPSTREAM_ANSWER)))
            else:
                reply.header.rcode = RCODE.NXDOMAIN
            s.sendto(reply.pack(), peer)

    threads = []
    for addr in addrs:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((addr, 53))
        threads.append(threading.Thread(target=answer, args=(s,), daemon=True))
    for t in threads:
        t.start()
    print("ready", flush=True)
    for t in threads:
        t.join()


def _ask(s: socket.socket, server: tuple[str, int], packet: bytes, qid: int,
         timeout: float = 2.0) -> tuple[float, int | None, list[str]]:
    """One UDP lookup: (seconds from send to answer, the answer's code (None:
    no answer in time), its A records, sorted)."""
    from dnslib import QTYPE, DNSRecord
    packet = qid.to_bytes(2, "big") + packet[2:]
    s.settimeout(timeout)
    t0 = time.perf_counter()
    s.sendto(packet, server)
    try:
        while True:
            data = s.recv(65535)
            if data[:2] == packet[:2]:
                break               # (a late answer to an earlier query is skipped)
    except TimeoutError:
        return time.perf_counter() - t0, None, []
    took = time.perf_counter() - t0
    reply = DNSRecord.parse(data)
    return took, reply.header.rcode, sorted(str(rr.rdata) for rr in reply.rr
                                            if rr.rtype == QTYPE.A)


def lookups(spec: list[dict], count: int) -> list[dict]:
    """For each ``{server, name, expect}``: ``count`` lookups one after the
    other (after DNS_WARMUP more); latencies in µs, answers not the
    expected ones counted as errors."""
    from dnslib import DNSRecord
    out = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for i, one in enumerate(spec):
            server = (one["server"], 53)
            packet = DNSRecord.question(one["name"]).pack()
            expect = sorted(one["expect"]) if one.get("expect") is not None else None
            lat: list[float] = []
            errors = lost = 0
            first: str | list[str] | None = None
            for n in range(-DNS_WARMUP, count):
                took, rcode, answer = _ask(s, server, packet, (i * 7919 + n) % 65536)
                if n < 0:
                    if first is None:
                        first = answer if rcode == 0 else f"rcode {rcode}"
                    continue
                if rcode is None:
                    lost += 1
                    if lost >= 5 and not lat:
                        break           # no answer at all: not worth 2 s a lookup
                    continue
                lat.append(round(took * 1e6, 1))
                if rcode != 0 or (expect is not None and answer != expect):
                    errors += 1
            out.append({**one, "latencies_us": lat, "errors": errors, "lost": lost,
                        "answer": first})
    return out


def watch(server: str, name: str, addr: str, timeout: float) -> None:
    """Print ``present`` once ``name`` answers ``addr``, then ask every POLL
    seconds until it answers without it; print the CLOCK_MONOTONIC time of
    that answer (the same clock in every process of the machine)."""
    from dnslib import DNSRecord
    packet = DNSRecord.question(name).pack()
    deadline = time.monotonic() + timeout
    seen = False
    asked = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        while time.monotonic() < deadline:
            asked += 1
            _, rcode, answer = _ask(s, (server, 53), packet, asked % 65536, timeout=1.0)
            now = time.monotonic()
            if not seen:
                if rcode == 0 and addr in answer:
                    seen = True
                    print("present", flush=True)
            elif rcode is not None and addr not in answer:      # (NXDOMAIN too)
                print(json.dumps({"gone_at": now, "asked": asked, "rcode": rcode,
                                  "answer": answer}), flush=True)
                return
            time.sleep(POLL)
    print(json.dumps({"gone_at": None, "asked": asked, "seen": seen}), flush=True)


# -- the bench ------------------------------------------------------------------------------

def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def nsenter(netns_path: str, *args: str) -> list[str]:
    return ["nsenter", f"--net={netns_path}", sys.executable, os.path.abspath(__file__), *args]


def in_ns(netns_path: str, *args: str, timeout: float = 120) -> dict | list:
    """Run one of this file's commands in a namespace; its JSON output."""
    res = subprocess.run(nsenter(netns_path, *args), capture_output=True, text=True,
                         timeout=timeout)
    if res.returncode != 0:
        raise RuntimeError(f"{args[0]} in {netns_path} failed: {res.stderr[-1000:]}")
    return json.loads(res.stdout)


def dns_stats(lat: list[float], errors: int = 0, lost: int = 0) -> dict:
    ms = lambda v: round(v / 1000, 3)  # noqa: E731
    return {"lookups": len(lat), "errors": errors, "lost": lost,
            "p50_ms": ms(pct(lat, 50)), "p90_ms": ms(pct(lat, 90)), "p99_ms": ms(pct(lat, 99)),
            "p999_ms": ms(pct(lat, 99.9)), "max_ms": ms(max(lat)) if lat else None}


def spread(values: list[float]) -> dict:
    vals = [v for v in values if v is not None]
    return {"count": len(vals), "missed": len(values) - len(vals),
            "p50_s": round(statistics.median(vals), 3) if vals else None,
            "max_s": round(max(vals), 3) if vals else None,
            "all_s": [round(v, 3) if v is not None else None for v in values]}


class Watcher:
    """``watch`` run in a namespace: started, ``present`` awaited, then the time."""

    def __init__(self, netns_path: str, server: str, name: str, addr: str, timeout: float):
        self.proc = subprocess.Popen(nsenter(netns_path, "watch", server, name, addr,
                                             str(timeout)), stdout=subprocess.PIPE, text=True)
        self.timeout = timeout

    def present(self) -> bool:
        assert self.proc.stdout is not None
        return self.proc.stdout.readline().strip() == "present"

    def gone_at(self) -> float | None:
        assert self.proc.stdout is not None
        try:
            line = self.proc.stdout.readline()
            self.proc.wait(self.timeout + 30)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        return json.loads(line)["gone_at"] if line.strip() else None


class Bench:
    def __init__(self, seconds: float):
        from tests.helpers.netns import Fabric
        from tests.helpers.nscluster import NsCluster, clean_leftovers

        self.seconds = seconds
        self.fabric = Fabric(prefix="fnb", subnet="10.79.44")
        clean_leftovers(BASE, self.fabric)
        self.c = NsCluster(BASE, self.fabric)
        self.procs: list[subprocess.Popen] = []     # echo servers
        self.upstream: subprocess.Popen | None = None
        self.swarm_engines: list = []

    # -- setup -----------------------------------------------------------------------
    def start(self) -> None:
        from tests.helpers.cluster import wait_for

        self.fabric.create()
        os.makedirs(BASE, exist_ok=True)
        resolv = os.path.join(BASE, "resolv.conf")
        with open(resolv, "w") as f:
            f.write(f"nameserver {UPSTREAM}\n")
        self.c.add_host("a", HOSTS["a"], images=(IPERF_IMAGE,), iptables=True,
                        default_bridge=True, resolv_conf=resolv)
        self.c.add_host("b", HOSTS["b"], images=(IPERF_IMAGE,), iptables=True)
        self.ns_a = f"/var/run/netns/{self.c.hosts['a'].netns}"
        self.ns_b = f"/var/run/netns/{self.c.hosts['b'].netns}"
        # the stub name server: the node's (its resolv.conf), and on the host's
        # address for the Swarm containers' --dns (Docker's embedded resolver
        # asks it from the container's namespace)
        self.upstream = self.start_proc(nsenter(self.ns_a, "upstream", UPSTREAM,
                                                self.fabric.hosts["a"]), "the stub name server")
        self.c.init("a")
        self.c.join("b", "worker")
        self.cluster_id = self.c.cluster_id()
        admin = self.admin = self.c.admin()
        net = admin.post("/v1/networks", {"name": "bench"})
        self.gateway = net.get("gateway") or admin.get("/v1/networks/bench")["gateway"]
        for name, host, command, replicas in (
                ("server", "b", ["iperf3", "-s"], 1),
                ("client", "a", ["sleep", "100000000"], 1),
                ("victim", "b", ["sleep", "100000000"], 2)):
            admin.post("/v1/services", {
                "name": name, "replicas": replicas,
                "task": {"container": {"image": IPERF_IMAGE, "command": command, "init": True},
                         "networks": [{"target": "bench"}],
                         "placement": {"constraints": [f"node.hostname=={host}"]}}})
        wait_for(lambda: all(len(self.running(s)) == n
                             for s, n in (("server", 1), ("client", 1), ("victim", 2))),
                 180, what="the services' tasks running")
        self.server_addr = self.addr_of(self.running("server")[0])
        self.vip = self.vip_of("server")
        self.client_ctr = self.container("a", "client")
        self.server_ctr = self.container("b", "server")
        ea, eb = self.c.hosts["a"].engine, self.c.hosts["b"].engine
        # the floors: host networking between the hosts, and the default bridge on a
        eb.cli("run", "-d", "--name", "fnb-floor-iperf", "--network", "host",
               IPERF_IMAGE, "iperf3", "-s", "-p", str(FLOOR_IPERF_PORT))
        ea.cli("run", "-d", "--init", "--name", "fnb-floor-client", "--network", "host",
               IPERF_IMAGE, "sleep", "100000000")
        ea.cli("run", "-d", "--name", "fnb-bridge-server", IPERF_IMAGE, "iperf3", "-s")
        ea.cli("run", "-d", "--init", "--name", "fnb-bridge-client", IPERF_IMAGE,
               "sleep", "100000000")
        self.bridge_addr = ea.cli("inspect", "-f", "{{.NetworkSettings.IPAddress}}",
                                  "fnb-bridge-server").stdout.strip()
        # the echo servers: in host b's namespace, the server task's, the bridge server's
        self.serve(self.ns_b)
        self.serve(self.netns_of("b", self.server_ctr))
        self.serve(self.netns_of("a", "fnb-bridge-server"))
        wait_for(lambda: self.reachable(), 60, what="the server through its VIP")
        self.mtu = ea.cli("exec", self.client_ctr, "cat", "/sys/class/net/eth0/mtu").stdout.strip()
        self.resolver = self.nameserver(ea, self.client_ctr)

    @staticmethod
    def start_proc(argv: list[str], what: str) -> subprocess.Popen:
        """One of this file's servers, once it says it is ready."""
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
        if proc.stdout is None or proc.stdout.readline().strip() != "ready":
            proc.kill()
            proc.wait(10)
            raise RuntimeError(f"{what} did not start ({' '.join(argv)})")
        return proc

    def serve(self, netns_path: str) -> None:
        self.procs.append(self.start_proc(nsenter(netns_path, "serve", str(PROBE_PORT)),
                                          f"the echo server in {netns_path}"))

    @staticmethod
    def nameserver(engine, ctr: str) -> str:
        conf = engine.cli("exec", ctr, "cat", "/etc/resolv.conf").stdout
        return re.findall(r"^nameserver\s+(\S+)", conf, re.M)[0]

    def running(self, service: str) -> list[dict]:
        return [t for t in self.admin.get("/v1/tasks", params={"service": service})
                if t["state"] == "running" and t["desired_state"] == "running"]

    @staticmethod
    def addr_of(task: dict) -> str:
        return task["networks"][0]["addr"].split("/")[0]

    def vip_of(self, service: str) -> str:
        return self.admin.get(f"/v1/services/{service}")["virtual_ips"][0]["addr"].split("/")[0]

    def container(self, host: str, service: str | None = None,
                  task_id: str | None = None) -> str:
        label = f"flotilla.task.id={task_id}" if task_id else f"flotilla.service.name={service}"
        out = self.c.hosts[host].engine.cli("ps", "-q", "--filter", f"label={label}").stdout.split()
        if len(out) != 1:
            raise RuntimeError(f"expected one container of {label} on {host}: {out}")
        return out[0]

    def netns_of(self, host: str, ctr: str) -> str:
        pid = int(self.c.hosts[host].engine.cli("inspect", "-f", "{{.State.Pid}}",
                                                ctr).stdout.strip())
        return f"/proc/{pid}/ns/net"

    def reachable(self) -> bool:
        res = self.run_probe("vip", "rr", 0.2)
        return res is not None and res["count"] > 0

    # -- throughput and latency ------------------------------------------------------------
    def client_ns(self, path: str) -> str:
        if path == "floor":
            return self.ns_a
        if path == "bridge":
            return self.netns_of("a", "fnb-bridge-client")
        return self.netns_of("a", self.client_ctr)

    def target(self, path: str) -> str:
        return {"floor": self.fabric.hosts["b"], "bridge": self.bridge_addr,
                "task": self.server_addr, "vip": self.vip}[path]

    def run_probe(self, path: str, mode: str, seconds: float) -> dict | None:
        try:
            res = in_ns(self.client_ns(path), "probe", mode, self.target(path), str(PROBE_PORT),
                        str(seconds), timeout=seconds + 60)
        except RuntimeError:
            return None
        assert isinstance(res, dict)
        return res

    def iperf(self, path: str) -> dict:
        ctr = {"floor": "fnb-floor-client", "bridge": "fnb-bridge-client"}.get(path,
                                                                                self.client_ctr)
        port = FLOOR_IPERF_PORT if path == "floor" else 5201
        return iperf(self.c.hosts["a"].engine, ctr, self.target(path), port, self.seconds)

    # -- names -------------------------------------------------------------------------------
    def dns_spec(self) -> list[dict]:
        names = (("service", "server", [self.vip]), ("tasks", "tasks.server", [self.server_addr]),
                 ("outside", OUTSIDE, [UPSTREAM_ANSWER]))
        return [{"via": via, "server": server, "what": what, "name": name, "expect": expect}
                for via, server in (("container", self.resolver), ("gateway", self.gateway))
                for what, name, expect in names]

    def lookups(self, count: int) -> list[dict]:
        got = in_ns(self.netns_of("a", self.client_ctr), "dns", json.dumps(self.dns_spec()),
                    str(count), timeout=count * 10 + 60)
        direct = in_ns(self.ns_a, "dns", json.dumps([{
            "via": "upstream", "server": UPSTREAM, "what": "outside", "name": OUTSIDE,
            "expect": [UPSTREAM_ANSWER]}]), str(count), timeout=count * 10 + 60)
        assert isinstance(got, list) and isinstance(direct, list)
        return got + direct

    # -- removal ------------------------------------------------------------------------------
    def backends(self, host: str, vip: str) -> set[str]:
        """The addresses host's engine spreads ``vip``'s connections over."""
        from flotilla.agent.network.vips import VirtualIPs
        out: set[str] = set()
        for line in VirtualIPs(netns=self.c.hosts[host].netns).listing().splitlines():
            if f"ip daddr {vip} dnat" in line:
                out |= set(re.findall(r"\d+\.\d+\.\d+\.\d+", line.split("dnat", 1)[1]))
        return out

    def kill_once(self) -> dict:
        from tests.helpers.cluster import wait_for

        vip = self.vip_of("victim")

        def two_running():
            tasks = self.running("victim")
            return len(tasks) == 2 and tasks
        tasks = wait_for(two_running, 120, what="two victim tasks running")
        addrs = {self.addr_of(t) for t in tasks}
        wait_for(lambda: all(self.backends(h, vip) == addrs for h in ("a", "b")), 60,
                 what="both victim tasks behind the VIP on both engines")
        task = tasks[0]
        addr = self.addr_of(task)
        cid = self.container("b", task_id=task["id"])
        watcher = Watcher(self.netns_of("a", self.client_ctr), self.resolver, "tasks.victim",
                          addr, 30)
        if not watcher.present():
            raise RuntimeError(f"tasks.victim does not answer {addr} in the client")

        def gone(host: str, start: float) -> float | None:
            deadline = start + 30
            while time.monotonic() < deadline:
                if addr not in self.backends(host, vip):
                    return time.monotonic() - start
                time.sleep(POLL)
            return None

        engine = self.c.engine_client(self.c.hosts["b"])
        try:
            with concurrent.futures.ThreadPoolExecutor(2) as pool:
                start = time.monotonic()
                engine.api.kill(cid)
                vip_a, vip_b = pool.map(lambda h: gone(h, start), ("a", "b"))
                at = watcher.gone_at()
        finally:
            engine.close()
        return {"task": addr, "dns_s": at - start if at is not None else None,
                "vip_other_host_s": vip_a, "vip_own_host_s": vip_b,
                "load": loadavg()[0]}

    # -- Docker Swarm ----------------------------------------------------------------------
    def stop_flotilla(self) -> None:
        """Flotilla's nodes stopped, their containers and networks gone from
        both engines (Docker networks, bridges, VXLAN devices, VIP rules)."""
        for proc in self.procs:             # the echo servers (the stub stays)
            proc.kill()
            proc.wait(10)
        self.procs = []
        self.c.stop_all()
        for host in self.c.hosts.values():
            host.engine.remove_all_containers()
            env = dict(os.environ, DOCKER_HOST=host.engine.host_url,
                       PYTHONPATH=os.path.join(ROOT, "daemons"))
            subprocess.run(["nsenter", f"--net=/var/run/netns/{host.netns}", sys.executable,
                            "-m", "flotilla.agent.network", "remove", "--cluster-id",
                            self.cluster_id], env=env, capture_output=True, timeout=120)

    def floor_again(self) -> None:
        """The floor's iperf3 server and client and its echo server, again
        (Flotilla's went with its containers)."""
        ea, eb = self.c.hosts["a"].engine, self.c.hosts["b"].engine
        eb.cli("run", "-d", "--name", "fnb-floor-iperf", "--network", "host",
               IPERF_IMAGE, "iperf3", "-s", "-p", str(FLOOR_IPERF_PORT))
        ea.cli("run", "-d", "--init", "--name", "fnb-floor-client", "--network", "host",
               IPERF_IMAGE, "sleep", "100000000")
        self.serve(self.ns_b)

    def swarm(self, count: int, kills: int, rounds: int) -> dict:
        from tests.helpers.cluster import wait_for

        ha, hb = self.c.hosts["a"], self.c.hosts["b"]
        ea, eb = ha.engine, hb.engine
        steps: list[dict] = []
        out: dict = {"steps": steps}

        def step(label: str, fn, *args, **kw):
            t0 = time.monotonic()
            try:
                value = fn(*args, **kw)
            except Exception as exc:         # noqa: BLE001 (kept: the outcome is the result)
                steps.append({"step": label, "ok": False,
                              "seconds": round(time.monotonic() - t0, 2),
                              "error": _one_line(exc)})
                return None
            steps.append({"step": label, "ok": True, "seconds": round(time.monotonic() - t0, 2)})
            return value if value is not None else True

        def cli(engine, *args, timeout: float = 120):
            res = engine.cli(*args, check=False, timeout=timeout)
            if res.returncode != 0:
                raise RuntimeError((res.stderr or res.stdout).strip())
            return res.stdout.strip()

        self.swarm_engines = [ea, eb]
        if not step("swarm init on a", cli, ea, "swarm", "init", "--advertise-addr", ha.addr):
            return out
        token = cli(ea, "swarm", "join-token", "-q", "worker")
        step("swarm join of b", cli, eb, "swarm", "join", "--token", token, "--advertise-addr",
             hb.addr, f"{ha.addr}:2377")
        if not step("overlay network create", cli, ea, "network", "create", "-d", "overlay",
                    "sbench"):
            return out
        node_of = {"a": cli(ea, "info", "-f", "{{.Swarm.NodeID}}"),
                   "b": cli(eb, "info", "-f", "{{.Swarm.NodeID}}")}
        services = (("sserver", "b", 1, ["iperf3", "-s"]), ("slocal", "a", 1, ["iperf3", "-s"]),
                    ("sclient", "a", 1, ["sleep", "100000000"]),
                    ("svictim", "b", 2, ["sleep", "100000000"]))
        for name, host, replicas, command in services:
            step(f"service create {name} (on {host})", cli, ea, "service", "create", "-d",
                 "--name", name, "--network", "sbench", "--replicas", str(replicas),
                 "--constraint", f"node.id=={node_of[host]}", "--dns", ha.addr, "--init",
                 "--no-resolve-image", IPERF_IMAGE, *command)

        def ctr_of(engine, service: str) -> str:
            ids = cli(engine, "ps", "-q", "--filter", "status=running", "--filter",
                      f"label=com.docker.swarm.service.name={service}").split()
            return ids[0] if ids else ""

        engines = {"sserver": eb, "slocal": ea, "sclient": ea, "svictim": eb}
        wanted = {"sserver": 1, "slocal": 1, "sclient": 1, "svictim": 2}

        def all_running():
            return all(len(cli(engines[s], "ps", "-q", "--filter",
                               f"label=com.docker.swarm.service.name={s}", "--filter",
                               "status=running").split()) == n for s, n in wanted.items())
        if not step("every task running", wait_for, all_running, 180,
                    what="the swarm services' tasks running"):
            return out
        client = ctr_of(ea, "sclient")
        client_ns = self.netns_of("a", client)
        resolver = self.nameserver(ea, client)

        def net_addr(engine, ctr: str) -> str:
            return cli(engine, "inspect", "-f",
                       '{{(index .NetworkSettings.Networks "sbench").IPAddress}}', ctr)
        net_id = cli(ea, "network", "inspect", "-f", "{{.ID}}", "sbench")
        vips = json.loads(cli(ea, "service", "inspect", "-f", "{{json .Endpoint.VirtualIPs}}",
                              "sserver") or "null") or []
        vip = [v["Addr"].split("/")[0] for v in vips if v.get("NetworkID") == net_id]
        addrs = {"vip": vip[0] if vip else None,
                 "task": net_addr(eb, ctr_of(eb, "sserver")),
                 "task_same_host": net_addr(ea, ctr_of(ea, "slocal"))}
        out["addresses"] = addrs
        out["resolver"] = resolver
        for ctr_engine, service, host in ((eb, "sserver", "b"), (ea, "slocal", "a")):
            step(f"echo server in {service}", self.serve,
                 self.netns_of(host, ctr_of(ctr_engine, service)))
        # names
        spec = [{"via": "container", "server": resolver, "what": what, "name": name,
                 "expect": expect}
                for what, name, expect in (("service", "sserver", [addrs["vip"]]),
                                           ("tasks", "tasks.sserver", [addrs["task"]]),
                                           ("outside", OUTSIDE, [UPSTREAM_ANSWER]))]
        got = step("names from sclient", in_ns, client_ns, "dns", json.dumps(spec), str(count),
                   timeout=count * 10 + 60)
        out["dns"] = {}
        for one in got if isinstance(got, list) else []:
            out["dns"][one["what"]] = {"name": one["name"], "answer": one["answer"],
                                       "expected": one["expect"],
                                       **dns_stats(one["latencies_us"], one["errors"],
                                                   one["lost"])}
        # connections: does each path answer at all?
        out["paths"] = {}
        for path in ("vip", "task", "task_same_host"):
            res: dict = {"addr": addrs[path]}
            out["paths"][path] = res
            if not addrs[path]:
                res["error"] = "no address"
                continue
            try:
                got = in_ns(client_ns, "probe", "rr", addrs[path], str(PROBE_PORT), "0.5",
                            timeout=60)
            except (RuntimeError, ValueError) as exc:
                got = {"count": 0, "error": _one_line(exc)}
            res["works"] = bool(got.get("count")) and not got.get("error")
            if not res["works"]:
                res["error"] = got.get("error") or "no answer"
        # where they answer: the same rounds as Flotilla's, each beside the
        # floor (host to host) measured again in the same round
        working = [p for p, v in out["paths"].items() if v.get("works")]
        if working:
            step("the floor again", self.floor_again)
            measured: dict[str, dict[str, list]] = {m: {p: [] for p in ["floor", *working]}
                                                    for m in ("throughput", "rr", "connect")}
            out["load_per_round"] = []
            for _ in range(rounds):
                for path in ["floor", *working]:
                    ns, addr = ((self.ns_a, self.fabric.hosts["b"]) if path == "floor"
                                else (client_ns, addrs[path]))
                    ctr, port = (("fnb-floor-client", FLOOR_IPERF_PORT) if path == "floor"
                                 else (client, 5201))
                    try:
                        measured["throughput"][path].append(
                            iperf(ea, ctr, addr, port, self.seconds))
                        for mode in ("rr", "connect"):
                            measured[mode][path].append(in_ns(
                                ns, "probe", mode, addr, str(PROBE_PORT), str(self.seconds),
                                timeout=self.seconds + 60))
                    except (RuntimeError, ValueError) as exc:
                        out["paths"].setdefault(path, {})["measure_error"] = _one_line(exc)
                out["load_per_round"].append(loadavg()[0])
            for path in ["floor", *working]:
                res = out["paths"].setdefault(path, {"works": True})
                for m in ("throughput", "rr", "connect"):
                    if measured[m][path]:
                        res[m] = summary(measured[m][path])
                if path != "floor" and len(measured["throughput"][path]) == len(
                        measured["throughput"]["floor"]) > 0:
                    res["vs_floor"] = {
                        "throughput": ratio(measured["throughput"], path, "gbit_s"),
                        "rr_p50": ratio(measured["rr"], path, "p50_us"),
                        "connect_p50": ratio(measured["connect"], path, "p50_us")}
        # removal from tasks.svictim
        removal = []
        for _ in range(kills if out["dns"].get("tasks", {}).get("lookups") else 0):
            got = step("kill of an svictim task", self.swarm_kill_once, ea, eb, client_ns,
                       resolver, cli, ctr_of, net_addr)
            if isinstance(got, dict):
                removal.append(got)
        out["removal"] = {"kills": removal,
                          "dns": spread([k["dns_s"] for k in removal])} if removal else None
        return out

    def swarm_kill_once(self, ea, eb, client_ns, resolver, cli, ctr_of, net_addr) -> dict:
        from tests.helpers.cluster import wait_for

        def two():
            ids = cli(eb, "ps", "-q", "--filter", "label=com.docker.swarm.service.name=svictim",
                      "--filter", "status=running").split()
            return len(ids) == 2 and ids
        ids = wait_for(two, 120, what="two svictim tasks running")
        addr = net_addr(eb, ids[0])
        watcher = Watcher(client_ns, resolver, "tasks.svictim", addr, 30)
        if not watcher.present():
            raise RuntimeError(f"tasks.svictim does not answer {addr} in sclient")
        start = time.monotonic()
        cli(eb, "kill", ids[0])
        at = watcher.gone_at()
        return {"task": addr, "dns_s": at - start if at is not None else None,
                "load": loadavg()[0]}

    def leave_swarm(self) -> list[str]:
        errors = []
        for engine in reversed(self.swarm_engines):
            res = engine.cli("swarm", "leave", "--force", check=False, timeout=120)
            if res.returncode != 0 and "not part of a swarm" not in res.stderr:
                errors.append(res.stderr.strip())
        self.swarm_engines = []
        return errors

    def teardown(self) -> None:
        from tests.helpers.nscluster import clean_leftovers
        if self.swarm_engines:
            self.leave_swarm()
        for proc in self.procs + ([self.upstream] if self.upstream else []):
            proc.kill()
            proc.wait(10)
        self.c.teardown()
        clean_leftovers(BASE, self.fabric)


def iperf(engine, ctr: str, addr: str, port: int, seconds: float) -> dict:
    res = engine.cli("exec", ctr, "iperf3", "-c", addr, "-p", str(port), "-t", f"{seconds:g}",
                     "-J", check=False, timeout=seconds + 60)
    try:
        end = json.loads(res.stdout)["end"]
        return {"gbit_s": round(end["sum_received"]["bits_per_second"] / 1e9, 3),
                "retransmits": end["sum_sent"].get("retransmits")}
    except (ValueError, KeyError) as exc:
        try:
            why = json.loads(res.stdout).get("error")
        except ValueError:
            why = None
        raise RuntimeError(f"iperf3 to {addr} failed: "
                           f"{why or (res.stdout[-300:] + res.stderr[-300:])}") from exc


def secs(v: float | None) -> str:
    return "(not within 30 s)" if v is None else f"{v:.3f} s"


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return " ".join(text.split())[:400]


def summary(rounds: list[dict]) -> dict:
    """The rounds of one path and measure: medians of the rounds' numbers."""
    keys = [k for k in rounds[0] if isinstance(rounds[0][k], (int, float))]
    out = {k: round(statistics.median(r[k] for r in rounds if r.get(k) is not None), 3)
           for k in keys if any(r.get(k) is not None for r in rounds)}
    out["rounds"] = rounds
    return out


def ratio(measure: dict[str, list], path: str, key: str, base: str = "floor") -> float:
    """The median over the rounds of ``path``'s number over ``base``'s."""
    return round(statistics.median(r[key] / f[key] for r, f in zip(measure[path],
                                                                    measure[base])), 3)


def fmt_dns(v: dict | None) -> str:
    if not v or not v.get("lookups"):
        return "-"
    bad = f", {v['errors']} wrong" if v.get("errors") else ""
    return f"{v['p50_ms']:.2f} / {v['p99_ms']:.2f} ms{bad}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd")
    s = sub.add_parser("serve")
    s.add_argument("port", type=int)
    p = sub.add_parser("probe")
    p.add_argument("mode", choices=("rr", "connect"))
    p.add_argument("addr")
    p.add_argument("port", type=int)
    p.add_argument("seconds", type=float)
    u = sub.add_parser("upstream")
    u.add_argument("addrs", nargs="+")
    d = sub.add_parser("dns")
    d.add_argument("spec")
    d.add_argument("count", type=int)
    w = sub.add_parser("watch")
    w.add_argument("server")
    w.add_argument("name")
    w.add_argument("addr")
    w.add_argument("timeout", type=float)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--dns-queries", type=int, default=500,
                        help="lookups of each name on each path per round")
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--no-swarm", action="store_true")
    parser.add_argument("--out", default=None)
    a = parser.parse_args()
    if a.cmd == "serve":
        serve(a.port)
        return 0
    if a.cmd == "probe":
        print(json.dumps(probe(a.mode, a.addr, a.port, a.seconds)))
        return 0
    if a.cmd == "upstream":
        upstream(a.addrs)
        return 0
    if a.cmd == "dns":
        print(json.dumps(lookups(json.loads(a.spec), a.count)))
        return 0
    if a.cmd == "watch":
        watch(a.server, a.name, a.addr, a.timeout)
        return 0

    subprocess.run([os.path.join(ROOT, "tests", "images", "iperf3.sh")], check=True)
    uptime_start = uptime()
    print(f"machine: {uptime_start} ({os.cpu_count()} cores)", flush=True)
    load_start = loadavg()
    bench = Bench(a.seconds)
    results: dict[str, dict[str, list]] = {m: {p: [] for p in PATHS}
                                           for m in ("throughput", "rr", "connect")}
    dns_raw: dict[tuple[str, str], dict] = {}
    loads: list[float] = []
    kills: list[dict] = []
    swarm: dict | None = None
    try:
        t0 = time.monotonic()
        bench.start()
        print(f"cluster, network and tasks ready in {time.monotonic() - t0:.0f} s "
              f"(overlay MTU {bench.mtu}, the client's resolver {bench.resolver}, "
              f"the network's gateway {bench.gateway}); {a.rounds} rounds of {a.seconds:g} s "
              f"per measure", flush=True)
        for rnd in range(a.rounds):
            for path in PATHS:
                results["throughput"][path].append(bench.iperf(path))
                for mode in ("rr", "connect"):
                    got = bench.run_probe(path, mode, a.seconds)
                    if got is None or not got.get("count"):
                        raise RuntimeError(f"the {mode} probe on {path} failed: {got}")
                    results[mode][path].append(got)
            for one in bench.lookups(a.dns_queries):
                key = (one["via"], one["what"])
                acc = dns_raw.setdefault(key, {"name": one["name"], "server": one["server"],
                                               "answer": one["answer"], "lat": [],
                                               "errors": 0, "lost": 0})
                acc["lat"] += one["latencies_us"]
                acc["errors"] += one["errors"]
                acc["lost"] += one["lost"]
            loads.append(loadavg()[0])
            print(f"round {rnd + 1}: " + ", ".join(
                f"{p} {results['throughput'][p][-1]['gbit_s']} Gbit/s" for p in PATHS)
                + f"; container -> tasks.server p99 "
                f"{pct(dns_raw[('container', 'tasks')]['lat'], 99) / 1000:.2f} ms"
                + f" (load {loads[-1]})", flush=True)
        for k in range(a.kills):
            kills.append(bench.kill_once())
            print(f"kill {k + 1}: out of tasks.victim after {secs(kills[-1]['dns_s'])}, of the "
                  f"VIP on the other host after {secs(kills[-1]['vip_other_host_s'])} "
                  f"(own host {secs(kills[-1]['vip_own_host_s'])})", flush=True)
        if not a.no_swarm:
            print("Docker Swarm on the same two engines ...", flush=True)
            bench.stop_flotilla()
            swarm = bench.swarm(a.dns_queries, a.kills, a.rounds)
            swarm["leave_errors"] = bench.leave_swarm()
    finally:
        bench.teardown()
    load_end = loadavg()
    uptime_end = uptime()
    out: dict = {m: {p: summary(results[m][p]) for p in PATHS} for m in results}
    # Each path against the floors measured in the same round (the load of a
    # shared machine moves between rounds more than between paths).
    out["vs_floor"] = {
        p: {"throughput": ratio(results["throughput"], p, "gbit_s"),
            "throughput_vs_bridge": ratio(results["throughput"], p, "gbit_s", "bridge"),
            "rr_p50": ratio(results["rr"], p, "p50_us"),
            "connect_p50": ratio(results["connect"], p, "p50_us")}
        for p in PATHS[1:]}
    dns = {f"{via}/{what}": {"name": v["name"], "server": v["server"], "answer": v["answer"],
                             **dns_stats(v["lat"], v["errors"], v["lost"])}
           for (via, what), v in dns_raw.items()}
    removal = {"kills": kills,
               "dns": spread([k["dns_s"] for k in kills]),
               "vip_other_host": spread([k["vip_other_host_s"] for k in kills]),
               "vip_own_host": spread([k["vip_own_host_s"] for k in kills])}

    print()
    print(f"{'path':<7} {'Gbit/s':>7} {'retr':>6} {'rr p50':>8} {'rr p99':>8} {'rr/s':>8} "
          f"{'conn p50':>9} {'conn p99':>9} {'conn/s':>7}   (latencies in µs)")
    for path in PATHS:
        t, rr, cn = out["throughput"][path], out["rr"][path], out["connect"][path]
        print(f"{path:<7} {t['gbit_s']:>7.2f} {t.get('retransmits', 0):>6.0f} "
              f"{rr['p50_us']:>8.0f} {rr['p99_us']:>8.0f} {rr['rate']:>8.0f} "
              f"{cn['p50_us']:>9.0f} {cn['p99_us']:>9.0f} {cn['rate']:>7.0f}")
    print("\nagainst the floor (host to host) of the same round, median of rounds: " + "; ".join(
        f"{p}: throughput {v['throughput']:.2f}x ({v['throughput_vs_bridge']:.2f}x the bridge), "
        f"request/response p50 {v['rr_p50']:.2f}x, connection p50 {v['connect_p50']:.2f}x"
        for p, v in out["vs_floor"].items() if p != "bridge")
        + f"; bridge: throughput {out['vs_floor']['bridge']['throughput']:.2f}x")
    print(f"\nnames from the client task, one lookup at a time "
          f"({a.rounds} x {a.dns_queries} per name and path):")
    vias = {"container": f"{bench.resolver}, as the container asks",
            "gateway": f"{bench.gateway}:53, the node's resolver",
            "upstream": f"{UPSTREAM}:53, the stub, from host a"}
    labels = {k: f"{v['name']} ({vias[k.split('/')[0]]})" for k, v in dns.items()}
    width = max(len(t) for t in labels.values()) + 1
    print(f"{'':{width}}{'lookups':>8} {'p50 ms':>7} {'p90 ms':>7} {'p99 ms':>7} {'p99.9':>7} "
          f"{'max ms':>7} {'wrong':>5} {'lost':>4}")
    for key, v in dns.items():
        print(f"{labels[key]:{width}}{v['lookups']:>8} {v['p50_ms']:>7} {v['p90_ms']:>7} "
              f"{v['p99_ms']:>7} {v['p999_ms']:>7} {v['max_ms']:>7} {v['errors']:>5} "
              f"{v['lost']:>4}")
    print(f"\na task killed ({len(kills)} kills), seconds until it is out of: "
          f"tasks.victim p50 {removal['dns']['p50_s']}, max {removal['dns']['max_s']}; "
          f"the VIP on the other host p50 {removal['vip_other_host']['p50_s']}, max "
          f"{removal['vip_other_host']['max_s']}; on its own host p50 "
          f"{removal['vip_own_host']['p50_s']}, max {removal['vip_own_host']['max_s']}")
    targets = {
        "throughput_vs_floor": {p: out["vs_floor"][p]["throughput"] >= TARGETS[
            "throughput_vs_floor"] for p in ("task", "vip")},
        "dns_p99_ms": {k: v["p99_ms"] <= TARGETS["dns_p99_ms"] for k, v in dns.items()
                       if k.startswith("container/")},
        "removal_s": {k: removal[k]["max_s"] is not None
                      and removal[k]["max_s"] <= TARGETS["removal_s"]
                      for k in ("dns", "vip_other_host")},
    }
    print("targets (throughput >= 0.90x the floor, names p99 <= 1 ms as the container asks, "
          "removal <= 1 s): " + "; ".join(
              f"{t}: " + ", ".join(f"{k} {'met' if ok else 'NOT met'}" for k, ok in v.items())
              for t, v in targets.items()))
    if swarm is not None:
        swarm["outcome"] = swarm_outcome(swarm)
        print_side_by_side(out, dns, removal, swarm)
    print(f"\nmachine: at start {uptime_start}; at end {uptime_end} ({os.cpu_count()} cores): "
          f"numbers from a shared machine are indicative")
    path = write_result("network", {
        "params": {"seconds": a.seconds, "rounds": a.rounds, "message_bytes": MESSAGE,
                   "overlay_mtu": bench.mtu, "dns_queries_per_round": a.dns_queries,
                   "kills": a.kills},
        "load_start": load_start, "load_end": load_end, "load_per_round": loads,
        "uptime_start": uptime_start, "uptime_end": uptime_end,
        **out, "dns": dns, "removal": removal, "targets": targets,
        "swarm": swarm if swarm is not None else "not run (--no-swarm)"}, a.out)
    print(f"wrote {path}")
    return 0


def swarm_outcome(swarm: dict) -> str:
    """One line: what worked on Docker Swarm and what did not."""
    failed = [s for s in swarm["steps"] if not s["ok"]]
    setup = [s for s in failed if not s["step"].startswith(("kill", "echo"))]
    if setup and "paths" not in swarm:
        return "setup failed: " + "; ".join(f"{s['step']}: {s['error']}" for s in setup)
    parts = []
    for v in swarm.get("dns", {}).values():
        ok = v["lookups"] and not v["errors"] and not v["lost"]
        parts.append(f"name {v['name']} {'answers' if ok else 'fails'}"
                     + ("" if ok else f" (answer {v['answer']}, expected {v['expected']})"))
    for path, v in swarm.get("paths", {}).items():
        if path == "floor":
            continue
        label = {"vip": "VIP", "task": "task on the other host",
                 "task_same_host": "task on the same host"}[path]
        parts.append(f"connection to the {label} "
                     + ("works" if v.get("works") else
                        f"fails ({v.get('error') or v.get('rr', {}).get('error')})"))
    return "; ".join(parts)


def print_side_by_side(out: dict, dns: dict, removal: dict, swarm: dict) -> None:
    rows: list[tuple[str, str, str]] = []
    names = {"service": "name -> VIP", "tasks": "tasks.NAME", "outside": "outside name (forwarded)"}
    for what, label in names.items():
        rows.append((f"{label}, p50 / p99", fmt_dns(dns.get(f"container/{what}")),
                     fmt_dns(swarm.get("dns", {}).get(what))))

    def text(thr: dict, rr: dict, cn: dict, vs: float | None) -> str:
        ratio_text = f" ({vs:.2f}x the floor)" if vs is not None else ""
        return (f"{thr['gbit_s']:.2f} Gbit/s{ratio_text}, rr {rr['p50_us']:.0f} µs, "
                f"conn {cn['p50_us']:.0f} µs")

    def conn(path: str, flot: str | None) -> None:
        sw = swarm.get("paths", {}).get(path, {})
        if not sw:
            sw_text = "-"
        elif sw.get("works") and "throughput" in sw:
            sw_text = text(sw["throughput"], sw["rr"], sw["connect"],
                           sw.get("vs_floor", {}).get("throughput"))
        elif sw.get("works"):
            sw_text = "works (not measured: " + str(sw.get("measure_error")) + ")"
        else:
            sw_text = "fails: " + str(sw.get("error") or "-")
        if flot is None:
            fl_text = "(no such path measured)"
        else:
            fl_text = text(out["throughput"][flot], out["rr"][flot], out["connect"][flot],
                           out["vs_floor"][flot]["throughput"] if flot != "floor" else None)
        label = {"floor": "floor: host to host, same rounds", "vip": "connection to the VIP",
                 "task": "connection to the task (other host)",
                 "task_same_host": "connection to a task on the same host"}[path]
        rows.append((label, fl_text, sw_text))
    conn("floor", "floor")
    conn("vip", "vip")
    conn("task", "task")
    conn("task_same_host", None)
    sr = swarm.get("removal") or {}
    rows.append(("task killed -> out of tasks.NAME, p50 / max",
                 f"{removal['dns']['p50_s']} / {removal['dns']['max_s']} s",
                 f"{sr['dns']['p50_s']} / {sr['dns']['max_s']} s (missed {sr['dns']['missed']})"
                 if sr else "-"))
    rows.append(("task killed -> out of the VIP (other host)",
                 f"{removal['vip_other_host']['p50_s']} / {removal['vip_other_host']['max_s']} s",
                 "-"))
    width = max(len(r[0]) for r in rows) + 2
    w2 = max(len(r[1]) for r in rows) + 2
    print(f"\n{'Flotilla beside Docker Swarm (same hosts)':{width}}{'Flotilla':{w2}}Docker Swarm")
    for r in rows:
        print(f"{r[0]:{width}}{r[1]:{w2}}{r[2]}")
    for s in swarm["steps"]:
        if not s["ok"]:
            print(f"  swarm step failed: {s['step']}: {s['error']}")
    print(f"Docker Swarm: {swarm['outcome']}")
    if swarm.get("load_per_round"):
        print(f"  (Swarm's rounds at load {swarm['load_per_round']})")


if __name__ == "__main__":
    sys.exit(main())
