"""Networks through the CLI on a real cluster, as a Docker Swarm user types
them: ``network create/ls/inspect/rm``, ``service create --network`` (both
of Docker's forms) and ``--endpoint-mode``, ``service update
--network-add/--network-rm``, where the VIPs and the tasks' addresses are
shown, one-line errors, and the cluster's address pool set at ``--init``."""

import ipaddress
import json
import os
import subprocess
import sys

from tests.helpers.cluster import PYTHON, NodeProc, wait_for

IMAGE = "flotilla-test/busybox:1"
CLUSTER = {"managers": 1, "workers": 1}      # the `cluster` the tests share (conftest.py)
ADDR_POOL = None     # the default pool: its subnets are asserted (see tests/conftest.py)


def fails(c, *args) -> str:
    """The one line a refused command prints (exit code 1, no traceback)."""
    res = c.cli(*args, check=False)
    err = [line for line in res.stderr.splitlines() if line.strip()]
    assert res.returncode == 1, (args, res.stdout, res.stderr)
    assert len(err) == 1 and "Traceback" not in res.stderr, res.stderr
    return err[0]


def in_subnet(addr: str, subnet: str) -> bool:
    return ipaddress.ip_interface(addr).network == ipaddress.ip_network(subnet)


def test_networks_and_services_on_them(cluster):
    c = cluster
    front_id = c.cli("network", "create", "front").stdout.strip()
    back_id = c.cli("network", "create", "--subnet", "10.99.0.0/24", "--gateway", "10.99.0.254",
                    "--internal", "--attachable", "-o", "encrypted", "--label", "team=web",
                    "back").stdout.strip()
    c.cli("network", "create", "--opt", "encrypted=false", "plain")

    table = c.cli("network", "ls").stdout.splitlines()
    assert table[0].split() == ["ID", "NAME", "DRIVER", "SUBNET", "GATEWAY", "ENCRYPTED",
                                "INTERNAL", "ATTACHABLE"]
    rows = {line.split()[1]: line.split() for line in table[1:]}
    assert rows["back"] == [back_id[:12], "back", "overlay", "10.99.0.0/24", "10.99.0.254",
                            "yes", "yes", "yes"]
    assert rows["front"][2:] == ["overlay", "10.0.0.0/24", "10.0.0.1", "no", "no", "no"]
    assert rows["plain"][3:] == ["10.0.1.0/24", "10.0.1.1", "no", "no", "no"]
    assert table[0].index("SUBNET") == table[1].index(table[1].split()[3])   # columns line up
    listed = json.loads(c.cli("network", "ls", "--format", "json").stdout)
    assert [n["name"] for n in listed] == ["back", "front", "plain"]
    assert c.cli("network", "ls", "-q").stdout.split() == [n["id"] for n in listed]
    shown = json.loads(c.cli("network", "inspect", "back", front_id[:8]).stdout)
    assert [(n["id"], n["name"]) for n in shown] == [(back_id, "back"), (front_id, "front")]
    assert (shown[0]["encrypted"], shown[0]["labels"], shown[0]["services"]) == \
        (True, {"team": "web"}, [])

    # Bad input: one line each, exit code 1, nothing created.
    assert fails(c, "network", "create", "--opt", "mtu=1400", "x") == \
        "Error: --opt: unknown network option 'mtu' (known: encrypted)"
    assert fails(c, "network", "create", "--subnet", "10.99.0.128/25", "x") == \
        "Error: subnet: 10.99.0.128/25 overlaps 10.99.0.0/24 of network back (field subnet)"
    assert fails(c, "service", "create", "--name", "x", "--network", "name=front,ip=10.0.0.9",
                 IMAGE).startswith("Error: --network: ip is not supported")
    admin = c.admin()
    assert [n["id"] for n in admin.get("/v1/networks")] == [n["id"] for n in listed]

    # Both of Docker's --network forms; a VIP per network, an address per task.
    res = c.cli("service", "create", "--name", "web", "--replicas", "2", "--network", "front",
                "--network", "name=back,alias=db,alias=store", "--init", IMAGE, "sleep", "3600")
    assert res.stdout.splitlines()[-1] == "web: converged (2/2 running)"
    svc = json.loads(c.cli("service", "inspect", "web").stdout)[0]
    vips = {v["network"]: v["addr"] for v in svc["virtual_ips"]}
    assert in_subnet(vips["front"], "10.0.0.0/24") and in_subnet(vips["back"], "10.99.0.0/24")
    assert svc["spec"]["task"]["networks"] == [
        {"target": front_id, "aliases": []}, {"target": back_id, "aliases": ["db", "store"]}]
    pretty = [line.split() for line in
              c.cli("service", "inspect", "--pretty", "web").stdout.splitlines()]
    assert ["Endpoint", "Mode:", "vip"] in pretty
    assert ["front", "VIP", vips["front"]] in pretty
    assert ["back", "VIP", vips["back"], "aliases:", "db,", "store"] in pretty
    tasks = json.loads(c.cli("service", "ps", "web", "--format", "json").stdout)
    addrs = {t["id"]: {a["network_id"]: a["addr"] for a in t["networks"]} for t in tasks}
    assert len(addrs) == 2 and all(in_subnet(a[front_id], "10.0.0.0/24")
                                   and in_subnet(a[back_id], "10.99.0.0/24")
                                   for a in addrs.values()), addrs
    verbose = json.loads(c.cli("network", "inspect", "--verbose", "back").stdout)[0]
    assert [(s["name"], s["virtual_ip"]) for s in verbose["services"]] == [("web", vips["back"])]
    assert sorted((t["id"], t["addr"]) for t in verbose["services"][0]["tasks"]) == \
        sorted((tid, a[back_id]) for tid, a in addrs.items())

    # In use: refused, naming the service.
    assert fails(c, "network", "rm", "back") == "Error: network back is in use by service web"

    # update: leave back, join plain with an alias, dnsrr (no VIP).
    res = c.cli("service", "update", "--network-rm", "back", "--network-add",
                "name=plain,alias=p", "--endpoint-mode", "dnsrr", "web")
    assert res.stdout.splitlines()[-1] == "web: converged (2/2 running)"
    svc = admin.get("/v1/services/web")
    assert svc["spec"]["endpoint"]["mode"] == "dnsrr" and svc["virtual_ips"] == []
    plain_id = listed[2]["id"]
    assert svc["spec"]["task"]["networks"] == [
        {"target": front_id, "aliases": []}, {"target": plain_id, "aliases": ["p"]}]
    running = [t for t in admin.get("/v1/services/web/tasks") if t["desired_state"] == "running"]
    assert len(running) == 2 and all(
        sorted(a["network_id"] for a in t["networks"]) == sorted([front_id, plain_id])
        for t in running), running
    assert fails(c, "service", "update", "--network-add", "front", "web") == \
        "Error: --network-add: the service is already on network front"

    # Completion offers the networks' names.
    env = dict(c.env, _FLOTILLA_COMPLETE="bash_complete", COMP_CWORD="7",
               COMP_WORDS=f"flotilla --host {c.first.addr} --tls-dir {c.admin_dir} network rm p")
    out = subprocess.run([sys.executable, "-m", "flotilla.cli.main"], env=env,
                         capture_output=True, text=True, timeout=30).stdout
    assert [line.split(",", 1)[1] for line in out.splitlines()] == ["plain"]

    c.cli("service", "rm", "web")
    assert c.cli("network", "rm", "back", "front", "plain").stdout.split() == \
        ["back", "front", "plain"]
    assert admin.get("/v1/networks") == []


