"""The networks' address pool chosen at ``--init`` (``--default-addr-pool``,
``--default-addr-pool-mask-length``): checked on the client with one-line
errors naming the flag, kept in the new cluster's spec, and shown by
``cluster inspect``."""

import click
import pytest

from flotilla.cli.node import DEFAULT_MASK, DEFAULT_POOL, address_pool
from flotilla.model import network as netmodel
from flotilla.model.objects import default_cluster_spec


def error(fn, *args) -> str:
    with pytest.raises(click.ClickException) as info:
        fn(*args)
    assert "\n" not in info.value.format_message()
    return info.value.format_message()


def test_address_pool_at_init():
    assert address_pool((), None) is None
    assert address_pool(("10.200.0.0/16",), 26) == {"default_addr_pool": ["10.200.0.0/16"],
                                                    "subnet_size": 26}
    assert address_pool((), 20) == {"default_addr_pool": ["10.0.0.0/8"], "subnet_size": 20}
    assert address_pool(("172.30.0.0/16", "10.9.0.0/16"), None) == {
        "default_addr_pool": ["172.30.0.0/16", "10.9.0.0/16"], "subnet_size": 24}
    assert error(address_pool, ("10.0.0.1/8",), None).startswith(
        "--default-addr-pool: '10.0.0.1/8' is not an IPv4 subnet in CIDR form")
    assert error(address_pool, ("fd00::/64",), None) == \
        "--default-addr-pool: only IPv4 subnets are supported"
    assert error(address_pool, ("10.0.0.0/8", "10.1.0.0/16"), None) == \
        "--default-addr-pool: pools 10.0.0.0/8 and 10.1.0.0/16 overlap"
    assert error(address_pool, ("10.1.0.0/24",), 16) == \
        "--default-addr-pool: pool 10.1.0.0/24 is smaller than one /16 subnet"
    assert error(address_pool, (), 8) == \
        "--default-addr-pool-mask-length: 8 is not between 16 and 29"
    assert error(address_pool, (), 30).startswith("--default-addr-pool-mask-length: 30 ")
    # The help's defaults are the model's.
    assert ([DEFAULT_POOL], DEFAULT_MASK) == (list(netmodel.DEFAULT_ADDR_POOL),
                                              netmodel.DEFAULT_SUBNET_SIZE)


def test_a_new_cluster_spec_holds_its_address_pool():
    assert default_cluster_spec()["network"] == {"default_addr_pool": ["10.0.0.0/8"],
                                                 "subnet_size": 24}
    assert default_cluster_spec(network={"default_addr_pool": ["10.200.0.0/16"],
                                         "subnet_size": 26})["network"] == {
        "default_addr_pool": ["10.200.0.0/16"], "subnet_size": 26}


def test_cluster_inspect_shows_the_pool_and_the_defaults_of_an_older_cluster(capsys):
    from flotilla.cli.cluster import _print_cluster

    cluster = {"id": "c1", "root_ca": {"digest": "d"},
               "spec": default_cluster_spec(network={"default_addr_pool": ["10.200.0.0/16",
                                                                           "10.201.0.0/16"],
                                                     "subnet_size": 26})}
    _print_cluster(cluster)
    out = capsys.readouterr().out
    assert "Default address pool: 10.200.0.0/16, 10.201.0.0/16\nSubnet size:          /26\n" in out
    del cluster["spec"]["network"]          # made before networks
    _print_cluster(cluster)
    out = capsys.readouterr().out
    assert "Default address pool: 10.0.0.0/8\nSubnet size:          /24\n" in out
