#!/usr/bin/env python3
"""Overlay networks: throughput and latency between two tasks on different
hosts, against the floor (the same two hosts' underlay, no overlay).

The hosts are those of tests/integration/test_service_networks.py: two
network namespaces (``a``, ``b``) on one bridge, each with a Docker engine
of its own managing its iptables (tests/helpers/nscluster.py). A Flotilla
cluster runs a manager on ``a`` and a worker on ``b``; on the overlay
network ``bench``, the service ``server`` (``flotilla-test/iperf3:1``,
``iperf3 -s``) runs on ``b`` and the service ``client`` (the same image,
idle) on ``a``. Traffic between them leaves ``a``'s engine as VXLAN (UDP
4789) to ``b``'s.

Three paths, measured in turn in each of ``--rounds`` rounds (the machine
is shared: interleaving gives each path the same load):

* ``floor``: host ``a`` to host ``b``'s own address, no overlay (iperf3 in
  containers with host networking; the probes in the hosts' namespaces);
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
(floor) or in the tasks' containers' namespaces (overlay): the same code on
every path. Docker Swarm's own overlay cannot be measured beside it: on
this kernel its connections fail (VIPs, task addresses and the routing
mesh alike; see docs/networking.md), so the comparison is with the floor.

    python bench/network.py [--seconds 5] [--rounds 3] [--out PATH]

Builds the iperf3 image when missing (tests/images/iperf3.sh). Prints a
table and writes bench/results/network.json, with the machine's load at the
start and at the end.
"""

from __future__ import annotations

import argparse
import json
import os
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
PATHS = ("floor", "task", "vip")
SWARM = ("not measured: Docker Swarm's overlay does not work on this kernel (an overlay "
         "network and its services are created and DNS answers, but connections to VIPs, "
         "to task addresses and to the routing mesh all fail); compared with the floor")


