#!/usr/bin/env python3
"""Failover: Flotilla and Docker Swarm mode side by side, on the same test hosts.

Two measurements, each repeated for several rounds on both systems:

* **leader kill -9 -> next acknowledged write.** Find the leader through the
  API, SIGKILL its daemon (Flotilla: every process of the node's systemd
  unit, i.e. the node and its manager; Swarm: the leader host's dockerd),
  and time until a write is acknowledged through one of the two surviving
  managers. The client on this machine starts a write every 10 ms, to the
  survivors alternately, each with a 2 s timeout and at most 20 in flight
  (Swarm holds writes while it has no leader; Flotilla refuses them at once):
  Flotilla ``POST /v1/configs`` over its HTTPS API, Swarm ``POST
  /configs/create`` over the Engine API (plain TCP, port 2375, reachable
  only on the test hosts' bridge network). Automatic restarts are
  off for the killed unit during the round on both systems, so the old
  leader stays dead; afterwards it is started again and the next round waits
  until the cluster is whole (3 reachable managers, every node ready).

* **worker host kill -9 -> its tasks running elsewhere.** A service of 4
  replicas of ``busybox sleep 3600`` constrained to ``node.role==worker``
  (2 on each worker), then the whole worker host is SIGKILLed (the host
  container's init: systemd, dockerd, the agent and the tasks die at once,
  and its network goes away, like pulling the plug). Time until the API
  reports 4 replicas running on nodes other than the dead one, polled every
  100 ms. Default settings on both: Flotilla's heartbeat period is 1 s,
  Swarm's 5 s. The host is then started again and the service removed.

The hosts are 3 managers + 2 workers from ``tests/deploy/testhosts.py``
(containers running systemd, sshd and their own dockerd). Flotilla is
deployed on them with ``playbooks/site.yml`` and measured first; then it is
stopped and its containers removed, and Swarm runs on the same dockerds
(``docker swarm init`` / ``join``). The hosts are removed at the end, also
on failure; a rerun first removes hosts left by an interrupted run.

    python bench/failover.py [--rounds 5] [--systems flotilla,swarm] [--keep-hosts]
                             [--wheelhouse DIR]
    python bench/failover.py --where local [--rounds 7]   # 3 local manager processes

Prints a table and writes bench/results/failover.json (failover-local.json
for ``--where local``).
"""

from __future__ import annotations

import argparse
import base64
import itertools
import os
import shutil
import signal
import statistics
import tempfile
import threading
import time
import uuid

from benchlib import write_result

from flotilla.common.httpclient import ApiError, Client

from tests.deploy import testhosts
from tests.deploy.testhosts import wait_until

PREFIX = "fobench"
IMAGE = testhosts.BUSYBOX_IMAGE
REPLICAS = 4
ENGINE_PORT = 2375
ENGINE_API = "1.41"             # Debian 12's docker.io (20.10)
FLOTILLA_ADMIN = "/var/lib/flotilla/admin"
WRITE_INTERVAL = 0.01
WRITE_TIMEOUT = 2.0
MAX_IN_FLIGHT = 20
TASK_INTERVAL = 0.1
RUN = uuid.uuid4().hex[:8]        # names of this run's writes


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def summary(values: list[float]) -> dict:
    if not values:
        return {"rounds": 0}
    return {"rounds": len(values), "seconds": [round(v, 3) for v in values],
            "median_s": round(statistics.median(values), 3),
            "min_s": round(min(values), 3), "max_s": round(max(values), 3)}


# -- processes of the test hosts, seen from this machine ----------------------------------

