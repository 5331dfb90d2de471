"""The leader's dispatcher port (API port + 30000): agents send their
heartbeats and status reports there, follow a new leader to its port, and
use the API when the port cannot be had."""

from __future__ import annotations

import socket

from prometheus_client.parser import text_string_to_metric_families

from flotilla.common.httpclient import tls_session
from tests.helpers.cluster import wait_for

IMAGE = "flotilla-test/busybox:1"
FRONT_METRIC = "flotilla_dispatcher_front_requests_total"


def front_served(c, node) -> float | None:
    """What the manager's dispatcher took on its port (None: not the leader)."""
    resp = tls_session(c.admin_dir).get(f"https://{node.addr}/metrics", timeout=5)
    assert resp.status_code == 200, resp.text
    for family in text_string_to_metric_families(resp.text):
        for s in family.samples:
            if s.name == FRONT_METRIC:
                return s.value
    return None


def running(c, service) -> int:
    tasks = c.admin().get("/v1/tasks", params={"service": service})
    return sum(1 for t in tasks if t["state"] == "running")


def create(c, name, replicas):
    c.admin().post("/v1/services", {
        "name": name, "replicas": replicas,
        "task": {"container": {"image": IMAGE, "command": ["sleep", "3600"],
                               "stop_grace_period": "1s"}}})


def test_agents_follow_the_leader_to_its_dispatcher_port(make_cluster):
    c = make_cluster()
    c.init("m1")
    c.join("m2")
    c.join("m3")
    c.join("w1", "worker")
    leader = c.wait_leader_ready()
    create(c, "port-web", 3)
    wait_for(lambda: running(c, "port-web") == 3, 60, what="3 running tasks")
    # Heartbeats of all four agents arrive on the leader's port.
    served = front_served(c, leader)
    wait_for(lambda: front_served(c, leader) >= served + 8, 20,
             what="heartbeats on the leader's dispatcher port")

    leader.kill()
    new = wait_for(lambda: (lambda n: n if n is not None and n is not leader else None)(
        c.leader()), 30, what="a new leader")
    # The agents find the new leader's port: its count grows, the nodes stay
    # ready, and a new task is reported running.
    wait_for(lambda: (front_served(c, new) or 0) >= 8, 30,
             what="heartbeats on the new leader's dispatcher port")
    c.admin().patch("/v1/services/port-web", {"replicas": 4})
    wait_for(lambda: running(c, "port-web") == 4, 60, what="4 running tasks")
    nodes = {n["hostname"]: n["state"] for n in c.admin().get("/v1/nodes")}
    assert nodes["w1"] == "ready" and nodes["m2"] == "ready" and nodes["m3"] == "ready", nodes


def test_agents_use_the_api_when_the_dispatcher_port_is_taken(make_cluster):
    c = make_cluster()
    m1 = c.init("m1")
    m1.stop()
    host, port = m1.addr.rsplit(":", 1)
    with socket.create_server((host, int(port) + 30000)):
        m1.restart()
        c.wait_leader_ready()
        c.join("w1", "worker")
        create(c, "api-web", 2)
        wait_for(lambda: running(c, "api-web") == 2, 60, what="2 running tasks")
        assert "cannot listen" in m1.log()
        assert front_served(c, m1) == 0
        # Heartbeats keep both nodes ready through the API alone.
        wait_for(lambda: c.health(m1)["store_index"] > 0, 10)
        nodes = c.admin().get("/v1/nodes")
        assert sorted(n["state"] for n in nodes) == ["ready", "ready"], nodes
