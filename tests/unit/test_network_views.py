"""From the pictures the managers send a node to what its engine, VIPs and
resolver are given (``agent/network/views.py``)."""

import copy
import ipaddress

from flotilla.agent.network import views as nv
from flotilla.agent.network.names import bridge_name
from flotilla.agent.network.resolver import Table, name_key
from flotilla.agent.network.wireguard import Peer, tunnel_address
from flotilla.manager.dispatcher.netviews import serving

ME, PEER = "192.0.2.11", "192.0.2.12"
APP, SIDE = "appnet0123456789abcdef", "sidenet0123456789abcde"


def ep(task, service, addr, node_addr, running=True, node="n-peer"):
    return {"task_id": task, "service_id": service, "service_name": service, "slot": 1,
            "addr": f"{addr}/24", "aliases": [], "node_id": node, "node_addr": node_addr,
            "running": running}


def views():
    app = {"id": APP, "name": "app", "subnet": "10.0.1.0/24", "gateway": "10.0.1.1",
           "vni": 4097, "internal": False, "encrypted": False, "attachable": False,
           "services": [{"id": "web", "name": "web", "mode": "vip", "aliases": ["www"],
                         "vip": "10.0.1.2/24"},
                        {"id": "rr", "name": "rr", "mode": "dnsrr", "aliases": [], "vip": None},
                        {"id": "client", "name": "client", "mode": "vip", "aliases": [],
                         "vip": "10.0.1.9/24"}],
           "endpoints": [ep("w1", "web", "10.0.1.3", ME, node="n-me"),
                         ep("w2", "web", "10.0.1.4", PEER),
                         ep("w3", "web", "10.0.1.5", PEER, running=False),
                         ep("r1", "rr", "10.0.1.6", PEER),
                         ep("c1", "client", "10.0.1.7", ME, node="n-me")]}
    side = {"id": SIDE, "name": "side", "subnet": "10.0.2.0/24", "gateway": "10.0.2.1",
            "vni": 4098, "internal": True, "encrypted": False, "attachable": False,
            "services": [{"id": "other", "name": "other", "mode": "vip", "aliases": [],
                          "vip": "10.0.2.2/24"}],
            "endpoints": [ep("o1", "other", "10.0.2.3", ME, node="n-me"),
                          ep("c1", "client", "10.0.2.4", ME, node="n-me")]}
    return {APP: app, SIDE: side}


def test_this_nodes_underlay_is_where_the_managers_see_it():
    assert nv.underlay_of(views(), "n-me") == ME
    assert nv.underlay_of(views(), "n-unknown") is None


def test_the_engine_gets_each_network_with_its_gateway_and_the_remote_endpoints():
    nets, errors = nv.driver_networks(views(), ME)
    assert errors == {}
    app = next(n for n in nets if n.id == APP)
    # nodes take no address: the bridge holds the gateway
    assert str(app.attachment) == "10.0.1.1/24" and app.vni == 4097 and not app.internal
    remote = [(str(e.addr), str(e.underlay_ip)) for e in app.remote(ipaddress.IPv4Address(ME))]
    # every endpoint on another engine, running or not yet
    assert remote == [("10.0.1.4", PEER), ("10.0.1.5", PEER), ("10.0.1.6", PEER)]
    assert next(n for n in nets if n.id == SIDE).internal


def test_a_bad_picture_fails_its_own_network_only():
    v = views()
    v[SIDE]["gateway"] = None
    v[APP]["endpoints"].append(ep("bad", "web", "10.0.1.1", PEER))      # the gateway itself
    v[APP]["endpoints"].append(ep("dup", "web", "10.0.1.4", ME, running=False))
    nets, errors = nv.driver_networks(v, ME)
    assert [n.id for n in nets] == [APP] and set(errors) == {SIDE}
    # an address listed twice: the running holder's engine wins; the gateway is no endpoint
    assert {str(e.addr): str(e.underlay_ip) for e in nets[0].endpoints}["10.0.1.4"] == PEER
    assert "10.0.1.1" not in {str(e.addr) for e in nets[0].endpoints}


