"""A task on a drained node keeps running until its replacement runs: for
as long as the replacement's node takes to start it (bounded), but only
briefly when the replacement fits nowhere."""

from flotilla.manager.orchestrator import replicated as R

NOW = 10_000.0


def node(node_id, availability="active", state="ready"):
    return {"id": node_id, "spec": {"availability": availability}, "status": {"state": state}}


NODES = {"drained": node("drained", "drain"), "b": node("b")}


def task(node_id, state, created_at=NOW):
    return {"id": f"t-{node_id}-{state}", "node_id": node_id, "created_at": created_at,
            "status": {"state": state}, "desired_state": "running"}


OLD = task("drained", "running", created_at=NOW - 3600)


def test_the_old_task_waits_for_a_placed_replacement_that_starts_slowly():
    for state in ("assigned", "preparing", "starting"):
        new = task("b", state, created_at=NOW - 60)        # longer than DRAIN_WAIT
        assert R._handoff([OLD], new, NODES, NOW), state


def test_the_old_task_stops_once_the_replacement_runs():
    assert not R._handoff([OLD], task("b", "running"), NODES, NOW)


def test_an_unplaced_replacement_is_waited_for_briefly():
    assert R._handoff([OLD], task(None, "pending", created_at=NOW - 5), NODES, NOW)
    assert not R._handoff([OLD], task(None, "pending", created_at=NOW - R.DRAIN_WAIT - 1),
                          NODES, NOW)


def test_a_replacement_that_never_starts_is_not_waited_for_forever():
    new = task("b", "preparing", created_at=NOW - R.DRAIN_START_WAIT - 1)
    assert not R._handoff([OLD], new, NODES, NOW)


def test_no_wait_when_the_replacement_failed_or_its_node_is_unusable():
    assert not R._handoff([OLD], task("b", "failed"), NODES, NOW)
    assert not R._handoff([OLD], task("b", "starting"), dict(NODES, b=node("b", "drain")), NOW)
