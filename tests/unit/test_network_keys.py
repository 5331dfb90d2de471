"""When the managers rotate the nodes' WireGuard keys (``manager/networkkeys.py``),
how they record a new one, and how an agent makes, reports and switches to it
(``agent/networking.py``). The rotation on real tunnels is in
test_encrypted_networks."""

import base64
import json
import os
import stat

import pytest

from flotilla.agent.network import wireguard as wg
from flotilla.agent.networking import Networking
from flotilla.manager import networkkeys as nk
from flotilla.manager.api.cluster import ClusterUpdate
from flotilla.model import objects
from flotilla.model.session import Heartbeat
from flotilla.model.validation import ApiError, validate

HOUR = 3600.0
KEY1 = wg.public_key(wg.generate_private_key())
KEY2 = wg.public_key(wg.generate_private_key())


def settings(period=12 * HOUR, force=0):
    return {"rotation_period": period, "force_rotate": force}


def node(node_id="n1", key=KEY1, generation=1, rotated_at=0.0, force=0, state="ready",
         **record):
    n = {"id": node_id, "status": {"state": state},
         "description": {"wireguard": {"public_key": key, "port": 51820} if key else None}}
    if generation is not None:
        n["network_key"] = {"generation": generation, "rotated_at": rotated_at,
                            "force_rotate": force, "due": None, "due_force": None,
                            "requested_at": None, **record}
    return n


def test_a_key_is_due_once_older_than_the_period_or_made_before_a_forced_rotation():
    assert not nk.due(node(rotated_at=1000.0), settings(), 1000.0 + 12 * HOUR - 1)
    assert nk.due(node(rotated_at=1000.0), settings(), 1000.0 + 12 * HOUR)
    assert nk.due(node(rotated_at=1000.0), settings(period=60), 1060.0)
    # cluster update --rotate-network-keys: every key made before is due at once
    assert nk.due(node(rotated_at=1000.0), settings(force=1), 1001.0)
    assert not nk.due(node(rotated_at=1000.0, force=1), settings(force=1), 1001.0)
    # asked already; no key published; no record yet (registered before this release)
    assert not nk.due(node(rotated_at=0.0, due=2), settings(), 10 ** 9)
    assert not nk.due(node(key=None), settings(), 10 ** 9)
    assert not nk.due(node(generation=None), settings(), 10 ** 9)
    # a leader whose clock is behind the one that recorded the key: not yet
    assert not nk.due(node(rotated_at=5000.0), settings(period=60), 4000.0)


def test_ready_nodes_are_asked_oldest_key_first_a_few_at_a_time():
    now = 100 * HOUR
    nodes = [node(f"n{i}", rotated_at=float(i)) for i in range(5, 0, -1)]
    nodes += [node("down", state="down"), node("fresh", rotated_at=now - 1)]
    assert nk.to_ask(nodes, settings(), now, limit=3) == ["n1", "n2", "n3"]
    # rotations under way count against the limit until they go stale
    nodes[0] = node("n5", due=2, requested_at=now - 10)
    nodes[1] = node("n4", due=2, requested_at=now - nk.STALE_AFTER - 1)
    assert nk.to_ask(nodes, settings(), now, limit=3) == ["n1", "n2"]
    assert nk.to_ask(nodes, settings(), now, limit=1) == []
    # a cluster made before the setting: 12 hours
    assert objects.network_keys_spec({"spec": {}}) == settings()
    assert nk.settings({"spec": objects.default_cluster_spec()}) == settings()


def test_a_rotation_is_asked_then_recorded_from_the_report_of_that_generation():
    keys = settings(force=3)
    n = nk.asked(node(rotated_at=0.0), keys, 50 * HOUR)
    assert n["network_key"]["due"] == 2 and n["network_key"]["due_force"] == 3
    assert n["network_key"]["requested_at"] == 50 * HOUR
    assert nk.asked(n, keys, 50 * HOUR) is None                 # asked once
    assert nk.agent_view(n) == {"generation": 1, "public_key": KEY1, "due": 2}
    # a report of another generation, or of the key recorded, changes nothing
    assert nk.reported(n, KEY2, 3, 51 * HOUR) is None
    assert nk.reported(n, KEY1, 2, 51 * HOUR) is None
    done = nk.reported(n, KEY2, 2, 51 * HOUR)
    assert done["description"]["wireguard"] == {"public_key": KEY2, "port": 51820}
    assert done["network_key"] == {"generation": 2, "rotated_at": 51 * HOUR, "force_rotate": 3,
                                   "due": None, "due_force": None, "requested_at": None}
    assert nk.is_recorded(done, {"public_key": KEY2, "generation": 2})
    assert not nk.is_recorded(n, {"public_key": KEY2, "generation": 2})
    assert nk.api_view(done) == {"generation": 2, "rotated_at": 51 * HOUR, "due": None,
                                 "requested_at": None}
    assert not nk.due(done, keys, 52 * HOUR)


