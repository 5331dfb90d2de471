"""Whom the cluster trusts: the agent listener answers only the leader its
session is with, demoted and removed managers' certificates and revoked
admin bundles are refused everywhere, and a node's address is the one it
connects from."""

import http.client
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys

import pytest
import requests
from requests.adapters import HTTPAdapter

from flotilla.ca import certs
from flotilla.common import tls
from flotilla.common.httpclient import ApiError, Client
from tests.helpers.cluster import NodeProc, wait_for


class _ServerName(HTTPAdapter):
    def __init__(self, name):
        self._name = name
        super().__init__()

    def init_poolmanager(self, *args, **kwargs):
        kwargs["server_hostname"] = self._name
        kwargs["assert_hostname"] = self._name
        super().init_poolmanager(*args, **kwargs)


def agent_call(view, bundle, ca, path, method="GET", body=None):
    """Call the agent listener of the node ``view`` with the key+certificate
    file ``bundle``."""
    with requests.Session() as s:
        s.mount("https://", _ServerName(view["id"]))
        return s.request(method, f"https://{view['agent_addr']}{path}", json=body,
                         cert=(bundle, bundle), verify=ca, timeout=10)


def push(view, bundle, ca):
    """An increment for a session the agent does not have: a caller the
    agent trusts gets 409 (it would be sent a complete set), others 403."""
    return agent_call(view, bundle, ca, "/v1/assignments", "POST",
                      {"type": "incremental", "seq": 99, "applies_to": 98, "session_id": "x"})


def error_code(resp):
    return resp.json()["error"]["code"]


def tls_request(addr, bundle, ca, method, path, body=None, headers=None, source=None):
    """One HTTPS request to a manager, from ``source`` if given: (status, JSON)."""
    host, port = addr.rsplit(":", 1)
    raw = socket.create_connection((host, int(port)), timeout=10,
                                   source_address=(source, 0) if source else None)
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.sock = tls.client_context(bundle, ca).wrap_socket(
        raw, server_hostname=tls.MANAGER_SERVER_NAME)
    try:
        hdrs = {"Content-Type": "application/json"}
        hdrs.update(headers or {})
        conn.request(method, path, body=json.dumps(body).encode() if body is not None else None,
                     headers=hdrs)
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read() or b"null")
    finally:
        conn.close()


def cli_with(c, tls_dir, *args):
    """The CLI with the client bundle in ``tls_dir``."""
    return subprocess.run([sys.executable, "-m", "flotilla.cli.main", "--host",
                           ",".join(n.addr for n in c.nodes.values() if n.running),
                           "--tls-dir", tls_dir, *args], capture_output=True, text=True,
                          timeout=120, env=c.env)


def raft_refuses(node, bundle) -> bool:
    host, port = node.raft_addr.rsplit(":", 1)
    ctx = tls.client_context(bundle, node.ca())
    with socket.create_connection((host, int(port)), timeout=5) as raw:
        try:
            with ctx.wrap_socket(raw, server_hostname=tls.MANAGER_SERVER_NAME) as s:
                s.sendall(b"\x00" * 16)
                return s.recv(100) == b""
        except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
            return True


def serial_of(bundle) -> str:
    return format(certs.identity_from_pem(open(bundle, "rb").read()).serial, "x")


def cert_role(node):
    return certs.identity_from_pem(open(node.bundle(), "rb").read()).role


@pytest.fixture(scope="module")
def cluster(make_module_cluster):
    """One cluster for the module's tests, which run in order."""
    return make_module_cluster().build(managers=4, workers=1)


def views(c):
    return {n["hostname"]: n for n in c.admin().get("/v1/nodes")}


def current_follower(c, leader):
    return next(c.nodes[name] for name, v in sorted(views(c).items())
                if v["role"] == "manager" and c.nodes[name] is not leader)


