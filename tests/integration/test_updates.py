"""Rolling updates, rollback, pause and resume on real Docker.

Images (tests/images/setup-docker.sh): flotilla-test/web:1 and :2 serve
"web v1" / "web v2" over HTTP and have a HEALTHCHECK; flotilla-test/web:bad
never becomes healthy. Containers are probed directly on their bridge
addresses, so six replicas can run on one engine without published ports.
"""

import collections
import concurrent.futures
import threading
import time

import requests

from tests.helpers.cluster import wait_for

V1, V2, BAD = "flotilla-test/web:1", "flotilla-test/web:2", "flotilla-test/web:bad"


CLUSTER = {"managers": 1, "workers": 2}      # the `cluster` the tests share (conftest.py)


def running(c, service):
    return [t for t in c.admin().get(f"/v1/services/{service}/tasks")
            if t["desired_state"] == "running" and t["state"] == "running"]


def service(c, name):
    return c.admin().get(f"/v1/services/{name}")


def _answer(ctr):
    nets = (ctr.attrs.get("NetworkSettings") or {}).get("Networks") or {}
    ips = [n.get("IPAddress") for n in nets.values() if n.get("IPAddress")]
    if not ips:
        return None
    for timeout in (1, 5):      # a loaded machine may answer late: ask once more
        try:
            res = requests.get(f"http://{ips[0]}/", timeout=timeout)
            return res.text.strip() if res.status_code == 200 else None
        except requests.Timeout:
            continue
        except requests.RequestException:
            return None
    return None


def answers(c, name):
    """What each running container of the service answers over HTTP."""
    ctrs = c.containers(service=name)
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        return [a for a in pool.map(_answer, ctrs) if a]


def slots_ok(c, name):
    per_slot = collections.Counter(x.labels.get("flotilla.task.slot") for x in c.containers(service=name))
    return all(v == 1 for v in per_slot.values())


def test_start_first_update_never_drops_below_the_replica_count(cluster):
    c = cluster
    c.cli("service", "create", "--name", "web", "--replicas", "6", V1)
    assert answers(c, "web").count("web v1") == 6
    seen, stop = [], threading.Event()

    def watch():
        while not stop.is_set():
            seen.append(answers(c, "web"))

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        res = c.cli("service", "update", "--image", V2, "--update-parallelism", "2",
                    "--update-delay", "1s", "--update-order", "start-first",
                    "--rollback-parallelism", "3", "web")
    finally:
        stop.set()
        watcher.join(10)
    assert "web: converged (6/6 running)" in res.stdout
    # The watcher saw the update under way (old and new side by side), never fewer than 6 answers.
    counts = [len(a) for a in seen]
    assert min(counts) >= 6, counts
    assert any("web v1" in a and "web v2" in a for a in seen), seen
    assert sorted(answers(c, "web")) == ["web v2"] * 6
    s = service(c, "web")
    assert s["update_status"]["state"] == "completed" and s["previous_spec"]["task"]["container"]["image"] == V1
    # The update's progress was visible as events.
    events = c.admin().get("/v1/events", params={"since": 0, "type": "service", "service": "web"})
    states = [e["attributes"].get("update_state") for e in events["events"]]
    assert "updating" in states and states.index("completed") > states.index("updating")

    # A manual rollback brings v1 back.
    res = c.cli("service", "rollback", "web")
    assert "web: converged (6/6 running)" in res.stdout
    assert sorted(answers(c, "web")) == ["web v1"] * 6
    assert service(c, "web")["update_status"]["state"] == "rollback_completed"


def test_failing_update_rolls_back_and_leaves_untouched_tasks_alone(cluster):
    c = cluster
    c.cli("service", "create", "--name", "web", "--replicas", "4", V1)
    before = {t["slot"]: t["container_id"] for t in running(c, "web")}
    res = c.cli("service", "update", "--image", BAD, "--update-failure-action", "rollback",
                "--update-parallelism", "1", "--update-monitor", "5s", "web", check=False)
    assert res.returncode == 1
    assert "rolled back" in res.stderr and "unhealthy" in res.stderr, res.stderr
    wait_for(lambda: service(c, "web")["update_status"]["state"] == "rollback_completed", 60,
             what="the rollback to complete")
    wait_for(lambda: sorted(answers(c, "web")) == ["web v1"] * 4 and slots_ok(c, "web"), 60,
             what="four v1 tasks")
    after = {t["slot"]: t["container_id"] for t in running(c, "web")}
    kept = [slot for slot in before if before[slot] == after.get(slot)]
    assert len(kept) == 3, (before, after)       # only the first batch (one task) was touched
    assert all(t["image"] == V1 for t in running(c, "web"))


def test_pause_resume_and_leader_failover_during_an_update(make_cluster):
    c = make_cluster()
    c.init("m1")
    c.join("m2")
    c.join("m3")
    c.join("w1", "worker")
    c.join("w2", "worker")
    c.cli("service", "create", "--name", "web", "--replicas", "6", "--constraint",
          "node.role==worker", V1)

    def v2_count():
        return sum(1 for t in running(c, "web") if t["image"] == V2)

    c.cli("service", "update", "--detach", "--image", V2, "--update-parallelism", "1",
          "--update-delay", "1s", "web")
    wait_for(lambda: v2_count() >= 1, 60, what="the first batch")
    res = c.cli("service", "pause", "web")
    assert "web: paused" in res.stdout
    assert service(c, "web")["update_status"]["state"] == "paused"
    # Once the batch under way is done, nothing more is replaced while paused.
    wait_for(lambda: not [t for t in c.admin().get("/v1/services/web/tasks")
                          if t["desired_state"] in ("ready", "running") and t["state"] != "running"],
             30, what="the batch under way to settle")
    paused_at = v2_count()
    deadline = time.monotonic() + 4
    while time.monotonic() < deadline:
        assert v2_count() == paused_at
        time.sleep(0.3)
    assert paused_at < 6
    res = c.cli("service", "update", "--image", V2, "web", check=False)   # still paused: says so
    assert res.returncode == 1 and "paused" in res.stderr

    c.cli("service", "resume", "--detach", "web")
    wait_for(lambda: v2_count() >= paused_at + 1, 60, what="the update to go on")
    leader = c.leader()
    leader.kill()
    wait_for(lambda: c.leader() is not None and c.leader() is not leader, 30, what="a new leader")
    wait_for(lambda: service(c, "web")["update_status"]["state"] == "completed", 120,
             what="the new leader to finish the update")
    wait_for(lambda: v2_count() == 6 and len(running(c, "web")) == 6, 60, what="six v2 tasks")
    assert slots_ok(c, "web")
    assert sorted(answers(c, "web")) == ["web v2"] * 6