def test_a_registration_with_a_key_not_recorded_is_a_new_generation():
    keys = settings(force=2)
    fresh = {"id": "n1", "description": {"wireguard": {"public_key": KEY1, "port": 51820}}}
    first = nk.registered({"id": "n1"}, fresh, keys, 10.0)
    assert first["network_key"]["generation"] == 1 and first["network_key"]["force_rotate"] == 2
    assert nk.registered(first, dict(first), keys, 20.0) == first          # the same key
    other = dict(first, description={"wireguard": {"public_key": KEY2, "port": 51820}})
    again = nk.registered(first, other, keys, 30.0)
    assert again["network_key"]["generation"] == 2 and again["network_key"]["rotated_at"] == 30.0
    # a key made for a rotation asked before a later forced one answers the earlier
    asked = dict(first, network_key=dict(first["network_key"], due=2, due_force=1))
    assert nk.registered(asked, other, settings(force=4), 30.0)["network_key"][
        "force_rotate"] == 1
    # no key published: nothing recorded
    bare = {"id": "n2", "description": {"wireguard": None}}
    assert "network_key" not in nk.registered({"id": "n2"}, bare, keys, 10.0)


def test_the_settings_and_reports_are_checked_naming_the_field():
    assert ClusterUpdate.model_validate({"network_key_rotation": "1m"}).network_key_rotation == 60
    assert ClusterUpdate.model_validate({"network_key_rotation": "12h",
                                         "rotate_network_keys": True}).rotate_network_keys
    for body, field in (({"network_key_rotation": "59s"}, "network_key_rotation"),
                        ({"network_key_rotation": "400d"}, "network_key_rotation"),
                        ({"network_key_rotation": "soon"}, "network_key_rotation"),
                        ({"network_key_rotation": -1}, "network_key_rotation"),
                        ({"rotate_network_keys": "yes"}, "rotate_network_keys")):
        with pytest.raises(ApiError) as e:
            validate(ClusterUpdate, json.dumps(body).encode())
        assert e.value.status == 400 and e.value.field == field, (body, e.value.field)
    assert "between 1m and 365d" in str(pytest.raises(
        ApiError, validate, ClusterUpdate, b'{"network_key_rotation": "1s"}').value)
    beat = validate(Heartbeat, json.dumps({"session_id": "s", "network_key": {
        "public_key": KEY2, "generation": 2}}).encode())
    assert beat.network_key.model_dump() == {"public_key": KEY2, "generation": 2}
    for report, field in (({"public_key": "x" * 44, "generation": 2}, "network_key.public_key"),
                          ({"public_key": KEY2, "generation": 0}, "network_key.generation"),
                          ({"public_key": KEY2, "generation": 2, "private_key": KEY1},
                           "network_key.private_key")):
        with pytest.raises(ApiError) as e:
            validate(Heartbeat, json.dumps({"session_id": "s", "network_key": report}).encode())
        assert e.value.status == 400 and e.value.field == field, (report, e.value.field)


# -- the agent -------------------------------------------------------------------------

def agent(tmp_path):
    net = Networking("n-me", lambda: object())
    net.load_wireguard(str(tmp_path / "wireguard.key"), 51820, unavailable=None)
    made = []
    net.on_new_key = lambda: made.append(1)
    return net, made


def picture(key):
    """An encrypted network's picture listing this node with ``key``."""
    return {"net1": {"id": "net1", "encrypted": True,
                     "peers": [{"node_id": "n-me", "node_addr": "192.0.2.11",
                                "wireguard": {"public_key": key, "port": 51820}}]}}


