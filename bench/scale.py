#!/usr/bin/env python3
"""Scale: 3 managers, 1,000 simulated agents, services totalling 30,000 tasks.

Three real managers (``flotilla node run`` processes, their own agents
drained) and N simulated agents (``simagents.py``: real joins with the
worker token, real sessions, heartbeats, assignment pushes to each agent's
own mutual-TLS listener, batched status reports) spread over a few
processes. Then services are created through the HTTPS API with the admin
bundle, and the run measures

- joining and registering the agents;
- time from the first create to all tasks reported running, and tasks/s;
- placement: time from each task's creation to its assignment to a node
  being committed, p50/p99 estimated from the leader's histogram
  (``flotilla_scheduling_latency_seconds``, interpolated within buckets as
  Prometheus' ``histogram_quantile`` does); and, measured in the simulator,
  the time from creation to the first push that carried the task to its
  agent;
- API latency during the run: a client sends ``GET /v1/services`` and a small
  ``PATCH /v1/nodes/<id>`` (a label) alternately every 100 ms;
- the managers' RSS (VmRSS of each manager's API worker, the process that
  holds the store and the Raft member; the leader's push process is
  reported beside it) and their CPU time, and their garbage-collector time;
- the agents' heartbeats: their round trips as the simulator sees them,
  and how many nodes the leader marked down for a late heartbeat (each one
  moves its tasks: it must stay at 0).

    python bench/scale.py [--agents 1000] [--tasks 30000] [--services 30] [--quick]
                          [--rate TASKS_PER_S] [--procs 2] [--runs N]
                          [--profile /tmp/leader.svg --profile-seconds 30]

By default every service is created at once (a burst of 30,000 tasks).
With ``--rate`` the services are created one after another so that tasks
arrive at that rate: a sustained load, where each task's placement time is
the pipeline's, not the time it queued behind the rest of a burst.

``--profile`` records the leader's manager process with py-spy (GIL
holders only), its push process beside it (``/tmp/leader-push.svg``) and
one follower (``/tmp/leader-follower.svg``).

Prints a table and writes bench/results/scale.json (scale-quick.json with
--quick, scale-rate2000.json with --rate 2000). With ``--runs N`` each run
has a fresh cluster; it prints one line per run, the medians, and how many
runs met each target, and the JSON holds every run.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

from benchlib import pct, process_cpu, write_result

from flotilla.common.httpclient import ApiError
from tests.helpers.cluster import LocalCluster, wait_for

import simagents

IMAGE = "flotilla-test/busybox:1"
TARGETS = {"tasks_per_s": 2000, "placement_p99_ms": 250, "api_p99_ms": 100, "rss_mb": 300}


# -- processes ---------------------------------------------------------------------------

def _children(pid: int) -> list[int]:
    """Children of every thread of ``pid`` (a child belongs to the thread
    that started it)."""
    out = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out += [int(x) for x in f.read().split()]
        except OSError:
            pass
    return out


def _tree(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(_children(p))
    return out


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def manager_worker_pid(node) -> int | None:
    """The gunicorn worker of a node's manager: the process that holds the
    store and the Raft member (node daemon -> manager master -> worker)."""
    for p in _tree(node.proc.pid):
        if p == node.proc.pid:
            continue
        kids = _children(p)
        if "flotilla.manager" in _cmdline(p) and kids:
            return kids[0]
    return None


def pusher_pid(worker_pid: int | None) -> int | None:
    """The leader's assignment-push child process (manager/dispatcher/pushproc.py)."""
    for kid in _children(worker_pid) if worker_pid else ():
        if "flotilla.manager.dispatcher.pushproc" in _cmdline(kid):
            return kid
    return None


def rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


class Sampler(threading.Thread):
    """RSS of every manager worker, once a second."""

    def __init__(self, pids: dict[str, int]):
        super().__init__(daemon=True)
        self.pids = pids
        self.max = {name: 0.0 for name in pids}
        self.last = dict(self.max)
        self.stop = threading.Event()

    def run(self):
        while not self.stop.is_set():
            for name, pid in self.pids.items():
                v = rss_mb(pid)
                self.last[name] = v
                self.max[name] = max(self.max[name], v)
            self.stop.wait(1.0)


