"""Real TLS handshakes on 127.0.0.1 between contexts from flotilla.common.tls."""

import os
import queue
import socket
import ssl
import threading
from datetime import datetime, timedelta, timezone

import pytest

from flotilla.ca import certs
from flotilla.ca.certs import ROLE_ADMIN, ROLE_MANAGER, ROLE_WORKER, RootCA
from flotilla.common import fsutil, tls
from flotilla.common.tls import MANAGER_SERVER_NAME

CLUSTER = "cluster-t"
TIMEOUT = 10.0


# --------------------------------------------------------------------------
# fixtures


class PKI:
    def __init__(self, root: str):
        self.dir = root
        self.ca = RootCA.create(CLUSTER)
        self.other_ca = RootCA.create(CLUSTER)
        self.ca_path = self._write("ca.pem", self.ca.cert_pem)
        self.other_ca_path = self._write("other-ca.pem", self.other_ca.cert_pem)

    def _write(self, name, data):
        path = os.path.join(self.dir, name)
        fsutil.atomic_write(path, data)
        return path

    def bundle(self, name, role, node_id, ca=None, lifetime=3600, now=None):
        ca = ca or self.ca
        key = certs.new_key()
        cert_pem = ca.sign_csr(certs.make_csr(key), node_id=node_id,
                               role=role, cluster_id=CLUSTER,
                               lifetime=lifetime, now=now)
        path = os.path.join(self.dir, name)
        certs.write_node_bundle(path, certs.key_to_pem(key), cert_pem)
        return path


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    p = PKI(str(tmp_path_factory.mktemp("pki")))
    p.manager = p.bundle("manager.pem", ROLE_MANAGER, "mgr-1")
    p.worker = p.bundle("worker.pem", ROLE_WORKER, "wrk-1")
    p.admin = p.bundle("admin.pem", ROLE_ADMIN, "adm-1")
    p.foreign = p.bundle("foreign.pem", ROLE_WORKER, "wrk-x", ca=p.other_ca)
    p.expired = p.bundle(
        "expired.pem", ROLE_WORKER, "wrk-old", lifetime=60,
        now=datetime.now(timezone.utc) - timedelta(hours=2))
    return p


class Server:
    """Sequential TLS echo server; ``get_ctx`` is called for every accepted
    connection (as gunicorn's ssl_context hook is).  Each connection's outcome
    is put on ``results``."""

    def __init__(self, get_ctx):
        self.get_ctx = get_ctx
        self.results: queue.Queue = queue.Queue()
        self.listener = socket.create_server(("127.0.0.1", 0), backlog=64)
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            conn.settimeout(TIMEOUT)
            try:
                ssock = self.get_ctx().wrap_socket(conn, server_side=True)
            except Exception as exc:  # handshake refused
                conn.close()
                self.results.put(("error", exc, None))
                continue
            try:
                info = {
                    "identity": certs.peer_identity(ssock),
                    "peercert": ssock.getpeercert(),
                    "sock_type": type(ssock),
                }
                data = ssock.recv(1024)
                if data:
                    ssock.sendall(data)
                self.results.put(("ok", None, info))
            except Exception as exc:
                self.results.put(("error", exc, None))
            finally:
                ssock.close()

    def result(self):
        return self.results.get(timeout=TIMEOUT)

    def close(self):
        try:
            self.listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.listener.close()
        self.thread.join(TIMEOUT)
        assert not self.thread.is_alive()


@pytest.fixture
def serve():
    servers = []

    def start(get_ctx):
        s = Server(get_ctx)
        servers.append(s)
        return s

    yield start
    for s in servers:
        s.close()


def talk(ctx, port, server_hostname=MANAGER_SERVER_NAME, payload=b"ping"):
    """Connect, send ``payload`` and read the echo.

    Returns (echo, server peercert as seen by the client).  Raises on a
    refused handshake; with TLS 1.3 a server-side refusal may only surface
    when reading, as an SSL error or as EOF (echo == b"").
    """
    raw = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    with ctx.wrap_socket(raw, server_hostname=server_hostname) as s:
        peer = s.getpeercert()
        s.sendall(payload)
        echo = s.recv(1024)
        return echo, peer


