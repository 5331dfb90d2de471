"""Address pools for the clusters that share this machine's engine and
network namespace (:mod:`tests.helpers.cluster`): each live cluster takes a
/16 of its own, so that the networks of clusters running at once (pytest
workers, or several checkouts on one machine) never overlap on the engine,
which holds one network per subnet.

A pool is held through a file ``/tmp/flotilla-test-pools/<octet>`` naming
the process that holds it; one whose process is gone is taken again. Pools
are 10.160.0.0/16 to 10.199.0.0/16: away from the default pool's first
subnets (10.0.x.0/24, which the modules asserting the default pool use)
and from the subnets tests name themselves.
"""

from __future__ import annotations

import fcntl
import os

POOL_DIR = "/tmp/flotilla-test-pools"
FIRST, LAST = 160, 199


def _holder(path: str) -> int | None:
    try:
        with open(path) as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def reserve(token: str) -> str:
    """A pool (``10.N.0.0/16``) no live cluster holds, now held for ``token``
    by this process."""
    os.makedirs(POOL_DIR, exist_ok=True)
    with open(os.path.join(POOL_DIR, ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for octet in range(FIRST, LAST + 1):
            path = os.path.join(POOL_DIR, str(octet))
            if os.path.exists(path) and _alive(_holder(path)):
                continue
            with open(path, "w") as f:
                f.write(f"{os.getpid()} {token}\n")
            return f"10.{octet}.0.0/16"
    raise RuntimeError(f"every test address pool in {POOL_DIR} is held")


def release(pool: str, token: str) -> None:
    """Give ``pool`` back, if ``token`` still holds it."""
    path = os.path.join(POOL_DIR, pool.split(".")[1])
    try:
        with open(path) as f:
            held = f.read().split()
        if held[1:2] == [token]:
            os.unlink(path)
    except (OSError, IndexError):
        pass
