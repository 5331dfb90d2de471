"""``python -m flotilla.agent.network``: apply desired networks from JSON, or
show what this engine and network namespace hold.

    python -m flotilla.agent.network apply --underlay-ip 192.0.2.11 desired.json
    python -m flotilla.agent.network apply --underlay-ip 192.0.2.11 - < desired.json
    python -m flotilla.agent.network show

The desired state is a JSON list of networks (or ``{"networks": [...]}``),
as ``desired.py`` describes. The engine is the one ``DOCKER_HOST`` names.
Both print JSON; ``apply`` exits 1 when a network could not be applied.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import docker

from .desired import DesiredStateError
from .driver import NetworkDriver
from .dockernet import DockerNetworkError
from .linux import LinkError


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
    p.add_argument("--remove-grace", type=float, default=None,
                   help="seconds an unlisted network made by another node is kept")
    p.add_argument("desired", help="JSON file of desired networks, '-' for stdin")
    sub.add_parser("show", help="print the devices and Docker networks made here")
    a = parser.parse_args(argv)

    client = docker.from_env()
    try:
        if a.cmd == "show":
            driver = NetworkDriver(client, "0.0.0.0")
            print(json.dumps(driver.show(), indent=2, sort_keys=True))
            return 0
        try:
            desired = _load(a.desired)
        except (OSError, ValueError) as exc:
            print(f"error: cannot read {a.desired}: {exc}", file=sys.stderr)
            return 2
        try:
            kwargs = {} if a.remove_grace is None else {"remove_grace": a.remove_grace}
            driver = NetworkDriver(client, a.underlay_ip, **kwargs)
        except ValueError as exc:
            print(f"error: --underlay-ip: {exc}", file=sys.stderr)
            return 2
        try:
            result = driver.apply(desired)
        except DesiredStateError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        except (LinkError, DockerNetworkError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print(json.dumps(result.to_dict(), indent=2, sort_keys=True))
        return 1 if result.errors else 0
    finally:
        client.close()


if __name__ == "__main__":
    sys.exit(main())
