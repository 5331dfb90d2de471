"""A local cluster on this machine: 3 managers and 2 workers on loopback,
each node a ``flotilla node run`` process supervised by supervisord.

    python -m flotilla.tools.localcluster up [--dir DIR]
    python -m flotilla.tools.localcluster down [--dir DIR]
    python -m flotilla.tools.localcluster status [--dir DIR]

``up`` is idempotent: nodes that already exist are left alone.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

from ..common.httpclient import ApiError, Client

NODES = [("manager-1", 4242, "init"), ("manager-2", 4243, "manager"),
         ("manager-3", 4244, "manager"), ("worker-1", 4245, "worker"),
         ("worker-2", 4246, "worker")]


def _bin(name):
    return os.path.join(os.path.dirname(sys.executable), name)


def _conf(base, programs):
    lines = [
        "[supervisord]",
        f"logfile={base}/supervisord.log",
        f"pidfile={base}/supervisord.pid",
        "nodaemon=false",
        "",
        "[unix_http_server]",
        f"file={base}/supervisor.sock",
        "chmod=0700",
        "",
        "[rpcinterface:supervisor]",
        "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface",
        "",
        "[supervisorctl]",
        f"serverurl=unix://{base}/supervisor.sock",
        "",
    ]
    for name, command in programs:
        lines += [
            f"[program:{name}]",
            f"command={command}",
            "autorestart=true",
            "startsecs=2",
            "stopsignal=TERM",
            "stopwaitsecs=20",
            "killasgroup=true",
            f"stdout_logfile={base}/{name}.log",
            "redirect_stderr=true",
            "",
        ]
    path = os.path.join(base, "supervisord.conf")
    with open(path, "w") as f:
        f.write("\n".join(lines))
    return path


def _ctl(base, *args, check=True):
    return subprocess.run([_bin("supervisorctl"), "-c", os.path.join(base, "supervisord.conf"),
                           *args], capture_output=True, text=True, check=check)


def _wait(pred, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if pred():
                return
        except (ApiError, OSError):
            pass
        time.sleep(0.3)
    raise SystemExit(f"timed out waiting for {what}")


def up(base):
    os.makedirs(base, exist_ok=True)
    flotilla = _bin("flotilla")
    admin = os.path.join(base, "manager-1", "admin")
    programs = []
    first_cmd = (f"{flotilla} node run --data-dir {base}/manager-1 --listen 127.0.0.1:4242 "
                 f"--hostname manager-1 --init")
    programs.append(("manager-1", first_cmd))
    running = os.path.exists(os.path.join(base, "supervisor.sock")) and \
        _ctl(base, "pid", check=False).returncode == 0
    if not running:
        _conf(base, programs if not os.path.exists(admin) else _all_programs(base, flotilla, None))
        subprocess.run([_bin("supervisord"), "-c", os.path.join(base, "supervisord.conf")], check=True)
    _wait(lambda: os.path.exists(os.path.join(admin, "key.pem")), 60, "the first manager")
    client = Client(["127.0.0.1:4242"], tls_dir=admin, retry_for=30)
    _wait(lambda: client.get("/v1/health")["leader_ready"], 60, "a leader")
    tokens = client.get("/v1/cluster/join-tokens")
    _conf(base, _all_programs(base, flotilla, tokens))
    _ctl(base, "reread")
    _ctl(base, "update")

    def settled():
        nodes = client.get("/v1/nodes")
        return (len(nodes) == len(NODES) and all(n["state"] == "ready" for n in nodes)
                and all(n["role"] == n["desired_role"] for n in nodes))

    _wait(settled, 120, "all nodes to be ready")
    _demo(client)
    return client, admin


DEMO = [
    {"name": "demo-web", "replicas": 1,
     "task": {"container": {"image": "flotilla-test/busybox:1",
                            "args": ["httpd", "-f", "-p", "80", "-h", "/www"],
                            "healthcheck": {"test": ["CMD-SHELL", "wget -q -O /dev/null http://127.0.0.1/"],
                                            "interval": "2s", "timeout": "2s", "retries": 3}}},
     "endpoint": {"ports": [{"published": 8080, "target": 80}]}},
    {"name": "demo-workers", "replicas": 4,
     "task": {"container": {"image": "flotilla-test/busybox:1", "args": ["sleep", "86400"]},
              "placement": {"constraints": ["node.role==worker"]}}},
]


def _demo(client):
    """Deploy the demo services (once) and wait until they run."""
    existing = {s["name"] for s in client.get("/v1/services")}
    for spec in DEMO:
        if spec["name"] not in existing:
            client.post("/v1/services", spec)

    def running():
        for s in client.get("/v1/services"):
            if s["name"].startswith("demo-") and s["replicas"]["running"] < s["replicas"]["desired"]:
                return False
        return True

    _wait(running, 120, "the demo services to run")


def _all_programs(base, flotilla, tokens):
    out = []
    for name, port, kind in NODES:
        cmd = (f"{flotilla} node run --data-dir {base}/{name} --listen 127.0.0.1:{port} "
               f"--hostname {name}")
        if kind == "init":
            cmd += " --init"
        elif tokens is not None:
            cmd += f" --join 127.0.0.1:4242 --token {tokens[kind]}"
        elif not os.path.exists(os.path.join(base, name, "node.json")):
            continue
        out.append((name, cmd))
    return out


def _node_ids(base):
    ids = set()
    for name, _port, _kind in NODES:
        try:
            with open(os.path.join(base, name, "node.json")) as f:
                ids.add(json.load(f)["node_id"])
        except (OSError, ValueError, KeyError):
            pass
    return ids


def _remove_containers(node_ids):
    """Containers outlive their agents by design; remove this cluster's."""
    try:
        import docker
        client = docker.from_env()
        for c in client.api.containers(all=True, filters={"label": "flotilla.node.id"}):
            if c["Labels"].get("flotilla.node.id") in node_ids:
                client.api.remove_container(c["Id"], force=True)
    except Exception as exc:  # the engine may be gone too
        print(f"could not remove containers: {exc}", file=sys.stderr)


def down(base):
    node_ids = _node_ids(base)
    admin = os.path.join(base, "manager-1", "admin")
    if os.path.exists(os.path.join(admin, "key.pem")):
        try:  # graceful first: remove the services and let the agents stop their tasks
            client = Client(["127.0.0.1:4242", "127.0.0.1:4243", "127.0.0.1:4244"], tls_dir=admin,
                            retry_for=2, timeout=5)
            for svc in client.get("/v1/services"):
                client.delete(f"/v1/services/{svc['id']}")
            _wait(lambda: not client.get("/v1/tasks"), 30, "the tasks to stop")
        except (ApiError, OSError, SystemExit):
            pass
    if os.path.exists(os.path.join(base, "supervisor.sock")):
        _ctl(base, "shutdown", check=False)
        deadline = time.monotonic() + 30
        while os.path.exists(os.path.join(base, "supervisord.pid")) and time.monotonic() < deadline:
            time.sleep(0.2)
    _remove_containers(node_ids)
    shutil.rmtree(base, ignore_errors=True)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="localcluster")
    parser.add_argument("action", choices=["up", "down", "status"])
    parser.add_argument("--dir", default=os.path.abspath(".cache/cluster"))
    args = parser.parse_args(argv)
    base = os.path.abspath(args.dir)
    if args.action == "down":
        down(base)
        print("local cluster removed")
        return 0
    if args.action == "status":
        print(_ctl(base, "status", check=False).stdout)
        return 0
    up(base)
    print(f"local cluster is up ({len(NODES)} nodes, data and logs in {base})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
