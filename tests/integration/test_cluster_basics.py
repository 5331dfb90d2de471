"""A cluster of real processes: init, joins, forwarding, tokens, settings, errors."""

import base64
import json
import subprocess

import pytest

from flotilla.common.httpclient import ApiError, tls_session
from tests.helpers.cluster import PYTHON, free_api_port, wait_for


CLUSTER = {"managers": 3, "workers": 1}      # the `cluster` the tests share (conftest.py)


def test_nodes_roles_and_leader(cluster):
    nodes = json.loads(cluster.cli("node", "ls", "--format", "json").stdout)
    by_name = {n["hostname"]: n for n in nodes}
    assert set(by_name) == {"m1", "m2", "m3", "w1"}
    assert [n["hostname"] for n in nodes if n["leader"]] == ["m1"]
    for name in ("m1", "m2", "m3"):
        assert by_name[name]["role"] == "manager"
        assert by_name[name]["manager"]["reachability"] == "reachable"
    assert by_name["w1"]["role"] == "worker" and by_name["w1"]["manager"] is None
    assert all(n["state"] == "ready" for n in nodes)
    table = cluster.cli("node", "ls").stdout
    assert "Leader" in table and "w1" in table
    # Every manager agrees on the Raft membership.
    for name in ("m1", "m2", "m3"):
        h = cluster.health(cluster.nodes[name])
        assert len(h["raft"]["members"]) == 3
        assert h["leader"]["node_id"] == by_name["m1"]["id"]


def test_followers_forward_writes_and_reads(cluster):
    follower = cluster.nodes["m3"]
    client = cluster.admin([follower])
    created = client.post("/v1/configs", {"name": "via-follower",
                                          "data": base64.b64encode(b"hello").decode()})
    assert created["name"] == "via-follower"
    # Visible from every manager, through the leader.
    for name in ("m1", "m2", "m3"):
        names = [c["name"] for c in cluster.admin([cluster.nodes[name]]).get("/v1/configs")]
        assert "via-follower" in names
    # And replicated into each manager's own store.
    wait_for(lambda: all(cluster.health(cluster.nodes[n])["store_index"]
                         >= cluster.health(cluster.nodes["m1"])["store_index"]
                         for n in ("m2", "m3")), 10, what="followers to apply")


def test_token_rotation(cluster, tmp_path):
    old = cluster.token("worker")
    out = cluster.cli("cluster", "join-token", "worker", "--rotate", "-q").stdout.strip()
    assert out.startswith("FLTKN-1-") and out != old
    assert cluster.token("worker") == out
    assert cluster.token("manager") != out
    # A node holding the old token is refused, with a clear message.
    from tests.helpers.cluster import NodeProc
    late = NodeProc(cluster, "late")
    late.start("--join", cluster.nodes["m1"].addr, "--token", old)
    assert late.proc.wait(60) != 0
    assert "invalid join token" in late.log()
    # Nodes that joined before are unaffected.
    assert cluster.node_view(cluster.nodes["w1"])["state"] == "ready"
    # The new token works.
    cluster.nodes["late2"] = w2 = NodeProc(cluster, "late2")
    w2.start("--join", cluster.nodes["m2"].addr, "--token", out)
    cluster.wait_node_ready(w2)
    # The cluster is shared by the module's tests: late2 leaves it again.
    w2.kill()
    cluster.admin().delete(f"/v1/nodes/{w2.config()['node_id']}", params={"force": "1"})
    del cluster.nodes["late2"]


