"""An encrypted network between hosts (``network create --opt encrypted``):
a real cluster whose nodes are network namespaces, each with its own Docker
engine, as in test_service_networks.

Host a runs the manager and a client; host b runs two small web services,
``vault`` on the encrypted network ``secret`` and ``open`` on the plain
network ``plain``, each serving a marker string of its own. The client,
on both networks, fetches both by name across the hosts while the
underlay (host a's interface) is captured: the plain network's marker is
there in clear, the encrypted network's never is, though its traffic did
cross (WireGuard's UDP port), not even while b's tunnel is down (its
``wireguard-go`` killed, until the agent makes it again). DNS and the VIP work across hosts on the
encrypted network as on the plain one. Host c has no ``wireguard-go``: a
task of the encrypted network placed there is rejected, saying why, and c
publishes no key.

Then the managers rotate a's and b's keys, once because the rotation period
(set to its minimum) has passed, once on demand, while a TCP connection
from a's client to a ticker on b streams a line every 20 ms: the
connection survives, no line is lost, and the longest silence during each
rotation is measured (printed) and bounded; each node's new public key is
recorded and in the peer's ``wg show``, its old private key is gone, and
the capture never shows the stream in clear.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import stat
import subprocess
import threading
import time

import pytest

from flotilla.agent.network.wireguard import interface_name, public_key
from tests.helpers.capture import Capture, udp_of
from tests.helpers.cluster import wait_for
from tests.helpers.netns import Fabric, in_netns, namespace_pids
from tests.helpers.nscluster import NsCluster, _comm as comm, clean_leftovers
from tests.integration.test_service_networks import (addr_on, container, fetch, lookup,
                                                     running, spec, vip_of)

BASE = "/tmp/flotilla-encrypted-networks"
BUSYBOX = "flotilla-test/busybox:1"
HOSTS = {"a": 11, "b": 12, "c": 13}
VXLAN_PORT, WG_PORT = 4789, 51820
# Without /usr/bin (and /bin, the same directory on Debian): no wireguard-go, no wg.
NO_WIREGUARD = {"PATH": "/usr/sbin:/sbin"}


def web(name: str, network: str, marker: str, host: str) -> dict:
    """A web server on ``host`` whose page is ``marker``."""
    s = spec(name, BUSYBOX, [network], constraints=(f"node.hostname=={host}",),
             command=["sh", "-c", f"mkdir -p /w && echo {marker} > /w/index.html && "
                                  "exec httpd -f -p 80 -h /w"], init=True)
    return s


@pytest.fixture(scope="module")
def hosts_cluster():
    fabric = Fabric(prefix="fle", subnet="10.79.45")
    clean_leftovers(BASE, fabric)
    c = NsCluster(BASE, fabric)
    failed = False
    try:
        fabric.create()
        for name, octet in HOSTS.items():
            c.add_host(name, octet, images=(BUSYBOX,), iptables=True)
        c.init("a")
        c.join("b", "worker")
        c.join("c", "worker", env=NO_WIREGUARD)
        yield c
    except BaseException:
        failed = True
        raise
    finally:
        if failed:
            print(c.dump_logs())
        c.teardown()
        clean_leftovers(BASE, fabric)
        # the control sockets of the tunnels killed with their hosts
        for node in c.nodes.values():
            if node.node_id:
                with contextlib.suppress(OSError):
                    os.unlink(f"/var/run/wireguard/{interface_name(node.node_id)}.sock")


def test_an_encrypted_network_carries_traffic_between_hosts_encrypted(hosts_cluster, request):
    c = hosts_cluster
    failed_before = request.session.testsfailed
    admin = c.admin()
    secret_id = c.cli("network", "create", "--opt", "encrypted", "secret").stdout.strip()
    c.cli("network", "create", "plain")
    hidden, seen = f"vault-{secrets.token_hex(8)}", f"open-{secrets.token_hex(8)}"
    admin.post("/v1/services", web("vault", "secret", hidden, "b"))
    admin.post("/v1/services", web("open", "plain", seen, "b"))
    admin.post("/v1/services", spec("client", BUSYBOX, ["secret", "plain"],
                                    constraints=("node.hostname==a",), sleep=True))
    wait_for(lambda: all(len(running(admin, s)) == 1 for s in ("vault", "open", "client")),
             120, what="the services running")
    a, b = c.hosts["a"], c.hosts["b"]
    cid = container(c, a, "client")
    (vault,) = running(admin, "vault")
    try:
        with Capture(a.netns, "eth0", os.path.join(BASE, "underlay.cap")) as cap:
            # by name, through the VIP on a's engine, to the task on b
            assert wait_for(lambda: fetch(a, cid, "vault"), 30,
                            what="http://vault/ from the client on another host") \
                == f"{hidden}\n"
            assert wait_for(lambda: fetch(a, cid, "open"), 30,
                            what="http://open/ from the client") == f"{seen}\n"
            # b's tunnel dies: nothing goes in clear meanwhile, and it is made again
            (pid,) = [p for p in namespace_pids(b.netns) if comm(p) == "wireguard-go"]
            os.kill(pid, signal.SIGKILL)
            wait_for(lambda: [p for p in namespace_pids(b.netns)
                              if comm(p) == "wireguard-go" and p != pid], 30,
                     what="b's tunnel made again")
            assert wait_for(lambda: fetch(a, cid, "vault"), 30,
                            what="http://vault/ through the new tunnel") == f"{hidden}\n"
        frames = cap.frames()
        datagrams = [u for u in map(udp_of, frames) if u is not None]
        between = [u for u in datagrams if {u.src, u.dst} == {a.addr, b.addr}]
        # the plain network crosses the underlay in clear (VXLAN), marker and all
        assert any(seen.encode() in u.payload for u in between if u.dport == VXLAN_PORT)
        # the encrypted one crossed too, inside WireGuard, and nowhere in clear
        assert any(u.dport == WG_PORT for u in between), "no WireGuard traffic captured"
        assert not any(hidden.encode() in f for f in frames), "the marker crossed in clear"

        # names and addresses across hosts as on a plain network
        vip = vip_of(admin, "vault")
        assert lookup(a, cid, "vault") == {vip}
        assert lookup(a, cid, "tasks.vault") == {addr_on(vault, secret_id)}
        assert fetch(a, cid, addr_on(vault, secret_id)) == f"{hidden}\n"

        # each node made its own key (0600) and published only its public key
        nodes = {n["hostname"]: n for n in admin.get("/v1/nodes")}
        for name in ("a", "b"):
            path = os.path.join(c.nodes[name].data_dir, "agent", "wireguard.key")
            assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
            with open(path) as f:
                private = f.read().strip()
            assert nodes[name]["wireguard"] == {"public_key": public_key(private),
                                                "port": WG_PORT}
            assert private not in repr(admin.get(f"/v1/nodes/{name}"))
        # a node without wireguard-go publishes no key...
        assert nodes["c"]["wireguard"] is None
    finally:
        if request.session.testsfailed > failed_before:
            print(c.dump_logs())

    # ...and refuses the encrypted network's tasks, saying why
    admin.post("/v1/services", spec("stranded", BUSYBOX, ["secret"],
                                    constraints=("node.hostname==c",), sleep=True))

    def rejected():
        return [t for t in admin.get("/v1/tasks", params={"service": "stranded"})
                if t["state"] == "rejected"]
    (task, *_) = wait_for(rejected, 60, what="the task on c rejected")
    assert task["message"] == "network unavailable", task
    assert "network secret" in task["error"] and "cannot be used on this node" in task["error"]
    assert "needs wireguard-go and wg" in task["error"], task["error"]
    assert "apt install wireguard-go wireguard-tools" in task["error"]


class Stream:
    """The lines a command in a container prints, each with when it arrived."""

    def __init__(self, host, cid: str, argv: list[str]):
        self.proc = subprocess.Popen(["docker", "-H", host.engine.host_url, "exec", cid, *argv],
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     text=True, bufsize=1)
        self.lines: list[tuple[float, str]] = []
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append((time.monotonic(), line.strip()))

    def since(self, t: float) -> int:
        return sum(1 for at, _ in self.lines if at >= t)

    def longest_silence(self, start: float, end: float) -> float:
        """The longest time without a line between ``start`` and ``end``."""
        times = [start] + [at for at, _ in self.lines if start < at < end] + [end]
        return max(b - a for a, b in zip(times, times[1:]))

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        self._thread.join(10)


def test_the_managers_rotate_the_nodes_keys_without_breaking_a_connection(hosts_cluster,
                                                                          request):
    c = hosts_cluster
    failed_before = request.session.testsfailed
    admin = c.admin()
    if "secret" not in {n["name"] for n in admin.get("/v1/networks")}:
        c.cli("network", "create", "--opt", "encrypted", "secret")
    if "client" not in {s["name"] for s in admin.get("/v1/services")}:
        admin.post("/v1/services", spec("client", BUSYBOX, ["secret"],
                                        constraints=("node.hostname==a",), sleep=True))
    token = f"tick-{secrets.token_hex(8)}"
    # a line every 20 ms, numbered, to each connection
    admin.post("/v1/services", spec(
        "ticker", BUSYBOX, ["secret"], constraints=("node.hostname==b",), init=True,
        command=["nc", "-ll", "-p", "7000", "-e", "sh", "-c",
                 f"i=0; while :; do i=$((i+1)); echo {token}-$i; busybox usleep 20000; done"]))
    wait_for(lambda: all(len(running(admin, s)) == 1 for s in ("ticker", "client")),
             120, what="the ticker and the client running")
    a, b = c.hosts["a"], c.hosts["b"]
    names = {"a": a, "b": b}
    ids = {n: c.nodes[n].node_id for n in names}
    cid = container(c, a, "client")

    def node(name):
        return admin.get(f"/v1/nodes/{ids[name]}")

    def peers_of(name):
        """The public keys in ``wg show`` of the node's tunnel, on its host."""
        res = subprocess.run(in_netns(names[name].netns, ["wg", "show", interface_name(ids[name]),
                                                          "peers"]),
                             capture_output=True, text=True, timeout=10)
        return set(res.stdout.split())

    def own_key(name):
        res = subprocess.run(in_netns(names[name].netns, ["wg", "show", interface_name(ids[name]),
                                                          "public-key"]),
                             capture_output=True, text=True, timeout=10)
        return res.stdout.strip()

    def key_files(name):
        d = os.path.join(c.nodes[name].data_dir, "agent")
        return {f: open(os.path.join(d, f)).read() for f in os.listdir(d)
                if f.startswith("wireguard")}

    def rotated(before):
        """Both nodes' keys replaced, the peers told, each tunnel on its new key."""
        now = {n: node(n) for n in names}
        if not all((now[n]["network_key"] or {}).get("generation", 0) >
                   before[n]["network_key"]["generation"] for n in names):
            return None
        keys = {n: now[n]["wireguard"]["public_key"] for n in names}
        if keys["a"] in peers_of("b") and keys["b"] in peers_of("a") and \
                all(own_key(n) == keys[n] for n in names):
            return now
        return None

    stream = Stream(a, cid, ["nc", "ticker", "7000"])
    silences = {}
    try:
        with Capture(a.netns, "eth0", os.path.join(BASE, "rotation.cap")) as cap:
            wait_for(lambda: stream.since(time.monotonic() - 1) > 10, 30,
                     what="the ticker's lines arriving at the client")
            calm = time.monotonic()     # the steady stream's own silences, for comparison
            wait_for(lambda: stream.since(calm) >= 150, 60, what="150 lines")
            silences["steady"] = stream.longest_silence(calm, time.monotonic())
            for how, args in (("period", ["--network-key-rotation", "1m"]),
                              ("on demand", ["--network-key-rotation", "12h",
                                             "--rotate-network-keys"])):
                before = {n: node(n) for n in names}
                old_private = {n: key_files(n)["wireguard.key"].strip() for n in names}
                assert all(peers_of(n) == {before[m]["wireguard"]["public_key"]}
                           for n, m in (("a", "b"), ("b", "a")))
                started = time.monotonic()
                c.cli("cluster", "update", *args)
                after = wait_for(lambda before=before: rotated(before), 120,
                                 what=f"a's and b's keys rotated ({how})")
                done = time.monotonic()
                wait_for(lambda done=done: stream.since(done + 2) > 10, 30,
                         what="the ticker's lines after the rotation")
                silences[how] = stream.longest_silence(started, time.monotonic())
                for n in names:
                    old, new = before[n], after[n]
                    assert new["wireguard"]["public_key"] != old["wireguard"]["public_key"]
                    assert new["wireguard"]["port"] == WG_PORT
                    assert new["network_key"]["rotated_at"] > old["network_key"]["rotated_at"]
                    assert new["network_key"]["due"] is None
                    # the old private key is gone; the new one is the only one, 0600
                    files = key_files(n)
                    assert set(files) == {"wireguard.key"}, files
                    assert public_key(files["wireguard.key"].strip()) == \
                        new["wireguard"]["public_key"]
                    assert old_private[n] not in files["wireguard.key"]
                    path = os.path.join(c.nodes[n].data_dir, "agent", "wireguard.key")
                    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
                    assert files["wireguard.key"].strip() not in repr(new)
            settings = admin.get("/v1/cluster")["spec"]["network_keys"]
            assert settings["rotation_period"] == 12 * 3600 and settings["force_rotate"] >= 1
            # no key, nothing to rotate
            assert admin.get(f"/v1/nodes/{c.nodes['c'].node_id}")["network_key"] is None
        frames = cap.frames()
        # one connection all along: every line, in order, none lost
        numbers = [int(line.rsplit("-", 1)[1]) for _, line in stream.lines
                   if line.startswith(token)]
        assert stream.proc.poll() is None, "the connection broke"
        assert numbers == list(range(numbers[0], numbers[0] + len(numbers)))
        print("\nlongest silence of a line every 20 ms across hosts: "
              + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in silences.items()))
        for how in ("period", "on demand"):
            assert silences[how] < 3.0, silences
        between = [u for u in map(udp_of, frames) if u is not None
                   and {u.src, u.dst} == {a.addr, b.addr}]
        assert any(u.dport == WG_PORT for u in between), "no WireGuard traffic captured"
        assert not any(token.encode() in f for f in frames), "the stream crossed in clear"
    finally:
        stream.close()
        if request.session.testsfailed > failed_before:
            print(c.dump_logs())