class ApiLoad(threading.Thread):
    """GET /v1/services and a small PATCH, alternately, every 100 ms."""

    def __init__(self, client, node_id):
        super().__init__(daemon=True)
        self.client = client
        self.node_id = node_id
        self.get_s: list[float] = []
        self.patch_s: list[float] = []
        self.slowest: list[tuple] = []      # (when it ended, which, seconds)
        self.errors = 0
        self.services = None
        self.services_at = 0.0
        self.stop = threading.Event()

    def run(self):
        n = 0
        next_at = time.monotonic()
        while not self.stop.is_set():
            n += 1
            t0 = time.monotonic()
            try:
                if n % 2:
                    result = self.client.get("/v1/services")
                    self.services, self.services_at = result, time.time()
                    self.get_s.append(time.monotonic() - t0)
                    self.slowest.append((time.monotonic(), "get", self.get_s[-1]))
                else:
                    self.client.patch(f"/v1/nodes/{self.node_id}",
                                      {"labels_add": {"bench.tick": str(n)}})
                    self.patch_s.append(time.monotonic() - t0)
                    self.slowest.append((time.monotonic(), "patch", self.patch_s[-1]))
            except ApiError:
                self.errors += 1
            self.slowest = sorted(self.slowest, key=lambda x: -x[2])[:5]
            next_at += 0.1
            self.stop.wait(max(0.0, next_at - time.monotonic()))


# -- metrics -------------------------------------------------------------------------------

def histogram(text: str, name: str) -> dict:
    """Buckets, count and sum of a Prometheus histogram without labels."""
    buckets = []
    count = total = 0.0
    for line in text.splitlines():
        if line.startswith(f"{name}_bucket"):
            le = re.search(r'le="([^"]+)"', line).group(1)
            buckets.append((float("inf") if le == "+Inf" else float(le), float(line.split()[-1])))
        elif line.startswith(f"{name}_count"):
            count = float(line.split()[-1])
        elif line.startswith(f"{name}_sum"):
            total = float(line.split()[-1])
    return {"buckets": buckets, "count": count, "sum": total}


