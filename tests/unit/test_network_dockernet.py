"""The Docker side of a network: options, timestamps, container settings
(built without an engine)."""

import calendar

import docker
import pytest

from flotilla.agent.network.desired import parse_network
from flotilla.agent.network.dockernet import (Attachment, container_networking, created_at,
                                              gateway_of, network_options)


def test_engine_timestamps():
    t = calendar.timegm((2026, 12, 7, 16, 0, 5, 0, 0, 0))
    assert created_at("2026-12-07T16:00:05.123456789Z") == t
    assert created_at("2026-12-07T16:00:05Z") == t
    assert created_at("2026-12-07T18:00:05.5+02:00") == t
    assert created_at("yesterday") is None and created_at(None) is None


@pytest.mark.parametrize("internal,masquerade", [(False, "true"), (True, "false")])
def test_network_adopts_the_bridge(internal, masquerade):
    n = parse_network({"id": "n1abcdefghijk", "name": "web", "subnet": "10.0.1.0/24",
                       "vni": 4097, "internal": internal, "attachment": "10.0.1.254/24"})
    assert network_options(n, 1450) == {
        "com.docker.network.bridge.name": "flb-n1abcdefgh",
        "com.docker.network.bridge.enable_ip_masquerade": masquerade,
        "com.docker.network.driver.mtu": "1450",
    }


def test_gateway_of_a_docker_network():
    assert str(gateway_of({"IPAM": {"Config": [{"Subnet": "10.0.1.0/24",
                                                "Gateway": "10.0.1.254"}]}})) == "10.0.1.254"
    assert gateway_of({"IPAM": {"Config": None}}) is None


def test_container_settings_give_address_mac_and_aliases():
    api = docker.APIClient(base_url="unix:///nonexistent", version="1.41")
    s = container_networking(api, [
        Attachment("flotilla-web", "10.0.1.5/24", ("web", "www")),
        Attachment("flotilla-db", "10.0.2.9/24"),
    ])
    assert s.network_mode == "flotilla-web"
    assert s.mac_address == "02:42:0a:00:01:05"
    assert s.networking_config == {"EndpointsConfig": {"flotilla-web": {
        "Aliases": ["web", "www"], "IPAMConfig": {"IPv4Address": "10.0.1.5"},
        "MacAddress": "02:42:0a:00:01:05"}}}
    assert [a.network for a in s.others] == ["flotilla-db"]
    with pytest.raises(ValueError):
        container_networking(api, [])