def refused(ctx, port, **kw) -> bool:
    try:
        echo, _ = talk(ctx, port, **kw)
    except (ssl.SSLError, ConnectionError):
        return True
    return echo != b"ping"


def counting_server_ctx(pki, bundle=None, client_cert="required"):
    ctx = tls.server_context(bundle or pki.manager, pki.ca_path, client_cert)
    return tls.install_counting(ctx)


def delta(before):
    after = tls.handshake_failures()
    return {k: v - before.get(k, 0) for k, v in after.items()
            if v != before.get(k, 0)}


# --------------------------------------------------------------------------
# contexts and mutual authentication


def test_context_settings(pki):
    s = tls.server_context(pki.manager, pki.ca_path)
    assert s.verify_mode == ssl.CERT_REQUIRED
    assert s.minimum_version == ssl.TLSVersion.TLSv1_2
    assert tls.server_context(pki.manager, pki.ca_path,
                              "optional").verify_mode == ssl.CERT_OPTIONAL
    with pytest.raises(ValueError):
        tls.server_context(pki.manager, pki.ca_path, "sometimes")
    c = tls.client_context(pki.worker, pki.ca_path)
    assert c.verify_mode == ssl.CERT_REQUIRED and c.check_hostname
    assert c.minimum_version == ssl.TLSVersion.TLSv1_2
    # Only the cluster root is trusted, not the system store.
    assert len(c.get_ca_certs()) == 1
    assert len(s.get_ca_certs()) == 1
    n = tls.client_context(None, None)
    assert n.verify_mode == ssl.CERT_NONE and not n.check_hostname


def test_wrap_socket_uses_counting_class(pki):
    ctx = counting_server_ctx(pki)
    assert ctx.sslsocket_class is tls.CountingSSLSocket
    a, b = socket.socketpair()
    try:
        s = ctx.wrap_socket(a, server_side=True, do_handshake_on_connect=False)
        assert isinstance(s, tls.CountingSSLSocket)
        s.close()
    finally:
        b.close()


def test_valid_client_identity(pki, serve):
    server = serve(lambda: counting_server_ctx(pki))
    before = tls.handshake_failures()
    echo, peer = talk(tls.client_context(pki.worker, pki.ca_path), server.port)
    assert echo == b"ping"
    status, exc, info = server.result()
    assert status == "ok", exc
    assert info["sock_type"] is tls.CountingSSLSocket
    ident = info["identity"]
    assert (ident.node_id, ident.role, ident.cluster_id) == (
        "wrk-1", "worker", CLUSTER)
    assert ident == certs.identity_from_pem(open(pki.worker, "rb").read())
    # The client saw the manager certificate.
    assert certs.identity_from_peercert(peer).node_id == "mgr-1"
    assert delta(before) == {}


def test_admin_client_identity(pki, serve):
    server = serve(lambda: counting_server_ctx(pki))
    echo, _ = talk(tls.client_context(pki.admin, pki.ca_path), server.port)
    assert echo == b"ping"
    status, exc, info = server.result()
    assert status == "ok", exc
    assert info["identity"].role == "admin"


def test_no_client_cert_is_refused_and_counted(pki, serve):
    server = serve(lambda: counting_server_ctx(pki))
    before = tls.handshake_failures()
    assert refused(tls.client_context(None, pki.ca_path), server.port)
    status, exc, _ = server.result()
    assert status == "error"
    assert tls.failure_reason(exc) == "no_client_cert"
    assert delta(before) == {"no_client_cert": 1}


def test_foreign_ca_client_is_refused_and_counted(pki, serve):
    server = serve(lambda: counting_server_ctx(pki))
    before = tls.handshake_failures()
    assert refused(tls.client_context(pki.foreign, pki.ca_path), server.port)
    status, exc, _ = server.result()
    assert status == "error"
    assert isinstance(exc, ssl.SSLCertVerificationError)
    assert delta(before) == {"unknown_ca": 1}


