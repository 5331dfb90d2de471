"""`make cluster` brings up the local default cluster with its demo (a web
page on :8080, and a client fetching it by the service's name over the
overlay network ``demo``), a second run changes nothing, and `make
cluster-down` removes everything, the network's Docker network, devices and
VIP rules included."""

import json
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


def flotilla(*args):
    cluster = os.path.join(ROOT, ".cache", "cluster")
    return subprocess.run([os.path.join(ROOT, ".venv", "bin", "flotilla"), "--host",
                           "127.0.0.1:4242,127.0.0.1:4243,127.0.0.1:4244", "--tls-dir",
                           os.path.join(cluster, "manager-1", "admin"), *args],
                          capture_output=True, text=True, timeout=60, check=True).stdout


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
    # the client reached the web service by its name over the demo network
    assert "demo-web says: flotilla test image" in first.stdout, first.stdout[-3000:]
    client = docker.from_env()
    [ctr] = client.containers.list(filters={"label": "flotilla.service.name=demo-client"})
    assert "demo-web says: flotilla test image" in ctr.logs().decode()
    demo = json.loads(flotilla("network", "inspect", "demo"))[0]
    assert demo["subnet"].startswith("10.210.")                 # the local inventory's pool
    assert {s["name"] for s in demo["services"]} == {"demo-web", "demo-client"}
    assert list(ctr.attrs["NetworkSettings"]["Networks"]) == ["flotilla-demo"]
    cluster_id = json.load(open(os.path.join(ROOT, ".cache", "cluster", "manager-1",
                                             "node.json")))["cluster_id"]

    second = make("cluster")
    assert second.returncode == 0, second.stdout[-3000:]
    changed = recap_changed(second.stdout)
    assert changed and all(n == 0 for n in changed), second.stdout[-3000:]

    down = make("cluster-down")
    assert down.returncode == 0, down.stdout[-3000:]
    assert not os.path.exists(os.path.join(ROOT, ".cache", "cluster"))
    assert not client.api.containers(all=True, filters={"label": "flotilla.service.name=demo-web"})
    assert not client.api.networks(filters={"label": f"flotilla.cluster.id={cluster_id}"})
    devices = subprocess.run(["ip", "-br", "link"], capture_output=True, text=True).stdout
    assert f"flb-{demo['id'][:10]}" not in devices and f"flv-{demo['id'][:10]}" not in devices
    rules = subprocess.run(["nft", "list", "table", "ip", "flotilla"], capture_output=True,
                           text=True).stdout
    assert f"flb-{demo['id'][:10]}" not in rules
