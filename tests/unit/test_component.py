"""Long-running components: a run() that fails unexpectedly is run again."""

import threading

from flotilla.common import component
from flotilla.common.component import Component
from tests.helpers.cluster import wait_for


class Flaky(Component):
    name = "flaky"

    def __init__(self, failures):
        super().__init__()
        self.failures = failures
        self.runs = 0
        self.serving = threading.Event()

    def run(self):
        self.runs += 1
        if self.runs <= self.failures:
            raise RuntimeError("boom")
        self.serving.set()
        self.stopping.wait()


def test_a_crashed_component_runs_again(monkeypatch):
    monkeypatch.setattr(component, "RESTART_FIRST", 0.01)
    c = Flaky(failures=3)
    c.start()
    try:
        wait_for(c.serving.is_set, 10, what="the component serving after 3 crashes")
        assert c.runs == 4 and c.crashes == 3
    finally:
        c.stop()
    assert not c._thread.is_alive()


def test_stop_during_the_pause_ends_it(monkeypatch):
    monkeypatch.setattr(component, "RESTART_FIRST", 60.0)
    c = Flaky(failures=100)
    c.start()
    wait_for(lambda: c.crashes == 1, 10, what="a first crash")
    c.stop(timeout=5)
    assert not c._thread.is_alive() and c.runs == 1