def test_a_vip_spreads_over_its_running_tasks_but_those_seen_leaving():
    spec = nv.vip_spec(views(), [APP, SIDE], ME)
    assert spec == {bridge_name(APP): {"10.0.1.2": ["10.0.1.3", "10.0.1.4"],
                                       "10.0.1.9": ["10.0.1.7"]},
                    bridge_name(SIDE): {"10.0.2.2": ["10.0.2.3"]}}
    # this node's own task stopped: out before the managers say so
    assert nv.vip_spec(views(), [APP], ME, down={"w1"}) == {
        bridge_name(APP): {"10.0.1.2": ["10.0.1.4"], "10.0.1.9": ["10.0.1.7"]}}
    # only the networks made on the engine; a VIP with no task left rejects
    v = views()
    for e in v[APP]["endpoints"]:
        e["running"] = False
    assert nv.vip_spec(v, [APP], ME) == {bridge_name(APP): {"10.0.1.2": [], "10.0.1.9": []}}


def test_the_resolver_answers_each_task_for_the_networks_it_is_on():
    table = Table(nv.resolver_table(views(), ME, down={"w1"}))
    client_app, client_side, other = "10.0.1.7", "10.0.2.4", "10.0.2.3"
    # the client is on both networks, whichever address it asks from
    for source in (client_app, client_side):
        assert table.lookup(source, name_key("web")) == ("10.0.1.2",)
        assert table.lookup(source, name_key("www")) == ("10.0.1.2",)
        assert table.lookup(source, name_key("tasks.web")) == ("10.0.1.4",)
        assert table.lookup(source, name_key("rr")) == ("10.0.1.6",)
        assert table.lookup(source, name_key("other")) == ("10.0.2.2",)
    # a task of side only: web is not a name for it
    assert table.lookup(other, name_key("web")) is None
    assert table.lookup(other, name_key("other")) == ("10.0.2.2",)
    assert nv.listen_addresses(views(), [APP, SIDE]) == [("10.0.1.1", 53), ("10.0.2.1", 53)]
    assert nv.listen_addresses(views(), [APP], port=5353) == [("10.0.1.1", 5353)]


KEY_ME, KEY_PEER = "A" * 43 + "=", "B" * 43 + "="


def encrypted(v=None, peer_key=KEY_PEER):
    """``app`` encrypted: its picture lists its nodes' WireGuard keys."""
    v = copy.deepcopy(v or views())
    v[APP]["encrypted"] = True
    v[APP]["peers"] = [
        {"node_id": "n-me", "node_addr": ME, "wireguard": {"public_key": KEY_ME, "port": 51820}},
        {"node_id": "n-peer", "node_addr": PEER,
         "wireguard": peer_key and {"public_key": peer_key, "port": 51999}}]
    return v


def test_an_encrypted_network_reaches_other_hosts_through_the_tunnel_only():
    v = encrypted()
    plan = nv.tunnel_plan(v, "n-me", ME)
    assert plan.spans == {APP} and plan.blocked == {} and plan.unreachable == {}
    assert plan.peers == {PEER: Peer(KEY_PEER, f"{PEER}:51999", tunnel_address(PEER))}
    (app,) = [n for n in nv.driver_networks(v, ME, set(plan.peers))[0] if n.id == APP]
    # VXLAN from this engine's tunnel address to the peer's, never the underlay's
    assert app.encrypted and app.local == tunnel_address(ME)
    assert [(str(e.addr), e.underlay_ip) for e in app.remote(ipaddress.IPv4Address(ME))] == [
        ("10.0.1.4", tunnel_address(PEER)), ("10.0.1.5", tunnel_address(PEER)),
        ("10.0.1.6", tunnel_address(PEER))]
    # names and VIPs across hosts as on a plain network
    assert nv.vip_spec(v, [APP], ME, tunnels=set(plan.peers))[bridge_name(APP)][
        "10.0.1.2"] == ["10.0.1.3", "10.0.1.4"]
    table = Table(nv.resolver_table(v, ME, tunnels=set(plan.peers)))
    assert table.lookup("10.0.1.7", name_key("tasks.web")) == ("10.0.1.3", "10.0.1.4")
    # the plain network beside it is unchanged
    (side,) = [n for n in nv.driver_networks(v, ME, set(plan.peers))[0] if n.id == SIDE]
    assert not side.encrypted and side.local is None


