"""Fixtures for deployment tests on real test hosts (see README.md here)."""

import os

import pytest

from tests.deploy import testhosts


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "deploy: deployment tests on test hosts (containers with systemd, sshd and dockerd); "
        "see tests/deploy/README.md",
    )


@pytest.fixture(scope="session")
def deploy_artifacts():
    """What the hosts need, built once and cached under .cache/: the node image,
    the SSH key, the busybox image archive and the wheelhouse (a dict of paths,
    as returned by ``testhosts.prepare()``)."""
    if os.geteuid() != 0:
        pytest.skip("deployment tests need root (debootstrap, containers that boot systemd)")
    testhosts.ensure_docker()
    return testhosts.prepare()


@pytest.fixture(scope="module")
def test_hosts(deploy_artifacts, request, tmp_path_factory):
    """Three managers (flt-m1..3) and two workers (flt-w1..2), ready for SSH, with
    an inventory that installs from the cached wheelhouse. Fresh for every test
    module and removed afterwards (FLOTILLA_KEEP_HOSTS=1 keeps them). When a test
    of the module failed, the hosts' journals are saved next to the ansible logs
    in the fixture's directory (printed)."""
    failed_before = request.session.testsfailed
    hosts = testhosts.TestHosts(prefix="flt", workdir=tmp_path_factory.mktemp("hosts"))
    try:
        hosts.start(managers=3, workers=2)
        hosts.write_inventory(wheelhouse=deploy_artifacts["wheelhouse"])
        yield hosts
    finally:
        if request.session.testsfailed > failed_before and hosts.hosts:
            print(f"\nansible logs and host journals: {hosts.save_diagnostics()}")
        if os.environ.get("FLOTILLA_KEEP_HOSTS") == "1":
            print(f"\nhosts kept; inventory: {hosts.inventory_dir}; "
                  "remove them with: .venv/bin/python tests/deploy/testhosts.py down")
        else:
            hosts.teardown()
