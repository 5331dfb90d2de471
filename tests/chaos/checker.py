"""Invariants checked after every heal.

1. No acknowledged write is lost: each service the workload wrote is in the
   store with the last acknowledged spec (or with a later write whose outcome
   was unknown).
2. No slot of a replicated service has two running containers, counted on
   every host's own engine, once converged.
3. The cluster converges to the desired state within the deadline (30 s):
   every replicated service has exactly ``replicas`` running tasks of its
   current spec, one per slot, exactly those containers run, and every node
   is ready (every manager reachable).
4. No manager crashed from bad input: every node process is alive, no
   manager child exited on its own, and the workload's invalid writes were
   all refused (4xx), none answered with an internal error.
"""

from __future__ import annotations

import time
from collections import defaultdict

from flotilla.common.httpclient import ApiError

from .workload import Write, generation_of

SLOT = "flotilla.task.slot"
SERVICE = "flotilla.service.id"
TASK = "flotilla.task.id"


# -- 1. acknowledged writes ---------------------------------------------------------
def lost_writes(writes: list[Write], services: list[dict]) -> list[str]:
    by_name = {s["name"]: s for s in services}
    per_service: dict[str, list[Write]] = defaultdict(list)
    for w in writes:
        if w.kind != "bad":
            per_service[w.service].append(w)
    problems = []
    for name, ws in per_service.items():
        acked = [(i, w) for i, w in enumerate(ws) if w.outcome == "acknowledged"]
        if not acked:
            continue
        for (_, a), (_, b) in zip(acked, acked[1:]):
            if b.spec_version < a.spec_version:
                problems.append(f"{name}: acknowledged spec_version went back from "
                                f"{a.spec_version} to {b.spec_version}")
        last_i, last = acked[-1]
        stored = by_name.get(name)
        if stored is None:
            problems.append(f"{name}: acknowledged ({last.kind}, spec_version "
                            f"{last.spec_version}) but not in the store")
            continue
        if stored["id"] != last.service_id:
            problems.append(f"{name}: store has id {stored['id']}, acknowledged {last.service_id}")
        later = [w for w in ws[last_i + 1:] if w.outcome == "unknown"]
        have_v = stored["spec_version"]
        have = (stored["spec"]["replicas"], generation_of(stored["spec"]))
        if have_v < last.spec_version:
            problems.append(f"{name}: store at spec_version {have_v}, acknowledged "
                            f"{last.spec_version} ({last.kind} to replicas={last.replicas} "
                            f"generation={last.generation})")
        elif have_v == last.spec_version:
            if have != (last.replicas, last.generation):
                problems.append(f"{name}: spec_version {have_v} holds replicas/generation {have},"
                                f" acknowledged ({last.replicas}, {last.generation})")
        else:
            replicas = {last.replicas} | {w.replicas for w in later}
            generations = {last.generation} | {w.generation for w in later}
            if have_v - last.spec_version > len(later) or have[0] not in replicas \
                    or have[1] not in generations:
                problems.append(f"{name}: store at spec_version {have_v} with {have}; last "
                                f"acknowledged {last.spec_version} with "
                                f"({last.replicas}, {last.generation}); {len(later)} later "
                                "writes of unknown outcome cannot explain it")
    return problems


# -- 4. answers to bad input -----------------------------------------------------------
def bad_answers(writes: list[Write]) -> list[str]:
    """Writes the API must refuse but accepted, and internal errors (500)."""
    out = []
    for w in writes:
        if w.kind == "bad" and w.outcome == "acknowledged":
            method, path, body = w.request
            out.append(f"bad input accepted: {method} {path} {str(body)[:200]}")
        if w.status == 500:
            what = f"{w.request[0]} {w.request[1]}" if w.request else f"{w.kind} {w.service}"
            out.append(f"internal error answering {what}: {w.error}")
    return out


