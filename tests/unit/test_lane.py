"""How `make test` spreads the tests over pytest-xdist workers (tests/conftest.py):
each module's tests run in one worker, one after the other (its module-scoped
clusters are built once); the tests with fixed host names, ports or
namespaces share a group; the longest groups are handed out first."""

import collections
import os
import re
import subprocess
import sys

from tests.conftest import FIRST_GROUPS, _group, _rank

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


FILES = ["tests/unit/test_units.py", "tests/unit/test_ratelog.py", "tests/unit/test_component.py"]


def _passed_in_two_workers(env=None, files=FILES) -> tuple[list[tuple[str, str]], str]:
    """Run ``files`` in 2 workers: (worker, module) of each test that passed,
    in order, and pytest's output."""
    res = subprocess.run([sys.executable, "-m", "pytest", "-n", "2", "-v", "-p", "no:cacheprovider",
                          *files], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return re.findall(r"^\[(gw\d+)\] \[ *\d+%\] PASSED (\S+?)::", res.stdout, re.M), res.stdout


def test_each_module_runs_whole_in_one_worker():
    passed, out = _passed_in_two_workers()
    workers, order = collections.defaultdict(set), collections.defaultdict(list)
    for worker, path in passed:
        workers[path].add(worker)
        if not order[worker] or order[worker][-1] != path:
            order[worker].append(path)
    assert set(workers) == set(FILES), out[-3000:]
    assert all(len(w) == 1 for w in workers.values()), workers
    # ... and a worker runs one module to its end before the next.
    assert all(len(paths) == len(set(paths)) for paths in order.values()), order


def test_fixed_names_share_a_group_and_the_longest_go_first():
    assert _group("tests/deploy/test_site.py") == _group("tests/deploy/test_smoke.py") == "deploy"
    assert _group("tests/deploy/test_make_cluster.py") == "tests/deploy/test_make_cluster.py"
    assert _group("tests/chaos/test_chaos.py") == "chaos"
    assert _group("tests/integration/test_cli.py") == "tests/integration/test_cli.py"
    assert _group("tests/integration/test_networks.py") == \
        _group("tests/integration/test_cli_networks.py") == "engine-networks"
    ranks = [_rank(_group(p)) for p in ("tests/deploy/test_site.py", "tests/integration/test_services.py",
                                         "tests/chaos/test_chaos.py", "tests/integration/test_metrics.py",
                                         "tests/unit/test_units.py")]
    assert ranks == sorted(ranks) and len(set(ranks)) == len(ranks)
    assert all(os.path.exists(os.path.join(ROOT, g)) for g in FIRST_GROUPS if "/" in g)


def test_a_cluster_built_after_a_discarded_one_gets_a_directory_of_its_own(tmp_path):
    from tests.integration.conftest import _Clusters, _Shared

    clusters = _Clusters(tmp_path)
    shared = _Shared(clusters, {})
    first = clusters()
    shared.current = first
    first.dump_logs = lambda: ""            # nothing was started
    shared.discard()                       # as after a failed test
    second = clusters()
    assert first.base != second.base and clusters.made == [second]


def test_the_worker_of_the_dedicated_group_takes_what_is_left_once_it_is_done():
    # The dedicated group (two quick tests) is done long before the other
    # worker is through test_tls.py: its worker then takes test_ratelog.py.
    dedicated = "tests/unit/test_component.py"
    env = dict(os.environ, FLOTILLA_TEST_DEDICATED_GROUP=dedicated)
    passed, out = _passed_in_two_workers(
        env, files=[dedicated, "tests/unit/test_tls.py", "tests/unit/test_ratelog.py"])
    order = collections.defaultdict(list)
    for worker, path in passed:
        if not order[worker] or order[worker][-1] != path:
            order[worker].append(path)
    mine = [paths for paths in order.values() if dedicated in paths]
    assert mine == [[dedicated, "tests/unit/test_ratelog.py"]], order
