"""Lookups through the node's resolver on loopback: cluster names and forwarded names.

The resolver runs on its thread (``Resolver.start()``) in a process of its
own, otherwise idle, listening on 127.0.0.53, as it runs in the agent apart
from the containers that ask it; its upstream is a small dnslib server (a
thread per query) in a third process that answers every name. The table
has two networks of ``--services`` services each (every third one dnsrr with
3 tasks, the others vip with 3 tasks); the client asks from 127.0.0.21, a
task on the first network, one query at a time over UDP, and times each
lookup from send to answer (a lookup without an answer within 2 s is
counted as lost):

* cluster names: ``svcN`` (vip), ``rrN`` (dnsrr, 3 addresses), ``tasks.svcN``
  (3 addresses), in turn;
* forwarded names: ``hostN.example.org``, answered by the upstream through
  the resolver; and the same names asked of the upstream directly, the
  floor the forwarding adds to.

Before each series, 500 lookups that are not counted. The resolver's CPU
time (user and system) per lookup is read from /proc for both series, and
its own time per cluster answer (from the datagram read to the answer
handed to the kernel: parse, answer, pack) is timed inside it. The
machine's load (``uptime``) before and after is printed and kept with the
numbers: on a shared machine the tail is mostly other processes' doing.

``--busy-threads N`` adds N threads to the resolver's process that keep
running Python code, as an agent busy with other work would: the resolver
then waits for the interpreter lock (up to ``sys.getswitchinterval()``, 5 ms,
at a time), which shows in the tail. ``--child`` runs the resolver as
``ResolverProcess`` instead, in a child of that process with an interpreter
of its own, out of the busy threads' way.

    python bench/dns.py                                 # 20,000 cluster, 5,000 forwarded
    python bench/dns.py --queries 50000 --forwarded 10000 --services 200
    python bench/dns.py --busy-threads 1 --out bench/results/dns-busy.json
    python bench/dns.py --busy-threads 1 --child --out bench/results/dns-busy-child.json

Prints a table and writes bench/results/dns.json.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import threading
import time

from benchlib import ROOT, pct, process_cpu, write_result

SOURCE = "127.0.0.21"           # a task's address on the first network
LISTEN = "127.0.0.53"
WARMUP = 500


def table(services: int) -> dict:
    nets = {}
    for n, net in enumerate(("net-a", "net-b")):
        svcs = []
        for i in range(services):
            tasks = [f"10.{n}.{i // 60 + 1}.{(i % 60) * 4 + k + 1}" for k in range(3)]
            dnsrr = i % 3 == 2
            svcs.append({"name": f"svc{i}" if not dnsrr else f"rr{i}", "aliases": [f"alias{i}"],
                         "mode": "dnsrr" if dnsrr else "vip",
                         "vip": None if dnsrr else f"10.{n}.0.{i % 250 + 2}/16",
                         "task_addrs": tasks})
        nets[net] = {"services": svcs, "tasks": {}}
    nets["net-a"]["tasks"][SOURCE] = ["net-a"]
    return nets


def cluster_names(services: int) -> list[str]:
    names = []
    for i in range(services):
        if i % 3 == 2:
            names.append(f"rr{i}")
        else:
            names += [f"svc{i}", f"tasks.svc{i}"]
    return names


# -- the other processes ---------------------------------------------------------------------

def serve(args) -> None:
    """Run the resolver or the upstream until stdin closes; print the address first."""
    if args.role == "upstream":
        from tests.helpers.dns import FakeUpstream
        up = FakeUpstream()
        address = list(up.address)
    else:
        from flotilla.agent.network.resolver import Resolver
        from flotilla.agent.network.resolverproc import ResolverProcess
        host, port = args.upstream.rsplit(":", 1)
        kind = ResolverProcess if args.child else Resolver
        r = kind(listen=[(LISTEN, 0)], upstreams=[(host, int(port))], search=[])
        if isinstance(r, Resolver):
            time_local_answers(r)
        r.update(table(args.services))
        r.start()
        deadline = time.monotonic() + 10
        while not r.listening() and time.monotonic() < deadline:
            time.sleep(0.01)
        address = list(r.listening()[0])
        for _ in range(args.busy_threads):
            threading.Thread(target=spin, daemon=True).start()
    print(json.dumps({"address": address}), flush=True)
    sys.stdin.read()
    if HANDLING:
        took = HANDLING[WARMUP:]
        ms = lambda v: round(v * 1000, 3)  # noqa: E731
        print(json.dumps({"handled": len(took), "p50_ms": ms(pct(took, 50)),
                          "p99_ms": ms(pct(took, 99)), "p999_ms": ms(pct(took, 99.9)),
                          "max_ms": ms(max(took)) if took else None}), flush=True)


HANDLING: list[float] = []      # the resolver's own time per answer from its table


def time_local_answers(r) -> None:
    """Time the resolver's handling of each datagram it answers from its
    table, from the datagram read to the answer handed to the kernel (parse,
    answer, pack), apart from any wait for the CPU before it."""
    from flotilla.agent.network import resolver
    handle, send = r._on_udp, resolver._Listener.send
    started = [0.0]

    def timed(listener, data, addr):
        started[0] = time.perf_counter()
        handle(listener, data, addr)
        started[0] = 0.0

    def timed_send(listener, payload, addr):
        if started[0]:
            HANDLING.append(time.perf_counter() - started[0])
        send(listener, payload, addr)

    r._on_udp = timed
    resolver._Listener.send = timed_send


def spin() -> None:
    n = 0
    while True:
        n = (n + 1) % 1000003


def spawn(role: str, *extra: str) -> tuple[subprocess.Popen, tuple[str, int]]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.join(ROOT, "daemons"), ROOT]))
    proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--role", role, *extra],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        proc.wait(5)
        raise RuntimeError(f"the {role} did not start")
    host, port = json.loads(line)["address"]
    return proc, (host, int(port))


def stop(proc: subprocess.Popen) -> dict | None:
    """Stop a process started by spawn(); what it printed last, if anything."""
    if proc.stdin:
        proc.stdin.close()
    try:
        out = proc.stdout.read() if proc.stdout else ""
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return None
    lines = out.strip().splitlines()
    return json.loads(lines[-1]) if lines else None


# -- the client --------------------------------------------------------------------------------

def lookups(server: tuple[str, int], names: list[str], count: int) -> dict:
    """Ask ``count`` lookups of ``names`` in turn (after WARMUP more); latencies."""
    from dnslib import DNSRecord
    packets = [DNSRecord.question(n).pack() for n in names]
    lat: list[float] = []
    errors = lost = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((SOURCE, 0))
        s.settimeout(2.0)
        started = time.perf_counter()
        for i in range(-WARMUP, count):
            if i == 0:
                started = time.perf_counter()
            qid = (i % 65536).to_bytes(2, "big")
            packet = qid + packets[i % len(packets)][2:]
            t0 = time.perf_counter()
            s.sendto(packet, server)
            try:
                while True:
                    data = s.recv(65535)
                    if data[:2] == qid:
                        break           # (an answer that came too late to an earlier query)
            except TimeoutError:
                lost += 1
                continue
            took = time.perf_counter() - t0
            if i >= 0:
                lat.append(took)
                if data[3] & 0x0F or not int.from_bytes(data[6:8], "big"):
                    errors += 1         # not NOERROR with an answer
        elapsed = time.perf_counter() - started
    ms = lambda v: round(v * 1000, 3)  # noqa: E731
    return {"lookups": len(lat), "errors": errors, "lost": lost,
            "per_second": round(len(lat) / elapsed),
            "p50_ms": ms(pct(lat, 50)), "p90_ms": ms(pct(lat, 90)), "p99_ms": ms(pct(lat, 99)),
            "p999_ms": ms(pct(lat, 99.9)), "max_ms": ms(max(lat)) if lat else None,
            "mean_ms": ms(sum(lat) / len(lat)) if lat else None}


def check(server: tuple[str, int], upstream_answer: str) -> None:
    """The resolver answers what the table says (a benchmark of wrong answers is none)."""
    from tests.helpers.dns import addresses, ask
    vip = addresses(ask(server, "svc0", source=SOURCE))
    rr = addresses(ask(server, "rr2", source=SOURCE))
    fwd = addresses(ask(server, "host1.example.org", source=SOURCE))
    if vip != ["10.0.0.2"] or sorted(rr) != ["10.0.1.10", "10.0.1.11", "10.0.1.9"] \
            or fwd != [upstream_answer]:
        raise RuntimeError(f"unexpected answers: {vip} {rr} {fwd}")


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def run(args) -> dict:
    from tests.helpers.dns import UPSTREAM_ANSWER
    up_proc, up_addr = spawn("upstream")
    try:
        res_proc, server = spawn("resolver", "--upstream", f"{up_addr[0]}:{up_addr[1]}",
                                 "--services", str(args.services),
                                 "--busy-threads", str(args.busy_threads),
                                 *(["--child"] if args.child else []))
        try:
            check(server, UPSTREAM_ANSWER)
            load_before = uptime()
            print("load before:", load_before, flush=True)
            cpu0 = process_cpu(res_proc.pid)
            cluster = lookups(server, cluster_names(args.services), args.queries)
            cpu1 = process_cpu(res_proc.pid)
            forwarded_names = [f"host{i}.example.org" for i in range(100)]
            forwarded = lookups(server, forwarded_names, args.forwarded)
            cpu2 = process_cpu(res_proc.pid)
            direct = lookups(up_addr, forwarded_names, args.forwarded)
            load_after = uptime()
            print("load after: ", load_after, flush=True)
        finally:
            handling = stop(res_proc)
    finally:
        stop(up_proc)
    if not args.busy_threads and not args.child:    # (else not the resolver's alone)
        cluster["resolver_cpu_us_per_lookup"] = round(
            (cpu1 - cpu0) / (cluster["lookups"] + WARMUP) * 1e6, 1)
        forwarded["resolver_cpu_us_per_lookup"] = round(
            (cpu2 - cpu1) / (forwarded["lookups"] + WARMUP) * 1e6, 1)
    if handling and "handled" in handling:
        cluster["resolver_handling"] = handling
    return {"benchmark": "dns", "services_per_network": args.services,
            "busy_threads_beside_the_resolver": args.busy_threads,
            "resolver_in_a_child_process": args.child,
            "cluster": cluster, "forwarded": forwarded, "upstream_direct": direct,
            "uptime_before": load_before, "uptime_after": load_after,
            "target": "cluster names p99 <= 1 ms"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--queries", type=int, default=20000, help="cluster-name lookups")
    ap.add_argument("--forwarded", type=int, default=5000,
                    help="forwarded lookups (and as many asked of the upstream directly)")
    ap.add_argument("--services", type=int, default=100, help="services per network")
    ap.add_argument("--busy-threads", type=int, default=0,
                    help="threads running Python in the resolver's process")
    ap.add_argument("--child", action="store_true",
                    help="run the resolver as ResolverProcess (a child of that process)")
    ap.add_argument("--out", default=None, help="JSON path (default bench/results/dns.json)")
    ap.add_argument("--role", choices=("resolver", "upstream"), help=argparse.SUPPRESS)
    ap.add_argument("--upstream", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.role:
        serve(args)
        return
    r = run(args)
    print(f"{'':22}{'lookups':>8} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'p99.9 ms':>9} "
          f"{'max ms':>8} {'per s':>7} {'errors':>6} {'lost':>5}")
    for key, label in (("cluster", "cluster names"), ("forwarded", "forwarded names"),
                       ("upstream_direct", "upstream, directly")):
        v = r[key]
        print(f"{label:22}{v['lookups']:>8} {v['p50_ms']:>8} {v['p90_ms']:>8} {v['p99_ms']:>8} "
              f"{v['p999_ms']:>9} {v['max_ms']:>8} {v['per_second']:>7} {v['errors']:>6} "
              f"{v['lost']:>5}")
    if "resolver_handling" in r["cluster"]:
        h = r["cluster"]["resolver_handling"]
        print(f"resolver's own time per cluster answer (read to send): p50 {h['p50_ms']} ms, "
              f"p99 {h['p99_ms']} ms, p99.9 {h['p999_ms']} ms, max {h['max_ms']} ms")
    if "resolver_cpu_us_per_lookup" in r["cluster"]:
        print(f"resolver CPU per lookup: cluster {r['cluster']['resolver_cpu_us_per_lookup']} "
              f"us, forwarded {r['forwarded']['resolver_cpu_us_per_lookup']} us")
    print("wrote", write_result("dns", r, args.out))


if __name__ == "__main__":
    main()