def test_expired_client_is_refused_and_counted(pki, serve):
    ident = certs.identity_from_pem(open(pki.expired, "rb").read())
    assert ident.not_after < datetime.now(timezone.utc)
    server = serve(lambda: counting_server_ctx(pki))
    before = tls.handshake_failures()
    assert refused(tls.client_context(pki.expired, pki.ca_path), server.port)
    status, exc, _ = server.result()
    assert status == "error"
    assert delta(before) == {"expired": 1}


def test_garbage_is_counted_as_protocol(pki, serve):
    server = serve(lambda: counting_server_ctx(pki))
    before = tls.handshake_failures()
    with socket.create_connection(("127.0.0.1", server.port),
                                  timeout=TIMEOUT) as raw:
        raw.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        status, exc, _ = server.result()
    assert status == "error"
    assert delta(before) == {"protocol": 1}


def test_client_hanging_up_is_counted_as_eof(pki, serve):
    server = serve(lambda: counting_server_ctx(pki))
    before = tls.handshake_failures()
    socket.create_connection(("127.0.0.1", server.port),
                             timeout=TIMEOUT).close()
    status, _, _ = server.result()
    assert status == "error"
    assert delta(before) == {"eof": 1}


def test_worker_cert_fails_manager_name_check(pki, serve):
    # A worker certificate used as a server certificate.
    server = serve(lambda: counting_server_ctx(pki, bundle=pki.worker))
    client = tls.install_counting(tls.client_context(pki.admin, pki.ca_path))
    before = tls.handshake_failures()
    with pytest.raises(ssl.SSLCertVerificationError) as info:
        talk(client, server.port)
    assert info.value.verify_code == 62  # hostname mismatch
    assert server.result()[0] == "error"
    assert delta(before).get("hostname_mismatch") == 1
    # The same server passes without the name check (so the name was the
    # only problem) and a manager passes with it.
    echo, _ = talk(tls.client_context(pki.admin, pki.ca_path,
                                      server_name_check=False), server.port)
    assert echo == b"ping"
    assert server.result()[0] == "ok"


def test_manager_passes_name_check_by_ip(pki, serve):
    server = serve(lambda: counting_server_ctx(pki))
    echo, _ = talk(tls.client_context(pki.admin, pki.ca_path), server.port,
                   server_hostname=MANAGER_SERVER_NAME)
    assert echo == b"ping"
    assert server.result()[0] == "ok"
    # Checking against the dialled address instead fails.
    assert refused(tls.client_context(pki.admin, pki.ca_path), server.port,
                   server_hostname="127.0.0.1")
    assert server.result()[0] == "error"


def test_client_refuses_server_from_other_ca(pki, serve):
    server = serve(lambda: counting_server_ctx(
        pki, bundle=pki.bundle("other-mgr.pem", ROLE_MANAGER, "m",
                               ca=pki.other_ca)))
    with pytest.raises(ssl.SSLCertVerificationError):
        talk(tls.client_context(pki.worker, pki.ca_path), server.port)
    assert server.result()[0] == "error"


def test_optional_client_cert(pki, serve):
    server = serve(lambda: counting_server_ctx(pki, client_cert="optional"))
    echo, _ = talk(tls.client_context(None, pki.ca_path), server.port)
    assert echo == b"ping"
    status, exc, info = server.result()
    assert status == "ok", exc
    assert not info["peercert"]  # None: no certificate presented
    assert info["identity"] is None
    # A certificate that is presented is still verified and identified.
    echo, _ = talk(tls.client_context(pki.worker, pki.ca_path), server.port)
    assert echo == b"ping"
    status, exc, info = server.result()
    assert info["identity"].node_id == "wrk-1"
    assert refused(tls.client_context(pki.foreign, pki.ca_path), server.port)
    assert server.result()[0] == "error"


def test_unverified_client_for_join(pki, serve):
    """A joining node has no root yet: it connects without verifying the
    server at all (and later pins the root with its join token digest)."""
    server = serve(lambda: counting_server_ctx(
        pki, bundle=pki.bundle("foreign-mgr.pem", ROLE_MANAGER, "m",
                               ca=pki.other_ca),
        client_cert="optional"))
    echo, peer = talk(tls.client_context(None, None), server.port,
                      server_hostname=None)
    assert echo == b"ping"
    assert peer == {}  # nothing was verified
    assert server.result()[0] == "ok"


