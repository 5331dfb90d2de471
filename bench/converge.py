#!/usr/bin/env python3
"""Service convergence and removal: Flotilla vs Docker Swarm mode, same engine.

For each size (10, 50, 100 replicas of ``busybox sleep 3600``) and each
system: time from "create the service" until every replica is running, then
from "remove the service" until no container of it is left. Flotilla runs as
a one-node cluster (manager + agent) on this machine's dockerd; Swarm runs
as ``docker swarm init`` on the same dockerd, afterwards (never both at
once). A raw Docker baseline (create + start the same containers with 16
parallel API calls, then force-remove them) shows what the engine itself
allows.

    python bench/converge.py [--sizes 10,50,100] [--runs 3] [--no-swarm] [--init]

Prints a table and writes bench/results/converge.json (converge-init.json
with --init).
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import statistics
import subprocess
import tempfile
import time

from benchlib import write_result

import docker

from tests.helpers.cluster import LocalCluster, wait_for

IMAGE = "flotilla-test/busybox:1"
CMD = ["sleep", "3600"]


def poll(pred, timeout=600, interval=0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(interval)
    raise TimeoutError("gave up waiting")


# -- Flotilla ------------------------------------------------------------------------------

def flotilla_run(c, n, name, init=False):
    client = c.admin()
    dk = docker.from_env()
    t0 = time.monotonic()
    container = {"image": IMAGE, "args": CMD}
    if init:
        container["init"] = True
    client.post("/v1/services", {"name": name, "replicas": n, "task": {"container": container}})

    def all_running():
        tasks = client.get(f"/v1/services/{name}/tasks")
        return sum(1 for t in tasks if t["state"] == "running" and t["desired_state"] == "running") == n

    poll(all_running)
    converge = time.monotonic() - t0
    t1 = time.monotonic()
    client.delete(f"/v1/services/{name}")
    poll(lambda: not dk.api.containers(all=True, filters={"label": f"flotilla.service.name={name}"}))
    remove = time.monotonic() - t1
    return converge, remove


# -- Docker Swarm mode -----------------------------------------------------------------------

def swarm_run(n, name, init=False):
    dk = docker.from_env()
    t0 = time.monotonic()
    svc = dk.services.create(IMAGE, command=CMD, name=name, init=True if init else None,
                             mode=docker.types.ServiceMode("replicated", replicas=n))

    def all_running():
        tasks = svc.tasks(filters={"desired-state": "running"})
        return sum(1 for t in tasks if t["Status"]["State"] == "running") == n

    poll(all_running, interval=0.2)
    converge = time.monotonic() - t0
    t1 = time.monotonic()
    svc.remove()
    poll(lambda: not dk.api.containers(all=True,
                                       filters={"label": f"com.docker.swarm.service.name={name}"}),
         interval=0.2)
    remove = time.monotonic() - t1
    return converge, remove


def swarm_init():
    subprocess.run(["docker", "swarm", "leave", "--force"], capture_output=True)
    subprocess.run(["docker", "swarm", "init", "--advertise-addr", "127.0.0.1"], check=True,
                   capture_output=True)


def swarm_leave():
    subprocess.run(["docker", "swarm", "leave", "--force"], capture_output=True)


# -- raw engine baseline -------------------------------------------------------------------

def raw_run(n):
    dk = docker.from_env(max_pool_size=32)

    def start(i):
        ctr = dk.containers.create(IMAGE, CMD, labels={"flotilla.bench.raw": "1"})
        ctr.start()
        return ctr

    t0 = time.monotonic()
    with cf.ThreadPoolExecutor(16) as ex:
        ctrs = list(ex.map(start, range(n)))
    up = time.monotonic() - t0
    t1 = time.monotonic()
    with cf.ThreadPoolExecutor(16) as ex:
        list(ex.map(lambda c: c.remove(force=True), ctrs))
    return up, time.monotonic() - t1


def med(xs):
    return round(statistics.median(xs), 2)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="10,50,100")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--no-swarm", action="store_true")
    ap.add_argument("--init", action="store_true",
                    help="run the containers with an init process on both systems, so SIGTERM "
                         "stops them at once instead of after the 10 s grace period")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    results = {n: {"flotilla": [], "swarm": [], "raw": []} for n in sizes}

    for n in sizes:
        for _ in range(args.runs):
            results[n]["raw"].append(raw_run(n))
        print(f"raw docker   {n:>4}: up {med([r[0] for r in results[n]['raw']]):.1f}s, "
              f"force-removed {med([r[1] for r in results[n]['raw']]):.1f}s", flush=True)

    c = LocalCluster(tempfile.mkdtemp(prefix="flotilla-converge-"), heartbeat="1s")
    try:
        c.init("node1")
        wait_for(lambda: c.admin().get("/v1/nodes")[0]["state"] == "ready", 30)
        for n in sizes:
            for r in range(args.runs):
                results[n]["flotilla"].append(flotilla_run(c, n, f"bench{n}r{r}", args.init))
                conv, rem = results[n]["flotilla"][-1]
                print(f"flotilla     {n:>4}: converged {conv:.1f}s, removed {rem:.1f}s", flush=True)
    finally:
        c.stop_all()

    if not args.no_swarm:
        swarm_init()
        try:
            for n in sizes:
                for r in range(args.runs):
                    results[n]["swarm"].append(swarm_run(n, f"bench{n}r{r}", args.init))
                    conv, rem = results[n]["swarm"][-1]
                    print(f"docker swarm {n:>4}: converged {conv:.1f}s, removed {rem:.1f}s", flush=True)
        finally:
            swarm_leave()

    rows = []
    print()
    print(f"{'replicas':>8} {'flotilla up':>12} {'swarm up':>9} {'ratio':>6} "
          f"{'flotilla rm':>12} {'swarm rm':>9} {'ratio':>6} {'raw up':>7} {'raw rm':>7}")
    for n in sizes:
        f, s, raw = results[n]["flotilla"], results[n]["swarm"], results[n]["raw"]
        row = {"replicas": n,
               "flotilla_converge_s": med([x[0] for x in f]), "flotilla_remove_s": med([x[1] for x in f]),
               "raw_engine_start_s": med([x[0] for x in raw]), "raw_engine_remove_s": med([x[1] for x in raw]),
               "flotilla_runs": f, "swarm_runs": s}
        if s:
            row["swarm_converge_s"] = med([x[0] for x in s])
            row["swarm_remove_s"] = med([x[1] for x in s])
            row["converge_ratio"] = round(row["flotilla_converge_s"] / row["swarm_converge_s"], 3)
            row["remove_ratio"] = round(row["flotilla_remove_s"] / row["swarm_remove_s"], 3)
        rows.append(row)
        print(f"{n:>8} {row['flotilla_converge_s']:>11.1f}s {row.get('swarm_converge_s', 0):>8.1f}s "
              f"{row.get('converge_ratio', 0):>6.2f} {row['flotilla_remove_s']:>11.1f}s "
              f"{row.get('swarm_remove_s', 0):>8.1f}s {row.get('remove_ratio', 0):>6.2f} "
              f"{row['raw_engine_start_s']:>6.1f}s {row['raw_engine_remove_s']:>6.1f}s")
    print("target: Flotilla <= 0.25 x Swarm for both")
    name = "converge-init" if args.init else "converge"
    out = write_result(name, {"benchmark": name, "runs": args.runs, "results": rows,
                              "command": " ".join(CMD), "image": IMAGE, "init": args.init,
                              "target_ratio": 0.25}, args.out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
