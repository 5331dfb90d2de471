"""The operator's CLI against a real cluster and dockerd: the create → ps →
scale → update → rm path with convergence progress, contexts, formats and
one-line errors."""

import json
import os
import time

from tests.helpers.cluster import wait_for

IMAGE = "flotilla-test/busybox:1"


CLUSTER = {"managers": 1, "workers": 1}      # the `cluster` the tests share (conftest.py)


def running(c, service):
    return [t for t in c.admin().get(f"/v1/services/{service}/tasks")
            if t["desired_state"] == "running" and t["state"] == "running"]


def test_service_lifecycle_waits_for_convergence(cluster):
    c = cluster
    # create waits until every task runs, printing per-task progress.
    res = c.cli("service", "create", "--name", "web", "--replicas", "3", "--init", IMAGE,
                "sleep", "3600")
    lines = res.stdout.splitlines()
    service_id = lines[0]
    assert lines[-1] == "web: converged (3/3 running)"
    assert any(line.startswith("web.1: running on ") for line in lines)
    assert len(running(c, "web")) == 3          # converged means running, not merely scheduled

    # ps: an aligned table, JSON, and ids only.
    table = c.cli("service", "ps", "web").stdout.splitlines()
    assert table[0].split()[:3] == ["ID", "NAME", "IMAGE"]
    assert table[0].index("NODE") == table[1].index(table[1].split()[3])   # columns line up
    tasks = json.loads(c.cli("service", "ps", "web", "--format", "json").stdout)
    assert sorted(t["slot"] for t in tasks) == [1, 2, 3]
    assert c.cli("service", "ps", "-q", "web").stdout.split() == [t["id"] for t in tasks]
    assert c.cli("service", "ls", "-q").stdout.split() == [service_id]

    # scale waits too.
    res = c.cli("service", "scale", "web=5")
    assert "web: converged (5/5 running)" in res.stdout
    assert len(running(c, "web")) == 5

    # update replaces every task with the new spec and waits for it.
    before = {t["id"] for t in running(c, "web")}
    res = c.cli("service", "update", "--env-add", "COLOUR=blue", "--label-add", "tier=front", "web")
    assert "web: converged (5/5 running)" in res.stdout
    after = running(c, "web")
    assert len(after) == 5 and not before & {t["id"] for t in after}
    spec = c.admin().get("/v1/services/web")["spec"]
    assert spec["task"]["container"]["env"] == ["COLOUR=blue"] and spec["labels"] == {"tier": "front"}
    envs = {tuple(x.attrs["Config"]["Env"]) for x in c.containers(service="web")}
    assert all("COLOUR=blue" in e for e in envs)
    # An update that changes nothing says so and replaces nothing.
    res = c.cli("service", "update", "--env-add", "COLOUR=blue", "web")
    assert "nothing to change" in res.stdout
    assert {t["id"] for t in running(c, "web")} == {t["id"] for t in after}
    # --force replaces the tasks anyway.
    c.cli("service", "update", "--force", "web")
    assert not {t["id"] for t in after} & {t["id"] for t in running(c, "web")}

    # rm returns once the containers are gone.
    assert c.cli("service", "rm", "web").stdout.splitlines()[0] == "web"
    assert not c.containers(running_only=False, service="web")
    assert c.cli("service", "ls", "--format", "json").stdout.strip() == "[]"