def test_cluster_update_and_errors(cluster):
    settings = cluster.admin().get("/v1/cluster")["spec"]
    res = json.loads(cluster.cli("cluster", "update", "--cert-expiry", "2h",
                                 "--heartbeat-period", "2s", "--network-key-rotation", "1m",
                                 "--format", "json").stdout)
    assert res["spec"]["ca"]["node_cert_expiry"] == 7200
    assert res["spec"]["dispatcher"]["heartbeat_period"] == 2.0
    assert res["spec"]["network_keys"] == {"rotation_period": 60.0, "force_rotate": 0}
    shown = cluster.cli("cluster", "update", "--rotate-network-keys").stdout
    assert "Network key rotation: 1m" in shown and "new WireGuard key" in shown
    client = cluster.admin()
    assert client.get("/v1/cluster")["spec"]["network_keys"]["force_rotate"] == 1
    with pytest.raises(ApiError) as e:
        client.patch("/v1/cluster", {"cert_expiry": "10s"})
    assert e.value.status == 400 and e.value.field == "cert_expiry"
    for body, field in (({"network_key_rotation": "10s"}, "network_key_rotation"),
                        ({"network_key_rotation": "soon"}, "network_key_rotation"),
                        ({"rotate_network_keys": "yes"}, "rotate_network_keys")):
        with pytest.raises(ApiError) as e:
            client.patch("/v1/cluster", body)
        assert e.value.status == 400 and e.value.field == field, body
    bad = cluster.cli("cluster", "update", "--network-key-rotation", "10s", check=False)
    assert bad.returncode == 1 and "network_key_rotation" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1 and "Traceback" not in bad.stderr
    with pytest.raises(ApiError) as e:
        client.patch("/v1/cluster", {"cert_expiry": "1h", "tpyo": 1})
    assert e.value.status == 400 and e.value.field == "tpyo"
    with pytest.raises(ApiError) as e:
        client.patch("/v1/nodes/w1", {"labels_add": {"bad key!": "x"}})
    assert e.value.status == 400 and e.value.field == "labels_add"
    with pytest.raises(ApiError) as e:
        client.get("/v1/nodes/nosuchnode")
    assert e.value.status == 404
    with pytest.raises(ApiError) as e:
        client.request("POST", "/v1/configs", json=None)
    assert e.value.status == 400
    bad = cluster.cli("node", "update", "nosuch", "--availability", "drain", check=False)
    assert bad.returncode == 1 and bad.stderr.startswith("Error:") and "Traceback" not in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
    # Node labels and availability round-trip.
    cluster.cli("node", "update", "w1", "--label-add", "disk=ssd", "--availability", "pause")
    w1 = cluster.node_view(cluster.nodes["w1"])
    assert w1["labels"] == {"disk": "ssd"} and w1["availability"] == "pause"
    # The cluster is shared by the module's tests: its settings go back.
    client.patch("/v1/cluster", {"cert_expiry": settings["ca"]["node_cert_expiry"],
                                 "heartbeat_period": settings["dispatcher"]["heartbeat_period"],
                                 "network_key_rotation":
                                     settings["network_keys"]["rotation_period"]})


