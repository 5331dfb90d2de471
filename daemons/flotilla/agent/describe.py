"""What this host is, as its node describes it when it joins and as its
agent registers it (the container engine may say more)."""

from __future__ import annotations

import platform


def local_platform() -> dict:
    arch = platform.machine().lower()
    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(arch, arch)
    return {"os": platform.system().lower(), "arch": arch}
