"""Ansible against real hosts: 3 managers + 2 workers, each a container with
its own systemd, sshd and dockerd, reached over SSH.

The tests share one set of hosts and run in order: bootstrap, idempotence,
admin bundle rotation, scale out and in, rolling upgrade.
"""

import json
import threading
import time

import pytest

from flotilla import __version__
from tests.deploy import testhosts

pytestmark = [pytest.mark.deploy, pytest.mark.timeout(1200)]  # beside other tests

CLI = "/opt/flotilla/venv/bin/flotilla"
ADMIN = "/var/lib/flotilla/admin"
NEXT_VERSION = f"{__version__}.post1"      # what the rolling upgrade installs


def flotilla(hosts, *args, check=True):
    m1 = hosts.managers[0]
    res = hosts.exec(m1, [CLI, "--host", f"{m1.ip}:4242", "--tls-dir", ADMIN, *args], check=check)
    return res


def fjson(hosts, *args):
    return json.loads(flotilla(hosts, *args, "--format", "json").stdout)


def up(tasks):
    """The tasks meant to run that do."""
    return [t for t in tasks if t["desired_state"] == "running" and t["state"] == "running"]


def running(hosts, service):
    return up(fjson(hosts, "service", "ps", service))


def engine_count(hosts, host, service):
    out = hosts.exec(host, ["docker", "ps", "-q", "--filter", f"label=flotilla.service.name={service}"])
    return len(out.stdout.split())


def poll(pred, timeout=180, interval=1.0, what="condition"):
    return testhosts.wait_until(pred, timeout=timeout, interval=interval, what=what)


def test_site_bootstraps_a_healthy_cluster(test_hosts):
    hosts = test_hosts
    hosts.run_playbook("site").check()
    nodes = {n["hostname"]: n for n in fjson(hosts, "node", "ls")}
    assert set(nodes) == {h.name for h in hosts.hosts}
    assert all(n["state"] == "ready" for n in nodes.values())
    managers = [n for n in nodes.values() if n["role"] == "manager"]
    assert len(managers) == 3 and all(n["manager"]["reachability"] == "reachable" for n in managers)
    assert sum(1 for n in managers if n["leader"]) == 1
    # The node runs under systemd with its data directory private.
    for h in hosts.hosts:
        assert hosts.exec(h, ["systemctl", "is-active", "flotilla@" + h.name]).stdout.strip() == "active"
        assert hosts.exec(h, ["stat", "-c", "%a", "/var/lib/flotilla"]).stdout.strip() == "700"
    # A 6-replica service spreads over both workers' own engines.
    flotilla(hosts, "service", "create", "--name", "web", "--replicas", "6",
             "--constraint", "node.role==worker", "--init", "flotilla-test/busybox:1", "sleep", "86400")
    poll(lambda: len(running(hosts, "web")) == 6, what="6 running tasks")
    w1, w2 = hosts.workers
    assert engine_count(hosts, w1, "web") == 3 and engine_count(hosts, w2, "web") == 3


def test_second_run_changes_nothing(test_hosts):
    res = test_hosts.run_playbook("site").check()
    assert res.changed == 0, {h: r for h, r in res.recap.items() if r["changed"]}


def test_rotate_certs_replaces_the_admin_bundle_and_revokes_the_old(test_hosts):
    hosts = test_hosts
    m1 = hosts.managers[0]
    hosts.exec(m1, ["cp", "-a", ADMIN, "/root/admin-before"])
    hosts.run_playbook("rotate_certs", extra_vars={"flotilla_admin_rotate": True}).check()
    admins = {a["name"]: a for a in fjson(hosts, "cluster", "admin", "ls")}
    (current,) = [a for a in admins.values() if a["current"]]
    assert current["name"].startswith("ansible-") and current["state"] == "active"
    assert admins["init"]["state"] == "revoked"
    assert hosts.exec(m1, ["stat", "-c", "%a", f"{ADMIN}/key.pem"]).stdout.strip() == "600"
    old = hosts.exec(m1, [CLI, "--host", f"{m1.ip}:4242", "--tls-dir", "/root/admin-before",
                          "node", "ls"], check=False)
    assert old.returncode != 0 and "revoked" in old.stdout     # stderr is merged into it
    # Not due again: the next run rotates the join tokens only.
    res = hosts.run_playbook("rotate_certs").check()
    assert res.changed == 1, res.tail()
    assert [a["name"] for a in fjson(hosts, "cluster", "admin", "ls") if a["current"]] == \
        [current["name"]]


