"""Names and MAC addresses of a network's parts on an engine."""

import pytest

from flotilla.agent.network import names


def test_interface_names_fit_linux_limit_and_name_the_network():
    nid = "k3v9x0q2hw7b1c5d8e6f4g2h0"
    assert names.bridge_name(nid) == "flb-k3v9x0q2hw"
    assert names.vxlan_name(nid) == "flv-k3v9x0q2hw"
    assert len(names.bridge_name(nid)) <= names.IFNAME_MAX
    assert names.short_id_of("flb-k3v9x0q2hw") == "k3v9x0q2hw"
    assert names.short_id_of("flv-k3v9x0q2hw") == "k3v9x0q2hw"
    # other devices are not ours
    for other in ("eth0", "docker0", "br-1234567890ab", "flb-", "flx-abc", "flb-a-b"):
        assert names.short_id_of(other) is None


def test_short_ids_keep_short_network_ids_whole():
    assert names.bridge_name("abc") == "flb-abc"


@pytest.mark.parametrize("bad", ["", "-abc", "ab/cd", "x y"])
def test_ids_unfit_for_interface_names_are_refused(bad):
    with pytest.raises(ValueError, match="network id"):
        names.bridge_name(bad)


def test_docker_network_name():
    assert names.docker_network_name("web") == "flotilla-web"


@pytest.mark.parametrize("ip,mac", [
    ("10.0.1.5", "02:42:0a:00:01:05"),
    ("10.0.1.5/24", "02:42:0a:00:01:05"),
    ("172.31.255.254", "02:42:ac:1f:ff:fe"),
    ("0.0.0.1", "02:42:00:00:00:01"),
])
def test_mac_follows_dockers_rule(ip, mac):
    assert names.mac_for(ip) == mac


def test_mac_of_a_bad_address_is_an_error():
    with pytest.raises(ValueError):
        names.mac_for("10.0.1.300")
