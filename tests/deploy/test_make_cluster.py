"""`make cluster` brings up the local default cluster with its demo, a second
run changes nothing, and `make cluster-down` removes everything."""

import os
import re
import subprocess
import urllib.request

import docker
import pytest

pytestmark = [pytest.mark.deploy, pytest.mark.timeout(1200)]  # beside other tests

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def make(target):
    return subprocess.run(["make", target], cwd=ROOT, capture_output=True, text=True, timeout=1200)


def recap_changed(output):
    return [int(n) for n in re.findall(r"^\S+\s*:\s*ok=\d+\s+changed=(\d+)", output, re.M)]


@pytest.fixture
def local_cluster():
    yield
    make("cluster-down")


def test_make_cluster_is_idempotent_and_removable(local_cluster):
    first = make("cluster")
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "demo-web" in first.stdout and "http://127.0.0.1:8080/" in first.stdout
    assert urllib.request.urlopen("http://127.0.0.1:8080/", timeout=5).read().strip() == b"flotilla test image"
    table = first.stdout
    for name in ("manager-1", "manager-2", "manager-3", "worker-1", "worker-2"):
        assert re.search(rf"{name}\s+127\.0\.0\.1:\d+\s+\w+\s+active\s+ready", table), name

    second = make("cluster")
    assert second.returncode == 0, second.stdout[-3000:]
    changed = recap_changed(second.stdout)
    assert changed and all(n == 0 for n in changed), second.stdout[-3000:]

    down = make("cluster-down")
    assert down.returncode == 0, down.stdout[-3000:]
    assert not os.path.exists(os.path.join(ROOT, ".cache", "cluster"))
    client = docker.from_env()
    assert not client.api.containers(all=True, filters={"label": "flotilla.service.name=demo-web"})
