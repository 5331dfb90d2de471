"""The VIP module's pure parts: checking the input and writing the nftables
transaction (the kernel side is in tests/integration/test_vips.py)."""

from __future__ import annotations

import ipaddress
import re

import pytest

from flotilla.agent.network.vips import VipError, bridges_in_table, parse, render

A = ipaddress.IPv4Address


def test_parse_gives_the_canonical_form():
    got = parse({"flb-0123456789": {"10.0.1.2/24": ["10.0.1.7/24", "10.0.1.5", "10.0.1.7"],
                                    "10.0.1.3": []}})
    assert got == {"flb-0123456789": {A("10.0.1.2"): (A("10.0.1.5"), A("10.0.1.7")),
                                      A("10.0.1.3"): ()}}


@pytest.mark.parametrize("spec, message", [
    ({"flb-0123456789ab": {}}, "is not a bridge name"),
    ({'br" ; flush ruleset': {}}, "is not a bridge name"),
    ({"flb-a": {"10.0.1": []}}, "flb-a: '10.0.1' is not an IPv4 address"),
    ({"flb-a": {"fd00::1": []}}, "is not an IPv4 address"),
    ({"flb-a": {"10.0.1.2": ["10.0.1.256"]}}, "VIP 10.0.1.2: backend: '10.0.1.256' is not"),
    ({"flb-a": {"10.0.1.2": "10.0.1.5"}}, "the backends are a list of addresses"),
    ({"flb-a": {"10.0.1.2": ["10.0.1.2"]}}, "VIP 10.0.1.2 is its own backend"),
    ({"flb-a": {"0.0.0.0": []}}, "is not a unicast address"),
    ({"flb-a": {"224.0.0.1": []}}, "is not a unicast address"),
    ({"flb-a": {"10.0.1.2": []}, "flb-b": {"10.0.1.2/24": []}}, "listed twice"),
    ({"flb-a": ["10.0.1.2"]}, "a mapping of VIP to backends"),
])
def test_parse_refuses_bad_input_saying_where(spec, message):
    with pytest.raises(VipError, match=re.escape(message)):
        parse(spec)


def test_render_spreads_over_backends_and_rejects_without():
    script = render(parse({"flb-a": {"10.0.1.2": ["10.0.1.5", "10.0.1.6", "10.0.1.7"],
                                     "10.0.1.3": ["10.0.1.9"], "10.0.1.4": []}}))
    assert ("add rule ip flotilla dnat-flb-a ip daddr 10.0.1.2 dnat ip to numgen random mod 3 "
            "map { 0 : 10.0.1.5, 1 : 10.0.1.6, 2 : 10.0.1.7 }") in script
    assert "add rule ip flotilla dnat-flb-a ip daddr 10.0.1.3 dnat ip to 10.0.1.9" in script
    assert "10.0.1.4 dnat" not in script
    assert "add element ip flotilla vips-flb-a { 10.0.1.2, 10.0.1.3, 10.0.1.4 }" in script
    assert "reject with tcp reset" in script
    # Everything of the bridge is emptied before it is filled.
    assert script.index("flush chain ip flotilla dnat-flb-a") < script.index("add rule ip "
                                                                              "flotilla dnat-flb-a")


def test_render_forgets_dropped_bridges_even_if_half_gone():
    script = render({}, drop=["flb-b"])
    lines = script.splitlines()
    # Created first (no change if they exist), so that deleting never fails.
    assert lines.index("add chain ip flotilla dnat-flb-b") < lines.index(
        "delete chain ip flotilla dnat-flb-b")
    assert 'delete element ip flotilla vip_dnat { "flb-b" }' in lines
    assert "delete set ip flotilla self-flb-b" in lines


def test_bridges_in_table_reads_nft_json():
    def chain(name):
        return {"chain": {"family": "ip", "table": "flotilla", "name": name}}

    listing = {"nftables": [{"metainfo": {"version": "1.0.6"}},
                            {"table": {"family": "ip", "name": "flotilla"}},
                            chain("prerouting"), chain("dnat-flb-a"), chain("reject-flb-a"),
                            chain("dnat-flb-b"),
                            {"chain": {"family": "ip", "table": "other", "name": "dnat-flb-c"}}]}
    assert bridges_in_table(listing) == {"flb-a", "flb-b"}
