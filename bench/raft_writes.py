#!/usr/bin/env python3
"""Durable (fsynced on a majority) writes per second and latency, 3 managers.

Three measurements, each on three real processes on loopback:

- ``store``: client threads inside the leader's process call
  ``Store.commit()`` (one object created per write). This is the replicated,
  durable write path itself, as a database benchmark measures it.
- ``api``: client threads send ``POST /v1/configs`` over HTTPS (keep-alive,
  client certificates) to a full manager cluster (gunicorn + Flask + store).
- ``etcd``: the same on a 3-member etcd cluster for comparison (Debian's
  ``etcd-server``, default settings: its WAL is fsynced before a write is
  acknowledged; plain HTTP, no TLS). Client threads put one new key per write
  (``POST /v3/kv/put`` on etcd's gRPC gateway, keep-alive HTTP) to the
  leader, shared by a few processes so that one Python interpreter is not the
  limit. ``--etcd-check-perf`` adds a cross-check with etcd's own Go client
  (``etcdctl check perf --load=l``: 500 clients for 60 s).

Flotilla's store and API are over mutual TLS. Every mode also records the
CPU used by the servers, by the client and by the whole machine: on two
cores the client's share decides how much is left for the servers.

    python bench/raft_writes.py [--mode all|store|api|etcd] [--clients 64] [--duration 10]
                                [--etcd-clients N] [--etcd-procs 2] [--etcd-check-perf]

Each mode runs ``--runs`` times (3) and the median run is kept; the modes take
turns (store, api, etcd, store, ...), so that a shared machine that speeds up
or slows down during the benchmark affects every system alike. Prints a
table and writes bench/results/raft_writes.json.
"""

from __future__ import annotations

import argparse
import base64
import ctypes
import http.client
import json
import multiprocessing as mp
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

from benchlib import group_cpu, machine_cpu, pct, process_cpu, write_result

ETCD_INSTALL = "apt-get install -y etcd-server etcd-client"


def summarise(name, latencies, seconds, clients, extra=None):
    out = {
        "mode": name,
        "clients": clients,
        "writes": len(latencies),
        "seconds": round(seconds, 3),
        "writes_per_s": round(len(latencies) / seconds, 1),
        "p50_ms": round(pct(latencies, 50) * 1000, 2),
        "p99_ms": round(pct(latencies, 99) * 1000, 2),
        "max_ms": round(max(latencies) * 1000, 2) if latencies else 0,
    }
    out.update(extra or {})
    return out


def _own_cpu(who=resource.RUSAGE_SELF):
    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime


class CpuMeter:
    """CPU used during one run: by the servers, by the client, by the whole machine.

    On a 2-core machine every mode is bound by CPU, so this says where it went:
    ``other_busy_cores`` is what neither the servers nor the client were
    charged for (kernel work such as loopback softirqs, and anything else
    running on the machine at the time).
    """

    def __init__(self, server_cpu, client_cpu=None):
        self.server_cpu = server_cpu    # () -> CPU seconds so far
        self.client_cpu = client_cpu    # same, or None: the clients run inside a server
        self.before = self.after = None

    def _read(self):
        return (self.server_cpu(), self.client_cpu() if self.client_cpu else 0.0) + machine_cpu()

    def start(self):
        self.before = self._read()

    def stop(self):
        self.after = self._read()

    def result(self, seconds, writes, client_seconds=None):
        (s0, c0, b0, t0), (s1, c1, b1, t1) = self.before, self.after
        server = s1 - s0
        client = client_seconds if client_seconds is not None else c1 - c0
        busy = (b1 - b0) / max(t1 - t0, 1e-9) * (os.cpu_count() or 1)
        return {"server_cpu_cores": round(server / seconds, 2),
               "server_cpu_ms_per_write": round(server * 1000 / writes, 3) if writes else None,
               "client_cpu_cores": (round(client / seconds, 2)
                                    if self.client_cpu or client_seconds is not None else None),
               "machine_busy_cores": round(busy, 2),
               "other_busy_cores": round(max(0.0, busy - (server + client) / seconds), 2)}


