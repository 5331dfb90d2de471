"""Prometheus metrics of managers and agents, scraped over mutual TLS from a
real cluster running a service on Docker."""

import os

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families
from requests.adapters import HTTPAdapter

from flotilla.common import tls
from tests.helpers.cluster import wait_for

IMAGE = "flotilla-test/busybox:1"
SERVICE = "metrics-web"


class _ServerName(HTTPAdapter):
    """Checks the server certificate for ``name`` whatever address is dialled
    (managers carry ``flotilla-manager``, agents their node id)."""

    def __init__(self, name):
        self._name = name
        super().__init__()

    def init_poolmanager(self, *args, **kwargs):
        kwargs["server_hostname"] = self._name
        kwargs["assert_hostname"] = self._name
        super().init_poolmanager(*args, **kwargs)


def get(addr, server_name, cert, ca, path="/metrics", method="GET"):
    with requests.Session() as s:
        s.mount("https://", _ServerName(server_name))
        return s.request(method, f"https://{addr}{path}", cert=cert, verify=ca, timeout=5)


def scrape(addr, server_name, cert, ca) -> dict:
    """{(sample name, sorted labels): value} of one target."""
    resp = get(addr, server_name, cert, ca)
    assert resp.status_code == 200, resp.text
    assert resp.headers["Content-Type"].startswith("text/plain")
    out = {}
    for family in text_string_to_metric_families(resp.text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples, name, **labels):
    return samples.get((name, tuple(sorted(labels.items()))))


def total(samples, name, **labels):
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    return sum(v for (n, ls), v in samples.items()
               if n == name and set(labels.items()) <= set(ls))


CLUSTER = {"managers": 2, "workers": 1}      # the `cluster` of conftest.py


def test_manager_and_agent_metrics(cluster):
    c = cluster
    admin = (os.path.join(c.admin_dir, "cert.pem"), os.path.join(c.admin_dir, "key.pem"))
    ca = os.path.join(c.admin_dir, "ca.pem")
    managers = [c.nodes["m1"], c.nodes["m2"]]

    def manager_scrapes():
        return {m.name: scrape(m.addr, tls.MANAGER_SERVER_NAME, admin, ca) for m in managers}

    def settled():
        """One leader, and every manager's store has the three nodes ready."""
        scraped = manager_scrapes()
        leaders = [n for n, s in scraped.items() if value(s, "flotilla_raft_leader") == 1]
        nodes_ready = all(value(s, "flotilla_nodes", state="ready", role="manager") == 2
                          and value(s, "flotilla_nodes", state="ready", role="worker") == 1
                          for s in scraped.values())
        return (leaders, scraped) if len(leaders) == 1 and nodes_ready else None

    leaders, scraped = wait_for(settled, 20, what="one leader and the nodes ready everywhere")
    leader = c.nodes[leaders[0]]
    for s in scraped.values():
        assert value(s, "flotilla_raft_term") >= 1
        assert value(s, "flotilla_raft_commit_index") > 0
        assert value(s, "flotilla_store_index") > 0
        assert value(s, "flotilla_cert_expiry_seconds") > 0
        assert value(s, "flotilla_nodes", state="down", role="worker") == 0
        assert value(s, "flotilla_tasks", state="running") == 0
        # the process's collector pauses are reported (the policy is installed)
        assert value(s, "flotilla_gc_pause_seconds_total", generation="0") > 0
        assert value(s, "flotilla_gc_max_pause_seconds") > 0
        assert value(s, "flotilla_gc_collections_total", generation="0") >= 1
    for m in managers:      # each times its own requests: the scrapes above, at least
        s = scrape(m.addr, tls.MANAGER_SERVER_NAME, admin, ca)
        assert total(s, "flotilla_api_request_duration_seconds_count", method="GET",
                     endpoint="metrics.metrics", code="200") >= 1
    placed_before = value(scraped[leader.name], "flotilla_scheduling_latency_seconds_count")

    # Every request is timed by endpoint, refused ones included. Without a
    # client certificate a manager answers 401 (its TLS layer admits such
    # clients, for joining); an unknown path is labelled "unmatched".
    c.health(leader)
    assert get(leader.addr, tls.MANAGER_SERVER_NAME, None, ca).status_code == 401
    assert get(leader.addr, tls.MANAGER_SERVER_NAME, admin, ca, "/nope").status_code == 404
    s = scrape(leader.addr, tls.MANAGER_SERVER_NAME, admin, ca)
    assert total(s, "flotilla_api_request_duration_seconds_count", endpoint="health.health",
                 method="GET", code="200") >= 1
    assert total(s, "flotilla_api_request_duration_seconds_count", endpoint="metrics.metrics",
                 code="401") >= 1
    assert total(s, "flotilla_api_request_duration_seconds_count", endpoint="unmatched",
                 code="404") >= 1

    client = c.admin()
    client.post("/v1/services", {
        "name": SERVICE, "replicas": 2,
        "task": {"container": {"image": IMAGE, "command": ["sleep", "3600"],
                               "stop_grace_period": "1s"}}})

    def running_everywhere(n):
        scraped = manager_scrapes()
        return all(value(s, "flotilla_tasks", state="running") == n for s in scraped.values())

    wait_for(lambda: running_everywhere(2), 40, what="2 running tasks on every manager")
    s = scrape(leader.addr, tls.MANAGER_SERVER_NAME, admin, ca)
    assert value(s, "flotilla_scheduling_latency_seconds_count") >= placed_before + 2
    assert value(s, "flotilla_tasks_desired", state="running") == 2

    # Agents: admin certificate admitted on /metrics, and tasks add up.
    nodes = client.get("/v1/nodes")
    assert all(n["agent_addr"] for n in nodes)

    def agent_scrapes():
        return {n["id"]: scrape(n["agent_addr"], n["id"], admin, ca) for n in nodes}

    def agents_running(n):
        scraped = agent_scrapes()
        if sum(value(s, "flotilla_agent_tasks", state="running") for s in scraped.values()) != n:
            return None
        return scraped

    agents = wait_for(lambda: agents_running(2), 20, what="agents reporting 2 running tasks")
    assert sum(total(s, "flotilla_agent_containers", state="running")
               for s in agents.values()) == 2
    for s in agents.values():
        assert value(s, "flotilla_agent_session_up") == 1
        assert value(s, "flotilla_agent_registrations_total") >= 1
        assert value(s, "flotilla_cert_expiry_seconds") > 0
    wait_for(lambda: all(value(s, "flotilla_agent_heartbeats_total") > 0
                         for s in agent_scrapes().values()), 10, what="heartbeats from every agent")

    # The agent's listener refuses a client without a certificate during the
    # handshake; a worker's certificate may not read an agent's metrics, and
    # an admin certificate may still not push assignments.
    m1 = next(n for n in nodes if n["hostname"] == "m1")
    with pytest.raises(requests.exceptions.SSLError):
        get(m1["agent_addr"], m1["id"], None, ca)
    worker = c.nodes["w1"].bundle()
    assert get(m1["agent_addr"], m1["id"], (worker, worker), ca).status_code == 403
    push = get(m1["agent_addr"], m1["id"], admin, ca, "/v1/assignments", method="POST")
    assert push.status_code == 403

    client.patch(f"/v1/services/{SERVICE}", {"replicas": 0})
    wait_for(lambda: running_everywhere(0), 30, what="no running task on any manager")
    wait_for(lambda: agents_running(0), 20, what="agents reporting no running task")
    client.delete(f"/v1/services/{SERVICE}")