def node_cli(*args, env=None):
    return subprocess.run([PYTHON, "-m", "flotilla.cli.main", *args], capture_output=True,
                          text=True, timeout=120, env=env)


def test_the_address_pool_is_chosen_at_init(make_cluster, tmp_path):
    c = make_cluster()
    # Refused values: one line naming the flag, nothing written.
    for command, flags, needle in [
        (("run", "--init"), ("--default-addr-pool", "10.200.0.1/16"),
         "--default-addr-pool: '10.200.0.1/16' is not an IPv4 subnet in CIDR form"),
        (("init",), ("--default-addr-pool", "10.200.0.0/24", "--default-addr-pool-mask-length",
                     "20"), "--default-addr-pool: pool 10.200.0.0/24 is smaller than one /20 "
                            "subnet"),
        (("run", "--init"), ("--default-addr-pool-mask-length", "8"),
         "--default-addr-pool-mask-length: 8 is not between 16 and 29"),
    ]:
        res = node_cli("node", *command, "--data-dir", str(tmp_path / "bad"), *flags, env=c.env)
        err = [line for line in res.stderr.splitlines() if line.strip()]
        assert res.returncode == 1 and len(err) == 1, (command, flags, res.stderr)
        assert err[0].startswith(f"Error: {needle}"), (command, flags, err)
        assert not os.path.exists(tmp_path / "bad")

    # node init takes them; the node started from that directory runs the cluster.
    m1 = NodeProc(c, "m1")
    res = node_cli("node", "init", "--data-dir", m1.data_dir, "--listen", m1.addr, "--hostname",
                   "m1", "--default-addr-pool", "10.200.0.0/16",
                   "--default-addr-pool-mask-length", "26", env=c.env)
    assert res.returncode == 0, res.stderr
    c.nodes["m1"] = m1.start()
    c.wait_leader_ready(60)
    settings = c.cli("cluster", "inspect").stdout
    assert "Default address pool: 10.200.0.0/16\n" in settings
    assert "Subnet size:          /26\n" in settings
    c.cli("network", "create", "first")
    c.cli("network", "create", "second")
    assert [(n["name"], n["subnet"]) for n in
            json.loads(c.cli("network", "ls", "--format", "json").stdout)] == [
        ("first", "10.200.0.0/26"), ("second", "10.200.0.64/26")]

    # A cluster setting: refused on a data directory that holds a node.
    res = node_cli("node", "run", "--data-dir", m1.data_dir, "--default-addr-pool",
                   "10.1.0.0/16", env=c.env)
    err = [line for line in res.stderr.splitlines() if line.strip()]
    assert res.returncode == 1 and len(err) == 1, res.stderr
    assert err[0].startswith("Error: --default-addr-pool is a cluster setting, taken only when "
                             "--init creates the cluster;"), err
    wait_for(lambda: c.leader() is m1, 10, what="the node still leading")
