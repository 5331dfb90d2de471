"""The CLI's network flags, parsed on the client: ``--network`` (Docker's
short and long forms), ``network create --opt``, ``--network-add/-rm``,
and ``service inspect --pretty``."""

import click
import pytest

from flotilla.cli.network import parse_network, parse_opts
from flotilla.cli.service import build_spec, pretty_service, update_networks, update_spec
from flotilla.model import network as netmodel


def error(fn, *args) -> str:
    with pytest.raises(click.ClickException) as info:
        fn(*args)
    assert "\n" not in info.value.format_message()
    return info.value.format_message()


def test_network_short_and_long_forms():
    assert parse_network("front") == {"target": "front", "aliases": []}
    assert parse_network("name=front,alias=www,alias=web") == {"target": "front",
                                                               "aliases": ["www", "web"]}
    assert parse_network("alias=www,name=front") == {"target": "front", "aliases": ["www"]}
    assert parse_network(" Name = front ") == {"target": "front", "aliases": []}


@pytest.mark.parametrize("value, needle", [
    ("alias=www", "names no network"),
    ("name=", "names no network"),
    ("name=a,name=b", "names two networks"),
    ("name=a,www", "'www' in 'name=a,www' is not KEY=VALUE"),
    ("name=a,ip=10.0.0.9", "ip is not supported"),
    ("name=a,driver-opt=x=y", "driver-opt is not supported"),
    ("name=a,colour=red", "unknown field 'colour'"),
    ("", "is not NAME"),
    ("a,b", "is not NAME"),
])
def test_bad_networks_are_one_line_errors_naming_the_flag(value, needle):
    msg = error(parse_network, value)
    assert msg.startswith("--network: ") and needle in msg, msg
    assert error(parse_network, value, "--network-add").startswith("--network-add: ")


def test_network_options():
    assert parse_opts(()) == {}
    for value in ("encrypted", "encrypted=", "encrypted=true", "encrypted=TRUE", "encrypted=1"):
        assert parse_opts([value]) == {"encrypted": True}, value
    for value in ("encrypted=false", "encrypted=0", "encrypted=no"):
        assert parse_opts([value]) == {"encrypted": False}, value
    assert error(parse_opts, ["mtu=1400"]) == \
        "--opt: unknown network option 'mtu' (known: encrypted)"
    assert error(parse_opts, ["encrypted", "com.docker.network.driver.mtu=1400"]).startswith(
        "--opt: unknown network option 'com.docker.network.driver.mtu'")
    assert "encrypted=true or encrypted=false" in error(parse_opts, ["encrypted=maybe"])
    assert netmodel.OPTIONS == ("encrypted",)      # what the CLI knows, as the model has it


def _create_flags(**given):
    o = {k: None for k in ("entrypoint", "workdir", "user", "hostname", "stop_signal",
                           "stop_grace_period", "limit_cpu", "limit_memory", "reserve_cpu",
                           "reserve_memory", "restart_condition", "restart_delay",
                           "restart_max_attempts", "restart_window", "replicas",
                           "replicas_max_per_node", "endpoint_mode", "health_tcp")}
    o.update({k: () for k in ("env", "container_label", "mount", "constraint",
                              "placement_pref", "label", "publish", "network")})
    o.update(name="web", mode="replicated", init=False)
    o.update(given)
    return o


def test_service_create_names_networks_and_the_endpoint_mode():
    spec = build_spec(_create_flags(network=("front", "name=back,alias=db"),
                                    endpoint_mode="dnsrr", publish=("8080:80",)),
                      "img", ())
    assert spec["task"]["networks"] == [{"target": "front", "aliases": []},
                                        {"target": "back", "aliases": ["db"]}]
    assert spec["endpoint"] == {"mode": "dnsrr", "ports": [{"published": 8080, "target": 80}]}
    plain = build_spec(_create_flags(), "img", ())
    assert "networks" not in plain["task"] and "endpoint" not in plain


IDS = {"front": "f" * 25, "back": "b" * 25, "other": "o" * 25}


