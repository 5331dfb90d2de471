"""Real multi-process clusters on loopback for integration tests.

Each node is a real ``flotilla node run`` process in its own session (process
group), so ``kill(-9)`` takes the node and its manager child down together,
like a host failure. Nothing is mocked.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time

from flotilla.common.httpclient import ApiError, Client

PYTHON = sys.executable


def wait_for(predicate, timeout: float = 30.0, interval: float = 0.1, what: str = "condition"):
    """Poll ``predicate`` until it returns a truthy value; return that value."""
    deadline = time.monotonic() + timeout
    last_exc = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # the cluster may be mid-election
            last_exc = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}"
                         + (f" (last error: {last_exc!r})" if last_exc else ""))


def _free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


# The ports of `make cluster` (inventory/local: API 4242-4246 and the ports
# derived from them), which may run beside these tests (pytest-xdist).
LOCAL_CLUSTER_PORTS = frozenset(p + k for p in range(4242, 4247) for k in (0, 10000, 20000, 30000))


def free_api_port() -> int:
    """An API port whose derived Raft (+10000), agent (+20000) and dispatcher
    (+30000) ports are free."""
    for _ in range(500):
        port = random.randint(21000, 29000)
        ports = (port, port + 10000, port + 20000, port + 30000)
        if not LOCAL_CLUSTER_PORTS.intersection(ports) and all(_free(p) for p in ports):
            return port
    raise RuntimeError("no free ports")


class NodeProc:
    def __init__(self, cluster, name: str):
        self.cluster = cluster
        self.name = name
        self.port = free_api_port()
        self.addr = f"127.0.0.1:{self.port}"
        self.raft_addr = f"127.0.0.1:{self.port + 10000}"
        self.data_dir = os.path.join(cluster.data_root, name)
        self.log_path = os.path.join(cluster.base, f"{name}.log")
        self.proc: subprocess.Popen | None = None
        self.node_id: str | None = None

    def start(self, *extra: str):
        cmd = [PYTHON, "-m", "flotilla.cli.main", "node", "run", "--data-dir", self.data_dir,
               "--listen", self.addr, "--hostname", self.name, *extra]
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True, env=self.cluster.env)
        log.close()
        return self

    def restart(self):
        return self.start()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal_group(self, sig=signal.SIGKILL):
        """Send ``sig`` to the node's whole process group and return at once."""
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass

    def kill(self, sig=signal.SIGKILL):
        """Signal the process group and, for fatal signals, wait until it is gone."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass
        if sig in (signal.SIGKILL, signal.SIGTERM):
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
            # the process group may still hold the manager for a moment
            wait_for(lambda: not _group_alive(self.proc.pid), 10, what=f"{self.name} to exit")

    def stop(self):
        self.kill(signal.SIGTERM)

    def bundle(self) -> str:
        return os.path.join(self.data_dir, "certs", "node.pem")

    def ca(self) -> str:
        return os.path.join(self.data_dir, "certs", "ca.pem")

    def node_client(self, addresses=None, **kw) -> Client:
        """A client that authenticates with this node's own certificate."""
        return Client(addresses or [self.addr], self.bundle(), self.ca(), **kw)

    def config(self) -> dict:
        with open(os.path.join(self.data_dir, "node.json")) as f:
            return json.load(f)

    def log(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


class LocalCluster:
    def __init__(self, base: str, heartbeat: str = "1s", cert_expiry: str | None = None,
                 env: dict | None = None, data_root: str | None = None,
                 addr_pool: str | None = "auto"):
        """Nodes' logs go to ``base``, their data directories to ``data_root``
        (default: ``base`` too). ``addr_pool``: the cluster's default
        address pool; ``auto``, a /16 no other live cluster on this machine
        has (:mod:`tests.helpers.pools`); None, Flotilla's default."""
        self.base = base
        self.data_root = data_root or base
        os.makedirs(base, exist_ok=True)
        self.heartbeat = heartbeat
        self.cert_expiry = cert_expiry
        self.addr_pool = addr_pool
        self._held_pool: str | None = None
        self.env = dict(os.environ, **(env or {}))
        self.nodes: dict[str, NodeProc] = {}

    # -- building ------------------------------------------------------------------
    def init(self, name: str = "m1") -> NodeProc:
        node = NodeProc(self, name)
        extra = ["--init", "--heartbeat-period", self.heartbeat]
        if self.cert_expiry:
            extra += ["--cert-expiry", self.cert_expiry]
        if self.addr_pool == "auto":
            from .pools import reserve
            self._held_pool = self._held_pool or reserve(self.base)
            extra += ["--default-addr-pool", self._held_pool]
        elif self.addr_pool:
            extra += ["--default-addr-pool", self.addr_pool]
        node.start(*extra)
        self.nodes[name] = node
        # Generous deadlines: a loaded machine (tests run in parallel) starts slowly.
        wait_for(lambda: os.path.exists(os.path.join(self.admin_dir, "key.pem")), 60,
                 what="admin bundle")
        self.wait_leader_ready(60)
        node.node_id = node.config()["node_id"]
        return node

    def build(self, managers: int = 1, workers: int = 0) -> "LocalCluster":
        """m1 starts the cluster, m2.. join one after the other, w1.. together."""
        self.init("m1")
        for i in range(2, managers + 1):
            self.join(f"m{i}")
        joined = [self.join(f"w{i}", "worker", wait=False) for i in range(1, workers + 1)]
        for node in joined:
            self.wait_node_ready(node)
        return self

    @property
    def first(self) -> NodeProc:
        return next(iter(self.nodes.values()))

    @property
    def admin_dir(self) -> str:
        return os.path.join(self.first.data_dir, "admin")

    def token(self, role: str) -> str:
        return self.admin().get(f"/v1/cluster/join-tokens/{role}")["token"]

    def join(self, name: str, role: str = "manager", via: NodeProc | None = None,
             wait: bool = True) -> NodeProc:
        node = NodeProc(self, name)
        via = via or self.first
        node.start("--join", via.addr, "--token", self.token(role))
        self.nodes[name] = node
        if wait:
            self.wait_node_ready(node, manager=(role == "manager"))
        return node

    def managers(self) -> list[NodeProc]:
        return [n for n in self.nodes.values() if os.path.isdir(os.path.join(n.data_dir, "raft"))]

    # -- clients ---------------------------------------------------------------------
    def admin(self, nodes=None, **kw) -> Client:
        nodes = nodes or [n for n in self.nodes.values() if n.running]
        kw.setdefault("retry_for", 20)
        return Client([n.addr for n in nodes], tls_dir=self.admin_dir, **kw)

    def health(self, node: NodeProc) -> dict:
        return Client([node.addr], tls_dir=self.admin_dir, timeout=3, retry_for=0).get("/v1/health")

    def cli(self, *args, check=True, input=None, nodes=None):
        nodes = nodes or [n for n in self.nodes.values() if n.running]
        cmd = [PYTHON, "-m", "flotilla.cli.main", "--host", ",".join(n.addr for n in nodes),
               "--tls-dir", self.admin_dir, *args]
        res = subprocess.run(cmd, capture_output=True, text=True, input=input, timeout=120,
                             env=self.env)
        if check and res.returncode != 0:
            raise AssertionError(f"flotilla {' '.join(args)} failed ({res.returncode}):\n"
                                 f"{res.stdout}\n{res.stderr}")
        return res

    # -- waiting ------------------------------------------------------------------------
    def leader(self) -> NodeProc | None:
        for node in self.nodes.values():
            if not node.running:
                continue
            try:
                h = self.health(node)
            except ApiError:
                continue
            if h["is_leader"] and h["leader_ready"]:
                return node
        return None

    def wait_leader_ready(self, timeout: float = 30.0) -> NodeProc:
        return wait_for(self.leader, timeout, what="a ready leader")

    def node_view(self, node: NodeProc) -> dict | None:
        node_id = node.node_id or node.config().get("node_id")
        if not node_id:
            return None
        node.node_id = node_id
        try:
            return self.admin(retry_for=2).get(f"/v1/nodes/{node_id}")
        except ApiError:
            return None

    def wait_node_ready(self, node: NodeProc, manager: bool = False, timeout: float = 60.0):
        def ok():
            if not os.path.exists(os.path.join(node.data_dir, "node.json")):
                return False
            v = self.node_view(node)
            if v is None or v["state"] != "ready":
                return False
            if manager:
                return (v["role"] == "manager" and v["manager"]
                        and v["manager"]["reachability"] == "reachable")
            return True

        return wait_for(ok, timeout, what=f"node {node.name} ready"
                        + (" as a reachable manager" if manager else ""))

    def stop_all(self):
        live = [n for n in self.nodes.values() if n.proc is not None]
        for node in live:           # signal every node first, then reap them
            node.signal_group(signal.SIGKILL)
        for node in live:
            try:
                node.kill(signal.SIGKILL)
            except Exception:
                pass
        try:
            self.remove_containers()
            self.remove_networks()
        except Exception:
            pass
        if self._held_pool is not None:
            from .pools import release
            release(self._held_pool, self.base)
            self._held_pool = None

    # -- containers (all nodes share this machine's dockerd) --------------------------------
    def node_ids(self) -> set[str]:
        out = set()
        for n in self.nodes.values():
            try:
                out.add(n.config()["node_id"])
            except (OSError, KeyError, ValueError):
                pass
        return out

    def containers(self, running_only: bool = True, service: str | None = None) -> list:
        """Containers created by this cluster's agents."""
        import docker

        client = docker.from_env()
        ids = self.node_ids()
        out = []
        for ctr in client.containers.list(all=not running_only, ignore_removed=True,
                                          filters={"label": "flotilla.task.id"}):
            labels = ctr.labels
            if labels.get("flotilla.node.id") not in ids:
                continue
            if service and labels.get("flotilla.service.name") != service:
                continue
            out.append(ctr)
        return out

    def remove_containers(self):
        for ctr in self.containers(running_only=False):
            try:
                ctr.remove(force=True)
            except Exception:
                pass

    def cluster_id(self) -> str | None:
        for n in self.nodes.values():
            try:
                return n.config()["cluster_id"] or None
            except (OSError, KeyError, ValueError):
                continue
        return None

    def remove_networks(self):
        """What the agents made for the cluster's networks on the engine
        (once its containers are gone)."""
        from .enginenets import remove_cluster_networks

        cluster_id = self.cluster_id()
        if cluster_id:
            remove_cluster_networks(cluster_id)

    def dump_logs(self) -> str:
        out = []
        for node in self.nodes.values():
            out.append(f"===== {node.name} =====\n{node.log()[-6000:]}")
        return "\n".join(out)
