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
    """Everything the hosts need, built once and cached under .cache/:
    the node image, the SSH key, the busybox image archive and the wheelhouse
    (a dict of paths, as ``testhosts.prepare()``)."""
    if os.geteuid() != 0:
        pytest.skip("deployment tests need root (debootstrap, containers with systemd)")
    testhosts.ensure_docker()
    return testhosts.prepare()


@pytest.fixture(scope="module")
def test_hosts(deploy_artifacts):
    """Three managers (flt-m1..3) and two workers (flt-w1..2), ready for SSH,
    with an inventory using the cached wheelhouse. Fresh for every test module;
    removed afterwards."""
    hosts = testhosts.TestHosts(prefix="flt")
    try:
        hosts.start(managers=3, workers=2)
        hosts.write_inventory(wheelhouse=deploy_artifacts["wheelhouse"])
        yield hosts
    finally:
        hosts.teardown()
