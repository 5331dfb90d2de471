"""A service's network, end to end, on separate hosts: a real cluster whose
nodes are network namespaces, each with its own Docker engine (managing its
iptables, forwarding dropped unless accepted), as in the chaos suite.

Host a runs the manager; a and b run the service ``web`` (the test web
image, two replicas, one per host) on the network ``app``; host c runs a
client on ``app``, and a service ``other`` on another network. Shows, from
inside the client's container: ``http://web/`` answers (the name is the
service's VIP), so does ``http://<VIP>/`` and each task's own address on the
other hosts; ``tasks.web`` is every running task's address; ``other`` does
not resolve for the client (it is not on ``other``'s network), though it
does for ``other``'s own task on c; a dnsrr service's name is its tasks'
addresses. A task killed on its engine leaves the VIP on every engine
within a second (the time each engine took is printed), and the name keeps
answering from the task left; so does a task that turns unhealthy, and one
being stopped (scaled away), though their containers take their whole stop
grace period to stop.
"""

from __future__ import annotations

import concurrent.futures
import ipaddress
import os
import re
import subprocess
import time

import pytest

from flotilla.agent.network.vips import VirtualIPs
from tests.helpers.cluster import wait_for
from tests.helpers.netns import Fabric
from tests.helpers.nscluster import Host, NsCluster, clean_leftovers

BASE = "/tmp/flotilla-service-networks"
WEB = "flotilla-test/web:1"
BUSYBOX = "flotilla-test/busybox:1"
HOSTS = {"a": 11, "b": 12, "c": 13}
LEAVE_WITHIN = 1.0


def spec(name: str, image: str, networks: list[str], replicas: int = 1,
         constraints: tuple[str, ...] = (), mode: str = "vip", sleep: bool = False,
         **container_opts) -> dict:
    container: dict = {"image": image, **container_opts}
    if sleep:
        container.update(command=["sleep", "3600"], init=True)
    return {"name": name, "replicas": replicas, "endpoint": {"mode": mode},
            "task": {"container": container, "networks": [{"target": n} for n in networks],
                     "placement": {"constraints": list(constraints), "max_replicas": 1}}}


@pytest.fixture(scope="module")
def hosts_cluster():
    fabric = Fabric(prefix="fls", subnet="10.79.43")
    clean_leftovers(BASE, fabric)
    c = NsCluster(BASE, fabric)
    failed = False
    try:
        fabric.create()
        for name, octet in HOSTS.items():
            c.add_host(name, octet, images=(WEB, BUSYBOX), iptables=True)
        c.init("a")
        for name in ("b", "c"):
            c.join(name, "worker")
        yield c
    except BaseException:
        failed = True
        raise
    finally:
        if failed:
            print(c.dump_logs())
        c.teardown()
        clean_leftovers(BASE, fabric)


@pytest.fixture(scope="module")
def app(hosts_cluster, request):
    """The network, the services on it and the client's container."""
    c = hosts_cluster
    failed_before = request.session.testsfailed
    app_id = c.cli("network", "create", "app").stdout.strip()
    c.cli("network", "create", "side")
    admin = c.admin()
    admin.post("/v1/services", spec("web", WEB, ["app"], replicas=2,
                                     constraints=("node.hostname!=c",)))
    admin.post("/v1/services", spec("rr", BUSYBOX, ["app"], replicas=2, mode="dnsrr",
                                    constraints=("node.hostname!=c",), sleep=True))
    admin.post("/v1/services", spec("client", BUSYBOX, ["app"],
                                    constraints=("node.hostname==c",), sleep=True))
    admin.post("/v1/services", spec("other", BUSYBOX, ["side"],
                                    constraints=("node.hostname==c",), sleep=True))
    wanted = {"web": 2, "rr": 2, "client": 1, "other": 1}
    wait_for(lambda: all(len(running(admin, s)) == n for s, n in wanted.items()), 120,
             what="every service's tasks running")
    yield {"app": app_id, "admin": admin}
    if request.session.testsfailed > failed_before:
        print(c.dump_logs())


def running(admin, service: str) -> list[dict]:
    return [t for t in admin.get("/v1/tasks", params={"service": service})
            if t["state"] == "running" and t["desired_state"] == "running"]


def addr_on(task: dict, network_id: str) -> str:
    return next(a["addr"].split("/")[0] for a in task["networks"]
                if a["network_id"] == network_id)


def vip_of(admin, service: str) -> str:
    return admin.get(f"/v1/services/{service}")["virtual_ips"][0]["addr"].split("/")[0]