def unit_pids(hosts: testhosts.TestHosts, host, unit: str) -> list[int]:
    """PIDs (in this machine's namespace) of every process of a systemd unit on a host.

    The hosts share this machine's cgroup tree, so the unit's cgroup lists them."""
    cgroup = hosts.exec(host, ["systemctl", "show", "-p", "ControlGroup", "--value", unit]).stdout.strip()
    if not cgroup:
        raise RuntimeError(f"{unit} has no control group on {host} (not running?)")
    for base in ("/sys/fs/cgroup/systemd", "/sys/fs/cgroup/unified", "/sys/fs/cgroup"):
        path = f"{base}{cgroup}/cgroup.procs"
        if os.path.exists(path):
            with open(path) as f:
                pids = [int(p) for p in f.read().split()]
            if pids:
                return pids
    raise RuntimeError(f"no processes found for {unit} on {host} ({cgroup})")


def comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def kill_all(pids) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:      # a short-lived child that has exited meanwhile
            pass


def suspend_restarts(hosts, host, unit: str) -> None:
    """No automatic restart of ``unit`` (until the host reboots): a killed daemon stays dead."""
    hosts.exec(host, f"mkdir -p /run/systemd/system/{unit}.d && "
                     f"printf '[Service]\\nRestart=no\\n' > /run/systemd/system/{unit}.d/bench.conf && "
                     "systemctl daemon-reload")


def start_unit(hosts, host, unit: str) -> None:
    hosts.exec(host, f"systemctl reset-failed {unit} 2>/dev/null; systemctl start {unit}")


def power_off(host_name: str) -> float:
    """SIGKILL the host container's init (systemd, dockerd, agents and tasks die with it);
    returns the monotonic time of the kill."""
    pid = int(testhosts.docker("inspect", "--format", "{{.State.Pid}}", host_name).stdout)
    t0 = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    return t0


def power_on(hosts: testhosts.TestHosts, host) -> None:
    """Start a powered-off host again (same address) and wait until it is ready."""
    wait_until(lambda: testhosts.docker("inspect", "--format", "{{.State.Running}}",
                                        host.name).stdout.strip() == "false",
               timeout=60, what=f"{host.name} to stop")
    testhosts.docker("start", host.name)
    ip = testhosts.docker("inspect", "--format",
                          f'{{{{(index .NetworkSettings.Networks "{hosts.network}").IPAddress}}}}',
                          host.name).stdout.strip()
    if ip != host.ip:
        raise RuntimeError(f"{host.name} came back with address {ip}, not {host.ip}")
    hosts.wait_ready([host], timeout=180)


def probe_writes(write, t0: float, timeout: float = 180) -> dict:
    """Start a write attempt every WRITE_INTERVAL (``write(i)``, attempt i) until one is
    acknowledged; at most MAX_IN_FLIGHT attempts at once, each with its own short timeout,
    so that a request the cluster holds on to does not hide a later success. Returns the
    seconds from ``t0`` to the first acknowledgement, the number of attempts, and a few
    distinct errors seen."""
    lock = threading.Lock()
    done = threading.Event()
    slots = threading.BoundedSemaphore(MAX_IN_FLIGHT)
    first: list[float] = []
    errors: list[str] = []
    threads = []

    def attempt(i):
        try:
            write(i)
            with lock:
                if not first:
                    first.append(time.monotonic() - t0)
            done.set()
        except Exception as exc:  # noqa: BLE001 - every failure is a retry
            msg = f"{type(exc).__name__}: {str(exc)[:160]}"
            with lock:
                if len(errors) < 5 and msg not in errors:
                    errors.append(msg)
        finally:
            slots.release()

    i = 0
    while not done.is_set():
        if time.monotonic() > t0 + timeout:
            raise TimeoutError(f"no acknowledged write {timeout}s after the kill; errors: {errors}")
        if slots.acquire(timeout=WRITE_INTERVAL):
            i += 1
            th = threading.Thread(target=attempt, args=(i,), daemon=True)
            th.start()
            threads.append(th)
            done.wait(WRITE_INTERVAL)
    for th in threads:      # let the stragglers finish before the next step
        th.join(WRITE_TIMEOUT + 5)
    return {"seconds": first[0], "attempts": i, "errors": errors}


