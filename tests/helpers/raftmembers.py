"""Three real Raft members in the test's process: mutual TLS on loopback,
journals on disk, each with its own store. For tests of the Raft layer
itself; whole managers are in ``cluster.py``."""

from __future__ import annotations

import contextlib
import socket

from flotilla.ca import certs
from flotilla.manager.raft.node import RaftNode, RaftSettings
from flotilla.manager.raft.security import RaftSecurity, SecurityCounters
from flotilla.manager.store.store import Store


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RaftGroup:
    """``members[i]`` is member i's ``(store, raft)``, ``security[i]`` its
    RaftSecurity, ``counters[i]`` the refusals it counted and ``dirs[i]`` its
    directory (``raft/``, ``node.pem``)."""

    def __init__(self, tmp_path, cluster_id: str, count: int = 3, **raft_options):
        self.root = certs.RootCA.create(cluster_id)
        self.cluster_id = cluster_id
        self.ca = tmp_path / "ca.pem"
        self.ca.write_bytes(self.root.cert_pem)
        self.addrs = [f"127.0.0.1:{_free_port()}" for _ in range(count)]
        self.ids = [f"member{i}" for i in range(count)]
        self.dirs = [tmp_path / f"m{i}" for i in range(count)]
        self.options = raft_options
        self.members: list[tuple] = [None] * count
        self.security: list[RaftSecurity | None] = [None] * count
        self.counters: list[SecurityCounters | None] = [None] * count
        for i, d in enumerate(self.dirs):
            (d / "raft").mkdir(parents=True, mode=0o700)
            key, cert = self.root.issue(certs.ROLE_MANAGER, self.ids[i], cluster_id, 3600)
            certs.write_node_bundle(str(d / "node.pem"), key, cert)
            self._build(i, first=True)
        for store, raft in self.members:
            store.start()
            raft.start()

    def _build(self, i, first: bool):
        d = self.dirs[i]
        store = Store()
        counters = SecurityCounters()
        security = RaftSecurity(bundle_path=str(d / "node.pem"), ca_path=str(self.ca),
                                cluster_id=self.cluster_id, store=store,
                                members_path=str(d / "raft" / "members.json"),
                                counters=counters)
        if first:
            security.remember(dict(zip(self.addrs, self.ids)))
        raft = RaftNode(self.addrs[i], self.addrs, str(d / "raft"), store.sm, security,
                        RaftSettings(), **self.options)
        store.attach(raft)
        self.members[i] = (store, raft)
        self.security[i] = security
        self.counters[i] = counters
        return store, raft

    def leader(self, timeout: float = 30.0) -> int:
        """The index of the member that leads, once one does."""
        from tests.helpers.cluster import wait_for

        return wait_for(lambda: [i for i, (_s, r) in enumerate(self.members) if r.is_leader],
                        timeout, what="a leader")[0]

    def stop(self, i=None):
        for store, raft in (self.members if i is None else [self.members[i]]):
            raft.stop()
            store.stop()

    def restart(self, i, while_stopped=None):
        """Stop member i and start it again from what it has on disk
        (after calling ``while_stopped()``, if given)."""
        self.stop(i)
        if while_stopped is not None:
            while_stopped()
        store, raft = self._build(i, first=False)
        store.start()
        raft.start()
        return store, raft


@contextlib.contextmanager
def raft_group(tmp_path, cluster_id: str, count: int = 3, **raft_options):
    """Yields a started :class:`RaftGroup`; stops every member afterwards."""
    group = RaftGroup(tmp_path, cluster_id, count, **raft_options)
    try:
        yield group
    finally:
        group.stop()


@contextlib.contextmanager
def raft_members(tmp_path, cluster_id: str, count: int = 3, **raft_options):
    """Yields [(store, raft), ...], started; stops them all afterwards."""
    with raft_group(tmp_path, cluster_id, count, **raft_options) as group:
        yield group.members
