"""What a cluster's agents made for its overlay networks on this machine's
own engine and network namespace (clusters of :mod:`tests.helpers.cluster`
share them): removed when the cluster is torn down, so that the next
cluster, which may give the same subnets to its networks, finds the engine
clean."""

from __future__ import annotations

import subprocess

import docker
from docker import errors as docker_errors

from flotilla.agent.network.names import (LABEL_CLUSTER_ID, LABEL_NETWORK_ID, bridge_name,
                                          vxlan_name)
from flotilla.agent.network.vips import render


def remove_cluster_networks(cluster_id: str) -> list[str]:
    """Remove the Docker networks labelled with ``cluster_id`` that no
    container uses, their bridges and VXLAN devices, and their VIP rules;
    the names of the Docker networks removed."""
    client = docker.from_env()
    removed, bridges = [], []
    try:
        for info in client.api.networks(filters={"label": f"{LABEL_CLUSTER_ID}={cluster_id}"}):
            net_id = (info.get("Labels") or {}).get(LABEL_NETWORK_ID) or ""
            try:
                client.api.remove_network(info["Id"])
            except docker_errors.APIError:
                continue            # still in use (or gone meanwhile)
            removed.append(info["Name"])
            try:
                devices = (vxlan_name(net_id), bridge_name(net_id))
            except ValueError:
                continue
            for device in devices:
                subprocess.run(["ip", "link", "del", device], capture_output=True, timeout=30)
            bridges.append(devices[1])
    finally:
        client.close()
    if bridges:
        subprocess.run(["nft", "-f", "-"], input=render({}, bridges), text=True,
                       capture_output=True, timeout=30)
    return removed