def write_latency(write, n: int = 10) -> float:
    """Median seconds of an acknowledged write while the cluster is healthy."""
    times = []
    for i in range(n):
        t = time.monotonic()
        write(i)
        times.append(time.monotonic() - t)
    return statistics.median(times)


# -- Flotilla -----------------------------------------------------------------------------

class FlotillaSide:
    name = "flotilla"

    def __init__(self, hosts: testhosts.TestHosts, workdir: str):
        self.hosts = hosts
        self.tls_dir = os.path.join(workdir, "flotilla-admin")
        shutil.rmtree(self.tls_dir, ignore_errors=True)
        os.makedirs(self.tls_dir)
        for f in ("ca.pem", "cert.pem", "key.pem"):
            data = hosts.exec(hosts.managers[0], ["cat", f"{FLOTILLA_ADMIN}/{f}"]).stdout
            with open(os.path.join(self.tls_dir, f), "w") as fh:
                fh.write(data)
        os.chmod(os.path.join(self.tls_dir, "key.pem"), 0o600)
        self.n = itertools.count(1)

    def addr(self, host) -> str:
        return f"{host.ip}:4242"

    def client(self, hosts=None, **kw) -> Client:
        hosts = hosts or self.hosts.managers
        kw.setdefault("timeout", 5)
        kw.setdefault("retry_for", 5)
        return Client([self.addr(h) for h in hosts], tls_dir=self.tls_dir, **kw)

    def unit(self, host) -> str:
        return f"flotilla@{host.name}.service"

    def setup(self) -> None:
        for m in self.hosts.managers:
            suspend_restarts(self.hosts, m, self.unit(m))

    def healthy(self):
        """The leader's host when all 5 nodes are ready and 3 managers reachable, else None."""
        nodes = self.client(retry_for=0).get("/v1/nodes")
        if len(nodes) != len(self.hosts.hosts) or any(n["state"] != "ready" for n in nodes):
            return None
        managers = [n for n in nodes if n["role"] == "manager"]
        if len(managers) != 3 or any((n.get("manager") or {}).get("reachability") != "reachable"
                                     for n in managers):
            return None
        leader = None
        for m in self.hosts.managers:
            h = Client([self.addr(m)], tls_dir=self.tls_dir, timeout=3, retry_for=0).get("/v1/health")
            if h.get("is_leader") and h.get("leader_ready"):
                leader = m
        return leader

    def write_fn(self, survivors):
        clients = [self.client([m], timeout=WRITE_TIMEOUT, retry_for=0) for m in survivors]

        def write(i):
            clients[i % len(clients)].post("/v1/configs", {
                "name": f"failover-{RUN}-{next(self.n)}", "data": base64.b64encode(b"x").decode()})
        return write

    def leader_round(self) -> dict:
        leader = wait_until(self.healthy, timeout=180, interval=0.5, what="a healthy Flotilla cluster")
        survivors = [m for m in self.hosts.managers if m is not leader]
        write = self.write_fn(survivors)
        latency = write_latency(write)
        pids = unit_pids(self.hosts, leader, self.unit(leader))
        t0 = time.monotonic()
        kill_all(pids)
        row = probe_writes(write, t0)
        start_unit(self.hosts, leader, self.unit(leader))
        return dict(row, killed=leader.name, processes=len(pids), healthy_write_s=latency)

    def create_service(self, name: str) -> None:
        self.client().post("/v1/services", {
            "name": name, "replicas": REPLICAS,
            "task": {"container": {"image": IMAGE, "args": ["sleep", "3600"], "init": True},
                     "placement": {"constraints": ["node.role==worker"]}}})

    def poll_client(self):
        return self.client(timeout=2, retry_for=0)

    def running_by_node(self, name: str, client=None) -> dict:
        client = client or self.client()
        counts: dict = {}
        for t in client.get(f"/v1/services/{name}/tasks"):
            if t["state"] == "running" and t["desired_state"] == "running":
                counts[t["node"]] = counts.get(t["node"], 0) + 1
        return counts

    def remove_service(self, name: str) -> None:
        self.client().delete(f"/v1/services/{name}")

    def stop(self) -> None:
        """Remove the services, stop every node and remove its containers."""
        try:
            for s in self.client(retry_for=0).get("/v1/services"):
                self.client(retry_for=0).delete(f"/v1/services/{s['id']}")
        except ApiError:
            pass
        for h in self.hosts.hosts:
            self.hosts.exec(h, f"systemctl disable --now {self.unit(h)}; "
                               "docker ps -aq | xargs -r docker rm -f", check=False)


