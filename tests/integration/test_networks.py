"""Networks on a real cluster: creation and its decisions (subnet, gateway,
VXLAN id), refusals naming the field, and the allocator's addresses — a
VIP per service per network, an address per task, none given twice, none
kept once its holder is gone, and a leader change in the middle."""

from __future__ import annotations

import collections
import ipaddress
import json
import os

import pytest

from flotilla.common.httpclient import ApiError
from tests.helpers.cluster import wait_for

IMAGE = "flotilla-test/busybox:1"
CLUSTER = {"managers": 1, "workers": 2}
ADDR_POOL = None     # the default pool: its subnets are asserted (see tests/conftest.py)


def refused(call, *args, **kw) -> ApiError:
    with pytest.raises(ApiError) as info:
        call(*args, **kw)
    return info.value


def service_spec(name, networks, replicas=2, mode="vip"):
    return {"name": name, "replicas": replicas,
            "endpoint": {"mode": mode},
            "task": {"container": {"image": IMAGE, "command": ["sleep", "3600"], "init": True},
                     "networks": networks}}


def tasks_of(admin, service):
    return admin.get("/v1/tasks", params={"service": service})


def live_addresses(admin):
    """Every address held on every network: (network id, address) -> holders."""
    held = collections.defaultdict(list)
    for s in admin.get("/v1/services"):
        for v in s["virtual_ips"]:
            held[(v["network_id"], v["addr"].split("/")[0])].append(f"vip {s['name']}")
    for t in admin.get("/v1/tasks"):
        if t["state"] in ("complete", "shutdown", "failed", "rejected", "orphaned"):
            continue
        for a in t["networks"]:
            held[(a["network_id"], a["addr"].split("/")[0])].append(f"task {t['id']}")
    return held


def test_networks_are_created_listed_inspected_and_removed(cluster):
    admin = cluster.admin()
    a = admin.post("/v1/networks", {"name": "net-a"})
    b = admin.post("/v1/networks", {"name": "net-b", "labels": {"team": "web"}})
    assert a["driver"] == "overlay" and a["subnet"] == "10.0.0.0/24" and a["gateway"] == "10.0.0.1"
    assert b["subnet"] == "10.0.1.0/24" and b["vni"] != a["vni"] and b["labels"] == {"team": "web"}
    mine = admin.post("/v1/networks", {"name": "net-c", "subnet": "192.168.77.0/26",
                                       "gateway": "192.168.77.62", "internal": True,
                                       "encrypted": True, "attachable": True})
    assert (mine["subnet"], mine["gateway"], mine["internal"], mine["encrypted"]) == \
        ("192.168.77.0/26", "192.168.77.62", True, True)
    assert [n["name"] for n in admin.get("/v1/networks")] == ["net-a", "net-b", "net-c"]
    assert admin.get("/v1/networks/net-b")["id"] == b["id"]
    assert admin.get(f"/v1/networks/{b['id'][:6]}")["name"] == "net-b"
    # Removed, then its subnet is free again.
    admin.delete("/v1/networks/net-a")
    assert admin.post("/v1/networks", {"name": "net-d"})["subnet"] == "10.0.0.0/24"
    events = admin.get("/v1/events", params={"since": 0, "type": "network"})["events"]
    assert [(e["action"], e["name"]) for e in events][:4] == [
        ("create", "net-a"), ("create", "net-b"), ("create", "net-c"), ("remove", "net-a")]
    for name in ("net-b", "net-c", "net-d"):
        admin.delete(f"/v1/networks/{name}")
    assert admin.get("/v1/networks") == []


def test_bad_networks_are_refused_naming_the_field(cluster):
    admin = cluster.admin()
    admin.post("/v1/networks", {"name": "taken", "subnet": "10.50.0.0/16"})
    cases = [
        ({"name": "taken"}, 409, "name"),
        ({"name": "x", "subnet": "10.50.3.0/24"}, 400, "subnet"),          # overlaps taken
        ({"name": "x", "subnet": "10.60.0.0/8"}, 400, "subnet"),           # not a network address
        ({"name": "x", "subnet": "10.60.0.0/30"}, 400, "subnet"),          # too small
        ({"name": "x", "subnet": "fd00::/64"}, 400, "subnet"),
        ({"name": "x", "subnet": "10.60.0.0/24", "gateway": "10.61.0.1"}, 400, None),
        ({"name": "x", "gateway": "10.61.0.1"}, 400, None),
        ({"name": "x", "driver": "bridge"}, 400, "driver"),
        ({"name": "bad name"}, 400, "name"),
        ({"name": "x", "mtu": 1400}, 400, "mtu"),
    ]
    for body, status, field in cases:
        err = refused(admin.post, "/v1/networks", body)
        assert (err.status, err.field) == (status, field), (body, err.status, err.field, err)
    assert [n["name"] for n in admin.get("/v1/networks")] == ["taken"]
    admin.delete("/v1/networks/taken")


