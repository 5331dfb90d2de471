"""Prometheus metrics of one agent, served at ``/metrics`` on its listener.

Everything is read from the agent's components when scraped, into a
registry of its own (never the process-wide default one).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from ..ca import certs
from ..model import task as taskmodel

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from .agent import Agent


class AgentMetrics:
    def __init__(self, agent: Agent) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(AgentCollector(agent))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class AgentCollector:
    def __init__(self, agent: Agent) -> None:
        self._agent = agent

    def collect(self) -> Iterator[Metric]:
        a = self._agent
        tasks = dict.fromkeys(taskmodel.STATES, 0)
        for status in a.worker.statuses().values():
            tasks[status["state"]] = tasks.get(status["state"], 0) + 1
        family = GaugeMetricFamily("flotilla_agent_tasks",
                                   "Tasks known to this agent's worker, by observed state.",
                                   labels=["state"])
        for state, n in tasks.items():
            family.add_metric([state], n)
        yield family

        family = GaugeMetricFamily("flotilla_agent_containers",
                                   "Containers of this node's tasks, by last observed engine "
                                   "state (unknown: not observed yet).", labels=["state"])
        for state, n in sorted(a.worker.container_states().items()):
            family.add_metric([state], n)
        yield family

        session = a.session
        yield GaugeMetricFamily("flotilla_agent_session_up",
                                "1 if the last registration or heartbeat succeeded, else 0.",
                                value=1 if session.connected else 0)
        yield CounterMetricFamily("flotilla_agent_registrations",
                                  "Sessions registered with the dispatcher.",
                                  value=session.registered)
        yield CounterMetricFamily("flotilla_agent_heartbeats",
                                  "Heartbeats answered by the dispatcher.",
                                  value=session.heartbeats)
        yield CounterMetricFamily("flotilla_agent_status_updates",
                                  "Task status updates sent to the dispatcher.",
                                  value=a.reporter.sent)

        refused = CounterMetricFamily("flotilla_agent_refused",
                                      "Connections and requests the agent listener refused, "
                                      "by reason.", labels=["reason"])
        for reason, n in sorted(dict(a.server.counters).items()):
            refused.add_metric([reason], n)
        yield refused

        expiry = certs.seconds_until_expiry(a.cfg.bundle_path)
        if expiry is not None:
            yield GaugeMetricFamily("flotilla_cert_expiry_seconds",
                                    "Seconds until this node's certificate expires.",
                                    value=expiry)
