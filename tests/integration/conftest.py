"""Clusters for the integration tests: real ``flotilla node run`` processes on
loopback, sharing this machine's dockerd.

``make_cluster``         a factory of clusters that live for one test (tests that
                         kill, add, remove or restart nodes, or change settings
                         for good).
``make_module_cluster``  the same, living for the whole module (a module fixture
                         builds its cluster with it; its tests must not depend on
                         what another left behind: unique names per test).
``cluster``              the module's shared cluster, handed to each test clean:
                         before every test but the first, the services are
                         removed, their tasks reaped and their containers gone,
                         and every node is active again without labels. A test
                         that fails takes the cluster down with it (its logs
                         are printed): the next test gets a new one. The
                         module says which nodes it needs:
                         ``CLUSTER = {"managers": 1, "workers": 2}`` (the
                         default), named m1.. and w1...

Every cluster's networks come from an address pool of its own (a /16 no
other live cluster on this machine holds), since all share this machine's
engine; a module that asserts Flotilla's default pool says
``ADDR_POOL = None``.

Every factory prints the nodes' logs when a test using its clusters failed,
and stops the nodes and removes their containers at the end.
"""

from __future__ import annotations

import pytest

from tests.helpers.cluster import LocalCluster, wait_for

DEFAULT_SHAPE = {"managers": 1, "workers": 2}


class _Clusters:
    """Clusters built under ``base``; ``close()`` stops them all."""

    def __init__(self, base, addr_pool="auto"):
        self.base = base
        self.addr_pool = addr_pool
        self.made: list[LocalCluster] = []
        self.count = 0          # clusters built: each gets a directory of its own

    def __call__(self, **kw) -> LocalCluster:
        kw.setdefault("addr_pool", self.addr_pool)
        c = LocalCluster(str(self.base / f"cluster{self.count}"), **kw)
        self.count += 1
        self.made.append(c)
        return c

    def close(self, failed: bool):
        for c in self.made:
            if failed:
                print(c.dump_logs())
            c.stop_all()


def _addr_pool(request):
    """Each cluster takes an address pool of its own (a module may say
    ``ADDR_POOL = None`` to keep Flotilla's default: it then runs alone
    among the modules with networks on this machine's engine; see
    tests/conftest.py)."""
    return getattr(request.module, "ADDR_POOL", "auto")


@pytest.fixture
def make_cluster(tmp_path, request):
    """Build real clusters for this test; print node logs if the test fails."""
    clusters = _Clusters(tmp_path, _addr_pool(request))
    yield clusters
    rep = getattr(request.node, "rep_call", None)
    clusters.close(failed=rep is not None and rep.failed)


@pytest.fixture(scope="module")
def make_module_cluster(tmp_path_factory, request):
    """Build real clusters for this module; print node logs if a test of it failed."""
    failed_before = request.session.testsfailed
    clusters = _Clusters(tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1]),
                         _addr_pool(request))
    yield clusters
    clusters.close(failed=request.session.testsfailed > failed_before)


def reset(c: LocalCluster):
    """Remove every service, wait until their tasks are reaped and their
    containers gone; make every node active again, without labels."""
    admin = c.admin()
    for service in admin.get("/v1/services"):
        admin.delete(f"/v1/services/{service['id']}")
    c.remove_containers()       # no need to wait out each container's stop grace period
    wait_for(lambda: not admin.get("/v1/tasks"), 60, what="every task reaped")
    wait_for(lambda: not c.containers(running_only=False), 30, what="every container removed")
    for node in admin.get("/v1/nodes"):
        if node["availability"] != "active" or node["labels"]:
            admin.patch(f"/v1/nodes/{node['id']}", {"availability": "active", "labels": {}})
    assert all(n["state"] == "ready" for n in admin.get("/v1/nodes")), "a node is not ready"


class _Shared:
    """The module's cluster: built on first use, cleaned before each later
    use, rebuilt after a test that failed."""

    def __init__(self, make, shape):
        self.make, self.shape = make, shape
        self.current: LocalCluster | None = None
        self.env: dict = {}

    def get(self) -> LocalCluster:
        if self.current is None:
            self.current = self.make().build(**self.shape)
            self.env = dict(self.current.env)
        else:
            self.current.env = dict(self.env)
            try:
                reset(self.current)
            except Exception:
                self.discard()
                raise
        return self.current

    def discard(self):
        if self.current is not None:
            print(self.current.dump_logs())
            self.current.stop_all()
            self.make.made.remove(self.current)
            self.current = None


@pytest.fixture(scope="module")
def _shared_cluster(make_module_cluster, request):
    return _Shared(make_module_cluster, getattr(request.module, "CLUSTER", DEFAULT_SHAPE))


@pytest.fixture
def cluster(_shared_cluster, request):
    """The module's shared cluster, clean (see this file's docstring)."""
    yield _shared_cluster.get()
    rep = getattr(request.node, "rep_call", None)
    if rep is None or rep.failed:
        _shared_cluster.discard()