def test_peer_identity_before_handshake():
    a, b = socket.socketpair()
    try:
        ctx = tls.client_context(None, None)
        s = ctx.wrap_socket(a, do_handshake_on_connect=False)
        assert certs.peer_identity(s) is None
        s.close()
    finally:
        b.close()


# --------------------------------------------------------------------------
# loading bundles


def test_load_cert_chain_atomic_errors(pki, tmp_path):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain_atomic(ctx, pki.manager)
    with pytest.raises(OSError):
        tls.load_cert_chain_atomic(ctx, str(tmp_path / "missing.pem"))
    corrupt = tmp_path / "corrupt.pem"
    corrupt.write_bytes(b"-----BEGIN PRIVATE KEY-----\nnope\n")
    with pytest.raises(ssl.SSLError):
        tls.load_cert_chain_atomic(ctx, str(corrupt))
    key_pem, _ = pki.ca.issue(ROLE_WORKER, "a", CLUSTER, 3600)
    _, cert_pem = pki.ca.issue(ROLE_WORKER, "b", CLUSTER, 3600)
    mismatched = tmp_path / "mismatched.pem"
    mismatched.write_bytes(key_pem + cert_pem)
    with pytest.raises(ssl.SSLError):
        tls.load_cert_chain_atomic(ctx, str(mismatched))
    cert_only = tmp_path / "cert-only.pem"
    cert_only.write_bytes(cert_pem)
    with pytest.raises(ssl.SSLError):
        tls.load_cert_chain_atomic(ctx, str(cert_only))


def test_load_cert_chain_atomic_without_memfd(pki, monkeypatch):
    monkeypatch.delattr(os, "memfd_create")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain_atomic(ctx, pki.manager)
    # The temporary copy is gone again.
    leftovers = [n for n in os.listdir(os.path.dirname(pki.manager))
                 if n.startswith(".flotilla-tls-")]
    assert leftovers == []
    with pytest.raises(ssl.SSLError):
        tls.load_cert_chain_atomic(ctx, pki.ca_path)  # no key


def test_encrypted_key_fails_without_prompting(pki, tmp_path):
    from cryptography.hazmat.primitives import serialization
    key = certs.new_key()
    cert_pem = pki.ca.sign_csr(certs.make_csr(key), node_id="e",
                               role=ROLE_WORKER, cluster_id=CLUSTER,
                               lifetime=3600)
    enc = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"))
    path = tmp_path / "enc.pem"
    path.write_bytes(enc + cert_pem)
    with pytest.raises(ssl.SSLError):
        tls.load_cert_chain_atomic(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER),
                                   str(path))


# --------------------------------------------------------------------------
# reloading


def _serial(peer):
    return int(peer["serialNumber"], 16)


def _file_serial(path):
    with open(path, "rb") as f:
        return certs.identity_from_pem(f.read()).serial


def _write_manager(pki, path, node_id="mgr-1"):
    key_pem, cert_pem = pki.ca.issue(ROLE_MANAGER, node_id, CLUSTER, 3600)
    certs.write_node_bundle(path, key_pem, cert_pem)
    return certs.identity_from_pem(cert_pem).serial


def test_reloading_context(pki, serve, tmp_path):
    bundle = str(tmp_path / "server.pem")
    builds = []

    def factory():
        builds.append(1)
        return counting_server_ctx(pki, bundle=bundle)

    rc = tls.ReloadingContext(factory, [bundle, pki.ca_path])
    assert builds == [] and rc.generation == 0  # nothing built yet

    serial_a = _write_manager(pki, bundle)
    server = serve(rc.get)
    client = tls.client_context(pki.worker, pki.ca_path)

    def presented():
        echo, peer = talk(client, server.port)
        assert echo == b"ping"
        assert server.result()[0] == "ok"
        return _serial(peer)

    assert presented() == serial_a
    assert rc.generation == 1
    assert presented() == serial_a
    assert rc.generation == 1 and len(builds) == 1  # cached

    serial_b = _write_manager(pki, bundle)
    assert serial_b != serial_a
    assert presented() == serial_b
    assert rc.generation == 2

    # Corrupt file: keep serving the last good context, retry each call.
    fsutil.atomic_write(bundle, b"-----BEGIN PRIVATE KEY-----\ngarbage\n")
    assert presented() == serial_b
    assert presented() == serial_b
    assert rc.generation == 2
    failed_builds = len(builds)

    # Key and certificate that do not belong together: same.
    key_pem, _ = pki.ca.issue(ROLE_MANAGER, "x", CLUSTER, 3600)
    _, cert_pem = pki.ca.issue(ROLE_MANAGER, "x", CLUSTER, 3600)
    fsutil.atomic_write(bundle, key_pem + cert_pem)
    assert presented() == serial_b
    assert rc.generation == 2
    assert len(builds) > failed_builds

    # Missing file: same.
    os.unlink(bundle)
    assert presented() == serial_b
    assert rc.generation == 2

    serial_c = _write_manager(pki, bundle)
    assert presented() == serial_c
    assert rc.generation == 3


