"""Service dependencies on a real cluster: a dependent's tasks are prepared
but not started until its dependencies hold (healthy, completed, through a
stack deploy too), and dependency cycles are refused.

One cluster for the module (a manager and a worker). Order is checked with
the events feed: an event's index is the store index of its change.
"""

import re

import pytest

from flotilla.common.httpclient import ApiError
from tests.helpers.cluster import wait_for

IMAGE = "flotilla-test/busybox:1"
WEB = "flotilla-test/web:1"          # healthy about a second after it starts


@pytest.fixture(scope="module")
def c(make_module_cluster):
    return make_module_cluster().build(managers=1, workers=1)


def create(c, *args):
    return c.cli("service", "create", "--detach", *args)


def tasks(c, service):
    return c.admin().get(f"/v1/services/{service}/tasks")


def running(c, service, n):
    ts = [t for t in tasks(c, service) if t["desired_state"] == "running"]
    return len(ts) == n and all(t["state"] == "running" for t in ts)


def index_now(c):
    return c.admin().get("/v1/events")["index"]


def task_events(c, since):
    return c.admin().get("/v1/events", params={"since": since, "type": "task"})["events"]


def reached(evs, service, states):
    """Task id -> index of the first event where it was in one of ``states``."""
    out = {}
    for e in evs:
        a = e["attributes"]
        if a["service"] == service and a["state"] in states:
            out.setdefault(e["id"], e["index"])
    return out


def test_healthy_dependency_created_after_its_dependent(c):
    start = index_now(c)
    create(c, "--name", "app", "--replicas", "2", "--depends-on", "db:healthy",
           "--stop-grace-period", "1s", IMAGE, "sleep", "3600")
    missing = "waiting for dependency db (healthy): service db does not exist"

    def prepared_and_waiting():
        ts = [t for t in tasks(c, "app") if t["desired_state"] != "shutdown"]
        return len(ts) == 2 and all(t["desired_state"] == "ready" and t["state"] == "ready"
                                    and t["message"] == missing for t in ts)

    # The agents prepare the tasks (containers created, not started), and the
    # waiting message survives the agents' own status reports.
    wait_for(prepared_and_waiting, 30, what="app prepared and waiting for db")
    ctrs = c.containers(running_only=False, service="app")
    assert len(ctrs) == 2 and {x.status for x in ctrs} == {"created"}
    assert "waiting for dependency db (healthy)" in c.cli("service", "ps", "app").stdout

    create(c, "--name", "db", "--replicas", "2", WEB)
    seen = set()

    def app_running():
        seen.update(t["message"] for t in tasks(c, "app"))
        return running(c, "app", 2)

    wait_for(app_running, 60, what="app running once db is healthy")
    assert any(re.fullmatch(r"waiting for dependency db \(healthy\): [01]/2 tasks running", m)
               for m in seen), seen

    evs = task_events(c, start)
    db_running = reached(evs, "db", ("running",))
    app_ready = reached(evs, "app", ("ready",))
    app_started = reached(evs, "app", ("starting", "running"))
    db_ids = {t["id"] for t in tasks(c, "db") if t["desired_state"] == "running"}
    assert db_ids <= set(db_running) and len(app_started) == 2
    assert min(app_started.values()) > max(db_running[i] for i in db_ids)
    assert max(app_ready.values()) < min(db_running.values())     # prepared meanwhile
    assert {x.status for x in c.containers(running_only=False, service="app")} == {"running"}


