"""What ``node run`` does with address flags when it resumes a node: the
saved configuration's addresses, moved as a first start would move them."""

import dataclasses

import pytest

from flotilla.common.config import ConfigError, NodeConfig


def saved(**flags) -> NodeConfig:
    cfg = NodeConfig(data_dir="/nonexistent")
    cfg.fill_addresses(flags.get("listen"), flags.get("advertise"), flags.get("raft_listen"),
                       flags.get("raft_advertise"))
    return cfg


def resumed(cfg: NodeConfig, manager: bool, **flags):
    cfg = dataclasses.replace(cfg)
    return cfg, cfg.apply_restart_flags(flags, manager)


def test_the_same_flags_change_nothing():
    cfg = saved(listen="127.0.0.1:4242")
    again, changes = resumed(cfg, True, listen="127.0.0.1:4242", hostname="")
    assert changes == [] and again == cfg


def test_a_worker_moves_with_its_listen_address_as_on_a_first_start():
    cfg, changes = resumed(saved(listen="127.0.0.1:4242"), False, listen="127.0.0.1:5000")
    assert (cfg.listen, cfg.advertise, cfg.raft_advertise, cfg.agent_advertise,
            cfg.dispatcher_listen) == ("127.0.0.1:5000", "127.0.0.1:5000", "127.0.0.1:15000",
                                       "127.0.0.1:25000", "127.0.0.1:35000")
    assert "agent-advertise 127.0.0.1:24242 -> 127.0.0.1:25000 (from --listen)" in changes


def test_addresses_given_apart_stay_where_they_were_given():
    cfg, _ = resumed(saved(listen="0.0.0.0:4242", advertise="203.0.113.7:14242",
                           raft_listen="0.0.0.0:7000"), False, listen="0.0.0.0:5000")
    assert (cfg.advertise, cfg.raft_listen, cfg.agent_listen) == (
        "203.0.113.7:14242", "0.0.0.0:7000", "0.0.0.0:25000")


def test_a_manager_listens_where_told_while_its_addresses_stay():
    cfg, changes = resumed(saved(listen="127.0.0.1:4242"), True, listen="0.0.0.0:4242",
                           hostname="m9")
    assert (cfg.listen, cfg.raft_listen, cfg.advertise, cfg.raft_advertise, cfg.hostname) == (
        "0.0.0.0:4242", "0.0.0.0:14242", "127.0.0.1:4242", "127.0.0.1:14242", "m9")
    assert "hostname (none) -> m9 (from --hostname)" in changes


@pytest.mark.parametrize("flags, says", [
    ({"advertise": "127.0.0.1:4300"}, "--advertise 127.0.0.1:4300: would move this manager's "
                                      "API address from 127.0.0.1:4242 to 127.0.0.1:4300"),
    ({"raft_advertise": "127.0.0.1:4300"}, "--raft-advertise 127.0.0.1:4300: would move this "
                                           "manager's Raft address"),
    ({"listen": "127.0.0.1:5000"}, "--listen 127.0.0.1:5000: would move this manager's API "
                                   "address"),
    ({"raft_listen": "127.0.0.1:7000"}, "--raft-listen 127.0.0.1:7000: would move this "
                                        "manager's Raft address"),
])
def test_a_manager_refuses_to_move_its_recorded_addresses(flags, says):
    cfg = saved(listen="127.0.0.1:4242")
    with pytest.raises(ConfigError) as err:
        dataclasses.replace(cfg).apply_restart_flags(flags, True)
    assert str(err.value).startswith(says) and "\n" not in str(err.value)
    assert "demote the node to a worker first" in str(err.value)
