"""Security matrix: every attempt is refused and counted, and the daemon keeps serving."""

import base64
import datetime
import os
import pickle
import shutil
import socket
import ssl
import struct
import time

import pytest

from flotilla.ca import certs, tokens
from flotilla.common import tls
from flotilla.common.httpclient import ApiError, Client
from flotilla.manager.raft import codec
from tests.helpers.cluster import NodeProc, wait_for

MARKER = "/tmp/flotilla-pickle-executed"


class Evil:
    def __reduce__(self):
        return (os.system, (f"touch {MARKER}",))


def refused(c, node):
    return c.health(node)["refused"]


def delta(before, after, key):
    return after.get(key, 0) - before.get(key, 0)


def tls_get(addr, path, ctx):
    host, port = addr.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname=tls.MANAGER_SERVER_NAME) as s:
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
            data = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
    return int(data.split(b" ", 2)[1]), data


def make_bundle(tmp_path, name, key_pem, cert_pem):
    path = tmp_path / name
    path.write_bytes(certs.node_bundle_pem(key_pem, cert_pem))
    return str(path)


@pytest.fixture(scope="module")
def secured(make_module_cluster, tmp_path_factory):
    base = tmp_path_factory.mktemp("secure")
    c = make_module_cluster(cert_expiry="60s").build(managers=2, workers=1)
    # Keep a copy of w1's certificate now: it will have expired by the end.
    early = base / "w1-early.pem"
    shutil.copy(c.nodes["w1"].bundle(), early)
    return c, base, str(early)


def test_no_client_certificate(secured):
    c, _, _ = secured
    m1 = c.nodes["m1"]
    before = refused(c, m1)
    ctx = tls.client_context(None, m1.ca())
    status, body = tls_get(m1.addr, "/v1/nodes", ctx)
    assert status == 401 and b"client certificate" in body
    after = refused(c, m1)
    assert delta(before, after, "api.no_client_cert") == 1


def test_certificate_from_another_ca(secured, tmp_path):
    c, _, _ = secured
    m1 = c.nodes["m1"]
    other = certs.RootCA.create("othercluster")
    key, cert = other.issue(certs.ROLE_ADMIN, "admin-x", "othercluster", 3600)
    bundle = make_bundle(tmp_path, "other.pem", key, cert)
    before = refused(c, m1)
    ctx = tls.client_context(bundle, m1.ca())
    with pytest.raises((ssl.SSLError, ConnectionResetError, BrokenPipeError)):
        tls_get(m1.addr, "/v1/nodes", ctx)
    after = wait_for(lambda: (lambda a: a if delta(before, a, "tls.unknown_ca") == 1 else None)(
        refused(c, m1)), 5, what="refusal counted")
    assert delta(before, after, "tls.unknown_ca") == 1


def test_worker_certificate_on_control_endpoint(secured):
    c, _, _ = secured
    w1 = c.nodes["w1"]
    m1 = c.nodes["m1"]
    before = refused(c, m1)
    client = w1.node_client([m1.addr], retry_for=0)
    with pytest.raises(ApiError) as e:
        client.get("/v1/nodes")
    assert e.value.status == 403
    with pytest.raises(ApiError) as e:
        client.post("/v1/cluster/join-tokens/manager/rotate")
    assert e.value.status == 403
    # ...while the agent endpoints it is meant to use work.
    assert client.get("/v1/health")["status"] == "ok"
    assert delta(before, refused(c, m1), "api.forbidden") == 2


