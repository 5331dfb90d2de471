"""The agent's networks component (``agent/networking.py``): what it hands the
engine, the VIPs and the resolver, and when; what the executor waits for.
The driver, VIPs and resolver are stand-ins that record their input (each is
tested for real elsewhere: test_overlay_dataplane, test_vips, test_resolver)."""

import ipaddress
import threading
import time

import pytest

from flotilla.agent import networking as networking_mod
from flotilla.agent.network.driver import ApplyResult
from flotilla.agent.network.dockernet import NetworkUnavailable
from flotilla.agent.network.names import bridge_name
from flotilla.agent.networking import Networking
from tests.helpers.cluster import wait_for
from flotilla.agent.network.wireguard import WireGuardError, tunnel_address
from tests.unit.test_network_views import APP, KEY_PEER, ME, PEER, SIDE, encrypted, views


class Driver:
    """Records each apply; fails the networks in ``fail``."""

    def __init__(self):
        self.applies = []
        self.nets = []
        self.fail: dict[str, str] = {}
        self.raise_: Exception | None = None

    def __call__(self, client, underlay_ip, cluster_id):
        import ipaddress
        self.underlay_ip = ipaddress.IPv4Address(underlay_ip)
        self.cluster_id = cluster_id
        return self

    def apply(self, nets):
        self.applies.append([n.id for n in nets])
        self.nets.append({n.id: n for n in nets})
        if self.raise_ is not None:
            raise self.raise_
        return ApplyResult(errors={n.id: self.fail[n.id] for n in nets if n.id in self.fail})


class Vips:
    def __init__(self):
        self.specs = []

    def apply(self, spec):
        self.specs.append(spec)


class Resolver:
    def __init__(self):
        self.tables, self.listens, self.started, self.stopped = [], [], 0, 0

    def update(self, table):
        self.tables.append(table)

    def listen(self, addrs):
        self.listens.append(list(addrs))

    def start(self):
        self.started += 1

    def stop(self, timeout=None):
        self.stopped += 1


@pytest.fixture
def parts():
    return Driver(), Vips(), Resolver()


def make(parts, initial=None, **kw):
    driver, vips, resolver = parts
    return Networking("n-me", lambda: object(), views=initial, cluster_id="c1",
                      vips=vips, resolver=resolver, driver=driver, **kw)


def test_the_first_pass_programs_the_networks_the_node_was_told_before(parts):
    driver, vips, resolver = parts
    net = make(parts, initial=views())          # as read from networks.json
    net.start()
    try:
        ready = net.ready([SIDE, APP], timeout=10)
        assert [(r.id, r.docker_name, r.gateway) for r in ready] == [
            (SIDE, "flotilla-side", "10.0.2.1"), (APP, "flotilla-app", "10.0.1.1")]
        assert driver.applies[0] == [APP, SIDE]
        assert str(driver.underlay_ip) == ME and driver.cluster_id == "c1"
        wait_for(lambda: vips.specs and bridge_name(APP) in vips.specs[-1], 10,
                 what="the VIPs")
        assert vips.specs[-1][bridge_name(APP)]["10.0.1.2"] == ["10.0.1.3", "10.0.1.4"]
        wait_for(lambda: resolver.listens and resolver.listens[-1] ==
                 [("10.0.1.1", 53), ("10.0.2.1", 53)], 10, what="the resolver's addresses")
        assert resolver.started == 1 and set(resolver.tables[-1]) == {APP, SIDE}
    finally:
        net.stop()
        net.stop()                      # idempotent
    assert resolver.stopped == 1