def network_id(ref):
    if ref in IDS:
        return IDS[ref]
    if ref in IDS.values():
        return ref
    raise click.ClickException(f"network {ref} not found")


def test_network_add_and_rm():
    attached = [{"target": IDS["front"], "aliases": ["www"]}]
    assert update_networks(attached, ["name=back,alias=db"], [], network_id) == [
        {"target": IDS["front"], "aliases": ["www"]}, {"target": IDS["back"], "aliases": ["db"]}]
    assert update_networks(attached, [], ["front"], network_id) == []
    assert update_networks(attached, [], ["other"], network_id) == attached    # not on it
    # Removed and added back in one update: new aliases.
    assert update_networks(attached, ["name=front,alias=w3"], ["front"], network_id) == [
        {"target": IDS["front"], "aliases": ["w3"]}]
    assert error(update_networks, attached, ["front"], [], network_id) == \
        "--network-add: the service is already on network front"
    assert error(update_networks, attached, [], ["nowhere"], network_id) == \
        "network nowhere not found"
    assert error(update_networks, attached, ["name=x,ip=1.2.3.4"], [], network_id).startswith(
        "--network-add: ip is not supported")


def test_service_update_changes_networks_and_endpoint_mode_only_when_asked():
    stored = build_spec(_create_flags(network=(IDS["front"],)), "img", ())
    stored["task"].setdefault("placement", {"constraints": []})
    stored["task"]["container"].update(env=[], labels={}, mounts=[])
    stored["task"].update(resources={"limits": {}, "reservations": {}}, restart={})
    stored.update(labels={}, endpoint={"mode": "vip", "ports": []}, update={}, rollback={})
    flags = {k: None for k in ("image", "args_", "entrypoint", "replicas", "stop_grace_period",
                               "limit_cpu", "limit_memory", "reserve_cpu", "reserve_memory",
                               "restart_condition", "restart_delay", "restart_max_attempts",
                               "restart_window", "health_tcp", "endpoint_mode")}
    flags.update({k: () for k in ("env_add", "env_rm", "label_add", "label_rm",
                                  "container_label_add", "container_label_rm", "publish_add",
                                  "publish_rm", "constraint_add", "constraint_rm", "mount_add",
                                  "mount_rm", "network_add", "network_rm")})
    flags["force"] = False
    assert update_spec(stored, flags) == stored
    new = update_spec(stored, dict(flags, endpoint_mode="dnsrr", network_add=("back",),
                                   network_rm=("front",)), network_id=network_id)
    assert new["endpoint"]["mode"] == "dnsrr"
    assert new["task"]["networks"] == [{"target": IDS["back"], "aliases": []}]
    # A service stored before networks existed has no such field.
    del stored["task"]["networks"]
    new = update_spec(stored, dict(flags, network_add=("front",)), network_id=network_id)
    assert new["task"]["networks"] == [{"target": IDS["front"], "aliases": []}]


def test_pretty_service_shows_each_network_with_its_vip():
    view = {"id": "s" * 25, "name": "web", "replicas": {"running": 2, "desired": 3},
            "virtual_ips": [{"network_id": IDS["front"], "network": "front",
                             "addr": "10.0.0.2/24"}],
            "update_status": None,
            "spec": {"name": "web", "mode": "replicated", "labels": {},
                     "endpoint": {"mode": "vip", "ports": [{"published": 8080, "target": 80,
                                                            "protocol": "tcp"}]},
                     "task": {"container": {"image": "img", "args": ["sleep", "1 h"]},
                              "networks": [{"target": IDS["front"], "aliases": ["www"]},
                                           {"target": IDS["back"], "aliases": []}]}}}
    lines = pretty_service(view, {IDS["front"]: "front", IDS["back"]: "back"})
    assert " Replicas:      2/3 running" in lines
    assert " Args:          sleep '1 h'" in lines
    assert "Endpoint Mode:  vip" in lines
    at = lines.index("Networks:")
    assert [x.rstrip() for x in lines[at + 1:at + 3]] == [
        " front   VIP 10.0.0.2/24   aliases: www",
        " back"]
    assert lines[-2:] == ["Ports:", " *:8080->80/tcp"]
