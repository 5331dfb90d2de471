"""Prometheus metrics of one manager.

Each manager has its own registry (never the process-wide default one, so
several managers in one process do not mix their numbers). Raft state, the
nodes and tasks in the replicated store and the certificate's remaining
lifetime are read when scraped, so every manager reports them; the
scheduling latency is observed by the scheduler, which runs on the leader
only; API latency covers the requests this manager answered (those it
forwarded to the leader included).
"""

from __future__ import annotations


from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from ..ca import certs
from ..common import gcpolicy, tls
from ..model import task as taskmodel

NODE_STATES = ("unknown", "ready", "down")
NODE_ROLES = ("manager", "worker")
HTTP_METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"))
SCHEDULING_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.0,
                      2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
API_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class ManagerMetrics:
    """The registry of a manager and the instruments written to directly."""

    def __init__(self, manager):
        self.registry = CollectorRegistry()
        self.scheduling_latency = Histogram(
            "flotilla_scheduling_latency_seconds",
            "Time from a task's creation to its assignment to a node by the scheduler.",
            buckets=SCHEDULING_BUCKETS, registry=self.registry)
        self.api_latency = Histogram(
            "flotilla_api_request_duration_seconds",
            "Time to answer an API request, by method, endpoint and status code.",
            ["method", "endpoint", "code"], buckets=API_BUCKETS, registry=self.registry)
        self.registry.register(StateCollector(manager))

    def observe_scheduling(self, seconds: float) -> None:
        self.scheduling_latency.observe(max(0.0, seconds))

    def observe_request(self, method: str, endpoint: str | None, code: int,
                        seconds: float) -> None:
        # Labels stay bounded: endpoint names, not paths; known methods only.
        method = method if method in HTTP_METHODS else "other"
        self.api_latency.labels(method, endpoint or "unmatched", str(code)).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class StateCollector:
    """What this manager knows at scrape time: Raft, store, certificate."""

    def __init__(self, manager):
        self._m = manager

    def collect(self):
        m = self._m
        yield from self._raft(m)
        yield from self._nodes(m.store.list("node"))
        yield from self._tasks(m.store.list("task"))
        expiry = certs.seconds_until_expiry(m.cfg.bundle_path)
        if expiry is not None:
            yield GaugeMetricFamily("flotilla_cert_expiry_seconds",
                                    "Seconds until this node's certificate expires.",
                                    value=expiry)
        refused = CounterMetricFamily("flotilla_refused",
                                      "Connections and requests this manager refused, by reason.",
                                      labels=["reason"])
        counts = m.counters.snapshot()
        for reason, n in tls.handshake_failures().items():
            counts[f"tls.{reason}"] = n
        for reason, n in sorted(counts.items()):
            refused.add_metric([reason], n)
        yield refused
        dispatcher = m.dispatcher
        if dispatcher is not None:
            yield CounterMetricFamily(
                "flotilla_dispatcher_front_requests",
                "Agents' heartbeats and status reports the leader took on its dispatcher port.",
                value=dispatcher.front_requests_served)
        yield from self._gc()

    @staticmethod
    def _gc():
        gstats = gcpolicy.stats()
        if not gstats["installed"]:
            return
        pauses = CounterMetricFamily("flotilla_gc_pause_seconds",
                                     "Time the process spent in the cyclic garbage collector "
                                     "(the GIL is held), by generation.", labels=["generation"])
        for generation, seconds in enumerate(gstats["seconds"]):
            pauses.add_metric([str(generation)], seconds)
        yield pauses
        runs = CounterMetricFamily("flotilla_gc_collections",
                                   "Collections of the cyclic garbage collector, by generation.",
                                   labels=["generation"])
        for generation, count in enumerate(gstats["collections"]):
            runs.add_metric([str(generation)], count)
        yield runs
        yield GaugeMetricFamily("flotilla_gc_max_pause_seconds",
                                "Longest single garbage collection in this process.",
                                value=gstats["max_pause"])
        yield GaugeMetricFamily("flotilla_gc_frozen_objects",
                                "Objects moved out of the collector's reach after slow full "
                                "collections.", value=gstats["frozen"])

    @staticmethod
    def _raft(m):
        yield GaugeMetricFamily("flotilla_raft_leader",
                                "1 if this manager is the Raft leader, else 0.",
                                value=1 if m.is_leader else 0)
        yield GaugeMetricFamily("flotilla_store_index",
                                "Raft index of the last entry applied to this manager's store.",
                                value=m.store.index)
        status = m.raft.status() if m.raft is not None else {}
        if "term" not in status:
            return
        yield GaugeMetricFamily("flotilla_raft_term", "Current Raft term.",
                                value=status["term"])
        yield GaugeMetricFamily("flotilla_raft_commit_index",
                                "Highest Raft index known to be committed.",
                                value=status["commit_index"])
        yield GaugeMetricFamily("flotilla_raft_applied_index",
                                "Highest Raft index applied by this member.",
                                value=status["last_applied"])

    @staticmethod
    def _nodes(nodes):
        counts = {(s, r): 0 for s in NODE_STATES for r in NODE_ROLES}
        for node in nodes:
            key = (node["status"]["state"], node.get("role") or "worker")
            counts[key] = counts.get(key, 0) + 1
        family = GaugeMetricFamily("flotilla_nodes", "Nodes in the cluster, by state and role.",
                                   labels=["state", "role"])
        for (state, role), n in sorted(counts.items()):
            family.add_metric([state, role], n)
        yield family

    @staticmethod
    def _tasks(tasks):
        observed = dict.fromkeys(taskmodel.STATES, 0)
        desired = dict.fromkeys(taskmodel.STATES, 0)
        for task in tasks:
            observed[task["status"]["state"]] = observed.get(task["status"]["state"], 0) + 1
            desired[task["desired_state"]] = desired.get(task["desired_state"], 0) + 1
        yield _by_state("flotilla_tasks", "Tasks in the store, by observed state.", observed)
        yield _by_state("flotilla_tasks_desired", "Tasks in the store, by desired state.", desired)


def _by_state(name: str, documentation: str, counts: dict[str, int]) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, documentation, labels=["state"])
    for state, n in counts.items():
        family.add_metric([state], n)
    return family