def test_agent_listener_answers_only_the_leader_of_its_session(cluster):
    c = cluster
    leader = c.wait_leader_ready()
    follower = current_follower(c, leader)
    w1 = views(c)["w1"]
    ca = leader.ca()
    # The leader the agent registered with may push (the made-up session is
    # answered 409, after authorization) and read logs.
    wait_for(lambda: push(w1, leader.bundle(), ca).status_code == 409, 10,
             what="the leader's push to reach the session check")
    assert agent_call(w1, leader.bundle(), ca, "/v1/containers/nope/logs").status_code == 404
    # A current follower holds a valid manager certificate, but is not the
    # leader of the agent's session: no pushes, no logs.
    resp = push(w1, follower.bundle(), ca)
    assert resp.status_code == 403 and error_code(resp) == "not_leader"
    resp = agent_call(w1, follower.bundle(), ca, "/v1/containers/nope/logs")
    assert resp.status_code == 403 and error_code(resp) == "not_leader"
    # Current managers and admins may read health and metrics; health tells
    # nothing about the session (no session id, no sequence number).
    admin = (os.path.join(c.admin_dir, "cert.pem"), os.path.join(c.admin_dir, "key.pem"))
    for who in (leader.bundle(), follower.bundle()):
        assert agent_call(w1, who, ca, "/metrics").status_code == 200
        health = agent_call(w1, who, ca, "/v1/health")
        assert health.status_code == 200 and set(health.json()) == {"status", "node_id"}
    with requests.Session() as s:
        s.mount("https://", _ServerName(w1["id"]))
        assert s.get(f"https://{w1['agent_addr']}/metrics", cert=admin, verify=ca,
                     timeout=10).status_code == 200


def refused_by_agent(view, bundle, ca, code):
    """Wait until the agent refuses ``bundle``'s pushes with ``code`` (it
    learns revocations with its next heartbeat)."""
    seen = []

    def refused():
        resp = push(view, bundle, ca)
        seen.append((resp.status_code, resp.text))
        return resp.status_code == 403 and error_code(resp) == code

    try:
        wait_for(refused, 20, what=f"the agent to refuse the certificate ({code})")
    except AssertionError:
        raise AssertionError(f"last answers: {seen[-3:]}") from None


def test_demoted_managers_certificate_is_refused_everywhere(cluster, tmp_path):
    c = cluster
    m4 = c.nodes["m4"]
    if c.wait_leader_ready() is m4:
        pytest.fail("m4 leads; the test expects m1 to lead")
    old = str(tmp_path / "m4-manager.pem")
    shutil.copy(m4.bundle(), old)
    c.cli("node", "demote", "m4")
    wait_for(lambda: cert_role(m4) == "worker", 60, what="m4's worker certificate")
    leader = c.wait_leader_ready()
    ca = leader.ca()
    w1 = views(c)["w1"]
    refused_by_agent(w1, old, ca, "revoked")
    assert agent_call(w1, old, ca, "/metrics").status_code == 403
    # Demotion revoked it by serial (the node stays, as a worker).
    assert "serial:" + serial_of(old) in c.admin().get("/v1/cluster")["revoked"]
    # Managers refuse it too: API (leader and followers), dispatcher port, Raft.
    managers = [c.nodes[name] for name, v in views(c).items() if v["role"] == "manager"]
    assert len(managers) == 3
    for node in managers:
        with pytest.raises(ApiError) as e:
            Client([node.addr], old, ca, retry_for=0).get("/v1/health")
        assert e.value.status == 401 and e.value.code == "certificate_revoked"
    host, port = leader.addr.rsplit(":", 1)
    status, body = tls_request(f"{host}:{int(port) + 30000}", old, ca, "POST",
                               "/v1/dispatcher/heartbeat", {"session_id": "x"})
    assert status == 401 and body["error"]["code"] == "certificate_revoked"
    before = c.health(leader)["refused"].get("raft.revoked", 0)
    assert raft_refuses(leader, old)
    wait_for(lambda: c.health(leader)["refused"].get("raft.revoked", 0) > before, 10,
             what="the refused Raft connection counted")
    # Renewal with it is refused too, except for the request whose answer
    # the node may have lost: the same key as its new worker certificate.
    renew = Client([leader.addr], old, ca, retry_for=0)
    with pytest.raises(ApiError) as e:
        renew.post("/v1/ca/renew", {"csr": certs.make_csr(certs.new_key()).decode()})
    assert e.value.status == 401 and e.value.code == "certificate_revoked"
    current_key = certs.load_key(open(m4.bundle(), "rb").read())
    again = renew.post("/v1/ca/renew", {"csr": certs.make_csr(current_key).decode()})
    assert again["role"] == "worker"
    # The demoted node itself carries on as a worker with its new certificate.
    c.wait_node_ready(m4)


