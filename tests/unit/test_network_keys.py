"""When the managers rotate the nodes' WireGuard keys (``manager/networkkeys.py``),
how they record a new one, and how an agent makes, reports and switches to it
(``agent/networking.py``). The rotation on real tunnels is in
test_encrypted_networks."""

import json

import pytest

from flotilla.agent.network import wireguard as wg
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