def test_without_the_tunnel_an_encrypted_network_stays_on_this_host():
    v = encrypted()
    (app,) = [n for n in nv.driver_networks(v, ME)[0] if n.id == APP]
    assert app.remote(ipaddress.IPv4Address(ME)) == []
    assert nv.vip_spec(v, [APP], ME)[bridge_name(APP)]["10.0.1.2"] == ["10.0.1.3"]
    assert Table(nv.resolver_table(v, ME)).lookup("10.0.1.7", name_key("tasks.web")) == \
        ("10.0.1.3",)
    # an engine whose node published no key is not reached
    plan = nv.tunnel_plan(encrypted(peer_key=None), "n-me", ME)
    assert plan.peers == {} and "published no WireGuard key" in plan.unreachable[PEER]
    # nor one that several nodes share: which key would answer?
    v = encrypted()
    v[APP]["endpoints"].append(ep("w9", "web", "10.0.1.20", PEER, node="n-peer2"))
    plan = nv.tunnel_plan(v, "n-me", ME)
    assert plan.peers == {} and "share the engine at 192.0.2.12" in plan.unreachable[PEER]


def test_a_node_sharing_its_engine_cannot_carry_an_encrypted_network_across_hosts():
    v = encrypted()
    v[APP]["endpoints"].append(ep("w8", "web", "10.0.1.21", ME, node="n-me2"))
    plan = nv.tunnel_plan(v, "n-me", ME)
    assert "shares its engine (192.0.2.11) with node n-me2" in plan.blocked[APP]
    # on one host only, nodes sharing an engine need no tunnel at all
    v = encrypted()
    v[APP]["endpoints"] = [e for e in v[APP]["endpoints"] if e["node_addr"] == ME]
    v[APP]["endpoints"].append(ep("w8", "web", "10.0.1.21", ME, node="n-me2"))
    plan = nv.tunnel_plan(v, "n-me", ME)
    assert not plan.needed and plan.blocked == {} and plan.peers == {}
    assert not nv.tunnel_plan(views(), "n-me", ME).needed        # no encrypted network


def test_a_task_being_stopped_serves_no_more():
    task = {"status": {"state": "running"}, "desired_state": "running"}
    assert serving(task)
    assert not serving(dict(task, desired_state="shutdown"))
    assert not serving(dict(task, status={"state": "starting"}))


class Store:
    """The store's reads that the managers' pictures use."""

    def __init__(self, **kinds):
        self.kinds = kinds

    def get(self, kind, oid):
        return next((o for o in self.kinds.get(kind, ()) if o["id"] == oid), None)

    def list(self, kind):
        return list(self.kinds.get(kind, ()))


def test_the_picture_of_an_encrypted_network_lists_its_nodes_public_keys():
    from types import SimpleNamespace

    from flotilla.manager.dispatcher.netviews import NetworkTracker, view
    net = {"id": APP, "name": "app", "subnet": "10.0.1.0/24", "gateway": "10.0.1.1",
           "vni": 4097, "spec": {"internal": False, "encrypted": True, "attachable": False}}
    wgkey = {"public_key": KEY_PEER, "port": 51999}
    nodes = [{"id": "n-peer", "status": {"state": "ready", "addr": PEER},
              "description": {"hostname": "b", "wireguard": wgkey}},
             {"id": "n-old", "status": {"state": "ready", "addr": "192.0.2.13"},
              "description": {"hostname": "c"}}]
    tasks = [{"id": f"t-{n['id']}", "service_id": "web", "service_name": "web", "slot": 1,
              "node_id": n["id"], "desired_state": "running", "status": {"state": "running"},
              "networks": [{"network_id": APP, "addr": f"10.0.1.{i + 3}/24", "aliases": []}]}
             for i, n in enumerate(nodes)]
    store = Store(network=[net], node=nodes, task=tasks, service=[])
    picture = view(store, APP)
    assert picture["peers"] == [
        {"node_id": "n-old", "node_addr": "192.0.2.13", "wireguard": None},
        {"node_id": "n-peer", "node_addr": PEER, "wireguard": wgkey}]
    net["spec"]["encrypted"] = False
    assert "peers" not in view(store, APP)                 # plain networks: no keys
    # a node publishing a new key (a new data directory) is sent again
    tracker = NetworkTracker()
    tracker.load(tasks)
    tracker.dirty.clear()
    rekeyed = dict(nodes[0], description={"wireguard": {"public_key": KEY_ME, "port": 51999}})
    tracker.note(SimpleNamespace(kind="node", id="n-peer", old=nodes[0], object=rekeyed))
    assert tracker.dirty == {APP}