def test_an_own_task_that_stops_leaves_the_vip_at_once_without_engine_work(parts):
    driver, vips, resolver = parts
    net = make(parts, initial=views())
    net.start()
    try:
        net.ready([APP], timeout=10)
        wait_for(lambda: vips.specs and bridge_name(APP) in vips.specs[-1], 10, what="VIPs")
        applies = len(driver.applies)
        started = time.monotonic()
        net.task_status("w1", {"state": "failed"})
        wait_for(lambda: vips.specs[-1][bridge_name(APP)]["10.0.1.2"] == ["10.0.1.4"], 5,
                 interval=0.01, what="the stopped task out of the VIP")
        assert time.monotonic() - started < 1.0
        assert len(driver.applies) == applies        # the engine's input did not change
        # out of the answers too
        web = next(s for s in resolver.tables[-1][APP]["services"] if s["name"] == "web")
        assert web["task_addrs"] == ["10.0.1.4"]
        # a task of another node, or one still running, is not taken out
        net.task_status("w2", {"state": "failed"})
        net.task_status("c1", {"state": "running"})
        assert net.state()["down"] == ["w1"]
        # once the managers' picture says so too, it is theirs to say
        v = views()
        v[APP]["endpoints"] = [e for e in v[APP]["endpoints"] if e["task_id"] != "w1"]
        net.update(v)
        assert net.state()["down"] == []
    finally:
        net.stop()


def test_a_network_the_engine_refuses_is_retried_and_named_to_the_executor(parts, monkeypatch):
    monkeypatch.setattr(networking_mod, "RETRY_EVERY", 0.05)
    driver, vips, resolver = parts
    driver.fail = {SIDE: "creating Docker network flotilla-side: Pool overlaps"}
    net = make(parts, initial=views())
    net.start()
    try:
        assert [r.id for r in net.ready([APP], timeout=10)] == [APP]
        with pytest.raises(NetworkUnavailable) as info:
            net.ready([APP, SIDE], timeout=0.3)
        assert str(info.value) == ("network side (sidenet01234) is not ready on this node "
                                   "after 0.3 s: creating Docker network flotilla-side: "
                                   "Pool overlaps")
        # tried again, and once the engine takes it, a waiting task goes on
        waiter = threading.Thread(target=lambda: net.ready([SIDE], timeout=10))
        waiter.start()
        wait_for(lambda: len(driver.applies) >= 3, 10, what="retries")
        driver.fail = {}
        waiter.join(10)
        assert not waiter.is_alive()
        # a failing engine never stops the component
        driver.raise_ = RuntimeError("the engine is down")
        net.reapply(timeout=10)
        assert net.state()["errors"] == {APP: "RuntimeError: the engine is down",
                                         SIDE: "RuntimeError: the engine is down"}
        driver.raise_ = None
        net.reapply(timeout=10)
        assert net.state()["errors"] == {} and net.state()["applied"] == sorted([APP, SIDE])
    finally:
        net.stop()


def test_a_network_the_node_was_not_told_about(parts):
    net = make(parts)
    net.start()
    try:
        with pytest.raises(NetworkUnavailable, match="network nowhere01234 is not ready on this "
                                                     "node after 0.2 s: this node has not been "
                                                     "told about it"):
            net.ready(["nowhere0123456"], timeout=0.2)
        # told: made, and the waiter goes on
        net.update(views())
        assert [r.id for r in net.ready([APP], timeout=10)] == [APP]
        # no network left: the engine is told so, the resolver serves nowhere
        net.update({})
        wait_for(lambda: parts[0].applies[-1] == [], 10, what="the networks removed")
        wait_for(lambda: parts[2].listens[-1] == [], 10, what="the resolver's addresses dropped")
    finally:
        net.stop()


class Tunnel:
    """Records what the engine's WireGuard tunnel is asked; fails when told."""

    def __init__(self, calls):
        self.calls = calls
        self.fail: str | None = None

    def apply(self, spec):
        self.calls.append(("tunnel", spec))
        if self.fail:
            raise WireGuardError(self.fail)
        return []

    def remove(self):
        self.calls.append(("remove", None))
        return []


def with_tunnel(parts, tmp_path, unavailable=None, initial=None):
    driver = parts[0]
    calls = []
    tunnel = Tunnel(calls)
    apply = driver.apply

    def recorded(nets):
        calls.append(("engine", [n.id for n in nets]))
        return apply(nets)
    driver.apply = recorded
    net = make(parts, initial=initial, tunnel=tunnel)
    net.load_wireguard(str(tmp_path / "wireguard.key"), 51820, unavailable=unavailable)
    return net, tunnel, calls


