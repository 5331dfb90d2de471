"""An overlay network between two hosts, each a network namespace of its own
with its own Docker engine (as in the chaos suite), joined by an underlay
bridge: the agent's dataplane (``flotilla.agent.network``) run inside each
host, as a fresh process for every apply (``python -m flotilla.agent.network
apply``), the way an agent restarting would.

Shows: containers with their allocated addresses on hosts A and B reach each
other across hosts (ping, HTTP) and reach the other node's bridge, and
broadcasts stay on their host; applying
again changes nothing (same kernel entries, same devices, same Docker
network); a lost VXLAN device is restored by one apply from a fresh process;
an endpoint dropped from the desired state loses its entries and its traffic
(even from a container that still knows its MAC: no unknown unicast leaves);
a network no longer listed goes once no container uses it (and only the
cluster's own); two nodes sharing an engine, applying at once or each with
its own address, do not undo each other. The engines manage their
namespaces' iptables, with the FORWARD policy DROP.
"""

from __future__ import annotations

import concurrent.futures
import copy
import json
import os
import subprocess

import docker
import pytest

from flotilla.agent.network.dockernet import Attachment, connect, container_networking
from flotilla.agent.network.names import bridge_name, mac_for, vxlan_name
from tests.helpers.cluster import PYTHON, wait_for
from tests.helpers.hostdocker import HostDocker, unmount_under
from tests.helpers.netns import Fabric, in_netns, run
from tests.helpers.nscluster import clean_leftovers

IMAGE = "flotilla-test/busybox:1"
BASE = "/tmp/flotilla-overlay-dataplane"
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

WEB = {"id": "ovweb0a1b2c3d4e5f6a7b8c9", "name": "web", "subnet": "10.0.1.0/24",
       "vni": 4101, "internal": False}
SPARE = {"id": "ovspare0a1b2c3d4e5f6a7b8", "name": "spare", "subnet": "10.0.2.0/24",
         "vni": 4102, "internal": True}
OTHER = {"id": "ovother0a1b2c3d4e5f6a7b8", "name": "other", "subnet": "10.0.3.0/24",
         "vni": 4103, "internal": False}
ATTACH = {"a": "10.0.1.254/24", "b": "10.0.1.253/24"}
TASK = {"a": "10.0.1.5", "b": "10.0.1.6"}


