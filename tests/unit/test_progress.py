"""When the CLI's wait for convergence gives up early: a task the scheduler
found no node for, told apart from one that is only waiting for its turn."""

import pytest

from flotilla.cli import progress
from flotilla.cli.progress import SETTLE, _Service, _unplaceable


def _task(slot, state="pending", message="pending task scheduling", up_to_date=True):
    return {"id": f"t{slot}", "slot": slot, "service_name": "web", "node_id": None, "node": None,
            "state": state, "desired_state": "running", "message": message, "error": None,
            "timestamp": 0, "up_to_date": up_to_date}


class FakeApi:
    """What the API answers for each service (the wait only reads)."""

    def __init__(self):
        self.services = {}

    def set(self, name, tasks, update_state=None, replicas=1):
        self.services[name] = (
            {"id": name, "name": name, "mode": "replicated",
             "replicas": {"desired": replicas},
             "update_status": {"state": update_state, "started_at": 0} if update_state else None},
            tasks)

    def __call__(self, ctx, method, path, **kw):
        parts = path.split("/")
        svc, tasks = self.services[parts[3]]
        return tasks if path.endswith("/tasks") else svc


@pytest.fixture
def api(monkeypatch):
    fake = FakeApi()
    monkeypatch.setattr(progress, "call", fake)
    return fake


def _poll(services):
    for s in services:
        s.poll()


def test_a_task_not_yet_scheduled_never_stops_the_wait(api):
    api.set("web", [_task(1)])
    web = _Service(None, "web", started=0)
    for now in (0, SETTLE, 10 * SETTLE, 1000):
        _poll([web])
        assert _unplaceable([web], now) is None


def test_an_explanation_stops_the_wait_once_it_holds(api):
    reason = "no suitable node (2 nodes lack 100 TB memory)"
    api.set("web", [_task(1, message=reason)])
    web = _Service(None, "web", started=0)
    _poll([web])
    assert _unplaceable([web], 100.0) is None            # just seen: the scheduler may retry
    _poll([web])
    assert _unplaceable([web], 100.0 + SETTLE / 2) is None
    _poll([web])
    assert _unplaceable([web], 100.0 + SETTLE) is web
    assert web.unplaced["message"] == reason


def test_an_explanation_that_goes_away_starts_over(api):
    reason = "no suitable node (1 node not ready)"
    web = _Service(None, "web", started=0)
    api.set("web", [_task(1, message=reason)])
    _poll([web])
    assert _unplaceable([web], 0.0) is None
    api.set("web", [_task(1, state="assigned", message="scheduled")])      # placed after all
    _poll([web])
    assert _unplaceable([web], SETTLE) is None
    api.set("web", [_task(1, state="failed", message="x", up_to_date=True),
                    _task(2, message=reason)])
    _poll([web])
    assert _unplaceable([web], SETTLE + 1) is None
    _poll([web])
    assert _unplaceable([web], 2 * SETTLE + 1) is web


def test_tasks_of_an_older_spec_do_not_count(api):
    reason = "no suitable node (1 node lacks 1 CPU)"
    api.set("web", [_task(1, message=reason, up_to_date=False), _task(1, state="running",
                                                                      message="started")])
    web = _Service(None, "web", started=0)
    for now in (0, 10 * SETTLE):
        _poll([web])
        assert _unplaceable([web], now) is None


def test_another_service_still_updating_defers_the_verdict(api):
    """In a stack deploy, the old tasks of another service being updated may
    hold what the task needs: wait until that update is over."""
    reason = "no suitable node (1 node lacks 512 MB memory)"
    api.set("db", [_task(1, message=reason)])
    api.set("web", [_task(1, state="running", message="started")], update_state="updating")
    db, web = _Service(None, "db", 0), _Service(None, "web", 0)
    _poll([db, web])
    assert _unplaceable([db, web], 0.0) is None
    _poll([db, web])
    assert _unplaceable([db, web], 10 * SETTLE) is None
    api.set("web", [_task(1, state="running", message="started")], update_state="completed")
    _poll([db, web])
    assert _unplaceable([db, web], 10 * SETTLE + 0.5) is db


def test_two_services_that_both_fit_nowhere_do_not_wait_for_each_other(api):
    reason = "no suitable node (1 node lacks 512 MB memory)"
    api.set("db", [_task(1, message=reason)], update_state="updating")
    api.set("web", [_task(1, message=reason)], update_state="updating")
    db, web = _Service(None, "db", 0), _Service(None, "web", 0)
    _poll([db, web])
    assert _unplaceable([db, web], 0.0) is None
    _poll([db, web])
    assert _unplaceable([db, web], SETTLE) is db