def test_version_and_control_socket(cluster):
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-m", "flotilla.cli.main", "--version"],
                         capture_output=True, text=True).stdout
    assert out.startswith("flotilla version ")
    sock = cluster.nodes["m2"].data_dir + "/control.sock"
    res = subprocess.run([sys.executable, "-m", "flotilla.cli.main", "--host", f"unix://{sock}",
                          "node", "ls", "-q"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert len(res.stdout.split()) == 4


def test_idempotency_keys_are_bound_to_their_request(cluster):
    """The same Idempotency-Key with another request is refused (422) and
    changes nothing; with the same request, through any manager, it gets
    the first answer."""
    c = cluster
    api = tls_session(c.admin_dir)
    leader, follower = c.nodes["m1"], c.nodes["m2"]
    assert c.health(leader)["is_leader"] and not c.health(follower)["is_leader"]

    def send(node, method, path, key, body=None):
        resp = api.request(method, f"https://{node.addr}{path}", timeout=30,
                           json=body, headers={"Idempotency-Key": key})
        return resp.status_code, resp.json()

    web = {"name": "web", "replicas": 0, "task": {"container": {"image": "flotilla-test/busybox:1"}}}
    status, created = send(follower, "POST", "/v1/services", "key-1", web)
    assert status == 201
    # The same request again, through the leader: the first answer, no second write.
    assert send(leader, "POST", "/v1/services", "key-1", web) == (201, created)
    assert [s["id"] for s in c.admin().get("/v1/services")] == [created["id"]]

    # The same key on another request: refused, whichever manager takes it.
    for node in (leader, follower):
        status, body = send(node, "DELETE", "/v1/services/web", "key-1")
        assert status == 422, body
        assert body["error"]["code"] == "key_reused"
        assert body["error"]["field"] == "Idempotency-Key"
        assert "already used for a different request" in body["error"]["message"]
        status, body = send(node, "PATCH", "/v1/services/web", "key-1", {"replicas": 3})
        assert status == 422 and body["error"]["code"] == "key_reused", body
    assert c.admin().get("/v1/services/web")["spec"]["replicas"] == 0

    # A removal retried with its key gets its first answer, not a 404.
    status, removed = send(follower, "DELETE", "/v1/services/web", "key-2")
    assert (status, removed) == (200, {"id": created["id"], "removed": True})
    assert send(leader, "DELETE", "/v1/services/web", "key-2") == (200, removed)
    assert send(follower, "DELETE", "/v1/services/web", "key-2") == (200, removed)
    # ... and that key cannot create anything either.
    status, body = send(leader, "POST", "/v1/services", "key-2", web)
    assert status == 422 and c.admin().get("/v1/services") == []


def test_restart_flags_are_applied_or_refused_never_ignored(cluster):
    """A node resumed with changed flags either does as told or exits with
    one line naming the flag; it never starts as if they were not given."""
    m3, w1 = cluster.nodes["m3"], cluster.nodes["w1"]

    def start(node, *extra):
        return subprocess.Popen(
            [PYTHON, "-m", "flotilla.cli.main", "node", "run", "--data-dir", node.data_dir,
             "--listen", node.addr, "--hostname", node.name, *extra],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cluster.env)

    # A manager's API and Raft addresses are in the Raft membership; the
    # heartbeat period and certificate lifetime are the cluster's.
    m3.stop()
    saved = m3.config()
    other = free_api_port()
    cases = [
        (["--advertise", f"127.0.0.1:{other}"], "--advertise",
         "would move this manager's API address"),
        (["--raft-advertise", f"127.0.0.1:{other}"], "--raft-advertise",
         "would move this manager's Raft address"),
        (["--listen", f"127.0.0.1:{other}"], "--listen",
         "would move this manager's API address"),
        (["--heartbeat-period", "2s"], "--heartbeat-period",
         "`flotilla cluster update --heartbeat-period 2s`"),
        (["--init", "--cert-expiry", "2h"], "--cert-expiry",
         "`flotilla cluster update --cert-expiry 2h`")]
    procs = [(start(m3, *case[0]), *case) for case in cases]
    try:
        for proc, extra, flag, why in procs:
            try:
                stdout, stderr = proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                raise AssertionError(f"node run {' '.join(extra)} started the node") from None
            out = (stdout + stderr).strip().splitlines()
            assert proc.returncode != 0 and len(out) == 1, (extra, stdout, stderr)
            assert out[0].startswith(f"Error: {flag} ") and why in out[0], out
    finally:
        for proc, *_ in procs:
            if proc.poll() is None:
                proc.kill()     # its manager child dies with it
                proc.wait(10)
    assert m3.config() == saved
    m3.restart()
    cluster.wait_node_ready(m3, manager=True)

    # A worker's addresses are announced again at each registration: a new
    # --listen moves its API, agent and dispatcher ports, as on a first start.
    before = cluster.node_view(w1)
    w1.stop()
    old = w1.addr
    w1.port = free_api_port()
    w1.addr = f"127.0.0.1:{w1.port}"
    w1.start()
    view = wait_for(lambda: (v := cluster.node_view(w1)) and v["state"] == "ready"
                    and v.get("agent_addr") == f"127.0.0.1:{w1.port + 20000}" and v, 60,
                    what="w1 registered at its new address")
    assert view["id"] == before["id"] and view["addr"] == w1.addr
    assert w1.config()["listen"] == w1.addr
    assert f"listen {old} -> {w1.addr} (from --listen)" in w1.log()
    # Work is pushed to it there.
    cluster.admin().post("/v1/services", {
        "name": "moved", "replicas": 1,
        "task": {"container": {"image": "flotilla-test/busybox:1", "command": ["sleep", "600"]},
                 "placement": {"constraints": ["node.hostname==w1"]}}})
    wait_for(lambda: [t["state"] for t in cluster.admin().get("/v1/services/moved/tasks")]
             == ["running"], 60, what="a task running on the moved worker")