def test_convergence_failure_exits_non_zero_with_the_reason(cluster, tmp_path):
    c = cluster

    def fails_at_once(*args):
        start = time.monotonic()
        res = c.cli(*args, check=False)
        took = time.monotonic() - start
        err = [line for line in res.stderr.splitlines() if line.strip()]
        assert res.returncode == 1, (args, res.stdout, res.stderr)
        assert len(err) == 1 and "Traceback" not in res.stderr, res.stderr
        # the scheduler's reason, long before the default --timeout of 120 s
        assert took < 20, (args, took)
        return err[0]

    # A task that fits nowhere: the scheduler's reason at once; the service
    # is kept, pending with that reason.
    err = fails_at_once("service", "create", "--name", "huge", "--reserve-memory", "100T",
                        IMAGE, "true")
    assert err == ("Error: service huge: task huge.1 cannot be placed: no suitable node "
                   "(2 nodes lack 100 TB memory); the service is kept and its tasks start "
                   "when a node can take them"), err
    tasks = c.admin().get("/v1/services/huge/tasks")
    assert [(t["state"], t["message"]) for t in tasks] == [
        ("pending", "no suitable node (2 nodes lack 100 TB memory)")]

    # It is placed once a node can take it, with no further command.
    err = fails_at_once("service", "create", "--name", "gpu", "--constraint", "node.labels.gpu==yes",
                        "--replicas-max-per-node", "1", "--init", IMAGE, "sleep", "3600")
    assert "task gpu.1 cannot be placed: no suitable node (2 nodes fail constraint " \
           "node.labels.gpu==yes)" in err
    c.cli("node", "update", "--label-add", "gpu=yes", "w1")
    wait_for(lambda: len(running(c, "gpu")) == 1, 30, what="gpu placed")

    # scale, update and stack deploy stop waiting the same way.
    err = fails_at_once("service", "scale", "gpu=2")
    assert "task gpu.2 cannot be placed: no suitable node (" in err
    assert "max replicas per node (1) reached on 1 node" in err
    err = fails_at_once("service", "update", "--replicas", "1", "--reserve-memory", "100T", "gpu")
    assert "task gpu.1 cannot be placed: no suitable node (2 nodes lack 100 TB memory)" in err
    compose = tmp_path / "compose.yml"
    compose.write_text("services:\n  big:\n    image: flotilla-test/busybox:1\n"
                       "    command: sleep 3600\n    deploy:\n      resources:\n"
                       "        reservations:\n          memory: 100T\n")
    err = fails_at_once("stack", "deploy", "-c", str(compose), "shop")
    assert "service shop_big: task shop_big.1 cannot be placed: no suitable node" in err

    # A crash loop is reported as such, long before the timeout.
    res = c.cli("service", "create", "--name", "crash", "--restart-delay", "0s", "--timeout", "100",
                IMAGE, "sh", "-c", "exit 3", check=False)
    assert res.returncode == 1
    assert "service crash is failing" in res.stderr and "exit" in res.stderr
    # --timeout still bounds the wait.
    res = c.cli("service", "create", "--name", "slow", "--health-cmd", "false",
                "--health-interval", "1s", "--health-retries", "100", "--timeout", "3",
                IMAGE, "sleep", "3600", check=False)
    assert res.returncode == 1 and "did not converge within 3s" in res.stderr
    # --detach returns at once.
    res = c.cli("service", "create", "--detach", "--name", "later", "--replicas", "0", IMAGE, "true")
    assert res.stdout.strip() == c.admin().get("/v1/services/later")["id"]


def test_contexts_and_one_line_errors(cluster, tmp_path):
    c = cluster
    env = dict(c.env, FLOTILLA_CONFIG_DIR=str(tmp_path / "cfg"))
    env.pop("FLOTILLA_HOST", None)
    c.env = env
    hosts = ",".join(n.addr for n in c.nodes.values())

    def bare(*args, check=True):
        import subprocess
        import sys
        res = subprocess.run([sys.executable, "-m", "flotilla.cli.main", *args], capture_output=True,
                             text=True, env=env, timeout=60)
        if check:
            assert res.returncode == 0, res.stderr
        return res

    bare("context", "create", "lab", "--host", hosts, "--tls-dir", c.admin_dir, "--description", "test")
    key = tmp_path / "cfg" / "contexts" / "lab" / "key.pem"
    assert oct(os.stat(key).st_mode & 0o777) == "0o600"
    res = bare("node", "ls", check=False)
    assert res.returncode != 0 and "context create" in res.stderr     # no current context yet
    bare("context", "use", "lab")
    assert "lab *" in bare("context", "ls").stdout
    nodes = json.loads(bare("node", "ls", "--format", "json").stdout)
    assert len(nodes) == 2
    assert json.loads(bare("--context", "lab", "cluster", "inspect", "--format", "json").stdout)["id"]

    # Errors: one line, no traceback, non-zero exit.
    for args, needle in [
        (("service", "inspect", "nope"), "service nope not found"),
        (("service", "create", "--name", "bad name", IMAGE), "name"),
        (("service", "create", "--name", "x", "--constraint", "node.labels.a=b", IMAGE), "constraint"),
        (("service", "scale", "web"), "SERVICE=REPLICAS"),
        (("--context", "missing", "node", "ls"), "context missing does not exist"),
    ]:
        res = bare(*args, check=False)
        assert res.returncode != 0, args
        assert "Traceback" not in res.stderr and needle in res.stderr, (args, res.stderr)
        assert len([x for x in res.stderr.splitlines() if x.strip()]) <= 3, res.stderr

    bare("context", "rm", "lab")
    assert "lab" not in bare("context", "ls", "-q").stdout


def test_shell_completion_lists_commands(cluster):
    import subprocess
    import sys
    script = cluster.cli("completion", "bash").stdout
    assert "_FLOTILLA_COMPLETE=bash_complete" in script
    env = dict(os.environ, _FLOTILLA_COMPLETE="bash_complete", COMP_WORDS="flotilla service s",
               COMP_CWORD="2")
    out = subprocess.run([sys.executable, "-m", "flotilla.cli.main"], env=env, capture_output=True,
                         text=True, timeout=30).stdout
    assert {"scale"} <= {line.split(",", 1)[1] for line in out.splitlines() if "," in line}
