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
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import stat

import pytest

from flotilla.agent.network.wireguard import interface_name, public_key
from tests.helpers.capture import Capture, udp_of
from tests.helpers.cluster import wait_for
from tests.helpers.netns import Fabric, namespace_pids
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
