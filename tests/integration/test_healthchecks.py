"""HTTP and TCP healthchecks on a real cluster: the agent probes the
container's address itself, a task runs only once healthy, and an unhealthy
one fails with the reason and is replaced.

One manager and one worker share this machine's dockerd; every service uses
short intervals so that the module stays well under a minute and a half.
"""

import docker
import pytest

from tests.helpers.cluster import wait_for

BUSYBOX = "flotilla-test/busybox:1"
WEB = "flotilla-test/web:1"           # httpd on :80 serving /www, /health, image HEALTHCHECK
# --init: the container stops at once (busybox as PID 1 ignores SIGTERM)
FAST = ["--init", "--health-interval", "300ms", "--health-timeout", "1s", "--health-retries", "2"]


@pytest.fixture(scope="module")
def c(make_module_cluster):
    return make_module_cluster().build(managers=1, workers=1)


@pytest.fixture(scope="module")
def engine():
    client = docker.from_env()
    yield client
    client.close()


def create(c, name, *args):
    c.cli("service", "create", "--detach", "--name", name, *args)


def tasks(c, service):
    return c.admin().get(f"/v1/services/{service}/tasks")


def task_in(c, service, *states):
    """The service's first task in one of ``states``, if any."""
    return next((t for t in tasks(c, service) if t["state"] in states), None)


def container(c, service, task):
    [ctr] = [x for x in c.containers(running_only=False, service=service)
             if x.labels["flotilla.task.id"] == task["id"]]
    return ctr


def states_seen(c, service) -> list[str]:
    """Every observed state the service's tasks went through, from the events."""
    query = {"since": 0, "type": "task", "action": "state", "service": service}
    events = c.admin().get("/v1/events", params=query)["events"]
    return [e["attributes"]["state"] for e in events]


def test_http_check_gates_running_and_replaces_the_image_check(c, engine):
    create(c, "web", *FAST, "--health-http", "80/health", WEB)
    t = wait_for(lambda: task_in(c, "web", "running"), 30, what="web running")
    assert t["error"] is None
    ctr = container(c, "web", t)
    # the spec's check replaces the image's HEALTHCHECK, which the engine no longer runs
    assert ctr.attrs["Config"]["Healthcheck"]["Test"] == ["NONE"]
    assert "Health" not in ctr.attrs["State"]
    spec = c.admin().get("/v1/services/web")["spec"]["task"]["container"]["healthcheck"]
    assert spec["test"] is None and spec["tcp"] is None
    assert spec["http"] == {"port": 80, "path": "/health", "status": ["200-399"]}
    assert (spec["interval"], spec["timeout"], spec["retries"]) == (0.3, 1.0, 2)


def test_http_check_on_a_missing_path_never_runs(c):
    create(c, "web404", *FAST, "--health-http", "80/missing", "--health-start-period", "2s",
           "--restart-condition", "none", WEB)
    wait_for(lambda: task_in(c, "web404", "starting"), 30, what="web404 starting")
    t = wait_for(lambda: task_in(c, "web404", "failed"), 30, what="web404 failed")
    assert t["error"] == "task: container unhealthy (HTTP 404 from :80/missing)"
    assert len(tasks(c, "web404")) == 1                   # restart condition none: not replaced
    seen = states_seen(c, "web404")
    assert "starting" in seen and "failed" in seen and "running" not in seen


def test_tcp_checks(c):
    create(c, "closed", *FAST, "--health-tcp", "5432", "--restart-condition", "none",
           BUSYBOX, "sleep", "3600")
    create(c, "open", *FAST, "--health-tcp", "5432", BUSYBOX, "nc", "-ll", "-p", "5432", "-e", "true")
    wait_for(lambda: task_in(c, "open", "running"), 30, what="open running")
    t = wait_for(lambda: task_in(c, "closed", "failed"), 30, what="closed failed")
    assert t["error"] == "task: container unhealthy (TCP :5432 refused)"
    seen = states_seen(c, "closed")
    assert "failed" in seen and "running" not in seen
    wait_for(lambda: container(c, "closed", t).status == "exited", 15, what="container stopped")


def test_task_that_turns_unhealthy_fails_and_is_replaced(c, engine):
    create(c, "flaky", *FAST, "--health-http", "80/health", WEB)
    first = wait_for(lambda: task_in(c, "flaky", "running"), 30, what="flaky running")
    ctr = container(c, "flaky", first)
    assert engine.containers.get(ctr.id).exec_run(["rm", "/www/health"]).exit_code == 0

    def failed():
        [t] = [t for t in tasks(c, "flaky") if t["id"] == first["id"]]
        return t if t["state"] == "failed" else None

    t = wait_for(failed, 20, what="the unhealthy task to fail")
    assert t["error"] == "task: container unhealthy (HTTP 404 from :80/health)"
    # the default restart policy replaces it in the same slot, healthy again
    new = wait_for(lambda: next((x for x in tasks(c, "flaky") if x["id"] != first["id"]
                                 and x["state"] == "running"), None), 30, what="a replacement")
    assert new["slot"] == first["slot"]


def test_update_switches_the_check(c):
    create(c, "switch", *FAST, "--health-tcp", "80", WEB)
    first = wait_for(lambda: task_in(c, "switch", "running"), 30, what="switch running")
    c.cli("service", "update", "--detach", "--health-http", "80/health", "--health-retries", "3",
          "switch")
    hc = c.admin().get("/v1/services/switch")["spec"]["task"]["container"]["healthcheck"]
    assert hc["tcp"] is None and hc["http"]["path"] == "/health"
    assert (hc["interval"], hc["retries"]) == (0.3, 3)      # timings kept, retries changed
    wait_for(lambda: next((x for x in tasks(c, "switch") if x["id"] != first["id"]
                           and x["state"] == "running"), None), 30, what="the updated task")
