"""A real cluster whose nodes are separate hosts: one network namespace, one
address and one Docker engine per node.

Nodes run exactly as in :mod:`tests.helpers.cluster` (``flotilla node run``
in a session of its own, so a signal to the process group is a host
failure), but inside their host's namespace, listening and advertising on the
host's address, with ``DOCKER_HOST`` pointing at the host's own engine. A
host may have a resolv.conf of its own (``add_host(resolv_conf=PATH)``): its
node then runs in a mount namespace of its own where that file is
/etc/resolv.conf, so the names its resolver forwards go where the test says
(a name server on the host's loopback), not to the machine's.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess

import docker

from .cluster import PYTHON, LocalCluster, NodeProc, wait_for
from .hostdocker import HostDocker, unmount_under
from .netns import Fabric, in_netns, namespace_pids

API_PORT = 4242
ENGINE_COMMANDS = {"dockerd", "docker-proxy", "docker-init"}


class Host:
    def __init__(self, name: str, addr: str, netns: str, engine: HostDocker,
                 resolv_conf: str | None = None):
        self.name = name
        self.addr = addr
        self.netns = netns
        self.engine = engine
        self.resolv_conf = resolv_conf


class NsNodeProc(NodeProc):
    def __init__(self, cluster: "NsCluster", host: Host):
        # No port search: the host's address is the node's alone.
        self.cluster = cluster
        self.name = host.name
        self.host = host
        self.port = API_PORT
        self.addr = f"{host.addr}:{API_PORT}"
        self.raft_addr = f"{host.addr}:{API_PORT + 10000}"
        self.data_dir = os.path.join(cluster.base, host.name)
        self.log_path = os.path.join(cluster.base, f"{host.name}.log")
        self.proc: subprocess.Popen | None = None
        self.node_id: str | None = None
        self._extra: tuple[str, ...] = ()
        self.env: dict[str, str] = {}       # on top of the cluster's

    def start(self, *extra: str):
        cmd = in_netns(self.host.netns, [
            PYTHON, "-m", "flotilla.cli.main", "node", "run", "--data-dir", self.data_dir,
            "--listen", self.addr, "--hostname", self.name, *extra])
        if self.host.resolv_conf:
            # unshare execs (no fork): the node keeps the pid and session Popen sees
            cmd = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                   'mount --bind "$0" /etc/resolv.conf && exec "$@"', self.host.resolv_conf,
                   *cmd]
        env = dict(self.cluster.env, DOCKER_HOST=self.host.engine.host_url, **self.env)
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True, env=env)
        log.close()
        return self


class NsCluster(LocalCluster):
    """``LocalCluster`` on a :class:`Fabric` of namespaces."""

    def __init__(self, base: str, fabric: Fabric, heartbeat: str = "1s", env: dict | None = None):
        super().__init__(base, heartbeat=heartbeat, env=env)
        self.fabric = fabric
        self.hosts: dict[str, Host] = {}

    # -- hosts ---------------------------------------------------------------------
    def add_host(self, name: str, octet: int, images: tuple[str, ...] = (),
                 iptables: bool = False, default_bridge: bool = False,
                 resolv_conf: str | None = None) -> Host:
        """A host: its namespace, address and engine. ``iptables``: the engine
        manages the namespace's iptables as on a real host, and forwarding
        between interfaces is dropped unless a rule accepts it;
        ``default_bridge``: the engine has Docker's default bridge;
        ``resolv_conf``: the file its node sees as /etc/resolv.conf."""
        addr = self.fabric.add_host(name, octet)
        netns = self.fabric.namespace(name)
        engine = HostDocker(netns, os.path.join(self.base, "engines", name), iptables=iptables,
                            default_bridge=default_bridge)
        engine.start()
        if iptables:
            self.fabric.iptables(netns, "-P", "FORWARD", "DROP")
        for image in images:
            engine.load_image(image)
        host = Host(name, addr, netns, engine, resolv_conf=resolv_conf)
        self.hosts[name] = host
        return host

    # -- nodes ---------------------------------------------------------------------
    def init(self, name: str = "m1") -> NodeProc:
        node = NsNodeProc(self, self.hosts[name])
        node.start("--init", "--heartbeat-period", self.heartbeat)
        self.nodes[name] = node
        wait_for(lambda: os.path.exists(os.path.join(self.admin_dir, "key.pem")), 60,
                 what="admin bundle")
        self.wait_leader_ready(60)
        node.node_id = node.config()["node_id"]
        return node

    def join(self, name: str, role: str = "manager", via: NodeProc | None = None,
             wait: bool = True, env: dict[str, str] | None = None) -> NodeProc:
        node = NsNodeProc(self, self.hosts[name])
        node.env = dict(env or {})
        via = via or self.first
        node.start("--join", via.addr, "--token", self.token(role))
        self.nodes[name] = node
        if wait:
            self.wait_node_ready(node, manager=(role == "manager"), timeout=90)
        node.node_id = node.config()["node_id"]
        return node

    # -- containers, engine by engine ---------------------------------------------
    def engine_client(self, host: Host) -> docker.DockerClient:
        return docker.DockerClient(base_url=host.engine.host_url, timeout=20)

    def running_task_containers(self) -> list[dict]:
        """Every running container created by an agent, on every host:
        ``{"host", "id", "labels"}``."""
        out = []
        for host in self.hosts.values():
            client = self.engine_client(host)
            try:
                for ctr in client.api.containers(filters={"label": "flotilla.task.id",
                                                          "status": "running"}):
                    out.append({"host": host.name, "id": ctr["Id"],
                                "labels": ctr.get("Labels") or {}})
            finally:
                client.close()
        return out

    def remove_containers(self):
        for host in self.hosts.values():
            host.engine.remove_all_containers()

    def remove_networks(self):
        """Nothing: each host's engine and namespace go with the host."""

    # -- teardown ------------------------------------------------------------------
    def teardown(self) -> None:
        """Stop nodes, engines and the fabric; safe after any failure."""
        for node in self.nodes.values():
            if node.proc is not None:
                node.signal_group(signal.SIGCONT)
        try:
            self.stop_all()
        except Exception:
            pass
        for host in self.hosts.values():
            try:
                host.engine.teardown()
            except Exception:
                pass
        self.fabric.destroy()
        unmount_under(os.path.join(self.base, "engines"))


def clean_leftovers(base: str, fabric: Fabric) -> None:
    """Remove what a killed earlier run left under ``base`` and on the fabric:
    engines (stopped through their pid files, containers removed first),
    node processes (killed with their namespaces), mounts and files."""
    for ns in fabric.our_namespaces():      # nodes first: no agent may restart a container
        for pid in namespace_pids(ns):
            if _comm(pid) not in ENGINE_COMMANDS and not _comm(pid).startswith("containerd"):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
    engines = os.path.join(base, "engines")
    if os.path.isdir(engines):
        for name in sorted(os.listdir(engines)):
            engine = HostDocker(fabric.namespace(name), os.path.join(engines, name))
            try:
                engine.teardown()
            except Exception:
                pass
    fabric.destroy_leftovers()
    unmount_under(base)
    shutil.rmtree(base, ignore_errors=True)


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""