# -- 2 and 3. convergence and slots ---------------------------------------------------
def duplicate_slots(containers: list[dict]) -> list[str]:
    seen: dict[tuple, list[str]] = defaultdict(list)
    for c in containers:
        key = (c["labels"].get(SERVICE), c["labels"].get(SLOT))
        seen[key].append(f"{c['host']}:{c['id'][:12]}")
    return [f"service {svc} slot {slot} has {len(where)} running containers: {', '.join(where)}"
            for (svc, slot), where in seen.items() if len(where) > 1]


def divergence(services: list[dict], tasks: list[dict], containers: list[dict],
               nodes: list[dict]) -> list[str]:
    """Why the cluster is not (yet) in its desired state; empty when it is."""
    out = []
    for n in nodes:
        if n["state"] != "ready":
            out.append(f"node {n['hostname']} is {n['state']}")
        elif n["role"] == "manager" and (n.get("manager") or {}).get("reachability") != "reachable":
            out.append(f"manager {n['hostname']} is {(n.get('manager') or {}).get('reachability')}")
    tasks_by_service = defaultdict(list)
    for t in tasks:
        tasks_by_service[t["service_id"]].append(t)
    ctr_by_service = defaultdict(list)
    for c in containers:
        ctr_by_service[c["labels"].get(SERVICE)].append(c)
    known = {s["id"] for s in services}
    for svc_id, ctrs in ctr_by_service.items():
        if svc_id not in known:
            out.append(f"{len(ctrs)} containers of unknown service {svc_id}")
    for s in services:
        if s["mode"] != "replicated":
            continue
        want = s["spec"]["replicas"]
        status = (s.get("update_status") or {}).get("state")
        if status in ("updating", "rollback_started", "paused", "rollback_paused"):
            out.append(f"{s['name']}: update {status}")
        runnable = [t for t in tasks_by_service[s["id"]] if t["desired_state"] == "running"]
        running = [t for t in runnable if t["state"] == "running"]
        current = [t for t in running if t["up_to_date"]]
        slots = sorted(t["slot"] for t in runnable)
        if len(current) != want or len(runnable) != want or len(set(slots)) != len(slots):
            out.append(f"{s['name']}: want {want} up to date, "
                       f"tasks desired running {len(runnable)} (slots {slots}), running "
                       f"{len(running)}, current {len(current)}")
        ctrs = ctr_by_service.get(s["id"], [])
        task_ids = {t["id"] for t in current}
        if len(ctrs) != want or {c["labels"].get(TASK) for c in ctrs} != task_ids:
            out.append(f"{s['name']}: {len(ctrs)} running containers "
                       f"({sorted(c['host'] for c in ctrs)}), want {want} of its running tasks")
    return out


class Checker:
    def __init__(self, cluster, admin, converge_timeout: float = 30.0):
        self.cluster = cluster
        self.admin = admin
        self.converge_timeout = converge_timeout

    def desired_and_actual(self):
        services = self.admin.get("/v1/services")
        tasks = self.admin.get("/v1/tasks")
        nodes = self.admin.get("/v1/nodes")
        containers = self.cluster.running_task_containers()
        return services, tasks, containers, nodes

    def wait_converged(self, healed_at: float) -> tuple[float | None, list[str], tuple]:
        """Poll until the desired state is reached or the deadline passes.
        Returns (seconds since the heal or None, last divergence, last view)."""
        deadline = healed_at + self.converge_timeout
        last: list[str] = ["no answer from the cluster"]
        view = ([], [], [], [])
        while True:
            try:
                view = self.desired_and_actual()
                last = divergence(*view)
                if not last:
                    return time.monotonic() - healed_at, [], view
            except (ApiError, OSError) as exc:
                last = [f"cannot read the cluster: {exc}"]
            except Exception as exc:  # the engine API may be slow right after a restart
                last = [f"cannot read the cluster: {exc!r}"]
            if time.monotonic() > deadline:
                return None, last, view
            time.sleep(0.5)