def host_of(c: NsCluster, admin, task: dict) -> Host:
    name = admin.get(f"/v1/nodes/{task['node_id']}")["hostname"]
    return c.hosts[name]


def container(c: NsCluster, host: Host, service: str | None = None,
              task_id: str | None = None) -> str:
    """The running container of ``service`` (or of the task) on ``host``."""
    label = f"flotilla.task.id={task_id}" if task_id else f"flotilla.service.name={service}"
    client = c.engine_client(host)
    try:
        (found,) = client.api.containers(filters={"label": label, "status": "running"})
    finally:
        client.close()
    return found["Id"]


def sh(host: Host, cid: str, script: str, timeout: float = 20) -> subprocess.CompletedProcess:
    return host.engine.cli("exec", cid, "sh", "-c", script, check=False, timeout=timeout)


def fetch(host: Host, cid: str, target: str) -> str:
    """The body of ``GET /`` on ``target``:80 from the container ("" if it
    failed); the name, if it is one, resolved inside the container."""
    res = sh(host, cid, f"printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {target} 80")
    head, _, body = res.stdout.partition("\n\n")       # text mode: \r\n read as \n
    return body if res.returncode == 0 and " 200 " in head else ""


def lookup(host: Host, cid: str, name: str) -> set[str] | None:
    """The IPv4 addresses ``name`` resolves to inside the container (through
    Docker's embedded resolver, then the node's), None if it does not."""
    res = sh(host, cid, f"busybox nslookup -type=a {name}")
    if res.returncode != 0:
        return None
    answer = res.stdout.split("Name:", 1)[1] if "Name:" in res.stdout else ""
    found = set(re.findall(r"Address:\s*(\d+\.\d+\.\d+\.\d+)\s*$", answer, re.M))
    return found or None


def backends(host: Host, vip: str) -> set[str]:
    """The addresses the engine of ``host`` spreads ``vip``'s connections over."""
    out: set[str] = set()
    for line in VirtualIPs(netns=host.netns).listing().splitlines():
        if f"ip daddr {vip} dnat" in line:
            out |= {a for a in re.findall(r"\d+\.\d+\.\d+\.\d+", line.split("dnat", 1)[1])}
    return out


def test_a_client_reaches_a_service_by_name_and_vip_across_hosts(hosts_cluster, app):
    c, admin = hosts_cluster, app["admin"]
    client_host = c.hosts["c"]
    cid = container(c, client_host, "client")
    vip = vip_of(admin, "web")
    tasks = running(admin, "web")
    addrs = {addr_on(t, app["app"]) for t in tasks}
    assert {host_of(c, admin, t).name for t in tasks} == {"a", "b"}
    assert ipaddress.ip_address(vip) in ipaddress.ip_network(
        admin.get("/v1/networks/app")["subnet"])

    # the name is the VIP, which answers from a task on another host
    assert wait_for(lambda: fetch(client_host, cid, "web"), 30,
                    what="http://web/ from the client") == "web v1\n"
    assert lookup(client_host, cid, "web") == {vip}
    assert fetch(client_host, cid, vip) == "web v1\n"
    # every running task, and each one reached directly across hosts
    assert lookup(client_host, cid, "tasks.web") == addrs
    for addr in addrs:
        assert fetch(client_host, cid, addr) == "web v1\n", addr
    # dnsrr: the name is the tasks' addresses, and there is no VIP
    rr = {addr_on(t, app["app"]) for t in running(admin, "rr")}
    assert admin.get("/v1/services/rr")["virtual_ips"] == []
    assert lookup(client_host, cid, "rr") == rr
    # a service on a network the client is not on: not a name for it, but
    # one for that service's own task on the same host
    other = container(c, client_host, "other")
    (side_vip,) = [v["addr"].split("/")[0] for v in admin.get("/v1/services/other")["virtual_ips"]]
    assert lookup(client_host, other, "other") == {side_vip}
    assert lookup(client_host, cid, "other") is None
    assert lookup(client_host, other, "web") is None