class Host:
    def __init__(self, name: str, addr: str, netns: str, engine: HostDocker):
        self.name, self.addr, self.netns, self.engine = name, addr, netns, engine
        self.client = docker.DockerClient(base_url=engine.host_url, timeout=30)

    def apply(self, desired: list[dict], *extra: str, cluster: str = "c1") -> dict:
        """One apply from a fresh process inside the host; its JSON result."""
        proc = subprocess.run(
            in_netns(self.netns, [PYTHON, "-m", "flotilla.agent.network", "apply",
                                  "--underlay-ip", self.addr, "--cluster-id", cluster,
                                  *extra, "-"]),
            input=json.dumps(desired), capture_output=True, text=True, timeout=120,
            env=dict(os.environ, DOCKER_HOST=self.engine.host_url,
                     PYTHONPATH=os.path.join(ROOT, "daemons")))
        assert proc.returncode == 0, f"apply on {self.name} failed:\n{proc.stdout}{proc.stderr}"
        return json.loads(proc.stdout)

    def sh(self, *argv: str) -> str:
        return run(*argv[:1], "-n", self.netns, *argv[1:]).stdout

    def dump(self, net: dict) -> dict:
        """What the kernel and the engine hold for ``net`` on this host."""
        br, vx = bridge_name(net["id"]), vxlan_name(net["id"])
        return {
            "links": self.sh("ip", "-o", "link", "show", "dev", br)
                     + self.sh("ip", "-o", "link", "show", "dev", vx),
            "vxlan": self.sh("ip", "-d", "-o", "link", "show", "dev", vx).split("vxlan", 1)[1]
                     .split("bridge_slave", 1)[0],
            "addresses": self.sh("ip", "-o", "-4", "addr", "show", "dev", br),
            # the VXLAN device's own entries (not what the bridge learns from traffic)
            "fdb": sorted(line.strip() for line in self.sh("bridge", "fdb", "show", "dev", vx)
                          .splitlines() if " self" in line),
            "neigh": sorted(line.strip() for line in
                            self.sh("ip", "neigh", "show", "dev", vx).splitlines()),
            "docker": self.client.api.networks(names=[f"flotilla-{net['name']}"]),
        }

    def received(self, net: dict) -> int:
        """Frames the VXLAN device has received from other hosts."""
        out = json.loads(self.sh("ip", "-s", "-j", "link", "show", "dev", vxlan_name(net["id"])))
        return out[0]["stats64"]["rx"]["packets"]

    def run_task(self, name: str, attachments: list[Attachment]) -> str:
        """A busybox container on its overlay addresses, serving HTTP on port 80."""
        api = self.client.api
        settings = container_networking(api, attachments)
        cid = api.create_container(
            IMAGE, name=name, detach=True,
            command=["sh", "-c", f"echo hello from {name} > /tmp/index.html; "
                                 "busybox seq 1 40000 > /tmp/big.txt; "
                                 "exec httpd -f -p 80 -h /tmp"],
            mac_address=settings.mac_address, networking_config=settings.networking_config,
            host_config=api.create_host_config(network_mode=settings.network_mode))["Id"]
        connect(api, cid, settings)
        api.start(cid)
        return cid

    def exec(self, cid: str, *argv: str, timeout: float = 20) -> subprocess.CompletedProcess:
        return self.engine.cli("exec", cid, *argv, check=False, timeout=timeout)

    def reaches(self, cid: str, ip: str) -> bool:
        return self.exec(cid, "busybox", "ping", "-c", "1", "-W", "1", ip).returncode == 0

    def fetch(self, cid: str, ip: str, path: str = "/") -> str:
        """The body of ``GET path`` on ``ip``:80 over TCP ("" if it failed).
        (This busybox's wget crashes: a request by hand through nc.)"""
        res = self.exec(cid, "sh", "-c", f"printf 'GET {path} HTTP/1.0\\r\\n\\r\\n' | "
                                         f"nc -w 3 {ip} 80")
        head, _, body = res.stdout.partition("\n\n")      # text mode: \r\n read as \n
        return body if res.returncode == 0 and head.startswith("HTTP/1.") and " 200 " in head \
            else ""


def network(net: dict, attachment: str, hosts: dict[str, Host], endpoints: dict[str, str],
            peers: bool = True) -> dict:
    """``net`` as the dispatcher would send it to a node whose address on it
    is ``attachment``: every task's address on every host, and (``peers``)
    every node's bridge."""
    return dict(net, attachment=attachment,
                endpoints=[{"addr": f"{addr}/24", "node_underlay_ip": hosts[h].addr,
                            "task_id": f"t-{h}"} for h, addr in endpoints.items()],
                peers=[{"node_id": h, "underlay_ip": hosts[h].addr, "attachment": ATTACH[h]}
                       for h in hosts] if peers else [])


@pytest.fixture(scope="module")
def hosts():
    fabric = Fabric(prefix="fln", subnet="10.79.41")
    clean_leftovers(BASE, fabric)
    made: dict[str, Host] = {}
    try:
        fabric.create()
        for name, octet in (("a", 11), ("b", 12)):
            addr = fabric.add_host(name, octet)
            engine = HostDocker(fabric.namespace(name), os.path.join(BASE, "engines", name),
                                iptables=True)
            engine.start()
            # as on a host where the engine turned forwarding on: bridged
            # traffic must pass the engine's own rules (br_netfilter)
            run("ip", "netns", "exec", fabric.namespace(name), "iptables", "-w", "5",
                "-P", "FORWARD", "DROP")
            made[name] = Host(name, addr, fabric.namespace(name), engine)
            engine.load_image(IMAGE)
        yield made
    finally:
        for name in ("a", "b"):
            if name in made:
                made[name].client.close()
            try:
                HostDocker(fabric.namespace(name), os.path.join(BASE, "engines", name)).teardown()
            except Exception:
                pass
        fabric.destroy()
        unmount_under(BASE)
        subprocess.run(["rm", "-rf", BASE], check=False)