# -- the probes (run inside a namespace) --------------------------------------------------

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
    per request) one after the other for ``seconds``; latencies in µs."""
    msg = b"x" * MESSAGE
    lat: list[float] = []
    failed = 0
    conn = None
    if mode == "rr":
        conn = socket.create_connection((addr, port), timeout=5)
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
                with socket.create_connection((addr, port), timeout=5) as c:
                    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    c.sendall(msg)
                    _recv_exactly(c, MESSAGE)
        except OSError:
            failed += 1
            continue
        n += 1
        if n > WARMUP:
            lat.append((time.perf_counter() - t0) * 1e6)
    took = time.perf_counter() - start
    return {"count": len(lat), "failed": failed, "rate": round(n / took, 1),
            "p50_us": round(pct(lat, 50), 1), "p90_us": round(pct(lat, 90), 1),
            "p99_us": round(pct(lat, 99), 1)}


# -- the bench ------------------------------------------------------------------------------

def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def nsenter(netns_path: str, *args: str) -> list[str]:
    return ["nsenter", f"--net={netns_path}", sys.executable, os.path.abspath(__file__), *args]


class Bench:
    def __init__(self, seconds: float):
        from tests.helpers.netns import Fabric
        from tests.helpers.nscluster import NsCluster, clean_leftovers

        self.seconds = seconds
        self.fabric = Fabric(prefix="fnb", subnet="10.79.44")
        clean_leftovers(BASE, self.fabric)
        self.c = NsCluster(BASE, self.fabric)
        self.servers: list[subprocess.Popen] = []

    # -- setup -----------------------------------------------------------------------
    def start(self) -> None:
        self.fabric.create()
        for name, octet in HOSTS.items():
            self.c.add_host(name, octet, images=(IPERF_IMAGE,), iptables=True)
        self.c.init("a")
        self.c.join("b", "worker")
        admin = self.admin = self.c.admin()
        self.net = admin.post("/v1/networks", {"name": "bench"})
        for name, host, command in (("server", "b", ["iperf3", "-s"]),
                                    ("client", "a", ["sleep", "100000000"])):
            admin.post("/v1/services", {
                "name": name, "replicas": 1,
                "task": {"container": {"image": IPERF_IMAGE, "command": command, "init": True},
                         "networks": [{"target": "bench"}],
                         "placement": {"constraints": [f"node.hostname=={host}"]}}})
        from tests.helpers.cluster import wait_for
        wait_for(lambda: all(self.running(s) for s in ("server", "client")), 180,
                 what="the server and the client running")
        server = self.running("server")
        self.server_addr = next(a["addr"].split("/")[0] for a in server["networks"])
        self.vip = admin.get("/v1/services/server")["virtual_ips"][0]["addr"].split("/")[0]
        self.client_ctr = self.container("a", "client")
        self.server_ctr = self.container("b", "server")
        hb = self.c.hosts["b"]
        hb.engine.cli("run", "-d", "--name", "fnb-floor-iperf", "--network", "host",
                      IPERF_IMAGE, "iperf3", "-s", "-p", str(FLOOR_IPERF_PORT))
        # the echo servers: in host b's namespace (floor) and in the server task's
        self.serve(f"/var/run/netns/{hb.netns}")
        self.serve(f"/proc/{self.pid('b', self.server_ctr)}/ns/net")
        wait_for(lambda: self.reachable(), 60, what="the server through its VIP")
        self.mtu = self.c.hosts["a"].engine.cli(
            "exec", self.client_ctr, "cat", "/sys/class/net/eth0/mtu").stdout.strip()

    def running(self, service: str) -> dict | None:
        for t in self.admin.get("/v1/tasks", params={"service": service}):
            if t["state"] == "running" and t["desired_state"] == "running":
                return t
        return None

    def container(self, host: str, service: str) -> str:
        out = self.c.hosts[host].engine.cli(
            "ps", "-q", "--filter", f"label=flotilla.service.name={service}").stdout.split()
        if len(out) != 1:
            raise RuntimeError(f"expected one container of {service} on {host}: {out}")
        return out[0]

    def pid(self, host: str, ctr: str) -> int:
        return int(self.c.hosts[host].engine.cli(
            "inspect", "-f", "{{.State.Pid}}", ctr).stdout.strip())

    def serve(self, netns_path: str) -> None:
        proc = subprocess.Popen(nsenter(netns_path, "serve", str(PROBE_PORT)),
                                stdout=subprocess.PIPE, text=True)
        self.servers.append(proc)
        if proc.stdout is None or proc.stdout.readline().strip() != "ready":
            raise RuntimeError(f"the echo server in {netns_path} did not start")

    def reachable(self) -> bool:
        res = self.run_probe("vip", "rr", 0.2)
        return res is not None and res["count"] > 0

    # -- measures ----------------------------------------------------------------------
    def client_ns(self, path: str) -> str:
        if path == "floor":
            return f"/var/run/netns/{self.c.hosts['a'].netns}"
        return f"/proc/{self.pid('a', self.client_ctr)}/ns/net"

    def target(self, path: str) -> str:
        return {"floor": self.fabric.hosts["b"], "task": self.server_addr, "vip": self.vip}[path]

    def run_probe(self, path: str, mode: str, seconds: float) -> dict | None:
        res = subprocess.run(nsenter(self.client_ns(path), "probe", mode, self.target(path),
                                     str(PROBE_PORT), str(seconds)),
                             capture_output=True, text=True, timeout=seconds + 60)
        if res.returncode != 0:
            return None
        return json.loads(res.stdout)

    def iperf(self, path: str) -> dict:
        a = self.c.hosts["a"].engine
        if path == "floor":
            argv = ["run", "--rm", "--network", "host", IPERF_IMAGE, "iperf3", "-c",
                    self.target(path), "-p", str(FLOOR_IPERF_PORT)]
        else:
            argv = ["exec", self.client_ctr, "iperf3", "-c", self.target(path)]
        res = a.cli(*argv, "-t", f"{self.seconds:g}", "-J", check=False,
                    timeout=self.seconds + 60)
        try:
            end = json.loads(res.stdout)["end"]
            return {"gbit_s": round(end["sum_received"]["bits_per_second"] / 1e9, 3),
                    "retransmits": end["sum_sent"].get("retransmits")}
        except (ValueError, KeyError) as exc:
            raise RuntimeError(f"iperf3 on {path} failed: {res.stdout[-500:]} "
                               f"{res.stderr[-500:]}") from exc

    def teardown(self) -> None:
        from tests.helpers.nscluster import clean_leftovers
        for proc in self.servers:
            proc.kill()
            proc.wait(10)
        self.c.teardown()
        clean_leftovers(BASE, self.fabric)


def summary(rounds: list[dict]) -> dict:
    """The rounds of one path and measure: medians of the rounds' numbers."""
    keys = [k for k in rounds[0] if isinstance(rounds[0][k], (int, float))]
    out = {k: round(statistics.median(r[k] for r in rounds if r.get(k) is not None), 3)
           for k in keys if any(r.get(k) is not None for r in rounds)}
    out["rounds"] = rounds
    return out


