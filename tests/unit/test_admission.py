"""Admission: a few request threads run the application at once; joins have
a small budget of their own, beside those slots."""

import threading
import time

from flotilla.common.admission import Budget
from flotilla.manager.api import app as api_app


def test_budget_lets_a_few_in_queues_some_and_refuses_the_rest():
    budget = Budget(2, queue=1, wait=5.0)
    assert budget.enter() and budget.enter()
    # A third waits for a turn...
    got = []
    waiter = threading.Thread(target=lambda: got.append(budget.enter()))
    waiter.start()
    deadline = time.monotonic() + 5
    while budget._waiting == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    # ...a fourth, with the queue full, is refused at once.
    t0 = time.monotonic()
    assert not budget.enter()
    assert time.monotonic() - t0 < 0.5
    budget.leave()
    waiter.join(5)
    assert got == [True]


def test_budget_waits_at_most_its_wait():
    budget = Budget(1, queue=4, wait=0.2)
    assert budget.enter()
    t0 = time.monotonic()
    assert not budget.enter()
    assert 0.15 < time.monotonic() - t0 < 2


class _Counters:
    def __init__(self):
        self.counts = {}

    def inc(self, name):
        self.counts[name] = self.counts.get(name, 0) + 1


class _Manager:
    def __init__(self):
        self.counters = _Counters()


def test_joins_beside_the_slots_and_beyond_their_budget_busy_at_once(monkeypatch):
    monkeypatch.setattr(api_app, "JOIN_WAIT", 0.2)
    release = threading.Event()
    inside = []

    def app(environ, start_response):
        inside.append(environ["PATH_INFO"])
        release.wait(10)
        start_response("200 OK", [])
        return [b"ok"]

    manager = _Manager()
    entry = api_app._entry(app, manager)

    def call(method, path, out):
        status = []
        body = entry({"REQUEST_METHOD": method, "PATH_INFO": path},
                     lambda s, headers: status.append((s, dict(headers))))
        out.append((status[0], b"".join(body)))

    results = []
    threads = []

    def start(method, path):
        t = threading.Thread(target=call, args=(method, path, results))
        t.start()
        threads.append(t)

    def wait_inside(n):
        deadline = time.monotonic() + 5
        while len(inside) < n and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(inside) == n, inside

    try:
        # Every admission slot taken by requests that do not finish...
        for _ in range(api_app.ACTIVE_REQUESTS):
            start("GET", "/v1/services")
        wait_inside(api_app.ACTIVE_REQUESTS)
        # ...and joins still run, up to their budget.
        for _ in range(api_app.JOINS):
            start("POST", "/v1/join")
        wait_inside(api_app.ACTIVE_REQUESTS + api_app.JOINS)
        # One more join: a turn does not come within JOIN_WAIT: 503 busy.
        t0 = time.monotonic()
        out = []
        call("POST", "/v1/join", out)
        (status, headers), body = out[0]
        assert status.startswith("503") and headers["Retry-After"] == "1"
        assert b'"code":"busy"' in body
        assert time.monotonic() - t0 < 2
        assert manager.counters.counts == {"api.join_busy": 1}
    finally:
        release.set()
        for t in threads:
            t.join(10)
    assert all(status.startswith("200") for (status, _), _ in results)