@pytest.fixture(scope="module")
def overlay(hosts):
    """The network ``web`` on both hosts with one task each: the desired state
    per host and the containers."""
    desired = {h: [network(WEB, ATTACH[h], hosts, TASK)] for h in hosts}
    for h in hosts:
        hosts[h].apply(desired[h])
    cids = {h: hosts[h].run_task(f"web-{h}", [Attachment("flotilla-web", f"{TASK[h]}/24",
                                                         ("web",))])
            for h in hosts}
    return desired, cids


def test_containers_on_two_hosts_reach_each_other(hosts, overlay):
    desired, cids = overlay
    a, b = hosts["a"], hosts["b"]
    # the allocated address and its MAC, on a bridge adopted by Docker
    info = a.client.api.inspect_container(cids["a"])["NetworkSettings"]["Networks"]["flotilla-web"]
    assert (info["IPAddress"], info["MacAddress"]) == (TASK["a"], mac_for(TASK["a"]))
    assert TASK["b"] in hosts["b"].exec(cids["b"], "busybox", "ip", "-4", "addr").stdout
    net = a.client.api.networks(names=["flotilla-web"])[0]
    assert net["Options"]["com.docker.network.bridge.name"] == bridge_name(WEB["id"])
    assert net["IPAM"]["Config"][0] == {"Subnet": "10.0.1.0/24", "Gateway": "10.0.1.254"}
    assert net["Labels"] == {"flotilla.network.id": WEB["id"], "flotilla.cluster.id": "c1"}

    wait_for(lambda: a.reaches(cids["a"], TASK["b"]), 30, what="A's task pinging B's")
    assert b.reaches(cids["b"], TASK["a"])
    assert a.fetch(cids["a"], TASK["b"]) == "hello from web-b\n"
    assert b.fetch(cids["b"], TASK["a"]) == "hello from web-a\n"
    # full-size segments cross: the containers' MTU leaves room for VXLAN's headers
    assert "mtu 1450" in a.exec(cids["a"], "busybox", "ip", "link").stdout
    big = "".join(f"{i}\n" for i in range(1, 40001))
    assert a.fetch(cids["a"], TASK["b"], "/big.txt") == big
    # the other node's bridge (where its resolver will listen) is reachable too
    assert a.reaches(cids["a"], ATTACH["b"].split("/")[0])

    # A's VXLAN device: one forwarding and one neighbour entry per remote
    # endpoint (B's task and B's bridge), none for flooding
    fdb = a.dump(WEB)["fdb"]
    own = [line for line in fdb if " dst " in line]
    assert own == sorted(f"{mac_for(ip)} dst {b.addr} self permanent"
                         for ip in (TASK["b"], "10.0.1.253")), fdb
    assert not any(line.startswith("00:00:00:00:00:00") for line in fdb)
    assert a.dump(WEB)["neigh"] == sorted(f"{ip} lladdr {mac_for(ip)} PERMANENT"
                                          for ip in ("10.0.1.253", TASK["b"]))
    # no VXLAN learning, ARP answered locally, UDP 4789 from A's underlay address
    vx = a.dump(WEB)["vxlan"]
    assert f"id {WEB['vni']} local {a.addr}" in vx and "dstport 4789" in vx
    assert "nolearning" in vx and "proxy" in vx
    # no flooding: broadcasts (DHCP discovers here) stay on host A; ARP
    # never leaves (answered from the neighbour table); unknown unicast: see
    # the dropped endpoint below
    received = b.received(WEB)
    out = a.exec(cids["a"], "sh", "-c",
                 "busybox udhcpc -i eth0 -n -q -t 2 -T 1 -s /bin/true 2>&1").stdout
    assert out.count("broadcasting discover") == 2, out
    assert b.received(WEB) == received


def test_applying_again_changes_nothing(hosts, overlay):
    desired, cids = overlay
    before = {h: hosts[h].dump(WEB) for h in hosts}
    for h in hosts:
        assert hosts[h].apply(desired[h]) == {"changes": [], "errors": {}, "kept": {}}
    assert {h: hosts[h].dump(WEB) for h in hosts} == before


