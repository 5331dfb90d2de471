"""``python -m flotilla.agent.network``: apply desired networks from JSON, or
show what this engine and network namespace hold.

    python -m flotilla.agent.network apply --underlay-ip 192.0.2.11 desired.json
    python -m flotilla.agent.network apply --underlay-ip 192.0.2.11 - < desired.json
    python -m flotilla.agent.network show
    python -m flotilla.agent.network remove --cluster-id ID

The desired state is a JSON list of networks (or ``{"networks": [...]}``),
as ``desired.py`` describes. The engine is the one ``DOCKER_HOST`` names.
``remove`` takes a cluster's networks off the engine once its nodes are
stopped and its containers gone (a cluster being torn down): its Docker
networks, their bridges and VXLAN devices, and their VIP rules. All print
JSON; ``apply`` and ``remove`` exit 1 when a network could not be handled.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import sys
from typing import Any

import docker
import requests
from docker import errors as docker_errors

from .desired import DesiredStateError, parse_desired
from .dockernet import DockerNetworkError, DockerNetworks
from .driver import NetworkDriver
from .linux import LinkError
from .names import LABEL_CLUSTER_ID, LABEL_NETWORK_ID
from .vips import VipError, VirtualIPs

BRIDGE_OPTION = "com.docker.network.bridge.name"


def _load(path: str) -> Any:
    text = sys.stdin.read() if path == "-" else open(path, encoding="utf-8").read()
    data = json.loads(text)
    if isinstance(data, dict) and "networks" in data:
        data = data["networks"]
    return data


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flotilla.agent.network",
                                     description="Overlay networks on this engine.")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("apply", help="make this engine have exactly these networks")
    p.add_argument("--underlay-ip", required=True, help="this node's underlay address")
    p.add_argument("--cluster-id", help="label networks made with it; remove only those")
    p.add_argument("--remove-grace", type=float, default=None,
                   help="seconds an unlisted network made by another node is kept")
    p.add_argument("desired", help="JSON file of desired networks, '-' for stdin")
    sub.add_parser("show", help="print the devices and Docker networks made here")
    p = sub.add_parser("remove", help="remove a cluster's networks that no container uses "
                       "(Docker networks, devices, VIP rules)")
    p.add_argument("--cluster-id", required=True, help="the cluster whose networks go")
    a = parser.parse_args(argv)

    try:
        return _run(a)
    except (docker_errors.DockerException, requests.RequestException) as exc:
        print(f"error: the Docker engine: {exc}", file=sys.stderr)
        return 1


def _remove(cluster_id: str) -> int:
    client = docker.from_env()
    try:
        bridges = {(info.get("Labels") or {}).get(LABEL_NETWORK_ID):
                   (info.get("Options") or {}).get(BRIDGE_OPTION)
                   for info in DockerNetworks(client).ours()
                   if (info.get("Labels") or {}).get(LABEL_CLUSTER_ID) == cluster_id}
        # Nothing listed and no grace: this cluster's networks go once unused;
        # the loopback address stands for the underlay (no network is made).
        driver = NetworkDriver(client, "127.0.0.1", cluster_id, remove_grace=0)
        result = driver.apply([]).to_dict()
    except (LinkError, DockerNetworkError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        client.close()
    gone = [b for net_id, b in bridges.items()
            if b and net_id not in result["kept"] and net_id not in result["errors"]]
    try:
        result["vips_forgotten"] = VirtualIPs().forget(gone)
    except VipError as exc:
        result["errors"]["vips"] = str(exc)
    print(json.dumps(result, indent=2, sort_keys=True))
    return 1 if result["errors"] else 0


def _run(a: argparse.Namespace) -> int:
    if a.cmd == "remove":
        return _remove(a.cluster_id)
    if a.cmd == "show":
        client = docker.from_env()
        try:
            print(json.dumps(NetworkDriver(client, "0.0.0.0").show(), indent=2, sort_keys=True))
        finally:
            client.close()
        return 0
    try:
        desired = parse_desired(_load(a.desired))
    except DesiredStateError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (OSError, ValueError) as exc:
        print(f"error: cannot read {a.desired}: {exc}", file=sys.stderr)
        return 2
    try:
        underlay = str(ipaddress.IPv4Address(a.underlay_ip))
    except ValueError as exc:
        print(f"error: --underlay-ip: {exc}", file=sys.stderr)
        return 2
    client = docker.from_env()
    try:
        if a.remove_grace is None:
            driver = NetworkDriver(client, underlay, a.cluster_id)
        else:
            driver = NetworkDriver(client, underlay, a.cluster_id, remove_grace=a.remove_grace)
        result = driver.apply(desired)
    except (LinkError, DockerNetworkError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        client.close()
    print(json.dumps(result.to_dict(), indent=2, sort_keys=True))
    return 1 if result.errors else 0

if __name__ == "__main__":
    sys.exit(main())