def test_services_get_virtual_ips_and_tasks_get_addresses(cluster):
    admin = cluster.admin()
    front = admin.post("/v1/networks", {"name": "front"})
    back = admin.post("/v1/networks", {"name": "back", "subnet": "10.99.0.0/24"})
    web = admin.post("/v1/services", service_spec(
        "web", [{"target": "front", "aliases": ["www"]}, {"target": back["id"]}], replicas=3))
    assert [a["target"] for a in web["spec"]["task"]["networks"]] == [front["id"], back["id"]]
    wait_for(lambda: len([t for t in tasks_of(admin, "web") if t["state"] == "running"]) == 3,
             60, what="three running tasks")
    s = admin.get("/v1/services/web")
    vips = {v["network"]: v["addr"] for v in s["virtual_ips"]}
    assert set(vips) == {"front", "back"}
    assert ipaddress.ip_interface(vips["back"]).network == ipaddress.ip_network("10.99.0.0/24")
    for t in tasks_of(admin, "web"):
        nets = {a["network_id"]: a for a in t["networks"]}
        assert set(nets) == {front["id"], back["id"]}
        assert nets[front["id"]]["aliases"] == ["www"]
        assert ipaddress.ip_interface(nets[back["id"]]["addr"]).network == \
            ipaddress.ip_network("10.99.0.0/24")
    held = live_addresses(admin)
    assert all(len(h) == 1 for h in held.values()), {k: h for k, h in held.items() if len(h) > 1}
    assert not any(ipaddress.ip_address(addr) in (ipaddress.ip_address("10.99.0.1"),
                                                  ipaddress.ip_address("10.99.0.0"))
                   for _nid, addr in held)
    # The network is in use: refused, naming the service.
    err = refused(admin.delete, "/v1/networks/back")
    assert err.status == 409 and "web" in err.message
    # dnsrr: no VIP; leaving a network releases its VIP and the tasks move.
    spec = s["spec"]
    spec["endpoint"]["mode"] = "dnsrr"
    spec["task"]["networks"] = [{"target": front["id"], "aliases": ["www"]}]
    admin.patch("/v1/services/web", {"spec": spec})
    wait_for(lambda: admin.get("/v1/services/web")["virtual_ips"] == [], 30, what="VIPs released")
    wait_for(lambda: all([a["network_id"] for a in t["networks"]] == [front["id"]]
                         for t in tasks_of(admin, "web") if t["desired_state"] == "running"
                         and t["state"] == "running")
             and len([t for t in tasks_of(admin, "web") if t["state"] == "running"]) == 3,
             90, what="tasks on the front network only")
    admin.delete("/v1/services/web")
    wait_for(lambda: not admin.get("/v1/tasks"), 60, what="tasks gone")
    admin.delete("/v1/networks/back")
    admin.delete("/v1/networks/front")


def test_bad_service_networks_are_refused_naming_the_field(cluster):
    admin = cluster.admin()
    admin.post("/v1/networks", {"name": "shared"})
    admin.post("/v1/services", service_spec("db", [{"target": "shared", "aliases": ["store"]}],
                                            replicas=0))
    cases = [
        (service_spec("x", [{"target": "nowhere"}]), "task.networks.0.target"),
        (service_spec("bad.name", [{"target": "shared"}]), "name"),
        (service_spec("x", [{"target": "shared", "aliases": ["-no"]}]), "task.networks.0.aliases"),
        (service_spec("x", [{"target": "shared", "aliases": ["a", "A"]}]),
         "task.networks.0.aliases"),
        (service_spec("x", [{"target": "shared", "aliases": ["store"]}]),
         "task.networks.0.aliases"),                                   # db's alias
        (service_spec("x", [{"target": "shared", "aliases": ["db"]}]), "task.networks.0.aliases"),
        (service_spec("x", [{"target": "shared"}, {"target": "shared"}]), "task.networks"),
        (service_spec("x", [{"target": "shared"}], mode="round"), "endpoint.mode"),
    ]
    for body, field in cases:
        err = refused(admin.post, "/v1/services", body)
        assert (err.status, err.field) == (400, field), (body, err.status, err.field, err)
    assert [s["name"] for s in admin.get("/v1/services")] == ["db"]
    admin.delete("/v1/services/db")
    admin.delete("/v1/networks/shared")