def ratio(measure: dict[str, list], path: str, key: str) -> float:
    """The median over the rounds of ``path``'s number over the floor's."""
    return round(statistics.median(r[key] / f[key] for r, f in zip(measure[path],
                                                                    measure["floor"])), 3)


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
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default=None)
    a = parser.parse_args()
    if a.cmd == "serve":
        serve(a.port)
        return 0
    if a.cmd == "probe":
        print(json.dumps(probe(a.mode, a.addr, a.port, a.seconds)))
        return 0

    subprocess.run([os.path.join(ROOT, "tests", "images", "iperf3.sh")], check=True)
    load_start = loadavg()
    bench = Bench(a.seconds)
    results: dict[str, dict[str, list]] = {m: {p: [] for p in PATHS}
                                           for m in ("throughput", "rr", "connect")}
    loads: list[float] = []
    try:
        t0 = time.monotonic()
        bench.start()
        print(f"cluster, network and tasks ready in {time.monotonic() - t0:.0f} s "
              f"(overlay MTU {bench.mtu}); {a.rounds} rounds of {a.seconds:g} s per measure",
              flush=True)
        for rnd in range(a.rounds):
            for path in PATHS:
                results["throughput"][path].append(bench.iperf(path))
                for mode in ("rr", "connect"):
                    got = bench.run_probe(path, mode, a.seconds)
                    if got is None:
                        raise RuntimeError(f"the {mode} probe on {path} failed")
                    results[mode][path].append(got)
            loads.append(loadavg()[0])
            print(f"round {rnd + 1}: " + ", ".join(
                f"{p} {results['throughput'][p][-1]['gbit_s']} Gbit/s" for p in PATHS)
                + f" (load {loads[-1]})", flush=True)
    finally:
        bench.teardown()
    load_end = loadavg()
    out: dict = {m: {p: summary(results[m][p]) for p in PATHS} for m in results}
    # Each path against the floor measured in the same round (the load of a
    # shared machine moves between rounds more than between paths).
    out["vs_floor"] = {
        p: {"throughput": ratio(results["throughput"], p, "gbit_s"),
            "rr_p50": ratio(results["rr"], p, "p50_us"),
            "connect_p50": ratio(results["connect"], p, "p50_us")}
        for p in PATHS[1:]}

    print()
    print(f"{'path':<7} {'Gbit/s':>7} {'retr':>6} {'rr p50':>8} {'rr p99':>8} {'rr/s':>8} "
          f"{'conn p50':>9} {'conn p99':>9} {'conn/s':>7}   (latencies in µs)")
    for path in PATHS:
        t, rr, cn = out["throughput"][path], out["rr"][path], out["connect"][path]
        print(f"{path:<7} {t['gbit_s']:>7.2f} {t.get('retransmits', 0):>6.0f} "
              f"{rr['p50_us']:>8.0f} {rr['p99_us']:>8.0f} {rr['rate']:>8.0f} "
              f"{cn['p50_us']:>9.0f} {cn['p99_us']:>9.0f} {cn['rate']:>7.0f}")
    print("\nagainst the floor of the same round (median of rounds): " + "; ".join(
        f"{p}: throughput {v['throughput']:.2f}x, request/response p50 {v['rr_p50']:.2f}x, "
        f"connection p50 {v['connect_p50']:.2f}x" for p, v in out["vs_floor"].items()))
    print(f"Docker Swarm: {SWARM}")
    print(f"load average at start {load_start}, at end {load_end} ({os.cpu_count()} cores)")
    path = write_result("network", {
        "params": {"seconds": a.seconds, "rounds": a.rounds, "message_bytes": MESSAGE,
                   "overlay_mtu": bench.mtu},
        "load_start": load_start, "load_end": load_end, "load_per_round": loads,
        "swarm": SWARM, **out}, a.out)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