def test_one_apply_from_a_fresh_process_restores_a_lost_device(hosts, overlay):
    desired, cids = overlay
    a = hosts["a"]
    before = a.dump(WEB)
    a.sh("ip", "link", "del", "dev", vxlan_name(WEB["id"]))     # its entries go with it
    assert not a.reaches(cids["a"], TASK["b"])
    result = a.apply(desired["a"])
    assert f"created VXLAN device {vxlan_name(WEB['id'])} (id {WEB['vni']}, local {a.addr})" \
        in result["changes"]
    after = a.dump(WEB)
    assert (after["fdb"], after["neigh"], after["addresses"], after["docker"]) == \
        (before["fdb"], before["neigh"], before["addresses"], before["docker"])
    wait_for(lambda: a.reaches(cids["a"], TASK["b"]), 30, what="traffic after the restore")
    assert a.fetch(cids["a"], TASK["b"]) == "hello from web-b\n"


def test_two_nodes_sharing_an_engine_do_not_undo_each_other(hosts, overlay):
    desired, cids = overlay
    a = hosts["a"]
    before = a.dump(WEB)
    a.sh("ip", "link", "del", "dev", vxlan_name(WEB["id"]))
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda _: a.apply(desired["a"]), range(2)))
    assert all(not r["errors"] for r in results), results
    after = a.dump(WEB)
    assert (after["fdb"], after["neigh"], after["addresses"], after["docker"]) == \
        (before["fdb"], before["neigh"], before["addresses"], before["docker"])
    wait_for(lambda: a.reaches(cids["a"], TASK["b"]), 30, what="traffic after both applies")
    assert a.fetch(cids["a"], TASK["b"]) == "hello from web-b\n"

    # a second node on A's engine, with its own address on the network: its
    # address joins the bridge; then neither node's apply undoes the other's
    second = copy.deepcopy(desired["a"])
    second[0]["attachment"] = "10.0.1.252/24"
    br = bridge_name(WEB["id"])
    assert a.apply(second)["changes"] == [f"{br}: added 10.0.1.252/24"]
    try:
        for state in (desired["a"], second):
            assert a.apply(state)["changes"] == []
        # the bridge keeps the MAC of the Docker network's gateway (the first node's)
        assert mac_for("10.0.1.254") in a.sh("ip", "-o", "link", "show", "dev", br)
        assert a.fetch(cids["a"], TASK["b"]) == "hello from web-b\n"
    finally:
        a.sh("ip", "addr", "del", "10.0.1.252/24", "dev", br)


def test_an_endpoint_dropped_from_the_desired_state_loses_its_entries(hosts, overlay):
    desired, cids = overlay
    a, b = hosts["a"], hosts["b"]
    without_b = copy.deepcopy(desired["a"])
    without_b[0]["endpoints"] = [e for e in without_b[0]["endpoints"]
                                 if e["node_underlay_ip"] != b.addr]
    result = a.apply(without_b)
    vx = vxlan_name(WEB["id"])
    assert sorted(result["changes"]) == sorted([
        f"{vx}: deleted fdb {mac_for(TASK['b'])} dst {b.addr}",
        f"{vx}: deleted neighbour {TASK['b']} {mac_for(TASK['b'])}"])
    dump = a.dump(WEB)
    assert not any(mac_for(TASK["b"]) in line for line in dump["fdb"] + dump["neigh"])
    # B's bridge, still listed as a peer, keeps its entries
    assert any(mac_for("10.0.1.253") in line for line in dump["fdb"])
    # A's container still has B's MAC cached: its frames are unknown unicast
    # for the VXLAN device now, and are dropped, not flooded to B
    assert not a.reaches(cids["a"], TASK["b"])
    assert not a.fetch(cids["a"], TASK["b"])
    # listed again: back
    a.apply(desired["a"])
    wait_for(lambda: a.reaches(cids["a"], TASK["b"]), 30, what="traffic once listed again")