def test_an_encrypted_network_across_hosts_goes_through_the_tunnel_made_first(parts, tmp_path):
    driver, vips, resolver = parts
    net, tunnel, calls = with_tunnel(parts, tmp_path, initial=encrypted())
    info = net.wireguard_info()
    assert info["port"] == 51820 and len(info["public_key"]) == 44 and set(info) == {
        "public_key", "port"}                               # what the node publishes
    net.start()
    try:
        net.ready([APP, SIDE], timeout=10)
        kinds = [k for k, _ in calls]
        assert kinds.index("tunnel") < kinds.index("engine")
        spec = next(s for k, s in calls if k == "tunnel")
        assert [(p.public_key, p.endpoint, p.address) for p in spec.peers] == [
            (KEY_PEER, f"{PEER}:51999", tunnel_address(PEER))]
        assert spec.port == 51820 and str(spec.underlay) == ME
        app = driver.nets[-1][APP]
        assert app.local == tunnel_address(ME)
        assert {e.underlay_ip for e in app.remote(ipaddress.IPv4Address(ME))} == {
            tunnel_address(PEER)}
        wait_for(lambda: vips.specs and vips.specs[-1].get(bridge_name(APP), {}).get(
            "10.0.1.2") == ["10.0.1.3", "10.0.1.4"], 10, what="the peer's task behind the VIP")
        # no encrypted network across hosts any more: the tunnel goes, after the engine
        net.update(views())
        wait_for(lambda: calls[-1] == ("remove", None), 10, what="the tunnel removed")
        assert calls[-2][0] == "engine"
    finally:
        net.stop()


def test_a_node_that_cannot_tunnel_refuses_encrypted_networks_at_once(parts, tmp_path):
    why = ("traffic between hosts on encrypted networks needs wireguard-go and wg, not found "
           "on this node (Debian: apt install wireguard-go wireguard-tools, then restart the "
           "node)")
    net, tunnel, calls = with_tunnel(parts, tmp_path, unavailable=why, initial=encrypted())
    assert net.wireguard_info() is None                    # publishes no key
    net.start()
    try:
        assert [r.id for r in net.ready([SIDE], timeout=10)] == [SIDE]
        started = time.monotonic()
        with pytest.raises(NetworkUnavailable) as info:
            net.ready([APP], timeout=10)
        assert time.monotonic() - started < 1.0
        assert str(info.value) == f"network app (appnet012345) cannot be used on this node: {why}"
        assert not any(k == "tunnel" for k, _ in calls)
        # nothing of it reaches the other host
        assert parts[0].nets[-1][APP].remote(ipaddress.IPv4Address(ME)) == []
    finally:
        net.stop()


def test_a_tunnel_that_fails_blocks_its_networks_and_reaches_nothing(parts, tmp_path,
                                                                      monkeypatch):
    monkeypatch.setattr(networking_mod, "RETRY_EVERY", 0.05)
    net, tunnel, calls = with_tunnel(parts, tmp_path, initial=encrypted())
    tunnel.fail = "wg syncconf flw-nme failed (1): Address already in use"
    net.start()
    try:
        wait_for(lambda: APP in net.state()["blocked"], 10, what="the network blocked")
        with pytest.raises(NetworkUnavailable, match="this node's WireGuard tunnel failed: "
                                                     "wg syncconf .* Address already in use"):
            net.ready([APP], timeout=10)
        wait_for(lambda: parts[0].nets, 10, what="the engine")
        assert parts[0].nets[-1][APP].remote(ipaddress.IPv4Address(ME)) == []
        # tried again; once it works the network serves
        tunnel.fail = None
        wait_for(lambda: APP not in net.state()["blocked"], 10, what="the tunnel up")
        assert [r.id for r in net.ready([APP], timeout=10)] == [APP]
        assert net.state()["tunnel"] == [f"{PEER}:51999"]
    finally:
        net.stop()
