"""The agent's HTTP and TCP probes and Docker's health rules, on loopback."""

import asyncio
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from flotilla.agent.executor import _healthcheck, container_address, probed
from flotilla.agent.health import Prober, _Check, accepts, probe_http, probe_tcp
from tests.helpers.cluster import wait_for


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        code = {"/ok": 200, "/moved": 302, "/down": 503}.get(self.path, 404)
        self.send_response(code)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def web():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(coro):
    return asyncio.run(coro)


def test_http_probe(web):
    ok = ["200-399"]
    assert run(probe_http("127.0.0.1", web, "/ok", 2, ok)) == (True, None)
    assert run(probe_http("127.0.0.1", web, "/moved", 2, ok)) == (True, None)
    assert run(probe_http("127.0.0.1", web, "/down", 2, ok)) == (False, f"HTTP 503 from :{web}/down")
    assert run(probe_http("127.0.0.1", web, "/down", 2, ["503"])) == (True, None)
    port = closed_port()
    assert run(probe_http("127.0.0.1", port, "/", 2, ok)) == (False, f"HTTP :{port}/ refused")


def test_http_probe_times_out():
    with socket.socket() as silent:          # accepts, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        assert run(probe_http("127.0.0.1", port, "/", 0.2, ["200"])) == (
            False, f"HTTP :{port}/ timed out after 0.2s")


def test_tcp_probe(web):
    assert run(probe_tcp("127.0.0.1", web, 2)) == (True, None)
    port = closed_port()
    assert run(probe_tcp("127.0.0.1", port, 2)) == (False, f"TCP :{port} refused")


def test_status_ranges():
    assert accepts(["200-399"], 302) and not accepts(["200-399"], 404)
    assert accepts(["204", "500-502"], 501) and not accepts(["204"], 200)


def check(**spec):
    return _Check("t", "c", "127.0.0.1", dict({"tcp": {"port": 1}}, **spec), started_at=1000.0)


def test_docker_rules_after_the_start_period():
    c = check(retries=2)
    assert not c.record(False, "TCP :1 refused", 1001) and c.status == "starting"
    assert c.record(False, "TCP :1 refused", 1002) and c.status == "unhealthy"
    assert c.detail == "TCP :1 refused"
    assert c.record(True, None, 1003) and c.status == "healthy"


def test_failures_in_the_start_period_do_not_count_until_healthy():
    c = check(retries=1, start_period=10)
    for now in (1001, 1005, 1009):
        assert not c.record(False, "x", now) and c.status == "starting"
    assert c.record(True, None, 1009.5) and c.status == "healthy"
    assert c.record(False, "x", 1009.8) and c.status == "unhealthy"   # counted once healthy
    c = check(retries=1, start_period=10)
    assert c.record(False, "x", 1011) and c.status == "unhealthy"


def test_zero_retries_means_three():
    c = check(retries=0)
    c.record(False, "x", 2000)
    c.record(False, "x", 2000)
    assert c.status == "starting"
    c.record(False, "x", 2000)
    assert c.status == "unhealthy"


def test_prober_reports_changes_and_stops(web):
    changes = []
    prober = Prober(changes.append)
    spec = {"http": {"port": web, "path": "/ok", "status": ["200-399"]}, "interval": 0.05,
            "timeout": 1, "retries": 1, "start_period": 0}
    assert prober.watch("a", "c1", "127.0.0.1", spec).status == "starting"
    prober.start()
    try:
        wait_for(lambda: prober.health("a").status == "healthy", 5, 0.02, "healthy")
        assert changes == ["a"]
        # the same container and spec keep their state; another spec starts over
        assert prober.watch("a", "c1", "127.0.0.1", spec).status == "healthy"
        down = dict(spec, http=dict(spec["http"], path="/down"))
        assert prober.watch("a", "c1", "127.0.0.1", down).status == "starting"
        wait_for(lambda: prober.health("a").status == "unhealthy", 5, 0.02, "unhealthy")
        assert prober.health("a").detail == f"HTTP 503 from :{web}/down"
        prober.unwatch("a")
        assert prober.health("a") is None and prober.watched() == []
    finally:
        prober.stop()
        prober.stop()
    assert changes == ["a", "a"]


def test_executor_disables_the_engine_check_for_probed_ones():
    assert probed({"test": None, "http": {"port": 80}, "tcp": None})
    assert not probed({"test": ["CMD", "true"]}) and not probed(None)
    assert _healthcheck({"test": None, "http": None, "tcp": {"port": 1}})["Test"] == ["NONE"]
    assert _healthcheck({"test": ["CMD", "true"], "http": None, "tcp": None,
                         "interval": 1.0})["Test"] == ["CMD", "true"]
    assert _healthcheck(None) is None


def test_container_address():
    assert container_address({"NetworkSettings": {"IPAddress": "172.17.0.2"}}) == "172.17.0.2"
    assert container_address({"NetworkSettings": {"IPAddress": "", "Networks": {
        "zz": {"IPAddress": "10.0.0.3"}, "bridge": {"IPAddress": "172.17.0.4"}}}}) == "172.17.0.4"
    assert container_address({"NetworkSettings": {"Networks": {"none": {"IPAddress": ""}}}}) is None