def test_a_full_network_holds_tasks_back_until_addresses_are_released(cluster):
    admin = cluster.admin()
    # A /29: 6 host addresses, one the gateway; each service's VIP takes one.
    admin.post("/v1/networks", {"name": "tiny", "subnet": "10.98.0.0/29"})
    admin.post("/v1/services", service_spec("first", [{"target": "tiny"}], replicas=2))
    admin.post("/v1/services", service_spec("second", [{"target": "tiny"}], replicas=3))

    def states(service):
        return collections.Counter(t["state"] for t in tasks_of(admin, service)
                                   if t["desired_state"] == "running")
    wait_for(lambda: states("first")["running"] + states("second")["running"] == 3
             and states("first")["new"] + states("second")["new"] == 2, 60,
             what="three tasks running, two waiting for an address")
    waiting = [t for s in ("first", "second") for t in tasks_of(admin, s) if t["state"] == "new"]
    assert {t["message"] for t in waiting} == {"no address left on network tiny"}, waiting
    held = live_addresses(admin)
    assert len(held) == 5 and all(len(h) == 1 for h in held.values()), held
    # Removing a service releases its VIP and, once they stop, its tasks'
    # addresses: the waiting task gets one and runs.
    admin.delete("/v1/services/first")
    wait_for(lambda: states("second")["running"] == 3, 60,
             what="the waiting task given a released address")
    admin.delete("/v1/services/second")
    wait_for(lambda: not admin.get("/v1/tasks"), 60, what="tasks gone")
    admin.delete("/v1/networks/tiny")


def test_no_address_is_given_twice_across_a_leader_change(make_cluster):
    c = make_cluster().build(managers=3, workers=1)
    admin = c.admin()
    admin.post("/v1/networks", {"name": "busy"})
    for i in range(3):
        admin.post("/v1/services", service_spec(f"s{i}", [{"target": "busy"}], replicas=5))
    leader = c.wait_leader_ready()
    leader.kill()
    c.wait_leader_ready()
    admin = c.admin([n for n in c.managers() if n is not leader])
    admin.post("/v1/services", service_spec("after", [{"target": "busy"}], replicas=5))
    wait_for(lambda: sum(1 for t in admin.get("/v1/tasks") if t["state"] == "running") == 20,
             180, what="20 running tasks")
    held = live_addresses(admin)
    assert all(len(h) == 1 for h in held.values()), {k: h for k, h in held.items() if len(h) > 1}
    assert sum(1 for h in held.values() if h[0].startswith("task")) >= 20
    assert sum(1 for h in held.values() if h[0].startswith("vip")) == 4


def told(cluster, name):
    """The networks node ``name`` was told about (its agent's networks.json)."""
    path = os.path.join(cluster.nodes[name].data_dir, "agent", "networks.json")
    try:
        with open(path) as f:
            return json.load(f)["networks"]
    except FileNotFoundError:
        return {}


def test_nodes_are_told_about_the_networks_their_tasks_are_on(cluster):
    admin = cluster.admin()
    net = admin.post("/v1/networks", {"name": "talk"})
    admin.post("/v1/services", service_spec("api", [{"target": "talk", "aliases": ["rest"]}],
                                            replicas=3))
    wait_for(lambda: len([t for t in tasks_of(admin, "api") if t["state"] == "running"]) == 3,
             60, what="three running tasks")
    vip = admin.get("/v1/services/api")["virtual_ips"][0]["addr"]
    nodes = {n["id"]: n for n in admin.get("/v1/nodes")}
    tasks = {t["id"]: t for t in tasks_of(admin, "api")}
    on = {nodes[t["node_id"]]["hostname"] for t in tasks.values()}

    def picture_ok(name):
        view = told(cluster, name).get(net["id"])
        return (view is not None and view["subnet"] == net["subnet"]
                and view["vni"] == net["vni"]
                and view["services"] == [{"id": view["services"][0]["id"], "name": "api",
                                          "mode": "vip", "aliases": ["rest"], "vip": vip}]
                and {ep["task_id"] for ep in view["endpoints"] if ep["running"]} == set(tasks)
                and all(ep["node_addr"] == nodes[tasks[ep["task_id"]]["node_id"]]["ip"]
                        for ep in view["endpoints"]))
    wait_for(lambda: all(picture_ok(name) for name in on), 30,
             what="every node running a task told the whole picture")
    # Scaled down: the endpoint leaves every picture; a node with no task
    # left on the network is told to drop it.
    admin.patch("/v1/services/api", {"replicas": 1})
    wait_for(lambda: len([t for t in tasks_of(admin, "api") if t["state"] == "running"
                          and t["desired_state"] == "running"]) == 1, 60, what="one task left")
    (left,) = [t for t in tasks_of(admin, "api") if t["desired_state"] == "running"]
    keeper = nodes[left["node_id"]]["hostname"]
    wait_for(lambda: [ep["task_id"] for ep in told(cluster, keeper)[net["id"]]["endpoints"]]
             == [left["id"]], 30, what="the picture with one endpoint")
    wait_for(lambda: all(net["id"] not in told(cluster, name) for name in on - {keeper}), 30,
             what="the other nodes told to drop the network")
    assert os.stat(os.path.join(cluster.nodes[keeper].data_dir, "agent",
                                "networks.json")).st_mode & 0o777 == 0o600
    admin.delete("/v1/services/api")
    wait_for(lambda: all(net["id"] not in told(cluster, name) for name in on), 60,
             what="every node told to drop the network")
    admin.delete("/v1/networks/talk")