# -- Docker Swarm mode --------------------------------------------------------------------

class SwarmSide:
    name = "swarm"

    def __init__(self, hosts: testhosts.TestHosts):
        self.hosts = hosts
        self.n = itertools.count(1)
        self.node_ids: dict[str, str] = {}

    def client(self, host, timeout: float = 10, pool: int = 4):
        import docker
        return docker.DockerClient(base_url=f"tcp://{host.ip}:{ENGINE_PORT}", version=ENGINE_API,
                                   timeout=timeout, max_pool_size=pool)

    def first_answering(self, hosts=None):
        for m in hosts or self.hosts.managers:
            try:
                c = self.client(m, timeout=3)
                c.ping()
                return c
            except Exception:  # noqa: BLE001 - try the next manager
                continue
        raise RuntimeError("no manager's engine answers")

    def setup(self) -> None:
        """Engine API on TCP on the managers (test network only), then the swarm."""
        for m in self.hosts.managers:
            self.hosts.exec(m, f"echo 'DOCKER_OPTS=\"-H tcp://{m.ip}:{ENGINE_PORT} --tls=false\"' > /etc/default/docker")
            suspend_restarts(self.hosts, m, "docker.service")
            self.hosts.exec(m, "systemctl restart docker")
        for h in self.hosts.hosts:
            self.hosts.exec(h, "docker swarm leave --force", check=False)
        m1 = self.hosts.managers[0]
        wait_until(lambda: self.client(m1, timeout=3).ping(), timeout=60, what="the engine on TCP")
        self.hosts.exec(m1, ["docker", "swarm", "init", "--advertise-addr", m1.ip])
        tokens = {role: self.hosts.exec(m1, ["docker", "swarm", "join-token", "-q", role]).stdout.strip()
                  for role in ("manager", "worker")}
        for h in self.hosts.hosts[1:]:
            self.hosts.exec(h, ["docker", "swarm", "join", "--advertise-addr", h.ip,
                                "--token", tokens[h.role], f"{m1.ip}:2377"])
        nodes = self.client(m1).nodes.list()
        self.node_ids = {n.attrs["Description"]["Hostname"]: n.id for n in nodes}

    def healthy(self):
        by_name = {h.name: h for h in self.hosts.managers}
        nodes = self.first_answering().nodes.list()
        if len(nodes) != len(self.hosts.hosts) or any(n.attrs["Status"]["State"] != "ready" for n in nodes):
            return None
        leader = None
        managers = [n for n in nodes if n.attrs["Spec"]["Role"] == "manager"]
        if len(managers) != 3:
            return None
        for n in managers:
            ms = n.attrs.get("ManagerStatus") or {}
            if ms.get("Reachability") != "reachable":
                return None
            if ms.get("Leader"):
                leader = by_name.get(n.attrs["Description"]["Hostname"])
        if leader is None:
            return None
        for m in self.hosts.managers:   # every engine answers and knows the leader
            info = self.client(m, timeout=3).info()["Swarm"]
            if info.get("LocalNodeState") != "active" or not info.get("ControlAvailable"):
                return None
        return leader

    def write_fn(self, survivors):
        clients = [self.client(m, timeout=WRITE_TIMEOUT, pool=MAX_IN_FLIGHT) for m in survivors]

        def write(i):
            clients[i % len(clients)].configs.create(name=f"failover-{RUN}-{next(self.n)}", data=b"x")
        return write

    def leader_round(self) -> dict:
        leader = wait_until(self.healthy, timeout=240, interval=0.5, what="a healthy swarm")
        survivors = [m for m in self.hosts.managers if m is not leader]
        write = self.write_fn(survivors)
        latency = write_latency(write)
        pids = [p for p in unit_pids(self.hosts, leader, "docker.service") if comm(p) == "dockerd"]
        t0 = time.monotonic()
        kill_all(pids)
        row = probe_writes(write, t0)
        start_unit(self.hosts, leader, "docker.service")
        return dict(row, killed=leader.name, processes=len(pids), healthy_write_s=latency)

    def create_service(self, name: str) -> None:
        import docker
        self.first_answering().services.create(
            IMAGE, command=["sleep", "3600"], name=name, init=True,
            constraints=["node.role==worker"],
            mode=docker.types.ServiceMode("replicated", replicas=REPLICAS))

    def poll_client(self):
        return self.client(self.hosts.managers[0], timeout=2)

    def running_by_node(self, name: str, client=None) -> dict:
        client = client or self.first_answering()
        if not self.node_ids:
            self.node_ids = {n.attrs["Description"]["Hostname"]: n.id for n in client.nodes.list()}
        names = {v: k for k, v in self.node_ids.items()}
        counts: dict = {}
        for t in client.api.tasks(filters={"service": name, "desired-state": "running"}):
            if t["Status"]["State"] == "running" and t["DesiredState"] == "running":
                node = names.get(t.get("NodeID"), t.get("NodeID"))
                counts[node] = counts.get(node, 0) + 1
        return counts

    def remove_service(self, name: str) -> None:
        self.first_answering().services.get(name).remove()

    def stop(self) -> None:
        pass