def test_an_agent_makes_a_new_key_aside_reports_it_and_switches_once_recorded(tmp_path):
    net, made = agent(tmp_path)
    path = str(tmp_path / "wireguard.key")
    old = open(path).read()
    first = net.wireguard_info()["public_key"]
    net.key_order({"generation": 1, "public_key": first, "due": None})
    assert net.key_report() is None and not made
    net.key_order({"generation": 1, "public_key": first, "due": 2})
    assert made == [1]                                   # a heartbeat goes at once
    report = net.key_report()
    assert report["generation"] == 2 and report["public_key"] != first
    assert stat.S_IMODE(os.stat(path + ".next").st_mode) == 0o600
    assert open(path).read() == old                      # the tunnel keeps the old key
    net.key_order({"generation": 1, "public_key": first, "due": 2})
    assert made == [1] and net.key_report() == report    # made once, reported until recorded
    # recorded: no more reports; the switch waits for the pictures to list it
    net.key_order({"generation": 2, "public_key": report["public_key"], "due": None})
    assert net.key_report() is None
    net._switch_key(picture(first))
    assert open(path).read() == old
    net._switch_key(picture(report["public_key"]))
    assert sorted(os.listdir(tmp_path)) == ["wireguard.key"]      # renamed over the old
    assert wg.public_key(open(path).read().strip()) == report["public_key"]
    assert net.wireguard_info()["public_key"] == report["public_key"]
    assert net.key_switches == 1


def test_an_agent_without_encrypted_pictures_switches_when_recorded(tmp_path):
    net, made = agent(tmp_path)
    first = net.wireguard_info()["public_key"]
    net.key_order({"generation": 4, "public_key": first, "due": 5})
    new = net.key_report()["public_key"]
    net.key_order({"generation": 5, "public_key": new, "due": None})
    net._switch_key({})
    assert net.wireguard_info()["public_key"] == new and net.key_switches == 1


def test_a_new_key_the_managers_no_longer_want_is_dropped(tmp_path):
    net, made = agent(tmp_path)
    path = str(tmp_path / "wireguard.key")
    first = net.wireguard_info()["public_key"]
    net.key_order({"generation": 1, "public_key": first, "due": 2})
    assert os.path.exists(path + ".next")
    net.key_order({"generation": 1, "public_key": first, "due": None})
    assert not os.path.exists(path + ".next") and net.key_report() is None
    net._switch_key({})
    assert net.wireguard_info()["public_key"] == first and net.key_switches == 0


def test_a_registration_publishes_the_new_key_and_a_restart_takes_it(tmp_path):
    net, made = agent(tmp_path)
    path = str(tmp_path / "wireguard.key")
    first = net.wireguard_info()["public_key"]
    net.key_order({"generation": 1, "public_key": first, "due": 2})
    new = net.key_report()["public_key"]
    # a new session (another leader) publishes the new key: the managers record it
    assert net.wireguard_info()["public_key"] == new
    # an older leader says nothing of keys: it holds what was published
    net.key_order(None)
    net._switch_key({})
    assert net.key_switches == 1 and not os.path.exists(path + ".next")
    # a node stopped between making a key and switching takes it at start
    private = wg.make_next_key(path)
    again, _ = agent(tmp_path)
    assert again.wireguard_info()["public_key"] == wg.public_key(private)
    assert os.listdir(tmp_path) == ["wireguard.key"]
    # garbage aside is removed, the key in use kept
    with open(path + ".next", "w") as f:
        f.write("garbage\n")
    assert wg.load_or_create_key(path) == private and os.listdir(tmp_path) == ["wireguard.key"]


def test_a_switch_of_keys_starts_a_handshake_with_each_peer_concerned():
    import ipaddress

    def b64(i):
        return base64.b64encode(bytes([i]) * 32).decode()

    peers = tuple(wg.Peer(b64(i), f"192.0.2.{i}:51820", wg.tunnel_address(f"192.0.2.{i}"))
                  for i in (12, 13))
    spec = wg.TunnelSpec(b64(1), 51820, ipaddress.IPv4Address("192.0.2.11"), peers)
    dump = (b64(1), 51820, frozenset((p.public_key, p.endpoint, p.allowed_ips)
                                     for p in peers))
    assert wg.rekeyed_peers(dump, spec) == []                               # nothing new
    # a peer's key replaced: that peer
    rekeyed = (b64(1), 51820, frozenset({(b64(99), peers[0].endpoint, peers[0].allowed_ips),
                                         (peers[1].public_key, peers[1].endpoint,
                                          peers[1].allowed_ips)}))
    assert wg.rekeyed_peers(rekeyed, spec) == [peers[0].address]
    # this engine's key replaced: every peer
    assert wg.rekeyed_peers((b64(2),) + dump[1:], spec) == [p.address for p in peers]
