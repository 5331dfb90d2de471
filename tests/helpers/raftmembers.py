"""Three real Raft members in the test's process: mutual TLS on loopback,
journals on disk, each with its own store. For tests of the Raft layer
itself; whole managers are in ``cluster.py``."""

from __future__ import annotations

import contextlib
import socket

from flotilla.ca import certs
from flotilla.manager.raft.node import RaftNode, RaftSettings
from flotilla.manager.raftsecurity import RaftSecurity, SecurityCounters
from flotilla.manager.store.store import Store


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def raft_members(tmp_path, cluster_id: str, count: int = 3, **raft_options):
    """Yields [(store, raft), ...], started; stops them all afterwards."""
    root = certs.RootCA.create(cluster_id)
    ca = tmp_path / "ca.pem"
    ca.write_bytes(root.cert_pem)
    addrs = [f"127.0.0.1:{_free_port()}" for _ in range(count)]
    ids = [f"member{i}" for i in range(count)]
    out = []
    for i in range(count):
        d = tmp_path / f"m{i}"
        (d / "raft").mkdir(parents=True, mode=0o700)
        key, cert = root.issue(certs.ROLE_MANAGER, ids[i], cluster_id, 3600)
        certs.write_node_bundle(str(d / "node.pem"), key, cert)
        store = Store()
        security = RaftSecurity(bundle_path=str(d / "node.pem"), ca_path=str(ca),
                                cluster_id=cluster_id, store=store,
                                members_path=str(d / "raft" / "members.json"),
                                counters=SecurityCounters())
        security.remember(dict(zip(addrs, ids)))
        raft = RaftNode(addrs[i], addrs, str(d / "raft"), store.sm, security, RaftSettings(),
                        **raft_options)
        store.attach(raft)
        out.append((store, raft))
    for store, raft in out:
        store.start()
        raft.start()
    try:
        yield out
    finally:
        for store, raft in out:
            raft.stop()
            store.stop()