# -- the rounds ---------------------------------------------------------------------------

def worker_round(side, hosts: testhosts.TestHosts, victim, name: str) -> dict:
    side.create_service(name)
    workers = {w.name for w in hosts.workers}

    def spread():
        counts = side.running_by_node(name)
        # The schedulers spread the replicas 2 + 2; accept any split with both busy.
        return counts if sum(counts.values()) == REPLICAS and set(counts) == workers else None

    before = wait_until(spread, timeout=180, interval=0.5, what=f"{REPLICAS} replicas over both workers")
    survivor = next(w for w in hosts.workers if w is not victim)
    client = side.poll_client()

    def moved():
        counts = side.running_by_node(name, client)
        return sum(v for k, v in counts.items() if k != victim.name) == REPLICAS

    t0 = power_off(victim.name)
    deadline = t0 + 180
    while True:
        try:
            if moved():
                break
        except Exception:  # noqa: BLE001 - keep polling through transient errors
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{side.name}: tasks not running elsewhere 180 s after killing {victim.name}")
        time.sleep(TASK_INTERVAL)
    elapsed = time.monotonic() - t0
    side.remove_service(name)
    power_on(hosts, victim)
    return {"killed": victim.name, "survivor": survivor.name, "seconds": elapsed,
            "replicas_before": before}


def run_side(side, hosts, rounds: int, out: dict) -> None:
    res = out.setdefault(side.name, {"leader": [], "worker": [], "load": {}})
    res["load"]["start"] = loadavg()
    for r in range(rounds):
        row = side.leader_round()
        row["load1"] = loadavg()[0]
        res["leader"].append(row)
        log(f"{side.name} leader round {r + 1}: killed {row['killed']}, next acknowledged write "
            f"after {row['seconds'] * 1000:.0f} ms ({row['attempts']} attempts; healthy write "
            f"{row['healthy_write_s'] * 1000:.0f} ms; load {row['load1']})")
    wait_until(side.healthy, timeout=240, interval=0.5, what=f"a healthy {side.name} cluster")
    for r in range(rounds):
        victim = hosts.workers[r % len(hosts.workers)]
        row = worker_round(side, hosts, victim, f"failover{r}")
        row["load1"] = loadavg()[0]
        res["worker"].append(row)
        log(f"{side.name} worker round {r + 1}: killed host {row['killed']}, {REPLICAS} replicas "
            f"running elsewhere after {row['seconds']:.2f} s (load {row['load1']})")
        wait_until(side.healthy, timeout=240, interval=0.5, what=f"a healthy {side.name} cluster")
    res["load"]["end"] = loadavg()


