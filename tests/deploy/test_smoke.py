"""The test hosts are reachable the way Ansible reaches real machines."""

import pytest

pytestmark = pytest.mark.deploy


def test_ansible_ping_reaches_every_host_over_ssh(test_hosts):
    result = test_hosts.run_ansible("cluster", "ansible.builtin.ping")
    assert result.rc == 0, result.tail()
    assert sorted(result.results) == sorted(h.name for h in test_hosts.hosts)
    for name, res in result.results.items():
        assert res.get("ping") == "pong", (name, res)
    assert [h.name for h in test_hosts.managers] == ["flt-m1", "flt-m2", "flt-m3"]
    assert [h.name for h in test_hosts.workers] == ["flt-w1", "flt-w2"]


def test_every_host_runs_its_own_dockerd(test_hosts):
    # Over SSH, as the playbooks do...
    result = test_hosts.run_ansible("cluster", "ansible.builtin.command", "docker info")
    assert result.rc == 0, result.tail()
    assert len(result.results) == 5
    for name, res in result.results.items():
        assert res["rc"] == 0, (name, res)
        assert "Storage Driver: vfs" in res["stdout"], (name, res["stdout"])
    # ...and from the outside: five distinct engines.
    ids = {test_hosts.exec(h, "docker info --format '{{.ID}}'").stdout.strip() for h in test_hosts.hosts}
    assert len(ids) == 5