# -- store mode -----------------------------------------------------------------------

def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _member(idx, addrs, ids, base, cluster_id, go, results, clients, duration):
    from flotilla.common import logs
    from flotilla.manager.raft.node import RaftNode, RaftSettings
    from flotilla.manager.raft.security import RaftSecurity, SecurityCounters
    from flotilla.manager.store.store import Op, Store, new_id

    logs.setup("warning", f"member{idx}")
    d = os.path.join(base, f"m{idx}")
    store = Store()
    security = RaftSecurity(bundle_path=os.path.join(d, "node.pem"), ca_path=os.path.join(base, "ca.pem"),
                            cluster_id=cluster_id, store=store,
                            members_path=os.path.join(d, "raft", "members.json"),
                            counters=SecurityCounters())
    security.remember(dict(zip(addrs, ids)))
    raft = RaftNode(addrs[idx], addrs, os.path.join(d, "raft"), store.sm, security, RaftSettings())
    store.attach(raft)
    store.start()
    raft.start()
    go.wait()
    if not raft.is_leader:
        time.sleep(duration + 5)
        raft.stop()
        return
    store.barrier()
    lat = []
    lock = threading.Lock()
    stop = time.monotonic() + duration
    errors = [0]

    def client():
        mine = []
        while time.monotonic() < stop:
            t = time.monotonic()
            try:
                store.commit([Op.create("config", {"id": new_id(), "name": new_id(), "data": "eA==",
                                                   "labels": {}})])
            except Exception:
                errors[0] += 1
                continue
            mine.append(time.monotonic() - t)
        with lock:
            lat.extend(mine)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - t0
    results.put({"latencies": lat, "seconds": elapsed, "errors": errors[0],
                 "fsyncs": raft.journal.syncs, "entries": store.entries_proposed,
                 "txns": store.txns_proposed})
    raft.stop()


def bench_store(clients, duration):
    from flotilla.ca import certs

    base = tempfile.mkdtemp(prefix="flotilla-rw-")
    cluster_id = "benchcluster"
    root = certs.RootCA.create(cluster_id)
    with open(os.path.join(base, "ca.pem"), "wb") as f:
        f.write(root.cert_pem)
    addrs = [f"127.0.0.1:{_free_port()}" for _ in range(3)]
    ids = [f"member{i}" for i in range(3)]
    for i in range(3):
        os.makedirs(os.path.join(base, f"m{i}", "raft"), mode=0o700)
        key, cert = root.issue(certs.ROLE_MANAGER, ids[i], cluster_id, 3600)
        certs.write_node_bundle(os.path.join(base, f"m{i}", "node.pem"), key, cert)
    ctx = mp.get_context("spawn")
    go = ctx.Event()
    results = ctx.Queue()
    procs = [ctx.Process(target=_member, args=(i, addrs, ids, base, cluster_id, go, results,
                                               clients, duration)) for i in range(3)]
    for p in procs:
        p.start()
    # The client threads run inside the leader: their CPU counts as the servers'.
    cpu = CpuMeter(lambda: sum(process_cpu(p.pid) for p in procs))
    time.sleep(3)  # let the members elect a leader
    cpu.start()
    go.set()
    res = results.get(timeout=duration + 60)
    cpu.stop()
    for p in procs:
        p.join(duration + 30)
    return summarise("store", res["latencies"], res["seconds"], clients, {
        "errors": res["errors"], "fsyncs_on_leader": res["fsyncs"],
        "raft_entries": res["entries"], "txns_per_entry": round(res["txns"] / max(res["entries"], 1), 1),
        **cpu.result(res["seconds"], len(res["latencies"]))})


# -- api mode ---------------------------------------------------------------------------