def remove_leftovers() -> None:
    ids = testhosts.docker("ps", "-aq", "--filter", f"label={testhosts.HOST_LABEL}={PREFIX}",
                           check=False).stdout.split()
    if ids:
        log(f"removing {len(ids)} test host(s) left by an earlier run")
        testhosts.docker("rm", "-fv", *ids, check=False)


def run_hosts(args) -> None:
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    t_start = time.monotonic()
    testhosts.ensure_docker()
    remove_leftovers()
    paths = testhosts.prepare()
    wheelhouse = args.wheelhouse or paths["wheelhouse"]
    workdir = tempfile.mkdtemp(prefix="flotilla-failover-")
    hosts = testhosts.TestHosts(prefix=PREFIX, workdir=workdir)
    results: dict = {}
    failed = True
    try:
        hosts.start(managers=3, workers=2)
        log("hosts: " + ", ".join(f"{h.name} ({h.role}, {h.ip})" for h in hosts.hosts))
        if "flotilla" in systems:
            hosts.write_inventory(wheelhouse=wheelhouse)
            t = time.monotonic()
            hosts.run_playbook("site").check()
            log(f"Flotilla deployed with playbooks/site.yml in {time.monotonic() - t:.0f} s")
            side = FlotillaSide(hosts, workdir)
            side.setup()
            try:
                run_side(side, hosts, args.rounds, results)
            finally:
                side.stop()
        if "swarm" in systems:
            side = SwarmSide(hosts)
            side.setup()
            log("swarm of 3 managers + 2 workers created")
            run_side(side, hosts, args.rounds, results)
        failed = False
    finally:
        if failed and hosts.hosts:
            try:
                log(f"ansible logs and host journals: {hosts.save_diagnostics()}")
            except Exception:  # noqa: BLE001 - the teardown matters more
                pass
        if args.keep_hosts:
            log(f"hosts kept; remove them with: docker rm -fv $(docker ps -aq --filter "
                f"label={testhosts.HOST_LABEL}={PREFIX})")
        else:
            hosts.teardown()
            if not failed:
                shutil.rmtree(workdir, ignore_errors=True)
    report(results, args, time.monotonic() - t_start)


def report(results: dict, args, duration: float) -> None:
    payload = {"benchmark": "failover", "where": "test hosts (3 managers + 2 workers, systemd + "
               "dockerd each, one bridge network)", "rounds": args.rounds,
               "duration_s": round(duration, 1), "load_end": loadavg(),
               "settings": {"flotilla_heartbeat_s": 1, "swarm_heartbeat_s": 5,
                            "write_poll_interval_s": WRITE_INTERVAL, "write_timeout_s": 1,
                            "task_poll_interval_s": TASK_INTERVAL, "replicas": REPLICAS},
               "targets": {"leader_s": 1.0, "worker_s": 5.0},
               "reference": {"swarm_leader_s": 16, "swarm_worker_s": 15.8}}
    rows = []
    for sys_name, res in results.items():
        leader = summary([r["seconds"] for r in res["leader"]])
        worker = summary([r["seconds"] for r in res["worker"]])
        payload[sys_name] = {"leader_kill": dict(leader, runs=res["leader"],
                                                 healthy_write_median_s=round(statistics.median(
                                                     [r["healthy_write_s"] for r in res["leader"]]), 4)
                                                 if res["leader"] else None),
                             "worker_host_kill": dict(worker, runs=res["worker"]),
                             "load": res["load"]}
        rows.append((sys_name, leader, worker))

    def cell(s):
        if not s.get("rounds"):
            return "—"
        return f"{s['median_s']:.2f} s ({s['min_s']:.2f}–{s['max_s']:.2f}, n={s['rounds']})"

    names = {"flotilla": "Flotilla", "swarm": "Docker Swarm"}
    print()
    print(f"{'':<48}" + "".join(f"{names[n]:<30}" for n, _, _ in rows) + "target")
    print(f"{'leader kill -9 -> next acknowledged write':<48}"
          + "".join(f"{cell(lead):<30}" for _, lead, _ in rows) + "<= 1 s")
    print(f"{'worker host kill -9 -> tasks running elsewhere':<48}"
          + "".join(f"{cell(work):<30}" for _, _, work in rows) + "<= 5 s")
    m = write_result("failover", payload, args.out)
    print(f"(medians, min–max; load average at the end {payload['load_end']}; "
          f"benchmark took {duration / 60:.1f} min)")
    print(f"\nwrote {m}")