def test_join_tokens_refused(secured, tmp_path):
    c, _, _ = secured
    m1 = c.nodes["m1"]
    good = c.token("worker")
    key = certs.new_key()
    csr = certs.make_csr(key).decode()
    anon = Client([m1.addr], None, m1.ca(), retry_for=0)
    body = {"csr": csr, "hostname": "intruder", "addr": "127.0.0.1:1"}
    before = refused(c, m1)

    parsed = tokens.parse_token(good)
    wrong_secret = f"FLTKN-1-{parsed.digest}-{'0' * 24}1"
    with pytest.raises(ApiError) as e:
        anon.post("/v1/join", dict(body, token=wrong_secret))
    assert e.value.status == 401 and "invalid join token" in e.value.message

    other_digest = tokens.generate_token(certs.RootCA.create("elsewhere").cert_pem)
    with pytest.raises(ApiError) as e:
        anon.post("/v1/join", dict(body, token=other_digest))
    assert e.value.status == 401 and "different cluster" in e.value.message

    rotated = c.admin().post("/v1/cluster/join-tokens/worker/rotate")["token"]
    with pytest.raises(ApiError) as e:
        anon.post("/v1/join", dict(body, token=good))
    assert e.value.status == 401

    with pytest.raises(ApiError) as e:
        anon.post("/v1/join", dict(body, token="garbage"))
    assert e.value.status == 400

    after = refused(c, m1)
    assert delta(before, after, "join.wrong_token") == 2
    assert delta(before, after, "join.wrong_ca_digest") == 1
    assert delta(before, after, "join.malformed_token") == 1
    names = [n["hostname"] for n in c.admin().get("/v1/nodes")]
    assert "intruder" not in names

    # A joining node refuses a CA that does not match its token's digest
    # (what a man in the middle would serve), before sending anything.
    mitm = NodeProc(c, "mitm")
    mitm.start("--join", m1.addr, "--token", other_digest)
    assert mitm.proc.wait(60) != 0
    assert "does not match the join token" in mitm.log()
    assert not os.path.exists(os.path.join(mitm.data_dir, "certs", "node.pem"))
    assert rotated != good


def test_removed_node_certificate_is_useless_at_once(secured):
    c, _, _ = secured
    m1 = c.nodes["m1"]
    w2 = c.join("w2", "worker")
    saved = w2.bundle() + ".copy"
    shutil.copy(w2.bundle(), saved)
    w2.kill()
    node_id = w2.config()["node_id"]
    c.cli("node", "rm", "--force", node_id)
    before = refused(c, m1)
    client = Client([m1.addr], saved, m1.ca(), retry_for=0)
    with pytest.raises(ApiError) as e:
        client.post("/v1/dispatcher/register", {"hostname": "w2"})
    assert e.value.status == 401 and e.value.code == "revoked"
    with pytest.raises(ApiError) as e:
        client.post("/v1/ca/renew", {"csr": certs.make_csr(certs.new_key()).decode()})
    assert e.value.status == 401
    ident = certs.identity_from_pem(open(saved, "rb").read())
    assert ident.not_after > datetime.datetime.now(datetime.timezone.utc)  # not expired
    assert delta(before, refused(c, m1), "api.revoked") == 2
    # The removed node, restarted, learns it was removed and exits.
    w2.restart()
    assert w2.proc.wait(60) == 3


def send_over_tls(addr, as_node, data) -> bytes:
    """Connect with ``as_node``'s certificate, send ``data``, return what
    came back before the peer closed (b"" when refused)."""
    ctx = tls.client_context(as_node.bundle(), as_node.ca())
    with socket.create_connection(addr, timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname=tls.MANAGER_SERVER_NAME) as s:
            try:
                s.sendall(data)
                return s.recv(100)
            except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
                return b""


def _raft_port(node):
    host, port = node.raft_addr.rsplit(":", 1)
    return host, int(port)


