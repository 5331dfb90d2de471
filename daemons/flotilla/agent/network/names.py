"""Names and link-layer addresses of a network's parts on an engine.

Linux interface names have at most 15 characters, so the devices are named
after the first 10 characters of the network's id: the bridge ``flb-<id10>``
and the VXLAN device ``flv-<id10>``. The Docker network is named after the
network's name (``flotilla-<name>``) and labelled with its id.

A container's MAC address follows Docker's rule for user-defined networks,
``02:42`` and the four bytes of its IPv4 address, so every node knows every
endpoint's MAC from its address alone.
"""

from __future__ import annotations

import ipaddress
import re

IFNAME_MAX = 15
SHORT_ID = 10
BRIDGE_PREFIX = "flb-"
VXLAN_PREFIX = "flv-"
DOCKER_PREFIX = "flotilla-"
# Labels of the Docker networks made here: the Flotilla network's id, and
# the cluster's when the driver is given it.
LABEL_NETWORK_ID = "flotilla.network.id"
LABEL_CLUSTER_ID = "flotilla.cluster.id"

# What may follow the prefix in an interface name made here.
_SHORT = re.compile(r"^[A-Za-z0-9]{1,%d}$" % SHORT_ID)


def short_id(network_id: str) -> str:
    """The first 10 characters of a network id (letters and digits only)."""
    short = network_id[:SHORT_ID]
    if not _SHORT.match(short):
        raise ValueError(f"network id {network_id[:40]!r} must start with letters or digits")
    return short


def bridge_name(network_id: str) -> str:
    return BRIDGE_PREFIX + short_id(network_id)


def vxlan_name(network_id: str) -> str:
    return VXLAN_PREFIX + short_id(network_id)


def docker_network_name(name: str) -> str:
    return DOCKER_PREFIX + name


def short_id_of(ifname: str) -> str | None:
    """The short network id in the name of a device made here, else None."""
    for prefix in (BRIDGE_PREFIX, VXLAN_PREFIX):
        if ifname.startswith(prefix) and _SHORT.match(ifname[len(prefix):]):
            return ifname[len(prefix):]
    return None


def mac_for(ip: str | ipaddress.IPv4Address) -> str:
    """``02:42:`` and the four bytes of ``ip`` (``10.0.1.5`` -> ``02:42:0a:00:01:05``);
    ``ip`` may carry a prefix (``10.0.1.5/24``)."""
    addr = ipaddress.IPv4Address(str(ip).split("/", 1)[0])
    return "02:42:" + ":".join(f"{b:02x}" for b in addr.packed)