def test_cycles_and_self_dependencies_are_refused(c):
    create(c, "--name", "a", "--replicas", "0", "--depends-on", "b", IMAGE, "sleep", "1")
    create(c, "--name", "b", "--replicas", "0", IMAGE, "sleep", "1")
    res = c.cli("service", "update", "--detach", "b", "--depends-on-add", "a:healthy", check=False)
    assert res.returncode == 1 and "dependency cycle b -> a -> b" in res.stderr, res.stderr

    b = c.admin().get("/v1/services/b")
    spec = dict(b["spec"], depends_on=[{"service": "a", "condition": "started"}])
    with pytest.raises(ApiError) as err:
        c.admin().patch("/v1/services/b", json={"spec": spec})
    assert err.value.status == 400 and err.value.field == "spec.depends_on"
    assert "b -> a -> b" in str(err.value)

    res = c.cli("service", "create", "--detach", "--name", "me", "--depends-on", "me",
                IMAGE, "sleep", "1", check=False)
    assert res.returncode == 1 and "a service cannot depend on itself" in res.stderr
    res = c.cli("service", "update", "--detach", "b", "--depends-on-add", "b", check=False)
    assert res.returncode == 1 and "a service cannot depend on itself" in res.stderr
    # a three-service cycle, named from the service being changed
    create(c, "--name", "c3", "--replicas", "0", "--depends-on", "a", IMAGE, "sleep", "1")
    res = c.cli("service", "update", "--detach", "b", "--depends-on-add", "c3", check=False)
    assert "dependency cycle b -> c3 -> a -> b" in res.stderr
    assert c.admin().get("/v1/services/b")["spec"]["depends_on"] == []
    # removing the dependency first makes the other direction possible
    c.cli("service", "update", "--detach", "a", "--depends-on-rm", "b")
    c.cli("service", "update", "--detach", "b", "--depends-on-add", "a:healthy")
    assert c.admin().get("/v1/services/b")["spec"]["depends_on"] == [
        {"service": "a", "condition": "healthy"}]
    c.cli("service", "rm", "--detach", "a", "b", "c3")


def test_completed_dependency(c, tmp_path):
    start = index_now(c)
    # migrate completes once the test has seen app2 wait for it (however slow
    # this machine is at creating app2).
    create(c, "--name", "migrate", "--restart-condition", "on-failure",
           "--mount", f"type=bind,source={tmp_path},target=/gate", IMAGE,
           "sh", "-c", "until [ -e /gate/go ]; do sleep 0.1; done; exit 0")
    create(c, "--name", "app2", "--depends-on", "migrate:completed", "--stop-grace-period", "1s",
           IMAGE, "sleep", "3600")
    waiting = "waiting for dependency migrate (completed): 0/1 tasks complete"
    wait_for(lambda: [t["message"] for t in tasks(c, "app2")] == [waiting], 60,
             what="app2 waiting for migrate")
    assert not running(c, "app2", 1)
    (tmp_path / "go").touch()
    wait_for(lambda: running(c, "app2", 1), 60, what="app2 running once migrate completed")
    [done] = tasks(c, "migrate")              # completed with exit 0: never replaced
    assert done["state"] == "complete" and done["exit_code"] == 0
    evs = task_events(c, start)
    complete = reached(evs, "migrate", ("complete",))
    started = reached(evs, "app2", ("starting", "running"))
    assert started and min(started.values()) > complete[done["id"]]


def test_stack_deploy_honours_depends_on(c, tmp_path):
    compose = tmp_path / "compose.yml"
    compose.write_text(f"""\
services:
  web:
    image: {IMAGE}
    command: ["sleep", "3600"]
    init: true
    stop_grace_period: 1s
    depends_on:
      db:
        condition: service_healthy
  db:
    image: {WEB}
""")
    start = index_now(c)
    res = c.cli("stack", "deploy", "--detach", "-c", str(compose), "dep")
    assert res.stdout.splitlines() == ["Creating network dep_default", "Creating service dep_db",
                                       "Creating service dep_web"]
    assert c.admin().get("/v1/services/dep_web")["spec"]["depends_on"] == [
        {"service": "dep_db", "condition": "healthy"}]
    wait_for(lambda: running(c, "dep_web", 1), 60, what="dep_web running")
    evs = task_events(c, start)
    db_running = reached(evs, "dep_db", ("running",))
    web_started = reached(evs, "dep_web", ("starting", "running"))
    assert db_running and web_started
    assert min(web_started.values()) > min(db_running.values())
    c.cli("stack", "rm", "dep")