def test_raft_port_refuses_garbage_pickles_and_non_members(secured, tmp_path):
    c, _, _ = secured
    m1, m2, w1 = c.nodes["m1"], c.nodes["m2"], c.nodes["w1"]
    if os.path.exists(MARKER):
        os.unlink(MARKER)
    leader_before = c.health(m1)["leader"]
    before = refused(c, m1)
    payload = pickle.dumps(Evil())
    addr = _raft_port(m1)

    # 1. Random bytes and a plaintext pickle (pysyncobj's own wire format).
    for blob in (os.urandom(4096), struct.pack("i", len(payload)) + payload):
        with socket.create_connection(addr, timeout=5) as s:
            s.sendall(blob)
            s.settimeout(5)
            try:
                s.recv(100)
            except (ConnectionResetError, socket.timeout):
                pass

    # 2. TLS with a worker certificate: refused before any frame is read.
    assert send_over_tls(addr, w1, codec.encode_frame(codec.FRAME_MESSAGE, payload)) == b""
    # 3. TLS with a real manager's certificate, but a pickle as the frame:
    #    even an authenticated member cannot get bytes unpickled.
    assert send_over_tls(addr, m2, codec.encode_frame(codec.FRAME_MESSAGE, payload)) == b""
    # 4. A manager certificate claiming another manager's Raft address.
    assert send_over_tls(addr, m2, codec.encode_message(m1.raft_addr)) == b""

    after = wait_for(lambda: (lambda a: a if sum(
        delta(before, a, k) for k in a if k.startswith("raft.")) >= 5 else None)(
        refused(c, m1)), 10, what="raft refusals counted")
    raft_refusals = {k: delta(before, after, k) for k in after if k.startswith("raft.")}
    assert raft_refusals.get("raft.not_manager") == 1
    assert raft_refusals.get("raft.bad_message") == 1
    assert raft_refusals.get("raft.bad_claim") == 1
    assert sum(v for k, v in raft_refusals.items()
               if k not in ("raft.not_manager", "raft.bad_message", "raft.bad_claim")) >= 2
    assert not os.path.exists(MARKER), "a pickle from the network was executed"
    # The cluster is unaffected: same leader, and it still takes writes.
    time.sleep(0)  # (no waiting needed: checked directly)
    assert c.health(m1)["leader"] == leader_before
    c.admin().post("/v1/configs", {"name": "after-attack", "data": base64.b64encode(b"ok").decode()})
    assert c.health(m2)["raft"]["has_quorum"]


def test_garbage_on_api_port(secured):
    c, _, _ = secured
    m1 = c.nodes["m1"]
    before = refused(c, m1)
    host, port = m1.addr.rsplit(":", 1)
    for blob in (b"GET / HTTP/1.1\r\n\r\n", os.urandom(2048)):
        with socket.create_connection((host, int(port)), timeout=5) as s:
            s.sendall(blob)
            s.settimeout(5)
            try:
                assert not s.recv(100).startswith(b"HTTP/")   # no plaintext answer
            except (ConnectionResetError, socket.timeout):
                pass

    def tls_refusals(a):
        return sum(delta(before, a, k) for k in a if k.startswith("tls."))

    after = wait_for(lambda: (lambda a: a if tls_refusals(a) >= 2 else None)(refused(c, m1)),
                     10, what="both refused handshakes counted")
    assert delta(before, after, "tls.protocol") >= 1      # plain HTTP on the TLS port
    assert c.admin().get("/v1/health")["status"] == "ok"


def test_expired_certificate(secured):
    """Runs last in this module: w1's first certificate (60 s) has expired by now."""
    c, _, early = secured
    m1 = c.nodes["m1"]
    ident = certs.identity_from_pem(open(early, "rb").read())
    wait_for(lambda: datetime.datetime.now(datetime.timezone.utc) > ident.not_after + datetime.timedelta(seconds=1),
             90, interval=0.5, what="the saved certificate to expire")
    before = refused(c, m1)
    with pytest.raises((ssl.SSLError, ConnectionResetError, BrokenPipeError)):
        tls_get(m1.addr, "/v1/health", tls.client_context(early, m1.ca()))
    after = wait_for(lambda: (lambda a: a if delta(before, a, "tls.expired") == 1 else None)(
        refused(c, m1)), 5, what="refusal counted")
    assert delta(before, after, "tls.expired") == 1
    # w1 itself renewed in time and is still part of the cluster.
    assert c.node_view(c.nodes["w1"])["state"] == "ready"
    assert certs.identity_from_pem(open(c.nodes["w1"].bundle(), "rb").read()).serial != ident.serial
