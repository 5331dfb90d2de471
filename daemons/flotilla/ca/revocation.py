"""The cluster's revocation list: node ids and certificate serials.

One list, kept in the replicated cluster object as ``revoked``, maps each
entry to the time (unix seconds) its certificate(s) expire; an entry is
dropped a grace period after that, when nothing it names can be presented
any more. Two kinds of entries share it:

* a node id (``node rm``): every certificate issued to that node, whatever
  its serial;
* ``serial:<hex>``: one certificate (a demoted manager's old manager
  certificates, a revoked admin bundle).

Node ids never contain ``:``, so the two kinds cannot collide, and a
manager of an earlier release, which looks entries up by node id only,
still enforces every node removal.

Every place that accepts a certificate checks both kinds: the API (direct
and forwarded callers), renewal, Raft connections, the dispatcher port and
the agent listener (agents learn the list through their session).
"""

from __future__ import annotations

import time
from typing import Iterable, Mapping

SERIAL_PREFIX = "serial:"
GRACE = 7 * 86400


def serial_hex(serial) -> str:
    """A serial as lowercase hex without leading zeros (``int`` or hex text)."""
    if isinstance(serial, str):
        serial = int(serial, 16)
    return format(int(serial), "x")


def serial_key(serial) -> str:
    return SERIAL_PREFIX + serial_hex(serial)


def is_revoked(revoked: Mapping | None, node_id: str | None, serial=None) -> bool:
    """True when ``node_id`` or the certificate ``serial`` is on the list."""
    if not revoked:
        return False
    if node_id is not None and node_id in revoked:
        return True
    if serial is not None:
        try:
            return serial_key(serial) in revoked
        except (TypeError, ValueError):
            return False
    return False


def serial_revoked(revoked: Mapping | None, serial) -> bool:
    return serial is not None and is_revoked(revoked, None, serial)


def with_entries(revoked: Mapping | None, entries: Iterable[tuple[str, float]]) -> dict:
    """A copy of ``revoked`` with ``entries`` ((key, not_after), ...) added;
    an entry already there keeps the later expiry."""
    out = dict(revoked or {})
    for key, not_after in entries:
        out[key] = max(float(not_after), float(out.get(key, 0)))
    return out


def purge(revoked: Mapping | None, now: float | None = None, grace: float = GRACE) -> dict | None:
    """``revoked`` without the entries whose certificates expired more than
    ``grace`` ago, or None if there are none to drop."""
    now = time.time() if now is None else now
    revoked = revoked or {}
    keep = {k: v for k, v in revoked.items() if v + grace > now}
    return None if len(keep) == len(revoked) else keep


def split(revoked: Mapping | None) -> tuple[list[str], list[str]]:
    """(node ids, serials in hex), each sorted."""
    nodes, serials = [], []
    for key in revoked or {}:
        if key.startswith(SERIAL_PREFIX):
            serials.append(key[len(SERIAL_PREFIX):])
        else:
            nodes.append(key)
    return sorted(nodes), sorted(serials)
