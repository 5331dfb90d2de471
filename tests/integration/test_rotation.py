"""Certificates with a 60-second lifetime renew continuously with no failed request.

Each renews between 50 % and 80 % of its lifetime, so two minutes see at least
two renewals of every node's certificate: the requests go on until they have
(at most two minutes)."""

import base64
import socket
import ssl
import threading
import time

from flotilla.ca import certs
from flotilla.common import tls
from flotilla.common.httpclient import ApiError

DURATION = 120


def server_serial(node) -> int:
    ctx = tls.client_context(None, node.ca())
    host, port = node.addr.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname=tls.MANAGER_SERVER_NAME) as s:
            der = s.getpeercert(binary_form=True)
    pem = ssl.DER_cert_to_PEM_cert(der).encode()
    return certs.identity_from_pem(pem).serial


def test_renewal_without_failures(make_cluster):
    c = make_cluster(cert_expiry="60s")
    c.init("m1")
    m2 = c.join("m2")
    m3 = c.join("m3")
    w1 = c.join("w1", "worker")
    managers = [c.nodes["m1"], m2, m3]
    client = m2.node_client([m.addr for m in managers], retry_for=0, timeout=10)
    agent = w1.node_client([m.addr for m in managers], retry_for=0, timeout=10)
    server_serials = {m.name: set() for m in managers}
    client_serials, worker_serials = set(), set()
    failures, ok = [], 0
    stop = threading.Event()

    def probe():
        while not stop.wait(1.0):
            for m in managers:
                try:
                    server_serials[m.name].add(server_serial(m))
                except OSError as exc:
                    failures.append(f"probe {m.name}: {exc!r}")
            client_serials.add(certs.identity_from_pem(open(m2.bundle(), "rb").read()).serial)
            worker_serials.add(certs.identity_from_pem(open(w1.bundle(), "rb").read()).serial)

    prober = threading.Thread(target=probe)
    prober.start()

    def renewed_twice():
        return (all(len(serials) >= 3 for serials in list(server_serials.values()))
                and len(client_serials) >= 3 and len(worker_serials) >= 3)

    deadline = time.monotonic() + DURATION
    i = 0
    try:
        while time.monotonic() < deadline and not (renewed_twice() and ok > 100):
            i += 1
            try:
                client.get("/v1/nodes")
                client.get("/v1/health")
                agent.get("/v1/health")
                if i % 5 == 0:
                    client.post("/v1/configs", {"name": f"rot-{i}",
                                                "data": base64.b64encode(b"x").decode()})
                ok += 1
            except ApiError as exc:
                failures.append(f"request {i}: {exc}")
    finally:
        stop.set()
        prober.join()
    print(f"\n{ok} request rounds, {len(failures)} failures; server serials "
          f"{ {k: len(v) for k, v in server_serials.items()} }, client serials "
          f"{len(client_serials)}, worker serials {len(worker_serials)}")
    assert not failures, failures[:5]
    assert ok > 100
    for name, serials in server_serials.items():
        assert len(serials) >= 3, f"{name} served only {len(serials)} certificates"
    assert len(client_serials) >= 3 and len(worker_serials) >= 3
    # The cluster is healthy at the end: all nodes ready, same managers.
    nodes = c.admin().get("/v1/nodes")
    assert all(n["state"] == "ready" for n in nodes)
    assert sum(1 for n in nodes if n["role"] == "manager") == 3