def bench_api(clients, duration):
    from flotilla.common import tls
    from tests.helpers.cluster import LocalCluster

    c = LocalCluster(tempfile.mkdtemp(prefix="flotilla-rwapi-"), heartbeat="5s")
    try:
        c.init("m1")
        c.join("m2")
        c.join("m3")
        leader = c.wait_leader_ready()
        host, port = leader.addr.rsplit(":", 1)
        ctx = tls.client_context_from_dir(c.admin_dir)
        lat = []
        lock = threading.Lock()
        errors = [0]
        stop = time.monotonic() + duration
        body = json.dumps({"name": "", "data": base64.b64encode(b"x").decode()})

        def client(cid):
            conn = http.client.HTTPSConnection(host, int(port), context=ctx, timeout=30)
            sock = socket.create_connection((host, int(port)))
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn.sock = ctx.wrap_socket(sock, server_hostname=tls.MANAGER_SERVER_NAME)
            mine = []
            n = 0
            while time.monotonic() < stop:
                n += 1
                payload = body.replace('"name": ""', f'"name": "c{cid}-{n}"')
                t = time.monotonic()
                conn.request("POST", "/v1/configs", payload, {"Content-Type": "application/json"})
                resp = conn.getresponse()
                resp.read()
                if resp.status != 201:
                    errors[0] += 1
                    continue
                mine.append(time.monotonic() - t)
            with lock:
                lat.extend(mine)
            conn.close()

        threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
        # Each node runs in its own session: its process group holds the manager too.
        cpu = CpuMeter(lambda: group_cpu(n.proc.pid for n in c.nodes.values() if n.proc), _own_cpu)
        cpu.start()
        t0 = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        seconds = time.monotonic() - t0
        cpu.stop()
        return summarise("api", lat, seconds, clients, {"errors": errors[0],
                                                        **cpu.result(seconds, len(lat))})
    finally:
        c.stop_all()


# -- etcd mode --------------------------------------------------------------------------

def etcd_binaries():
    """Paths of etcd and etcdctl, or exit with how to install them."""
    etcd, etcdctl = shutil.which("etcd"), shutil.which("etcdctl")
    if not (etcd and etcdctl):
        sys.exit(f"raft_writes: etcd is not installed; install it with "
                 f"`{ETCD_INSTALL}` (or `make bench-deps`)")
    return etcd, etcdctl


_libc = ctypes.CDLL(None, use_errno=True)


def _die_with_parent():
    # Runs in the child between fork and exec: if the benchmark is killed
    # (even with SIGKILL), the kernel kills the etcd member too.
    _libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _gateway(port, path, body, timeout=2):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        resp = conn.getresponse()
        data = resp.read()
        if resp.status != 200:
            raise RuntimeError(f"{path}: HTTP {resp.status} {data[:200]!r}")
        return json.loads(data)
    finally:
        conn.close()


