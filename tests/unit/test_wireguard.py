"""Encrypted networks' WireGuard tunnel (``agent/network/wireguard.py``):
keys, tunnel addresses, the configuration handed to ``wg``, the guard. The
tunnel itself is tested for real in test_encrypted_networks."""

import base64
import json
import ipaddress
import os
import stat

import pytest

from flotilla.agent.network import wireguard as wg
from flotilla.manager.api.dispatcher import Register
from flotilla.model.validation import ApiError, validate

# RFC 7748, 6.1: Alice's private and public keys.
ALICE = bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
ALICE_PUB = bytes.fromhex("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def test_a_public_key_is_the_x25519_public_key_of_the_private_one():
    assert wg.public_key(b64(ALICE)) == b64(ALICE_PUB)
    key = wg.generate_private_key()
    assert wg.valid_key(key) and wg.valid_key(wg.public_key(key)) and key != wg.public_key(key)
    assert wg.generate_private_key() != key
    for bad in ("", "x" * 44, b64(b"short"), b64(ALICE) + "=", None, 42):
        assert not wg.valid_key(bad)
    with pytest.raises(wg.WireGuardError, match="not 32"):
        wg.public_key(b64(b"short"))


def test_the_node_makes_its_key_once_private_and_whole(tmp_path):
    path = str(tmp_path / "wireguard.key")
    key = wg.load_or_create_key(path)
    assert wg.valid_key(key)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert os.listdir(tmp_path) == ["wireguard.key"]         # written aside, then renamed
    assert wg.load_or_create_key(path) == key                # kept: its public key is published
    os.chmod(path, 0o644)
    assert wg.load_or_create_key(path) == key
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    # a file holding something else is not silently replaced
    with open(path, "w") as f:
        f.write("not a key\n")
    with pytest.raises(wg.WireGuardError, match=r"wireguard\.key.*remove it to make a new one"):
        wg.load_or_create_key(path)
    assert open(path).read() == "not a key\n"


def test_a_tunnel_address_is_the_underlay_address_in_a_unique_local_prefix():
    assert wg.tunnel_address("192.0.2.11") == ipaddress.IPv6Address(
        "fd66:6c6f:7469:6c61::c000:20b")
    assert wg.tunnel_address("10.79.45.12") in wg.TUNNEL_PREFIX
    assert wg.tunnel_address("192.0.2.11") != wg.tunnel_address("192.0.2.12")
    assert wg.interface_name("bwqnd4qkfmxyz23") == "flw-bwqnd4qkfm"
    assert len(wg.interface_name("n-me")) <= 15


def spec(*peers):
    return wg.TunnelSpec(b64(ALICE), 51820, ipaddress.IPv4Address("192.0.2.11"), tuple(peers))


PEER_B = wg.Peer(b64(ALICE_PUB), "192.0.2.12:51820", wg.tunnel_address("192.0.2.12"))
PEER_C = wg.Peer(b64(bytes(range(32))), "192.0.2.13:51999", wg.tunnel_address("192.0.2.13"))


def test_the_configuration_names_each_peer_its_endpoint_and_tunnel_address_only():
    text = wg.render_config(spec(PEER_C, PEER_B))
    assert text == (
        "[Interface]\n"
        f"PrivateKey = {b64(ALICE)}\n"
        "ListenPort = 51820\n"
        "\n[Peer]\n"
        f"PublicKey = {b64(bytes(range(32)))}\n"
        "Endpoint = 192.0.2.13:51999\n"
        "AllowedIPs = fd66:6c6f:7469:6c61::c000:20d/128\n"
        "\n[Peer]\n"
        f"PublicKey = {b64(ALICE_PUB)}\n"
        "Endpoint = 192.0.2.12:51820\n"
        "AllowedIPs = fd66:6c6f:7469:6c61::c000:20c/128\n")
    assert spec(PEER_B).address == ipaddress.IPv6Address("fd66:6c6f:7469:6c61::c000:20b")
    assert b64(ALICE) not in repr(spec(PEER_B))          # never in logs


def test_what_wg_shows_compares_with_what_is_wanted():
    dump = (f"{b64(ALICE)}\t{b64(ALICE_PUB)}\t51820\toff\n"
            f"{b64(ALICE_PUB)}\t(none)\t192.0.2.12:51820\tfd66:6c6f:7469:6c61::c000:20c/128"
            "\t1700000000\t92\t148\toff\n")
    assert wg.parse_dump(dump) == spec(PEER_B).wanted()
    assert wg.parse_dump(dump) != spec(PEER_B, PEER_C).wanted()
    # a fresh interface: no key, no port, no peers
    assert wg.parse_dump("(none)\t(none)\t0\toff\n") == ("", 0, frozenset())
    assert wg.parse_dump("(none)\t(none)\t0\toff\n") != spec().wanted()
    with pytest.raises(wg.WireGuardError):
        wg.parse_dump("")


def test_the_guard_drops_tunnel_traffic_off_the_tunnel():
    script = wg.guard_script(True)
    assert "delete table ip6 flotilla" in script               # replaced whole
    assert 'ip6 daddr fd66:6c6f:7469:6c61::/96 oifname != "flw-*" drop' in script
    assert 'udp dport 4789 iifname != "flw-*" drop' in script
    assert wg.guard_script(False) == "table ip6 flotilla\ndelete table ip6 flotilla\n"


def test_without_wireguard_go_the_node_says_what_to_install(monkeypatch):
    monkeypatch.setattr(wg, "find_command", lambda name: None if name == "wireguard-go"
                        else f"/usr/bin/{name}")
    why = wg.available()
    assert "needs wireguard-go" in why and "apt install wireguard-go wireguard-tools" in why
    with pytest.raises(wg.WireGuardError, match="needs wireguard-go"):
        wg.WireGuard("flw-x", find=wg.find_command)._start()


def test_a_registration_carries_a_public_key_or_is_refused_naming_the_field():
    good = Register.model_validate({"wireguard": {"public_key": b64(ALICE_PUB),
                                                  "port": 51820}})
    assert good.wireguard.model_dump() == {"public_key": b64(ALICE_PUB), "port": 51820}
    assert Register.model_validate({}).wireguard is None
    for bad, field in (({"public_key": "x" * 44, "port": 51820}, "wireguard.public_key"),
                       ({"public_key": b64(ALICE_PUB), "port": 0}, "wireguard.port"),
                       ({"public_key": b64(ALICE_PUB), "port": 51820,
                         "private_key": b64(ALICE)}, "wireguard.private_key")):
        with pytest.raises(ApiError) as e:
            validate(Register, json.dumps({"wireguard": bad}).encode())
        assert e.value.status == 400
        assert e.value.field == field, (bad, e.value.field)


def test_the_wireguard_port_is_the_nodes_kept_and_changed_by_a_restart_flag(tmp_path, capsys):
    from flotilla.cli.node import _prepare
    from flotilla.common.config import NodeConfig

    cfg = NodeConfig(data_dir=str(tmp_path), node_id="n1", cluster_id="c1")
    assert cfg.wireguard_port == 51820
    cfg.save()
    os.makedirs(cfg.certs_dir)
    open(cfg.bundle_path, "w").close()
    flags = dict.fromkeys(("data_dir", "listen", "advertise", "raft_listen", "raft_advertise",
                           "agent_listen", "agent_advertise", "dispatcher_listen",
                           "dispatcher_advertise", "hostname", "wireguard_port"))
    flags["data_dir"] = str(tmp_path)
    assert _prepare(flags, False, None, None, None, None, resume_ok=True).wireguard_port == 51820
    flags["wireguard_port"] = 51999
    assert _prepare(flags, False, None, None, None, None, resume_ok=True).wireguard_port == 51999
    assert "wireguard-port 51820 -> 51999 (from --wireguard-port)" in capsys.readouterr().err
    assert NodeConfig.load(str(tmp_path)).wireguard_port == 51999       # kept


def test_a_node_registers_with_its_public_key_and_without_it_to_an_older_leader():
    from types import SimpleNamespace

    from flotilla.agent.session import Session
    from flotilla.common.httpclient import ApiError as ClientError

    sent = []

    class Client:
        def post(self, path, body, **kw):
            sent.append(body)
            if "wireguard" in body and len(sent) == 1:   # a leader of an earlier release
                raise ClientError(400, "invalid", "unknown field", field="wireguard")
            session.stopping.set()
            raise ClientError(503, "no_leader", "stop here")

    cfg = SimpleNamespace(hostname="h", advertise="192.0.2.11:4242", agent_advertise="",
                          advertise_explicit=False)
    info = {"public_key": b64(ALICE_PUB), "port": 51820}
    session = Session(cfg, Client(), link=None, on_update=lambda r: None,
                      on_removed=lambda: None, wireguard=lambda: info)
    session.run()
    assert sent[0]["wireguard"] == info and "wireguard" not in sent[1]