def test_reloading_context_first_build_failure_raises(tmp_path):
    path = str(tmp_path / "absent.pem")
    rc = tls.ReloadingContext(lambda: tls.server_context(path, path), [path])
    with pytest.raises(OSError):
        rc.get()
    assert rc.generation == 0


def test_reloading_context_check_interval(pki, tmp_path):
    bundle = str(tmp_path / "server.pem")
    _write_manager(pki, bundle)
    rc = tls.ReloadingContext(
        lambda: tls.server_context(bundle, pki.ca_path), [bundle],
        check_interval=3600)
    first = rc.get()
    _write_manager(pki, bundle)
    # Within the interval the files are not even looked at.
    assert rc.get() is first
    assert rc.generation == 1
    eager = tls.ReloadingContext(
        lambda: tls.server_context(bundle, pki.ca_path), [bundle])
    first = eager.get()
    _write_manager(pki, bundle)
    assert eager.get() is not first
    assert eager.generation == 2


def test_reloading_context_concurrent_get(pki, tmp_path):
    bundle = str(tmp_path / "server.pem")
    _write_manager(pki, bundle)
    builds = []

    def factory():
        builds.append(1)
        return tls.server_context(bundle, pki.ca_path)

    rc = tls.ReloadingContext(factory, [bundle])
    start = threading.Barrier(8)
    got = []

    def worker():
        start.wait(TIMEOUT)
        got.append(rc.get())

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT)
    assert len(got) == 8 and len({id(c) for c in got}) == 1
    assert len(builds) == 1 and rc.generation == 1


def test_rotation_under_load_has_no_failed_handshakes(pki, serve, tmp_path):
    bundle = str(tmp_path / "server.pem")
    initial = _write_manager(pki, bundle)
    factory_errors = []

    def factory():
        try:
            return counting_server_ctx(pki, bundle=bundle)
        except Exception as exc:
            factory_errors.append(exc)
            raise

    rc = tls.ReloadingContext(factory, [bundle, pki.ca_path])
    server = serve(rc.get)
    client = tls.client_context(pki.worker, pki.ca_path)
    rounds = 200
    first_done = threading.Event()
    client_errors, server_errors, seen = [], [], set()
    written = []

    def writer():
        first_done.wait(TIMEOUT)
        for _ in range(rounds):
            written.append(_write_manager(pki, bundle))

    def handshaker():
        for i in range(rounds):
            try:
                echo, peer = talk(client, server.port)
                assert echo == b"ping"
                seen.add(_serial(peer))
            except Exception as exc:
                client_errors.append(exc)
            status, exc, _ = server.result()
            if status != "ok":
                server_errors.append(exc)
            first_done.set()

    before = tls.handshake_failures()
    threads = [threading.Thread(target=writer),
               threading.Thread(target=handshaker)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
        assert not t.is_alive()

    assert client_errors == [] and server_errors == []
    assert factory_errors == []
    assert delta(before) == {}
    assert len(written) == rounds
    # After the writer is done, the next handshake presents the last cert.
    echo, peer = talk(client, server.port)
    assert server.result()[0] == "ok"
    assert _serial(peer) == written[-1] == _file_serial(bundle)
    assert rc.generation >= 2
    assert initial in seen and seen <= set(written) | {initial}
