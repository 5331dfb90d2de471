import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "daemons"))
sys.path.insert(0, ROOT)

# Under pytest-xdist (`-n N`), each group of tests below goes whole to one
# worker, and the groups are handed out in the order of the items. The
# deployment tests on test hosts share one group (their hosts flt-* and their
# network have fixed names), and its worker takes nothing else until that
# group is done: it is the longest group, and anything queued behind it would
# make the run longer; once it is done, its worker takes what is left.
# `make cluster`'s test is a group of its own (fixed ports 4242-4246 and 8080,
# which the integration clusters keep off, and .cache/cluster), as is the chaos
# run (its namespaces flc-* and /tmp/flotilla-chaos are fixed). Every other
# module is a group of its own, so that its module-scoped clusters are built
# once. Clusters on this machine's own engine take address pools of their
# own (tests/helpers/pools.py), so their networks never clash there (an
# engine holds one network per subnet); the modules that keep Flotilla's
# default pool, to assert its subnets (``ADDR_POOL = None``), share a group
# instead. (pytest-xdist's own
# loadgroup does not group under pytest 9.2: the scheduler below does the
# grouping.)
#
# The order: the longest first, then the other integration modules, the unit
# tests last.
DEDICATED = os.environ.get("FLOTILLA_TEST_DEDICATED_GROUP", "deploy")   # (another in test_lane)
FIRST_GROUPS = (
    DEDICATED,
    "tests/deploy/test_make_cluster.py",
    "tests/integration/test_durability.py",
    "tests/integration/test_services.py",
    "tests/integration/test_rotation.py",
    "tests/integration/test_updates.py",
    "chaos",
    "tests/integration/test_roles.py",
    "tests/integration/test_cli.py",
)


ENGINE_NETWORKS = ("tests/integration/test_networks.py", "tests/integration/test_cli_networks.py")


def _group(path: str) -> str:
    """The group of the tests in ``path`` (relative to the repository)."""
    if path in ENGINE_NETWORKS:
        return "engine-networks"
    parts = path.split("/")
    if parts[:2] == ["tests", "deploy"] and parts[2:] != ["test_make_cluster.py"]:
        return DEDICATED
    if parts[:2] == ["tests", "chaos"]:
        return "chaos"
    return path


def _rank(group: str) -> int:
    """First the groups above, then the other integration modules, the unit tests last."""
    if group in FIRST_GROUPS:
        return FIRST_GROUPS.index(group)
    return len(FIRST_GROUPS) + group.startswith("tests/unit/")


def pytest_collection_modifyitems(config, items):
    rank = {item.nodeid: _rank(_group(item.nodeid.split("::", 1)[0])) for item in items}
    items.sort(key=lambda item: rank[item.nodeid])     # stable: each group keeps its order


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    if config.getvalue("dist") not in ("load", "loadscope", "loadfile", "loadgroup"):
        return None
    from xdist.scheduler import LoadScopeScheduling

    class GroupScheduling(LoadScopeScheduling):
        """LoadScopeScheduling with our groups as the scopes, in the items'
        order; the worker given the dedicated group gets no other."""

        def _split_scope(self, nodeid: str) -> str:
            return _group(nodeid.split("::", 1)[0])

        def _reschedule(self, node) -> None:
            # Nothing is queued behind the dedicated group while it runs; at
            # its last test (which a worker holds until it is given the next
            # one, or told to stop) its worker takes what is left.
            work = self.assigned_work.get(node, {})
            if DEDICATED in work and len(self.nodes) > 1 and self._pending_of(work) > 1:
                return
            super()._reschedule(node)

    config.option.loadscopereorder = False
    return GroupScheduling(config, log)


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)


# With FLOTILLA_TEST_CPU_LOG=path, each test appends one JSON line: the CPU
# seconds its worker and the processes it started and reaped used during its
# setup, call and teardown (``bench/testcpu.py`` sums them by module).
_CPU_LOG = os.environ.get("FLOTILLA_TEST_CPU_LOG")


def _cpu_seconds() -> float:
    import resource
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        use = resource.getrusage(who)
        total += use.ru_utime + use.ru_stime
    return total


if _CPU_LOG:
    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_protocol(item, nextitem):
        import json
        import time
        cpu0, wall0 = _cpu_seconds(), time.monotonic()
        yield
        line = {"test": item.nodeid, "cpu": round(_cpu_seconds() - cpu0, 3),
                "wall": round(time.monotonic() - wall0, 3)}
        with open(_CPU_LOG, "a") as out:
            out.write(json.dumps(line) + "\n")