def test_removed_managers_certificate_is_refused(cluster, tmp_path):
    c = cluster
    m3 = c.nodes["m3"]
    leader = c.wait_leader_ready()
    if leader is m3:
        pytest.fail("m3 leads; the test expects m1 to lead")
    old = str(tmp_path / "m3-manager.pem")
    shutil.copy(m3.bundle(), old)
    m3_id = m3.config()["node_id"]
    # Down, so it never renews as a worker: only its removal revokes it.
    m3.kill()
    c.cli("node", "demote", "m3")
    wait_for(lambda: c.admin().get(f"/v1/nodes/{m3_id}")["role"] == "worker", 60,
             what="m3 out of the managers")
    c.cli("node", "rm", "--force", m3_id)
    assert m3_id in c.admin().get("/v1/cluster")["revoked"]
    w1 = views(c)["w1"]
    refused_by_agent(w1, old, leader.ca(), "revoked")
    assert agent_call(w1, old, leader.ca(), "/metrics").status_code == 403
    with pytest.raises(ApiError) as e:
        Client([leader.addr], old, leader.ca(), retry_for=0).get("/v1/health")
    assert e.value.status == 401 and e.value.code == "revoked"


def test_registration_takes_the_address_from_the_connection(cluster):
    c = cluster
    leader = c.wait_leader_ready()
    follower = current_follower(c, leader)
    w1 = c.nodes["w1"]
    w1_id = w1.config()["node_id"]
    agent_port = views(c)["w1"]["agent_addr"].rsplit(":", 1)[1]
    w1.kill()       # its own agent would register again at once
    try:
        spoofed = {"hostname": "w1", "addr": "10.9.9.9:4242",
                   "agent_addr": f"10.9.9.9:{agent_port}"}
        for via, source in ((leader, "127.0.0.5"), (follower, "127.0.0.6")):
            status, body = tls_request(via.addr, w1.bundle(), w1.ca(), "POST",
                                       "/v1/dispatcher/register", spoofed, source=source)
            assert status == 200, body
            view = c.admin().get(f"/v1/nodes/{w1_id}")
            assert view["agent_addr"] == f"{source}:{agent_port}"
            assert view["addr"] == f"{source}:4242"
            assert view.get("ip") == source
        # Only a current manager may say where a request came from.
        status, body = tls_request(leader.addr, w1.bundle(), w1.ca(), "POST",
                                   "/v1/dispatcher/register", spoofed,
                                   headers={"X-Flotilla-Peer-Addr": "10.9.9.9"})
        assert status == 403 and body["error"]["code"] == "forward_refused"
        # Hostnames are checked as at join.
        status, body = tls_request(leader.addr, w1.bundle(), w1.ca(), "POST",
                                   "/v1/dispatcher/register", dict(spoofed, hostname="w1\x1b[2J"))
        assert status == 400 and body["error"]["field"] == "hostname"
        assert c.admin().get(f"/v1/nodes/{w1_id}")["hostname"] == "w1"
    finally:
        w1.restart()
    wait_for(lambda: c.admin().get(f"/v1/nodes/{w1_id}")["ip"] == "127.0.0.1", 30,
             what="w1 registered again from its own address")
    c.wait_node_ready(w1)

    # A node told its advertise address explicitly (NAT) is reached there.
    w2 = NodeProc(c, "w2")
    agent_port = w2.port + 20000
    w2.start("--join", leader.addr, "--token", c.token("worker"),
             "--agent-listen", f"0.0.0.0:{agent_port}",
             "--agent-advertise", f"127.0.0.9:{agent_port}")
    c.nodes["w2"] = w2
    c.wait_node_ready(w2)
    view = views(c)["w2"]
    assert view["agent_addr"] == f"127.0.0.9:{agent_port}" and view["ip"] == "127.0.0.1"
    assert push(view, leader.bundle(), leader.ca()).status_code == 409   # reached there


