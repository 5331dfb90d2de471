"""`flotilla stack` against a real cluster: deploy a Compose file, list it,
redeploy without and with changes, refuse unsupported keys, remove it; a
stack's services reaching each other by name on the stack's network.

All nodes share this machine's dockerd, so a service publishing a host port
can run only one task here (a second container could not bind the port):
the published web service has one replica, the cache has two.
"""

import json
import socket
import urllib.request

import docker

from tests.helpers.cluster import wait_for

IMAGE = "flotilla-test/busybox:1"
STACK = "st"

COMPOSE = """\
version: "3.9"

x-quick-stop: &quick-stop
  init: true
  stop_grace_period: 2s

services:
  web:
    image: {image}
    command: ["sh", "-c", "mkdir -p /www && echo ok > /www/index.html && exec httpd -f -p 80 -h /www"]
    ports:
      - "{port}:80"
    healthcheck:
      test: wget -q -O- http://127.0.0.1/ || exit 1
      interval: 1s
      timeout: 2s
      retries: 3
    labels:
      com.example.tier: front
    deploy:
      replicas: 1
      resources:
        reservations: {{cpus: "0.01", memory: 8M}}
      placement:
        constraints: [node.role==worker]
      labels:
        com.example.owner: web-team
    <<: *quick-stop

  cache:
    image: {image}
    command: sh -c 'while true; do echo PONG | nc -l -p 6379; done'
    deploy:
      replicas: 2
      resources:
        limits: {{memory: 32M}}
      placement:
        max_replicas_per_node: 1
      restart_policy:
        condition: any
        delay: 1s
    <<: *quick-stop

  worker:
    image: {image}
    command: ["sh", "-c", "echo $$GREETING from $$MODE; exec sleep 3600"]
    env_file: worker.env
    environment:
      - MODE={mode}
    depends_on:
      cache:
        condition: service_started
    <<: *quick-stop
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def services(c) -> dict:
    return {s["name"]: s for s in c.admin().get("/v1/services")
            if s["spec"]["labels"].get("flotilla.stack.namespace") == STACK}


def all_running(c, want: dict) -> bool:
    """Every service runs its desired tasks of the current spec, one container each."""
    for name, n in want.items():
        svc = c.admin().get(f"/v1/services/{name}")
        tasks = [t for t in c.admin().get(f"/v1/services/{name}/tasks")
                 if t["desired_state"] == "running" and t["state"] == "running"
                 and t["spec_version"] == svc["spec_version"]]
        if len(tasks) != n or len(c.containers(service=name)) != n:
            return False
    return True


def stack_containers(all_states=True) -> list:
    return docker.from_env().containers.list(
        all=all_states, ignore_removed=True,
        filters={"label": f"flotilla.stack.namespace={STACK}"})


def fetch(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as r:
        return r.read().decode()


CLUSTER = {"managers": 1, "workers": 2}      # the `cluster` of conftest.py (it removes
                                             # the containers a failed test leaves behind)


def test_stack_deploy_update_and_remove(cluster, tmp_path):
    c = cluster
    port = free_port()
    compose = tmp_path / "compose.yml"
    (tmp_path / "worker.env").write_text("# worker settings\nGREETING=hello\n")

    def write(mode="one", extra=""):
        text = COMPOSE.format(image=IMAGE, port=port, mode=mode)
        if extra:
            text = text.replace("    labels:\n      com.example.tier", extra + "    labels:\n"
                                "      com.example.tier")
        compose.write_text(text)
        return text

    # an unsupported key: refused with its line, nothing created
    text = write(extra="    privileged: true\n")
    line = text.splitlines().index("    privileged: true") + 1
    res = c.cli("stack", "deploy", "--detach", "-c", str(compose), STACK, check=False)
    assert res.returncode == 1
    assert f"error: {compose}:{line}: services.web.privileged: not supported by Flotilla" \
        in res.stderr
    assert "Traceback" not in res.stderr
    assert c.admin().get("/v1/services") == []

    # deploy, detached, then wait for every task to run
    write()
    res = c.cli("stack", "deploy", "--detach", "-c", str(compose), STACK)
    assert res.stdout.splitlines() == [f"Creating network {STACK}_default"] + [
        f"Creating service {STACK}_{s}" for s in ("web", "cache", "worker")]
    want = {f"{STACK}_web": 1, f"{STACK}_cache": 2, f"{STACK}_worker": 1}
    wait_for(lambda: all_running(c, want), 90, what="the stack's tasks running")
    wait_for(lambda: fetch(port) == "ok\n", 20, what="the published web port")

    svcs = services(c)
    assert set(svcs) == set(want)
    web = svcs[f"{STACK}_web"]["spec"]
    assert web["labels"] == {"flotilla.stack.namespace": STACK, "com.example.owner": "web-team"}
    assert web["task"]["placement"]["constraints"] == ["node.role==worker"]
    assert web["endpoint"]["ports"] == [{"published": port, "target": 80, "protocol": "tcp",
                                         "mode": "host"}]
    assert svcs[f"{STACK}_worker"]["spec"]["depends_on"] == [
        {"service": f"{STACK}_cache", "condition": "started"}]
    [web_task] = [t for t in c.admin().get(f"/v1/services/{STACK}_web/tasks")
                  if t["desired_state"] == "running"]
    assert web_task["node"] in ("w1", "w2")
    [web_ctr] = c.containers(service=f"{STACK}_web")
    assert web_ctr.labels["flotilla.stack.namespace"] == STACK
    assert web_ctr.labels["com.example.tier"] == "front"
    for ctr in c.containers(service=f"{STACK}_cache"):
        assert ctr.attrs["HostConfig"]["Memory"] == 32 * 1024 * 1024
    [worker_ctr] = c.containers(service=f"{STACK}_worker")
    env = worker_ctr.attrs["Config"]["Env"]
    assert "GREETING=hello" in env and "MODE=one" in env
    assert len(stack_containers(all_states=False)) == 4

    # listing
    ls = c.cli("stack", "ls").stdout.splitlines()
    assert ls[0].split() == ["NAME", "SERVICES"] and [STACK, "3"] in [r.split() for r in ls]
    assert json.loads(c.cli("stack", "ls", "--format", "json").stdout) == [
        {"name": STACK, "services": 3}]
    ps = c.cli("stack", "ps", STACK).stdout
    for task in (f"{STACK}_web.1", f"{STACK}_cache.1", f"{STACK}_cache.2", f"{STACK}_worker.1"):
        assert task in ps
    assert len(json.loads(c.cli("stack", "ps", STACK, "--format", "json").stdout)) >= 4
    listed = c.cli("stack", "services", STACK).stdout
    assert f"{STACK}_cache" in listed and "2/2" in listed and f"*:{port}->80/tcp" in listed

    # the same file again, waiting for convergence: nothing changes
    versions = {n: s["spec_version"] for n, s in services(c).items()}
    res = c.cli("stack", "deploy", "-c", str(compose), STACK)
    for name in want:
        assert f"Service {name} is up to date" in res.stdout
        assert f"{name}: converged" in res.stdout
    assert {n: s["spec_version"] for n, s in services(c).items()} == versions

    # one service's environment changed: only that service is updated
    write(mode="two")
    res = c.cli("stack", "deploy", "-d", "-c", str(compose), STACK)
    assert f"Updating service {STACK}_worker" in res.stdout
    assert f"Service {STACK}_web is up to date" in res.stdout
    assert f"Service {STACK}_cache is up to date" in res.stdout
    after = {n: s["spec_version"] for n, s in services(c).items()}
    assert after == dict(versions, **{f"{STACK}_worker": versions[f"{STACK}_worker"] + 1})

    def worker_updated():
        if not all_running(c, want):
            return False
        [ctr] = c.containers(service=f"{STACK}_worker")
        return "MODE=two" in ctr.attrs["Config"]["Env"]

    wait_for(worker_updated, 60, what="the worker running the new environment")

    # --prune removes the services no longer in the file
    compose.write_text(write(mode="two").split("  worker:")[0])
    res = c.cli("stack", "deploy", "-d", "--prune", "-c", str(compose), STACK)
    assert res.stdout.splitlines()[0] == f"Removing service {STACK}_worker"
    del want[f"{STACK}_worker"]
    assert set(services(c)) == set(want)
    wait_for(lambda: not c.containers(running_only=False, service=f"{STACK}_worker"), 60,
             what="the pruned worker's container removed")

    # removal
    res = c.cli("stack", "rm", STACK)
    assert sorted(res.stdout.splitlines()) == sorted(
        [f"Removing service {n}" for n in want] + [f"Removing network {STACK}_default"])
    wait_for(lambda: not stack_containers(), 60, what="the stack's containers removed")
    assert services(c) == {} and c.admin().get("/v1/networks") == []
    assert STACK not in c.cli("stack", "ls").stdout.split()
    res = c.cli("stack", "rm", STACK, check=False)
    assert res.returncode == 1 and res.stderr.strip() == f"error: stack {STACK} not found"


NETWORKED = """\
services:
  web:
    image: flotilla-test/web:1
    networks: [default, shared]
    deploy:
      replicas: 2
      placement:
        max_replicas_per_node: 1
  client:
    image: flotilla-test/busybox:1
    init: true
    stop_grace_period: 1s
    command:
      - sh
      - -c
      - while true; do echo "web says $$(wget -q -O- http://web/)"; sleep 1; done