def samples(text: str, name: str) -> float:
    """Sum of the samples of a metric (over all label values)."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and line[len(name):len(name) + 1] in (" ", "{"):
            total += float(line.split()[-1])
    return total


def gc_metrics(c) -> dict:
    """Each manager's collector time (seconds, by generation), longest
    pause and frozen objects, from its /metrics."""
    out = {}
    for node in c.nodes.values():
        try:
            text = c.admin([node], timeout=30).get("/metrics")
        except Exception:
            continue
        out[node.name] = {
            "seconds": round(samples(text, "flotilla_gc_pause_seconds_total"), 2),
            "by_generation": [round(samples(text, "flotilla_gc_pause_seconds_total"
                                            f'{{generation="{g}"}}'), 3) for g in range(3)],
            "collections": [int(samples(text, "flotilla_gc_collections_total"
                                        f'{{generation="{g}"}}')) for g in range(3)],
            "max_pause_ms": round(samples(text, "flotilla_gc_max_pause_seconds") * 1000, 1),
            "frozen_objects": int(samples(text, "flotilla_gc_frozen_objects"))}
    return out


def histogram_quantile(h: dict, q: float) -> float:
    """Quantile ``q`` of a histogram, interpolated linearly within its
    bucket (as Prometheus' histogram_quantile)."""
    need = q * h["count"]
    lower, below = 0.0, 0.0
    for le, cum in h["buckets"]:
        if cum >= need:
            if le == float("inf"):
                return lower
            inside = cum - below
            return lower + (le - lower) * ((need - below) / inside if inside else 1.0)
        lower, below = le, cum
    return float("inf")


def bucket_quantile(h: dict, q: float) -> float:
    """The upper bound of the bucket holding quantile ``q``."""
    need = q * h["count"]
    for le, cum in h["buckets"]:
        if cum >= need:
            return le
    return float("inf")


# -- the run -------------------------------------------------------------------------------

def start_groups(n_agents, procs, token, managers, leader, cluster_id, workdir, join_conc):
    ctx = mp.get_context("spawn")
    groups = []
    per = [n_agents // procs + (1 if i < n_agents % procs else 0) for i in range(procs)]
    for gid, count in enumerate(per):
        parent, child = ctx.Pipe()
        p = ctx.Process(target=simagents.run_group,
                        args=(gid, count, token, managers, leader, cluster_id, workdir, child,
                              join_conc), daemon=True)
        p.start()
        groups.append((p, parent))
    return groups


def ask_all(groups, cmd, timeout=1800):
    for _, conn in groups:
        conn.send(cmd)
    out = []
    for _, conn in groups:
        if not conn.poll(timeout):
            raise RuntimeError(f"simulator did not answer {cmd!r}")
        reply = conn.recv()
        if isinstance(reply, dict) and "error" in reply:
            raise RuntimeError(f"simulator failed on {cmd!r}: {reply['error']}")
        out.append(reply)
    return out


def run(args):
    base = tempfile.mkdtemp(prefix="flotilla-scale-")
    print(f"cluster directory: {base}", flush=True)
    env = {}
    if args.election_timeout:
        lo, hi = args.election_timeout.split(",")
        env = {"FLOTILLA_RAFT_ELECTION_MIN": lo, "FLOTILLA_RAFT_ELECTION_MAX": hi}
    c = LocalCluster(base, heartbeat=args.heartbeat, env=env)
    groups = []
    result = {}
    try:
        t_cluster = time.monotonic()
        c.init("m1")
        c.join("m2")
        c.join("m3")
        leader = c.wait_leader_ready(60)
        admin = c.admin(timeout=60, retry_for=30)
        managers = list(c.nodes.values())
        for m in managers:          # every task goes to the simulated agents
            admin.patch(f"/v1/nodes/{m.node_id or m.config()['node_id']}",
                        {"availability": "drain"})
        print(f"3 managers up in {time.monotonic() - t_cluster:.1f}s; leader {leader.name}",
              flush=True)
        token = c.token("worker")
        cluster_id = leader.config()["cluster_id"]
        groups = start_groups(args.agents, args.procs, token, [m.addr for m in managers],
                              leader.addr, cluster_id, os.path.join(base, "sim"),
                              args.join_concurrency)

        load0 = os.getloadavg()
        t = time.monotonic()
        joins = ask_all(groups, "join")
        join_s = time.monotonic() - t
        per_join = [x for j in joins for x in j["per_join_s"]]
        print(f"{args.agents} agents joined in {join_s:.1f}s ({args.agents / join_s:.0f}/s, "
              f"p50 {pct(per_join, 50) * 1000:.0f} ms, p99 {pct(per_join, 99) * 1000:.0f} ms "
              f"per join, {args.join_concurrency} at a time per process)", flush=True)
        t = time.monotonic()
        ask_all(groups, "register")
        register_s = time.monotonic() - t

        def all_ready():
            nodes = admin.get("/v1/nodes")
            return sum(1 for n in nodes if n["state"] == "ready") >= args.agents + 3

        wait_for(all_ready, 300, interval=0.5, what="every agent ready")
        ready_s = time.monotonic() - t
        print(f"{args.agents} agents registered in {register_s:.1f}s, all ready after "
              f"{ready_s:.1f}s", flush=True)
        connects = ask_all(groups, "connect")
        front_before = sum(x["front_connects"] for x in connects)
        print(f"{front_before} connections to the dispatcher port opened in "
              f"{max(x['connect_s'] for x in connects):.1f}s", flush=True)
        time.sleep(args.settle)

        pids = {m.name: manager_worker_pid(m) for m in managers}
        leader = c.wait_leader_ready(30)
        leader_pid = pids[leader.name]
        rss_before = {name: round(rss_mb(pid), 1) for name, pid in pids.items()}
        push_pid = pusher_pid(leader_pid)
        if push_pid:
            pids["pusher"] = push_pid
        sampler = Sampler(pids)
        sampler.start()
        api = ApiLoad(c.admin(timeout=30, retry_for=10), managers[0].node_id)
        api.start()
        cpu0 = {name: process_cpu(pid) for name, pid in pids.items()}
        snapshots_before = {m.name: m.log().count("snapshot at index") for m in managers}
        sim_cpu0 = sum(process_cpu(p.pid) for p, _ in groups)
        gc_before = gc_metrics(c)
        load_start = os.getloadavg()

        per = [args.tasks // args.services + (1 if i < args.tasks % args.services else 0)
               for i in range(args.services)]
        names = [f"scale{i:03d}" for i in range(args.services)]
        t0_wall = time.time()
        t0 = time.monotonic()
        profiler = None
        if args.profile:
            profiler = start_profile(leader_pid, args.profile, args.profile_seconds)
            root, ext = os.path.splitext(args.profile)
            if push_pid:
                start_profile(push_pid, f"{root}-push{ext}", args.profile_seconds)
            follower = next(m for m in managers if m is not leader)
            start_profile(pids[follower.name], f"{root}-follower{ext}", args.profile_seconds)
        create_s = []
        submitted = 0
        for name, replicas in zip(names, per):
            if args.rate:           # tasks arrive at this rate, one service at a time
                pause = t0 + submitted / args.rate - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
            submitted += replicas
            tc = time.monotonic()
            admin.post("/v1/services", {
                "name": name, "replicas": replicas,
                "task": {"container": {"image": IMAGE, "args": ["sleep", "3600"]},
                         "resources": {"reservations": {"cpus": 0.1, "memory": 64 << 20}}}})
            create_s.append(time.monotonic() - tc)
        created_all = time.monotonic() - t0
        print(f"{args.services} services ({args.tasks} tasks) created in {created_all:.2f}s",
              flush=True)

        # Done when the simulators have had every task's "running" accepted
        # and the API shows every replica running.
        deadline = time.monotonic() + args.timeout
        last_print = 0
        api_done = None
        while time.monotonic() < deadline:
            svcs = api.services
            if svcs is not None and api.services_at > t0_wall:
                running = sum(s["replicas"]["running"] for s in svcs if s["name"] in names)
                if running >= args.tasks:
                    api_done = api.services_at - t0_wall
                    break
                if time.monotonic() - last_print > 5:
                    last_print = time.monotonic()
                    print(f"  {time.monotonic() - t0:5.1f}s: {running} running", flush=True)
            time.sleep(0.05)
        else:
            raise RuntimeError(f"not all tasks running after {args.timeout}s")

        cpu1 = {name: process_cpu(pid) for name, pid in pids.items()}
        sim_cpu1 = sum(process_cpu(p.pid) for p, _ in groups)
        gc_stats = gc_metrics(c)
        load_end = os.getloadavg()
        api.stop.set()
        api.join(10)
        sampler.stop.set()
        if profiler is not None:
            profiler.wait(args.profile_seconds + 60)

        pids.pop("pusher", None)
        pusher_rss = sampler.max.pop("pusher", None)
        elections = sum(m.log().count("became leader") for m in managers) - 1
        times = ask_all(groups, "times")
        first_push, running_at = {}, {}
        for tm in times:
            first_push.update(tm["first_push"])
            running_at.update(tm["reported_running"])
        status_post_s = [x for tm in times for x in tm["status_post_s"]]
        heartbeat_s = [x for tm in times for x in tm["heartbeat_s"]]
        marked_down = sum(m.log().count("is down (heartbeat failure)") for m in managers)
        snapshots = {m.name: m.log().count("snapshot at index") - snapshots_before[m.name]
                     for m in managers}
        created = {}
        for name in names:
            for task in admin.get("/v1/tasks", params={"service": name}):
                created[task["id"]] = task["created_at"]
        place = [first_push[k] - v for k, v in created.items() if k in first_push and v]
        to_running = [running_at[k] - v for k, v in created.items() if k in running_at and v]
        last_running = max(running_at[k] for k in created if k in running_at)
        converge_s = last_running - t0_wall
        metrics_text = c.admin([leader], timeout=30).get("/metrics")
        hist = histogram(metrics_text, "flotilla_scheduling_latency_seconds")
        for name, st in gc_stats.items():
            before = gc_before.get(name)
            if before is not None:
                st["seconds_during_run"] = round(st["seconds"] - before["seconds"], 2)
                st["by_generation_during_run"] = [
                    round(a - b, 3) for a, b in zip(st["by_generation"], before["by_generation"])]
                st["collections_during_run"] = [
                    a - b for a, b in zip(st["collections"], before["collections"])]
        api_all = api.get_s + api.patch_s
        stats = [tm["stats"] for tm in times]
        front_handshakes = sum(st["front_connects"] for st in stats) - front_before
        result = {
            "benchmark": "scale",
            "agents": args.agents, "tasks": args.tasks, "services": args.services,
            "simulator_processes": args.procs,
            "arrival_rate_tasks_per_s": args.rate,
            "leader_changes_during_setup_and_run": elections,
            "join": {"seconds": round(join_s, 2), "per_s": round(args.agents / join_s, 1),
                     "p50_ms": round(pct(per_join, 50) * 1000, 1),
                     "p99_ms": round(pct(per_join, 99) * 1000, 1),
                     "concurrency": args.join_concurrency * args.procs},
            "register_s": round(register_s, 2), "all_ready_s": round(ready_s, 2),
            "create_services_s": round(created_all, 3),
            "create_service_p50_ms": round(pct(create_s, 50) * 1000, 1),
            "converge_s": round(converge_s, 3),
            "converge_api_observed_s": round(api_done, 3) if api_done else None,
            "tasks_per_s": round(args.tasks / converge_s, 1),
            "placement_ms": {"p50": round(pct(place, 50) * 1000, 1),
                             "p99": round(pct(place, 99) * 1000, 1),
                             "max": round(max(place) * 1000, 1) if place else None,
                             "samples": len(place)},
            "created_to_running_ms": {"p50": round(pct(to_running, 50) * 1000, 1),
                                      "p99": round(pct(to_running, 99) * 1000, 1)},
            "placement_assigned_ms": {
                "p50": round(histogram_quantile(hist, 0.5) * 1000, 1) if hist["count"] else None,
                "p99": round(histogram_quantile(hist, 0.99) * 1000, 1) if hist["count"] else None},
            "scheduler_histogram": {
                "count": hist["count"],
                "mean_ms": round(hist["sum"] / hist["count"] * 1000, 1) if hist["count"] else None,
                "p50_bucket_le_s": bucket_quantile(hist, 0.5) if hist["count"] else None,
                "p99_bucket_le_s": bucket_quantile(hist, 0.99) if hist["count"] else None,
                "buckets": [[str(le), n] for le, n in hist["buckets"]]},
            "api_ms": {"all_p50": round(pct(api_all, 50) * 1000, 1),
                       "all_p99": round(pct(api_all, 99) * 1000, 1),
                       "get_services_p50": round(pct(api.get_s, 50) * 1000, 1),
                       "get_services_p99": round(pct(api.get_s, 99) * 1000, 1),
                       "patch_p50": round(pct(api.patch_s, 50) * 1000, 1),
                       "patch_p99": round(pct(api.patch_s, 99) * 1000, 1),
                       "requests": len(api_all), "errors": api.errors,
                       "slowest": [{"at_s": round(at - t0, 2), "request": which,
                                    "ms": round(sec * 1000, 1)}
                                   for at, which, sec in api.slowest]},
            "status_post_ms": {"p50": round(pct(status_post_s, 50) * 1000, 1),
                               "p99": round(pct(status_post_s, 99) * 1000, 1),
                               "posts": len(status_post_s)},
            "heartbeat_ms": {"p50": round(pct(heartbeat_s, 50) * 1000, 1),
                             "p99": round(pct(heartbeat_s, 99) * 1000, 1),
                             "max": round(max(heartbeat_s) * 1000, 1) if heartbeat_s else None,
                             "heartbeats": len(heartbeat_s)},
            "front_handshakes_during_run": front_handshakes,
            "nodes_marked_down": marked_down,
            "snapshots_during_run": snapshots,
            "rss_mb": {"leader": leader.name, "before_run": rss_before,
                       "max": {k: round(v, 1) for k, v in sampler.max.items()},
                       "end": {k: round(rss_mb(p), 1) for k, p in pids.items()},
                       "leader_pusher_max": pusher_rss},
            "cpu_s_during_run": {**{k: round(cpu1[k] - cpu0[k], 1) for k in cpu0},
                                 "simulator": round(sim_cpu1 - sim_cpu0, 1)},
            "gc": gc_stats,
            "load_avg": {"before_join": load0, "run_start": load_start, "run_end": load_end},
            "simulator": stats,
            "targets": TARGETS,
        }
        if args.profile:
            result["profile"] = args.profile
        return result
    finally:
        for _, conn in groups:
            try:
                conn.send("stop")
            except Exception:
                pass
        for p, _ in groups:
            p.join(5)
            if p.is_alive():
                p.kill()
        c.stop_all()
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)


def start_profile(pid, path, seconds):
    spy = shutil.which("py-spy") or os.path.join(os.path.dirname(sys.executable), "py-spy")
    if not os.path.exists(spy):
        print("py-spy not found: no profile", flush=True)
        return None
    fmt = "raw" if path.endswith(".txt") else "flamegraph"
    return subprocess.Popen([spy, "record", "-p", str(pid), "--duration", str(seconds),
                             "--format", fmt, "-o", path, "--nonblocking", "--gil"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def print_table(r):
    rss_max = max(r["rss_mb"]["max"].values())
    rows = [
        ("agents joined (real CSR -> certificate)",
         f"{r['join']['seconds']:.1f} s ({r['join']['per_s']:.0f}/s)", ""),
        ("agents registered / all ready", f"{r['register_s']:.1f} s / {r['all_ready_s']:.1f} s", ""),
        ("services created", f"in {r['create_services_s']:.1f} s" + (
            f" ({r['arrival_rate_tasks_per_s']:.0f} tasks/s arriving)"
            if r.get("arrival_rate_tasks_per_s") else " (all at once)"), ""),
        ("first create -> all running", f"{r['converge_s']:.1f} s", ""),
        ("tasks/s", f"{r['tasks_per_s']:.0f}", f">= {TARGETS['tasks_per_s']}"),
        ("placement: created -> assigned p50 / p99",
         f"{r['placement_assigned_ms']['p50']:.0f} / {r['placement_assigned_ms']['p99']:.0f} ms",
         f"p99 <= {TARGETS['placement_p99_ms']} ms"),
        ("created -> first push to the agent p50 / p99",
         f"{r['placement_ms']['p50']:.0f} / {r['placement_ms']['p99']:.0f} ms", ""),
        ("created -> running reported p50 / p99",
         f"{r['created_to_running_ms']['p50']:.0f} / {r['created_to_running_ms']['p99']:.0f} ms", ""),
        ("API p50 / p99 (GET services + PATCH)",
         f"{r['api_ms']['all_p50']:.0f} / {r['api_ms']['all_p99']:.0f} ms",
         f"p99 <= {TARGETS['api_p99_ms']} ms"),
        ("manager RSS max (leader " + r["rss_mb"]["leader"] + ")",
         ", ".join(f"{k} {v:.0f}" for k, v in r["rss_mb"]["max"].items()) + " MB"
         + (f" + pusher {r['rss_mb']['leader_pusher_max']:.0f} MB"
            if r["rss_mb"].get("leader_pusher_max") else ""),
         f"<= {TARGETS['rss_mb']} MB"),
        ("agent heartbeat p50 / p99 / max",
         f"{r['heartbeat_ms']['p50']:.0f} / {r['heartbeat_ms']['p99']:.0f} / "
         f"{r['heartbeat_ms']['max'] or 0:.0f} ms", ""),
        ("TLS handshakes at the dispatcher port during the run",
         str(r.get("front_handshakes_during_run", "-")), ""),
        ("nodes marked down (heartbeats late)", str(r["nodes_marked_down"]), "0"),
        ("snapshots written during the run", ", ".join(
            f"{k} {v}" for k, v in r["snapshots_during_run"].items()), ""),
        ("leader changes", str(r["leader_changes_during_setup_and_run"]), "0"),
        ("CPU s during run", ", ".join(f"{k} {v}" for k, v in r["cpu_s_during_run"].items()), ""),
        ("GC s during run / since start / longest pause (ms)",
         ", ".join(f"{k} {v.get('seconds_during_run', '-')} / {v['seconds']} / "
                   f"{v['max_pause_ms']:.0f}" for k, v in r["gc"].items()), ""),
    ]
    w = max(len(a) for a, _, _ in rows)
    for a, b, t in rows:
        print(f"{a:<{w}}  {b:<36} {t}")
    print(f"(max RSS {rss_max:.0f} MB; load at start {r['load_avg']['run_start'][0]:.2f})")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--agents", type=int, default=1000)
    ap.add_argument("--tasks", type=int, default=30000)
    ap.add_argument("--services", type=int, default=30)
    ap.add_argument("--quick", action="store_true", help="100 agents, 3,000 tasks, 10 services")
    ap.add_argument("--procs", type=int, default=2, help="simulator processes")
    ap.add_argument("--join-concurrency", type=int, default=8, help="joins in flight per process")
    ap.add_argument("--heartbeat", default="1s", help="cluster heartbeat period (product default)")
    ap.add_argument("--election-timeout", default=None,
                    help="MIN,MAX seconds: the managers' Raft election timeout (default: product's)")
    ap.add_argument("--settle", type=float, default=3.0, help="seconds between ready and the run")
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--rate", type=float, default=None,
                    help="tasks per second arriving: services created one after another at "
                         "that pace (default: all at once)")
    ap.add_argument("--profile", default=None,
                    help="py-spy profile of the leader during the run (.svg or .txt = raw)")
    ap.add_argument("--profile-seconds", type=int, default=30)
    ap.add_argument("--keep", action="store_true", help="keep the cluster's directory")
    ap.add_argument("--out", default=None)
    ap.add_argument("--runs", type=int, default=1,
                    help="runs, each on a fresh cluster; prints every run and the medians")
    args = ap.parse_args()
    if args.quick:
        args.agents, args.tasks, args.services = 100, 3000, 10
    name = "scale-quick" if args.quick else "scale"
    if args.rate:
        name += f"-rate{args.rate:g}"
    command = " ".join(["bench/scale.py"] + sys.argv[1:])
    if args.runs <= 1:
        r = run(args)
        print()
        print_table(r)
        r["command"] = command
        print(f"wrote {write_result(name, r, args.out)}")
        return
    results = []
    for i in range(args.runs):
        print(f"== run {i + 1} of {args.runs}", flush=True)
        results.append(run(args))
        args.profile = None             # a profile of the first run only
        print(summary_line(i + 1, summary(results[-1])), flush=True)
    rows = [summary(r) for r in results]
    med = {k: round(statistics.median(row[k] for row in rows), 1)
           for k in rows[0] if isinstance(rows[0][k], (int, float))}
    meeting = {k: sum(1 for row in rows if row["meets"][k]) for k in rows[0]["meets"]}
    print()
    for i, row in enumerate(rows):
        print(summary_line(i + 1, row))
    print(summary_line("median", med))
    print(f"runs meeting each target (of {len(rows)}): "
          + ", ".join(f"{k} {v}" for k, v in meeting.items()))
    out = {"benchmark": name, "runs": len(rows), "median": med, "runs_meeting": meeting,
           "per_run": rows, "results": results, "targets": TARGETS, "command": command}
    print(f"wrote {write_result(name, out, args.out)}")


def summary(r: dict) -> dict:
    """The numbers the targets are about, of one run, and which it meets."""
    row = {"tasks_per_s": round(r["tasks_per_s"]),
           "placement_p50_ms": r["placement_assigned_ms"]["p50"],
           "placement_p99_ms": r["placement_assigned_ms"]["p99"],
           "api_p50_ms": r["api_ms"]["all_p50"], "api_p99_ms": r["api_ms"]["all_p99"],
           "manager_rss_mb": max(r["rss_mb"]["max"].values()),
           "heartbeat_max_ms": r["heartbeat_ms"]["max"] or 0,
           "nodes_marked_down": r["nodes_marked_down"],
           "leader_changes": r["leader_changes_during_setup_and_run"]}
    row["meets"] = {
        "tasks_per_s": row["tasks_per_s"] >= TARGETS["tasks_per_s"],
        "placement_p99_ms": row["placement_p99_ms"] <= TARGETS["placement_p99_ms"],
        "api_p99_ms": row["api_p99_ms"] <= TARGETS["api_p99_ms"],
        "rss_mb": row["manager_rss_mb"] <= TARGETS["rss_mb"]}
    row["meets"]["all"] = all(row["meets"].values())
    return row


def summary_line(label, row: dict) -> str:
    return (f"{str(label):>6}: {row['tasks_per_s']:>6.0f} tasks/s, placement p50/p99 "
            f"{row['placement_p50_ms']:>5.0f} / {row['placement_p99_ms']:>5.0f} ms, API p50/p99 "
            f"{row['api_p50_ms']:>5.1f} / {row['api_p99_ms']:>5.1f} ms, manager RSS "
            f"{row['manager_rss_mb']:>4.0f} MB, heartbeat max {row['heartbeat_max_ms']:>5.0f} ms, "
            f"marked down {row['nodes_marked_down']:.0f}, leader changes {row['leader_changes']:.0f}")


if __name__ == "__main__":
    main()