class EtcdCluster:
    """Three etcd members on loopback, each with its own data directory and ports.

    Default settings apart from addresses and log level: every member fsyncs
    its WAL before acknowledging, as etcd always does.
    """

    def __init__(self, binary, size=3):
        self.binary = binary
        self.base = None
        self.names = [f"etcd{i}" for i in range(size)]
        self.client_ports = []
        self.peer_ports = []
        self.procs = []

    def start(self, timeout=30):
        self.base = tempfile.mkdtemp(prefix="flotilla-rwetcd-")
        ports = _free_ports(2 * len(self.names))
        self.client_ports, self.peer_ports = ports[:len(self.names)], ports[len(self.names):]
        initial = ",".join(f"{n}=http://127.0.0.1:{p}" for n, p in zip(self.names, self.peer_ports))
        for name, cport, pport in zip(self.names, self.client_ports, self.peer_ports):
            cmd = [self.binary, "--name", name, "--data-dir", os.path.join(self.base, name),
                   "--listen-client-urls", f"http://127.0.0.1:{cport}",
                   "--advertise-client-urls", f"http://127.0.0.1:{cport}",
                   "--listen-peer-urls", f"http://127.0.0.1:{pport}",
                   "--initial-advertise-peer-urls", f"http://127.0.0.1:{pport}",
                   "--initial-cluster", initial, "--initial-cluster-state", "new",
                   "--initial-cluster-token", "flotilla-bench",
                   "--logger", "zap", "--log-level", "warn"]
            with open(os.path.join(self.base, f"{name}.log"), "wb") as log:
                self.procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                                   stdin=subprocess.DEVNULL,
                                                   preexec_fn=_die_with_parent))
        return self.wait_leader(timeout)

    def wait_leader(self, timeout=30):
        """Client port of the leader, once every member names the same one."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for p, name in zip(self.procs, self.names):
                if p.poll() is not None:
                    raise RuntimeError(f"etcd member {name} exited ({p.returncode}):\n"
                                       + self.log_tail(name))
            try:
                status = [_gateway(port, "/v3/maintenance/status", {}) for port in self.client_ports]
            except (OSError, RuntimeError, ValueError):
                time.sleep(0.2)
                continue
            leaders = {st.get("leader") for st in status}
            if len(leaders) == 1 and None not in leaders and leaders != {"0"}:
                for port, st in zip(self.client_ports, status):
                    if st["header"]["member_id"] == st["leader"]:
                        return port
            time.sleep(0.2)
        raise RuntimeError("etcd cluster did not elect a leader:\n"
                           + "\n".join(self.log_tail(n) for n in self.names))

    def log_tail(self, name, lines=20):
        try:
            with open(os.path.join(self.base, f"{name}.log"), errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return ""

    def cpu_seconds(self):
        return sum(process_cpu(p.pid) for p in self.procs if p.poll() is None)

    def stop(self):
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.procs = []
        if self.base:
            shutil.rmtree(self.base, ignore_errors=True)
            self.base = None


def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _new_id():
    # The same shape as the store's ids: base 32 of 15 random bytes.
    return base64.b32encode(os.urandom(15)).decode().lower()


def _etcd_load(ports, first, threads, duration, start, results):
    """One load-generator process: `threads` clients, one keep-alive connection each.

    Client number ``first + i`` talks to ``ports[(first + i) % len(ports)]``.
    """
    headers = {"Content-Type": "application/json"}
    lat = []
    lock = threading.Lock()
    errors = [0]

    def connect(port):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.connect()
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn

    conns = [connect(ports[(first + i) % len(ports)]) for i in range(threads)]
    stop = [0.0]

    def client(conn):
        mine = []
        while time.monotonic() < stop[0]:
            # One new key per write; the value is the object the store mode creates.
            oid = _new_id()
            value = json.dumps({"id": oid, "name": _new_id(), "data": "eA==", "labels": {}})
            body = json.dumps({"key": base64.b64encode(f"/configs/{oid}".encode()).decode(),
                               "value": base64.b64encode(value.encode()).decode()})
            t = time.monotonic()
            try:
                conn.request("POST", "/v3/kv/put", body, headers)
                resp = conn.getresponse()
                resp.read()
            except (OSError, http.client.HTTPException):
                errors[0] += 1
                conn.close()
                conn = connect(conn.port)
                continue
            if resp.status != 200:
                errors[0] += 1
                continue
            mine.append(time.monotonic() - t)
        with lock:
            lat.extend(mine)
        conn.close()

    workers = [threading.Thread(target=client, args=(c,)) for c in conns]
    start.wait()
    cpu0 = _own_cpu()
    t0 = time.monotonic()
    stop[0] = t0 + duration
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    elapsed = time.monotonic() - t0
    results.put({"latencies": lat, "seconds": elapsed, "errors": errors[0],
                 "cpu": _own_cpu() - cpu0})


def bench_etcd(binary, clients, duration, procs, endpoints="leader"):
    """Durable writes/s on a fresh 3-member etcd cluster, through its gRPC gateway.

    ``endpoints``: ``leader`` (like the store mode, whose clients run in the
    leader) or ``all`` (clients spread over the members; followers forward).
    """
    cluster = EtcdCluster(binary)
    ctx = mp.get_context("spawn")
    loaders = []
    try:
        leader = cluster.start()
        ports = [leader] if endpoints == "leader" else cluster.client_ports
        procs = max(1, min(procs, clients))
        start = ctx.Barrier(procs + 1)
        results = ctx.Queue()
        shares = [clients // procs + (1 if i < clients % procs else 0) for i in range(procs)]
        loaders = [ctx.Process(target=_etcd_load,
                               args=(ports, sum(shares[:i]), n, duration, start, results))
                   for i, n in enumerate(shares)]
        for p in loaders:
            p.start()
        cpu = CpuMeter(cluster.cpu_seconds)
        start.wait(timeout=60)  # every client connected
        cpu.start()
        parts = [results.get(timeout=duration + 60) for _ in loaders]
        cpu.stop()
        for p in loaders:
            p.join(30)
        lat = [x for part in parts for x in part["latencies"]]
        seconds = max(part["seconds"] for part in parts)
        return summarise("etcd", lat, seconds, clients, {
            "errors": sum(part["errors"] for part in parts),
            "client_processes": procs,
            "endpoints": endpoints,
            **cpu.result(seconds, len(lat), client_seconds=sum(part["cpu"] for part in parts))})
    finally:
        for p in loaders:
            if p.is_alive():
                p.terminate()
                p.join(5)
        cluster.stop()


def etcd_check_perf(binary, etcdctl, endpoints="leader"):
    """etcd's own Go client as a cross-check: `etcdctl check perf --load=l`.

    500 clients (one gRPC connection each) put 256-byte keys with 1 KiB values
    for 60 s, rate-limited to 8,000 writes/s; it reports the throughput reached.
    """
    cluster = EtcdCluster(binary)
    try:
        leader = cluster.start()
        ports = [leader] if endpoints == "leader" else cluster.client_ports
        cpu = CpuMeter(cluster.cpu_seconds, lambda: _own_cpu(resource.RUSAGE_CHILDREN))
        cpu.start()
        t0 = time.monotonic()
        cmd = [etcdctl, "--endpoints=" + ",".join(f"127.0.0.1:{p}" for p in ports),
               "check", "perf", "--load=l"]
        out = subprocess.run(cmd, env=dict(os.environ, ETCDCTL_API="3"),
                             capture_output=True, text=True, timeout=180)
        seconds = time.monotonic() - t0
        cpu.stop()
        m = re.search(r"Throughput (?:is|too low:) (\d+) writes/s", out.stdout)
        if not m:
            raise RuntimeError(f"etcdctl check perf: unexpected output:\n{out.stdout}{out.stderr}")
        slowest = re.search(r"Slowest request took(?: too long:)? ([\d.]+)s", out.stdout)
        rate = float(m.group(1))
        return {"mode": "etcd-check-perf", "clients": 500, "writes_per_s": rate,
                "slowest_ms": round(float(slowest.group(1)) * 1000, 1) if slowest else None,
                "key_bytes": 256, "value_bytes": 1024, "seconds": round(seconds, 1),
                "endpoints": endpoints, "command": "etcdctl check perf --load=l",
                **cpu.result(seconds, rate * 60)}
    finally:
        cluster.stop()


MODES = ("store", "api", "etcd")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", default="all",
                    help="all (also: both) or a comma-separated list of store, api, etcd")
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--api-clients", type=int, default=32)
    ap.add_argument("--etcd-clients", type=int, default=None, help="default: --clients")
    ap.add_argument("--etcd-procs", type=int, default=2,
                    help="processes that share the etcd clients (the Python client needs CPU too)")
    ap.add_argument("--etcd-endpoints", choices=["leader", "all"], default="leader",
                    help="etcd members the clients talk to (default: the leader, like --mode store)")
    ap.add_argument("--etcd-check-perf", action="store_true",
                    help="also run `etcdctl check perf --load=l` (60 s) as a cross-check")
    ap.add_argument("--duration", type=float, default=10)
    ap.add_argument("--runs", type=int, default=3, help="runs per mode; the median run is kept")
    ap.add_argument("--out", default=None, help="JSON path (default bench/results/raft_writes.json)")
    args = ap.parse_args()
    load_at_start = [round(x, 2) for x in os.getloadavg()]
    modes = list(MODES) if args.mode in ("all", "both") else args.mode.split(",")
    if any(m not in MODES for m in modes):
        ap.error(f"--mode: expected all or a list of {', '.join(MODES)}")
    etcd_clients = args.etcd_clients or args.clients
    if "etcd" in modes or args.etcd_check_perf:
        etcd, etcdctl = etcd_binaries()  # fail before the other modes have run
    # Ctrl-C raises KeyboardInterrupt; make SIGTERM unwind too, so that every
    # cluster this script started is stopped by its `finally`.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    # Rounds: each round runs every mode once, so that drift in the speed of a
    # shared machine during the benchmark touches all systems alike.
    runs = {mode: [] for mode in modes}
    for r in range(args.runs):
        for mode in modes:
            if mode == "store":
                res = bench_store(args.clients, args.duration)
            elif mode == "api":
                res = bench_api(args.api_clients, args.duration)
            else:
                res = bench_etcd(etcd, etcd_clients, args.duration, args.etcd_procs,
                                 args.etcd_endpoints)
            client = ("in leader" if res["client_cpu_cores"] is None
                      else f"{res['client_cpu_cores']:.2f}")
            print(f"{mode} run {r + 1}: {res['writes_per_s']:.0f} writes/s, "
                  f"p50 {res['p50_ms']:.1f} ms, p99 {res['p99_ms']:.1f} ms; CPU cores: servers "
                  f"{res['server_cpu_cores']:.2f}, client {client}, "
                  f"machine {res['machine_busy_cores']:.2f} busy", flush=True)
            runs[mode].append(res)
    rows = []
    for mode in modes:
        ordered = sorted(runs[mode], key=lambda x: x["writes_per_s"])
        best = dict(ordered[len(ordered) // 2])
        best["all_runs_writes_per_s"] = [x["writes_per_s"] for x in ordered]
        rows.append(best)
    check = None
    if args.etcd_check_perf:
        check = etcd_check_perf(etcd, etcdctl, args.etcd_endpoints)
        print(f"etcdctl check perf --load=l: {check['writes_per_s']:.0f} writes/s "
              f"(500 clients, 1 KiB values), slowest {check['slowest_ms']} ms, "
              f"etcd {check['server_cpu_cores']:.2f} cores, etcdctl {check['client_cpu_cores']:.2f} "
              f"cores, machine {check['machine_busy_cores']:.2f} busy", flush=True)
    etcd_row = next((r for r in rows if r["mode"] == "etcd"), None)
    system = {"store": "Flotilla store", "api": "Flotilla HTTPS API", "etcd": "etcd (gRPC gateway)"}
    print()
    print(f"{'mode':<7}{'system':<21}{'clients':>8}{'writes/s':>10}{'p50 ms':>8}{'p99 ms':>8}"
          f"{'errors':>7}{'vs etcd':>8}")
    for r in rows:
        ratio = (f"{r['writes_per_s'] / etcd_row['writes_per_s']:.2f}x"
                 if etcd_row and etcd_row["writes_per_s"] else "-")
        print(f"{r['mode']:<7}{system[r['mode']]:<21}{r['clients']:>8}{r['writes_per_s']:>10.0f}"
              f"{r['p50_ms']:>8.1f}{r['p99_ms']:>8.1f}{r['errors']:>7}{ratio:>8}")
    print()
    print(f"CPU during the median runs ({os.cpu_count()} cores):")
    print(f"{'mode':<7}{'servers':>9}{'client':>9}{'other':>8}{'busy':>7}{'server CPU/write':>18}")
    for r in rows:
        client = "leader" if r["client_cpu_cores"] is None else f"{r['client_cpu_cores']:.2f}"
        per_write = r["server_cpu_ms_per_write"] or 0
        print(f"{r['mode']:<7}{r['server_cpu_cores']:>9.2f}{client:>9}{r['other_busy_cores']:>8.2f}"
              f"{r['machine_busy_cores']:>7.2f}{per_write:>15.3f} ms")
    print("targets: >= 5000 durable writes/s, p99 <= 20 ms")
    out = {"benchmark": "raft_writes", "results": rows,
           "targets": {"writes_per_s": 5000, "p99_ms": 20},
           "load_average_at_start": load_at_start}
    if check:
        out["etcd_check_perf"] = check
    print(f"wrote {write_result('raft_writes', out, args.out)}")


if __name__ == "__main__":
    main()