def test_a_killed_task_leaves_the_vip_on_every_engine_within_a_second(hosts_cluster, app):
    c, admin = hosts_cluster, app["admin"]
    vip = vip_of(admin, "web")
    tasks = {host_of(c, admin, t).name: t for t in running(admin, "web")}
    victim = addr_on(tasks["b"], app["app"])
    survivor = addr_on(tasks["a"], app["app"])
    engines = list(c.hosts.values())
    # every engine with a task on the network spreads the VIP over both
    wait_for(lambda: all(backends(h, vip) == {victim, survivor} for h in engines), 30,
             what="both tasks behind the VIP on every engine")

    def gone(host: Host, start: float) -> float:
        deadline = start + 10
        while time.monotonic() < deadline:
            if victim not in backends(host, vip):
                return time.monotonic() - start
        raise AssertionError(f"{victim} still behind {vip} on {host.name} after 10 s")

    victim_cid = container(c, c.hosts["b"], "web")
    engine = c.engine_client(c.hosts["b"])
    with concurrent.futures.ThreadPoolExecutor(len(engines)) as pool:
        start = time.monotonic()
        engine.api.kill(victim_cid)
        took = dict(zip((h.name for h in engines),
                        pool.map(lambda h: gone(h, start), engines)))
    engine.close()
    print(f"killed task {victim} out of VIP {vip}'s rotation after: "
          + ", ".join(f"{name} {secs * 1000:.0f} ms" for name, secs in sorted(took.items()))
          + f" (load average {os.getloadavg()[0]:.2f})")
    assert all(secs <= LEAVE_WITHIN for secs in took.values()), took
    for h in engines:
        assert backends(h, vip) == {survivor}, h.name
    # the name answers from the task left; the killed one is no answer any more
    client_host = c.hosts["c"]
    cid = container(c, client_host, "client")
    assert wait_for(lambda: lookup(client_host, cid, "tasks.web") == {survivor}, 5,
                    what="tasks.web without the killed task")
    for _ in range(4):
        assert fetch(client_host, cid, "web") == "web v1\n"



def gone_from(engines: list[Host], addr: str, vip: str, start: float) -> dict[str, float]:
    """How long after ``start`` ``addr`` left ``vip``'s backends on each engine."""
    took = {}
    for h in engines:
        wait_for(lambda h=h: addr not in backends(h, vip), 10, interval=0,
                 what=f"{addr} out of {vip} on {h.name}")
        took[h.name] = time.monotonic() - start
    return took


def test_a_task_unhealthy_or_being_stopped_leaves_the_vip_within_a_second(hosts_cluster, app):
    c, admin = hosts_cluster, app["admin"]
    # its container ignores its stop signal: it stops only after 20 s
    admin.post("/v1/services", spec("slow", WEB, ["app"], constraints=("node.hostname==a",),
                                    stop_signal="SIGWINCH", stop_grace_period=20))
    (task,) = wait_for(lambda: running(admin, "slow"), 60, what="slow running")
    addr, vip = addr_on(task, app["app"]), vip_of(admin, "slow")
    engines = [c.hosts["a"], c.hosts["c"]]
    wait_for(lambda: all(backends(h, vip) == {addr} for h in engines), 30,
             what="the task behind its VIP")
    a = c.hosts["a"]
    cid = container(c, a, "slow")
    engine = c.engine_client(a)
    try:
        sh(a, cid, "rm /www/health")          # its healthcheck fails from now on

        def unhealthy():
            health = engine.api.inspect_container(cid)["State"].get("Health") or {}
            return health.get("Status") == "unhealthy" and time.monotonic()
        took = gone_from(engines, addr, vip, wait_for(unhealthy, 30, interval=0.02,
                                                      what="the engine's verdict"))
        print("unhealthy task out of its VIP after: "
              + ", ".join(f"{n} {s * 1000:.0f} ms" for n, s in sorted(took.items()))
              + f" (load average {os.getloadavg()[0]:.2f})")
        assert all(secs <= LEAVE_WITHIN for secs in took.values()), took
        assert engine.api.inspect_container(cid)["State"]["Running"]      # still stopping

        # its replacement, scaled away: out as its node is told to stop it
        (new,) = wait_for(lambda: [t for t in running(admin, "slow") if t["id"] != task["id"]],
                          60, what="the replacement running")
        new_addr = addr_on(new, app["app"])
        wait_for(lambda: all(backends(h, vip) == {new_addr} for h in engines), 30,
                 what="the replacement behind the VIP")
        new_cid = container(c, a, task_id=new["id"])
        start = time.monotonic()
        admin.patch("/v1/services/slow", {"replicas": 0})
        took = gone_from(engines, new_addr, vip, start)
        print("task being stopped out of its VIP after: "
              + ", ".join(f"{n} {s * 1000:.0f} ms" for n, s in sorted(took.items())))
        assert all(secs <= LEAVE_WITHIN for secs in took.values()), took
        assert engine.api.inspect_container(new_cid)["State"]["Running"]
    finally:
        engine.close()
