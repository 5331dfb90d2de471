import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "daemons"))
sys.path.insert(0, ROOT)

from tests.helpers.cluster import LocalCluster  # noqa: E402


@pytest.fixture
def make_cluster(tmp_path, request):
    """Build real clusters; print node logs if the test fails."""
    made = []

    def factory(**kw):
        c = LocalCluster(str(tmp_path / f"cluster{len(made)}"), **kw)
        made.append(c)
        return c

    yield factory
    failed = getattr(request.node, "rep_call", None)
    for c in made:
        if failed is not None and failed.failed:
            print(c.dump_logs())
        c.stop_all()


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)