networks:
  shared:
    external: true
"""


def test_a_stacks_services_reach_each_other_by_name(cluster, tmp_path):
    """The services of a stack that names no network are on STACK_default
    and find each other by their names in the file (and in the cluster);
    stack rm removes that network once its tasks are gone, and leaves an
    external network the stack joined."""
    c = cluster
    stack = "chat"
    shared = c.cli("network", "create", "shared").stdout.strip()
    compose = tmp_path / "compose.yml"
    compose.write_text(NETWORKED)
    res = c.cli("stack", "deploy", "-c", str(compose), stack)
    assert res.stdout.splitlines()[:3] == [f"Creating network {stack}_default",
                                           f"Creating service {stack}_web",
                                           f"Creating service {stack}_client"]
    nets = {n["name"]: n for n in c.admin().get("/v1/networks")}
    assert set(nets) == {f"{stack}_default", "shared"}
    assert nets[f"{stack}_default"]["labels"] == {"flotilla.stack.namespace": stack}
    web = c.admin().get(f"/v1/services/{stack}_web")
    assert [(v["network_id"], v["addr"]) for v in web["virtual_ips"]] and \
        {v["network_id"] for v in web["virtual_ips"]} == {nets[f"{stack}_default"]["id"], shared}
    assert web["spec"]["task"]["networks"][0]["aliases"] == ["web"]

    # the client fetches http://web/ (the VIP, spread over web's two tasks) and logs it
    [client] = c.containers(service=f"{stack}_client")
    wait_for(lambda: b"web says web v1" in client.logs(), 60, what="the client's log of web")
    # the cluster's name answers too
    res = client.exec_run(["wget", "-q", "-O-", f"http://{stack}_web/"])
    assert (res.exit_code, res.output) == (0, b"web v1\n")

    res = c.cli("stack", "rm", stack)
    assert res.stdout.splitlines() == [f"Removing service {stack}_client",
                                       f"Removing service {stack}_web",
                                       f"Removing network {stack}_default"]
    assert [n["name"] for n in c.admin().get("/v1/networks")] == ["shared"]
    c.cli("network", "rm", "shared")