def test_admin_bundles_are_issued_listed_and_revoked_everywhere(cluster, tmp_path):
    c = cluster
    leader = c.wait_leader_ready()
    follower = current_follower(c, leader)
    out = tmp_path / "ops"
    res = c.cli("--format", "json", "cluster", "admin", "create", "ops", "--expiry", "30d",
                "--out", str(out))
    issued = json.loads(res.stdout)
    assert issued["name"] == "ops" and issued["state"] == "active"
    assert sorted(os.listdir(out)) == ["ca.pem", "cert.pem", "key.pem"]
    assert os.stat(out / "key.pem").st_mode & 0o777 == 0o600
    assert serial_of(str(out / "cert.pem")) == issued["serial"]
    ops = Client([leader.addr, follower.addr], tls_dir=str(out), retry_for=0)
    assert ops.get("/v1/nodes")
    # The bundle --init wrote is the first one, named init.
    listed = {a["name"]: a for a in json.loads(c.cli("--format", "json", "cluster", "admin",
                                                     "ls").stdout)}
    assert set(listed) == {"init", "ops"} and listed["init"]["state"] == "active"
    assert listed["init"]["serial"] == serial_of(os.path.join(c.admin_dir, "cert.pem"))
    assert listed["init"]["current"] and not listed["ops"]["current"]
    # Names of active bundles are unique; a bundle cannot revoke itself.
    res = c.cli("cluster", "admin", "create", "ops", "--out", str(tmp_path / "again"),
                check=False)
    assert res.returncode == 1 and len(res.stderr.strip().splitlines()) == 1
    assert "ops" in res.stderr
    res = cli_with(c, str(out), "cluster", "admin", "revoke", "ops")
    assert res.returncode == 1 and "another bundle" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1

    since = c.admin().get("/v1/events", params={"type": "cluster", "since": 0})
    c.cli("cluster", "admin", "revoke", "ops")
    # Refused at once by every manager, and by agents after a heartbeat.
    for node in (leader, follower):
        with pytest.raises(ApiError) as e:
            Client([node.addr], tls_dir=str(out), retry_for=0).get("/v1/nodes")
        assert e.value.status == 401 and e.value.code == "certificate_revoked"
    w1 = views(c)["w1"]
    ops_cert = (str(out / "cert.pem"), str(out / "key.pem"))

    def agent_refuses():
        with requests.Session() as s:
            s.mount("https://", _ServerName(w1["id"]))
            return s.get(f"https://{w1['agent_addr']}/metrics", cert=ops_cert,
                         verify=str(out / "ca.pem"), timeout=10).status_code == 403

    wait_for(agent_refuses, 20, what="the agent to refuse the revoked bundle")
    listed = {a["name"]: a for a in json.loads(c.cli("--format", "json", "cluster", "admin",
                                                     "ls").stdout)}
    assert listed["ops"]["state"] == "revoked" and listed["init"]["state"] == "active"
    events = c.admin().get("/v1/events", params={"type": "cluster",
                                                  "since": since.get("index", 0)})["events"]
    assert any(e["attributes"].get("admins_revoked") == ["ops"] for e in events)
    # The name is free again for a fresh bundle, which can be revoked by its
    # certificate file too.
    c.cli("cluster", "admin", "create", "ops", "--out", str(tmp_path / "ops2"))
    ops2 = Client([follower.addr], tls_dir=str(tmp_path / "ops2"), retry_for=0)
    assert ops2.get("/v1/nodes")
    res = c.cli("cluster", "admin", "revoke", "--cert", str(tmp_path / "ops2" / "cert.pem"))
    assert "is revoked" in res.stdout
    with pytest.raises(ApiError) as e:
        ops2.get("/v1/nodes")
    assert e.value.code == "certificate_revoked"