def test_a_network_no_longer_listed_goes_once_unused(hosts, overlay):
    desired, _ = overlay
    a = hosts["a"]
    spare = network(SPARE, "10.0.2.254/24", hosts, {}, peers=False)
    a.apply(desired["a"] + [spare])
    # another cluster's network on the same engine
    other = network(OTHER, "10.0.3.254/24", hosts, {}, peers=False)
    a.apply([other], cluster="c2")
    info = a.client.api.networks(names=["flotilla-spare"])[0]
    assert info["Internal"] is True
    assert info["Options"]["com.docker.network.bridge.enable_ip_masquerade"] == "false"
    assert info["Labels"] == {"flotilla.network.id": SPARE["id"], "flotilla.cluster.id": "c1"}
    cid = a.run_task("spare-a", [Attachment("flotilla-spare", "10.0.2.7/24")])

    # unlisted while a container is on it: kept, with its devices
    result = a.apply(desired["a"], "--remove-grace", "0")
    assert result["kept"] == {SPARE["id"]: "flotilla-spare is in use"}
    assert a.sh("ip", "-o", "link", "show", "dev", bridge_name(SPARE["id"]))
    # unlisted within the grace period (another node sharing the engine may
    # have just made it for a task of its own): kept
    a.client.api.remove_container(cid, force=True)
    result = a.apply(desired["a"])
    assert "made" in result["kept"][SPARE["id"]]
    # then: the Docker network and both devices go; web is untouched
    result = a.apply(desired["a"], "--remove-grace", "0")
    assert sorted(result["changes"]) == sorted([
        "removed Docker network flotilla-spare", f"deleted {bridge_name(SPARE['id'])}",
        f"deleted {vxlan_name(SPARE['id'])}"])
    assert not a.client.api.networks(names=["flotilla-spare"])
    links = a.sh("ip", "-o", "link", "show")
    assert bridge_name(SPARE["id"]) not in links and vxlan_name(SPARE["id"]) not in links
    assert bridge_name(WEB["id"]) in links
    # the other cluster's network was left alone; its own cluster removes it
    assert a.client.api.networks(names=["flotilla-other"])
    assert bridge_name(OTHER["id"]) in links
    result = a.apply([], "--remove-grace", "0", cluster="c2")
    assert "removed Docker network flotilla-other" in result["changes"]
    assert a.client.api.networks(names=["flotilla-web"])


def test_a_network_made_again_takes_the_old_ones_place_once_unused(hosts, overlay):
    desired, _ = overlay
    b = hosts["b"]
    old = network(SPARE, "10.0.2.254/24", hosts, {}, peers=False)
    b.apply(desired["b"] + [old])
    # removed and made again at once (another id, VXLAN id and gateway; the
    # same name and subnet): the old one, unused, makes way within its
    # grace period, since the engine cannot hold both subnets
    again = dict(old, id="ovagain0a1b2c3d4e5f6a7b8", vni=4104, attachment="10.0.2.1/24")
    result = b.apply(desired["b"] + [again])
    assert result["errors"] == {} and "removed Docker network flotilla-spare" in result["changes"]
    (info,) = b.client.api.networks(names=["flotilla-spare"])
    assert (info["Labels"]["flotilla.network.id"], info["IPAM"]["Config"][0]["Gateway"]) == \
        (again["id"], "10.0.2.1")
    links = b.sh("ip", "-o", "link", "show")
    assert bridge_name(SPARE["id"]) not in links and bridge_name(again["id"]) in links
    # a cluster that is gone left a network whose subnet one of ours needs:
    # removed once unused, though another cluster's networks are left alone
    dead = network(dict(OTHER, subnet="10.0.4.0/24"), "10.0.4.1/24", hosts, {}, peers=False)
    b.apply([dead], cluster="c2")
    ours = network(dict(SPARE, id="ovsubnet0a1b2c3d4e5f6a7b", name="reuse", vni=4105,
                        subnet="10.0.4.0/24"), "10.0.4.1/24", hosts, {}, peers=False)
    result = b.apply(desired["b"] + [again, ours])
    assert result["errors"] == {}, result
    assert "removed Docker network flotilla-other" in result["changes"]
    assert b.client.api.networks(names=["flotilla-reuse"])
    # clean: only web left
    result = b.apply(desired["b"], "--remove-grace", "0")
    assert result["errors"] == {} and not b.client.api.networks(names=["flotilla-reuse"])
