import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "daemons"))
sys.path.insert(0, ROOT)

# Groups for pytest-xdist's `--dist loadgroup`, handed out in this order
# (with --no-loadscope-reorder the order of the items is the work queue's):
# the longest first. The deployment tests on test hosts share one worker
# (their hosts flt-* and their network have fixed names), `make cluster` is
# another (its ports 4242-4246 and 8080, .cache/cluster; the integration
# clusters keep off those ports), the chaos run another (its namespaces flc-*
# and /tmp/flotilla-chaos are fixed). Every other module is a group of its
# own, so that its module-scoped clusters are built once, in one worker.
FIRST_GROUPS = ("deploy-hosts", "make-cluster", "chaos")


def _group(item) -> str:
    path = os.path.relpath(str(item.path), ROOT)
    parts = path.split(os.sep)
    if parts[:2] == ["tests", "deploy"]:
        return "make-cluster" if parts[-1] == "test_make_cluster.py" else "deploy-hosts"
    if parts[:2] == ["tests", "chaos"]:
        return "chaos"
    return path


def pytest_configure(config):
    config.addinivalue_line("markers", "xdist_group(name): run in one pytest-xdist worker")


@pytest.hookimpl(tryfirst=True)      # before xdist reads the marks
def pytest_collection_modifyitems(config, items):
    rank = {}
    for item in items:
        group = _group(item)
        if not item.get_closest_marker("xdist_group"):
            item.add_marker(pytest.mark.xdist_group(group))
        rank[item.nodeid] = FIRST_GROUPS.index(group) if group in FIRST_GROUPS else len(FIRST_GROUPS)
    items.sort(key=lambda item: rank[item.nodeid])     # stable: each group keeps its order


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)
