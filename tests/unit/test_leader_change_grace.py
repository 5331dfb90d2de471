"""After a leader change, nodes have time to find and register with the new
leader before they are marked down: six heartbeat periods, and at least 15 s
however short the period (at the 1 s default, 6 s was less than agents on a
busy host took, and every node was marked down and its tasks moved)."""

from flotilla.manager.dispatcher.dispatcher import leader_change_grace


def test_at_least_fifteen_seconds_with_a_short_period():
    assert leader_change_grace(1.0) == 15.0
    assert leader_change_grace(0.5) == 15.0


def test_six_periods_with_a_long_one():
    assert leader_change_grace(5.0) == 30.0
    assert leader_change_grace(10.0) == 60.0