# -- local mode: 3 manager processes on this machine -------------------------------------

def run_local(args) -> None:
    from tests.helpers.cluster import LocalCluster, wait_for

    base = tempfile.mkdtemp(prefix="flotilla-failover-")
    c = LocalCluster(base, heartbeat="5s")
    results = []
    try:
        c.init("m1")
        c.join("m2")
        c.join("m3")
        n = 0
        for rnd in range(args.rounds):
            leader = c.wait_leader_ready(60)
            survivors = [x for x in c.nodes.values() if x is not leader]
            client = c.admin(survivors, timeout=1, retry_for=0)

            def write():
                nonlocal n
                n += 1
                try:
                    client.post("/v1/configs", {"name": f"fo-{n}",
                                                "data": base64.b64encode(b"x").decode()})
                    return True
                except ApiError:
                    return False

            assert write()
            t0 = time.monotonic()
            leader.signal_group()
            wait_for(write, 60, interval=0.01, what="acknowledged write")
            elapsed = time.monotonic() - t0
            results.append(elapsed)
            print(f"round {rnd + 1}: killed {leader.name}; next acknowledged write after "
                  f"{elapsed * 1000:.0f} ms", flush=True)
            leader.kill()      # reap it before starting it again
            leader.restart()
            c.wait_node_ready(leader, manager=True, timeout=60)
    finally:
        c.stop_all()
        shutil.rmtree(base, ignore_errors=True)
    s = summary(results)
    payload = dict(s, benchmark="failover-local",
                   what="leader kill -9 -> next acknowledged write (3 local managers, loopback, TLS, fsync)",
                   target_s=1.0, load_end=loadavg())
    print(f"\nmedian {s['median_s']:.3f} s, min {s['min_s']:.3f} s, max {s['max_s']:.3f} s "
          f"({s['rounds']} rounds; target 1 s)")
    print(f"wrote {write_result('failover-local', payload, args.out)}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--where", choices=("hosts", "local"), default="hosts",
                    help="hosts: Flotilla and Swarm on 5 test hosts (default); "
                         "local: Flotilla's leader failover with 3 local processes")
    ap.add_argument("--rounds", type=int, default=None, help="rounds per measurement "
                    "(default 5 on hosts, 7 locally)")
    ap.add_argument("--systems", default="flotilla,swarm", help="hosts mode: which systems to measure")
    ap.add_argument("--wheelhouse", default=None, help="hosts mode: install Flotilla from these "
                    "wheels (default: built from this checkout, as the deployment tests do)")
    ap.add_argument("--keep-hosts", action="store_true", help="hosts mode: leave the hosts running")
    ap.add_argument("--out", default=None, help="JSON path (default bench/results/failover.json)")
    args = ap.parse_args()
    if args.where == "local":
        args.rounds = args.rounds or 7
        run_local(args)
    else:
        args.rounds = args.rounds or 5
        run_hosts(args)


if __name__ == "__main__":
    main()