def test_add_then_remove_a_worker(test_hosts):
    hosts = test_hosts
    new = hosts.add_host("worker")
    hosts.run_playbook("add_node", limit=new.name).check()
    view = json.loads(flotilla(hosts, "node", "inspect", new.name).stdout)
    assert view["state"] == "ready" and view["role"] == "worker"
    # A new service spreads its tasks over every worker, the new one included
    # (whatever earlier node failures did to web's placement: tasks that
    # already run are not moved).
    flotilla(hosts, "service", "create", "--name", "share", "--replicas", "3",
             "--constraint", "node.role==worker", "--init", "flotilla-test/busybox:1",
             "sleep", "86400")

    def one_on_each_worker():
        tasks = fjson(hosts, "service", "ps", "share")
        nodes = sorted(t["node"] for t in up(tasks))
        on_new = engine_count(hosts, new, "share")
        assert nodes == sorted(h.name for h in hosts.workers) and on_new == 1, (
            f"running on {nodes}, {on_new} container(s) on {new.name}; tasks: "
            + ", ".join(f"{t['node']}:{t['desired_state']}/{t['state']} "
                        f"{t.get('error') or t.get('message') or ''}".strip() for t in tasks))
        return True

    poll(one_on_each_worker, what="the new worker to take its share")
    hosts.run_playbook("remove_node", limit=new.name).check()
    assert new.name not in {n["hostname"] for n in fjson(hosts, "node", "ls")}
    poll(lambda: len(running(hosts, "share")) == 3, what="its task running elsewhere")
    assert {t["node"] for t in running(hosts, "share")} <= {h.name for h in hosts.workers if h is not new}
    assert engine_count(hosts, new, "share") == 0
    flotilla(hosts, "service", "rm", "share")
    hosts.remove_host(new.name)
    hosts.write_inventory(**hosts.inventory_vars)


def test_rolling_upgrade_keeps_the_service_up(test_hosts):
    hosts = test_hosts
    flotilla(hosts, "service", "scale", "web=6")
    poll(lambda: len(running(hosts, "web")) == 6, what="6 running tasks")
    new_wheels = testhosts.build_wheelhouse(version=NEXT_VERSION)
    hosts.write_inventory(wheelhouse=new_wheels)
    samples, stop = [], threading.Event()     # (seconds, running count, where)
    t0 = time.monotonic()

    def watch():
        while not stop.is_set():
            try:
                tasks = fjson(hosts, "service", "ps", "web")
            except Exception:       # a manager restarting: the CLI retries, then we do
                samples.append((time.monotonic() - t0, None, ""))
            else:
                where = " ".join(sorted(f"{t['node']}:{t['desired_state']}/{t['state']}" for t in tasks
                                        if t["desired_state"] == "running" or t["state"] == "running"))
                samples.append((time.monotonic() - t0, len(up(tasks)), where))
            time.sleep(0.5)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        hosts.run_playbook("upgrade").check()
    finally:
        stop.set()
        watcher.join()
    seen = [c for _, c, _ in samples if c is not None]
    print(f"\nreplicas running during the upgrade: min {min(seen)}, samples {len(seen)}")
    low = [f"{t:.1f}s {c} [{where}]" for t, c, where in samples if c is not None and c < 5]
    assert len(seen) > 20 and min(seen) >= 5, "\n".join(low[:20])     # N-1 at the very least
    for h in hosts.hosts:
        assert hosts.exec(h, [CLI, "--version"]).stdout.strip().endswith(NEXT_VERSION)
    nodes = fjson(hosts, "node", "ls")
    assert {n["flotilla_version"] for n in nodes} == {NEXT_VERSION}
    assert all(n["state"] == "ready" and n["availability"] == "active" for n in nodes)
    poll(lambda: len(running(hosts, "web")) == 6, what="the service whole after the upgrade")
