import random
import time
from collections import Counter

import pytest

from flotilla.manager.scheduler import SchedulerCore, format_bytes
from flotilla.manager.scheduler.filters import format_cpus

MB = 1024 * 1024
GB = 1024 * MB


def make_node(node_id, *, cpus=4.0, memory=8 * GB, labels=None, state="ready",
              availability="active", role="worker", engine_labels=None, addr=None):
    return {
        "id": node_id, "hostname": f"host-{node_id}", "role": role,
        "addr": addr or "10.0.0.1:4242",
        "spec": {"availability": availability, "labels": dict(labels or {}), "role": role},
        "status": {"state": state},
        "description": {"platform": {"os": "linux", "arch": "x86_64"},
                        "resources": {"cpus": cpus, "memory": memory},
                        "engine": {"labels": dict(engine_labels or {})}},
        "version": 1,
    }


def make_task(task_id, *, service="svc", version=1, cpus=0, memory=0, constraints=(),
              spread=(), max_replicas=0, ports=(), node_id=None, state="pending",
              desired="running", slot=None):
    return {
        "id": task_id, "service_id": service, "service_name": service, "slot": slot,
        "node_id": node_id, "spec_version": version, "desired_state": desired,
        "ports": [{"published": p, "target": p, "protocol": proto} for p, proto in ports],
        "status": {"state": state, "message": ""},
        "spec": {
            "container": {"image": "nginx"},
            "resources": {"limits": {}, "reservations": {"cpus": cpus, "memory": memory}},
            "placement": {"constraints": list(constraints),
                          "preferences": [{"spread": s} for s in spread],
                          "max_replicas": max_replicas},
        },
    }


def tasks(n, prefix="t", **kw):
    return [make_task(f"{prefix}{i:04d}", slot=i + 1, **kw) for i in range(n)]


def core_with(*nodes, clock=None):
    core = SchedulerCore(clock=clock) if clock else SchedulerCore()
    for n in nodes:
        core.set_node(n)
    return core


def per_node(decisions):
    return Counter(node for _, node in decisions.assigned)


def commit(core, decisions, pending):
    """Apply decisions the way the store would, and feed them back."""
    by_id = {t["id"]: t for t in pending}
    out = []
    for task_id, node_id in decisions.assigned:
        t = dict(by_id[task_id], node_id=node_id, status={"state": "assigned"})
        core.track_task(t)
        out.append(t)
    return out


# -- formatting -------------------------------------------------------------

def test_wording_helpers():
    assert format_bytes(512 * MB) == "512 MB"
    assert format_bytes(1536 * MB) == "1.5 GB"
    assert format_bytes(2 * GB) == "2 GB"
    assert format_bytes(100) == "100 B"
    assert format_bytes(1024) == "1 KB"
    assert format_bytes(1000 * 1000) == "976.56 KB"
    assert format_cpus(10**9) == "1 CPU"
    assert format_cpus(2 * 10**9) == "2 CPUs"
    assert format_cpus(5 * 10**8) == "0.5 CPUs"


# -- ranking ----------------------------------------------------------------

def test_spreads_evenly_across_nodes():
    core = core_with(*(make_node(f"n{i}") for i in range(3)))
    pending = tasks(7)
    d = core.schedule(pending)
    assert not d.unschedulable
    assert sorted(per_node(d).values()) == [2, 2, 3]
    # the next task goes to one of the nodes with two
    d2 = core.schedule([make_task("extra")])
    assert per_node(d)[d2.assigned[0][1]] == 2


def test_existing_tasks_of_the_service_then_total_tasks_rank_nodes():
    core = core_with(make_node("a"), make_node("b"), make_node("c"))
    core.track_task(make_task("old1", node_id="a", state="running"))
    core.track_task(make_task("old2", node_id="a", state="running"))
    core.track_task(make_task("other1", service="other", node_id="b", state="running"))
    d = core.schedule(tasks(2))
    # c has nothing, b has only another service's task, a has two of ours
    assert [n for _, n in d.assigned] == ["c", "b"]
    d = core.schedule(tasks(4, prefix="u"))
    counts = {n: core.node_usage(n)["services"].get("svc", 0) for n in "abc"}
    assert counts == {"a": 3, "b": 3, "c": 2} or counts == {"a": 3, "b": 2, "c": 3}
    assert sum(counts.values()) == 8


def test_ties_are_broken_by_node_id_and_decisions_are_deterministic():
    nodes = [make_node(f"n{i:02d}") for i in range(10)]
    pending = tasks(25)
    first = core_with(*nodes).schedule(pending)
    shuffled_nodes = nodes[:]
    random.Random(7).shuffle(shuffled_nodes)
    shuffled = pending[:]
    random.Random(3).shuffle(shuffled)
    second = core_with(*shuffled_nodes).schedule(shuffled)
    assert first == second
    assert first.assigned[0] == ("t0000", "n00")


def test_recent_failures_sort_last():
    now = [1000.0]
    core = core_with(make_node("a"), make_node("b"), clock=lambda: now[0])
    core.track_task(make_task("busy1", node_id="b", state="running"))
    core.track_task(make_task("busy2", node_id="b", state="running"))
    for _ in range(5):
        core.note_failure(make_task("f", node_id="a", state="failed"))
    d = core.schedule([make_task("x1")])
    assert d.assigned == [("x1", "b")]          # a has fewer tasks but 5 recent failures
    core.forget_task("x1")
    # failures of another spec version do not count
    d = core.schedule([make_task("x2", version=2)])
    assert d.assigned == [("x2", "a")]
    core.forget_task("x2")
    # after five minutes they are forgotten
    now[0] += 301
    d = core.schedule([make_task("x3")])
    assert d.assigned == [("x3", "a")]


def test_four_failures_do_not_demote_a_node():
    core = core_with(make_node("a"), make_node("b"))
    core.track_task(make_task("busy", node_id="b", state="running"))
    for _ in range(4):
        core.note_failure(make_task("f", node_id="a", state="rejected"))
    assert core.schedule([make_task("x")]).assigned == [("x", "a")]


def test_failing_nodes_still_used_when_nothing_else_fits():
    core = core_with(make_node("a"), make_node("b", state="down"))
    for _ in range(6):
        core.note_failure(make_task("f", node_id="a", state="failed"))
    assert core.schedule([make_task("x")]).assigned == [("x", "a")]


# -- filters ----------------------------------------------------------------

def test_unavailable_nodes_are_excluded():
    core = core_with(make_node("ok"), make_node("down", state="down"),
                     make_node("unknown", state="unknown"),
                     make_node("paused", availability="pause"),
                     make_node("drained", availability="drain"))
    d = core.schedule(tasks(4))
    assert per_node(d) == {"ok": 4}
    core2 = core_with(make_node("down", state="down"), make_node("unknown", state="unknown"),
                      make_node("paused", availability="pause"),
                      make_node("drained", availability="drain"),
                      make_node("drained2", availability="drain"))
    d = core2.schedule([make_task("x")])
    assert d.unschedulable == {"x": "no suitable node (2 nodes not active (availability drain); "
                                     "2 nodes not ready; 1 node not active (availability pause))"}


def test_no_nodes_at_all():
    d = SchedulerCore().schedule(tasks(2))
    assert d.assigned == []
    assert d.unschedulable == {"t0000": "no suitable node (no nodes in the cluster)",
                               "t0001": "no suitable node (no nodes in the cluster)"}


def test_resources_are_exhausted_then_explained():
    core = core_with(make_node("a", memory=1 * GB), make_node("b", memory=1 * GB))
    d = core.schedule(tasks(5, memory=512 * MB))
    assert per_node(d) == {"a": 2, "b": 2}
    assert d.unschedulable == {"t0004": "no suitable node (2 nodes lack 512 MB memory)"}
    assert core.node_usage("a")["reserved"] == {"cpus": 0.0, "memory": 1 * GB}


def test_cpu_reservations():
    core = core_with(make_node("a", cpus=1), make_node("b", cpus=2))
    d = core.schedule(tasks(4, cpus=0.5))
    assert per_node(d) == {"a": 2, "b": 2}
    d = core.schedule([make_task("big", cpus=1.5)])
    assert d.unschedulable == {"big": "no suitable node (2 nodes lack 1.5 CPUs)"}
    d = core.schedule([make_task("small", cpus=0.25)])
    assert d.assigned == [("small", "b")]


def test_mixed_explanation_most_frequent_first():
    core = core_with(make_node("a", memory=256 * MB, labels={"disk": "ssd"}),
                     make_node("b", memory=256 * MB),
                     make_node("c", memory=4 * GB, labels={"disk": "hdd"}),
                     make_node("d", state="down"))
    d = core.schedule([make_task("x", memory=512 * MB, constraints=["node.labels.disk==ssd"])])
    assert d.assigned == []
    # most frequent first, ties in pipeline order
    assert d.unschedulable["x"] == ("no suitable node (2 nodes lack 512 MB memory; "
                                    "1 node not ready; "
                                    "1 node fails constraint node.labels.disk==ssd)")


def test_constraint_failures_name_each_nodes_first_failing_constraint():
    core = core_with(make_node("a", role="manager"), make_node("b"), make_node("c"))
    d = core.schedule([make_task("x", constraints=["node.role==worker", "node.labels.zone==e"])])
    assert d.unschedulable["x"] == ("no suitable node (2 nodes fail constraint node.labels.zone==e; "
                                    "1 node fails constraint node.role==worker)")


def test_constraints_select_nodes():
    core = core_with(make_node("a", labels={"zone": "east"}), make_node("b", labels={"zone": "west"}),
                     make_node("m", role="manager", labels={"zone": "east"}))
    d = core.schedule(tasks(4, constraints=["node.labels.zone==EAST", "node.role!=manager"]))
    assert per_node(d) == {"a": 4}


def test_invalid_constraint_in_a_task_is_unschedulable():
    core = core_with(make_node("a"))
    d = core.schedule([make_task("x", constraints=["node.labels.zone=east"])])
    assert d.assigned == []
    assert d.unschedulable["x"].startswith("no suitable node (invalid constraint ")


def test_nodes_without_resources_take_only_tasks_without_reservations():
    core = SchedulerCore()
    core.set_node({"id": "bare", "status": {"state": "ready"}})
    d = core.schedule([make_task("plain"), make_task("needy", memory=64 * MB)])
    assert d.assigned == [("plain", "bare")]
    assert d.unschedulable == {"needy": "no suitable node (1 node lacks 64 MB memory)"}


def test_host_ports():
    core = core_with(make_node("a"), make_node("b"), make_node("c"))
    core.track_task(make_task("web0", service="old", node_id="c", state="running",
                              ports=[(8080, "tcp")]))
    d = core.schedule(tasks(3, ports=[(8080, "tcp")]))
    assert per_node(d) == {"a": 1, "b": 1}
    assert d.unschedulable == {"t0002": "no suitable node (host port 8080/tcp in use on 3 nodes)"}
    # the same number over udp is another port
    d = core.schedule([make_task("dns", service="dns", ports=[(8080, "udp")])])
    assert len(d.assigned) == 1
    # the port is free again once the old task is gone
    core.forget_task("web0")
    d = core.schedule([make_task("t0002", ports=[(8080, "tcp")])])
    assert d.assigned == [("t0002", "c")]


def test_max_replicas_per_node():
    core = core_with(make_node("a"), make_node("b"))
    core.track_task(make_task("old", node_id="a", state="running", max_replicas=2))
    d = core.schedule(tasks(4, max_replicas=2))
    assert per_node(d) == {"a": 1, "b": 2}
    assert d.unschedulable == {"t0003": "no suitable node (max replicas per node (2) reached on 2 nodes)"}
    # other services are not limited by it
    assert len(core.schedule(tasks(3, prefix="o", service="other")).assigned) == 3


def test_platform_hook():
    arm = make_node("arm")
    arm["description"]["platform"] = {"os": "linux", "arch": "aarch64"}
    core = core_with(make_node("x86"), arm)
    t = make_task("t")
    t["spec"]["placement"]["platforms"] = [{"os": "linux", "arch": "arm64"}]
    assert core.schedule([t]).assigned == [("t", "arm")]
    core.remove_node("arm")
    t2 = make_task("t2")
    t2["spec"]["placement"]["platforms"] = [{"os": "linux", "arch": "arm64"}]
    assert core.schedule([t2]).unschedulable == {
        "t2": "no suitable node (1 node not on platform linux/arm64)"}


# -- spread preferences ---------------------------------------------------------

def zone_nodes():
    return [make_node("a1", labels={"zone": "a"}), make_node("a2", labels={"zone": "a"}),
            make_node("a3", labels={"zone": "a"}), make_node("b1", labels={"zone": "b"}),
            make_node("c1", labels={"zone": "c"})]


def zones_of(core, decisions):
    return Counter(core.node(n)["spec"]["labels"].get("zone", "") for _, n in decisions.assigned)


def test_spread_over_zones_regardless_of_node_count():
    core = core_with(*zone_nodes())
    d = core.schedule(tasks(9, spread=["node.labels.zone"]))
    assert zones_of(core, d) == {"a": 3, "b": 3, "c": 3}
    assert per_node(d) == {"a1": 1, "a2": 1, "a3": 1, "b1": 3, "c1": 3}


def test_spread_counts_tasks_already_in_a_zone():
    core = core_with(*zone_nodes())
    core.track_task(make_task("old1", node_id="a1", state="running"))
    core.track_task(make_task("old2", node_id="a2", state="running"))
    # tasks on a node that takes no new tasks still count for its zone
    core.set_node(make_node("c2", labels={"zone": "c"}, availability="drain"))
    core.track_task(make_task("old3", node_id="c2", state="running"))
    d = core.schedule(tasks(6, spread=["node.labels.zone"]))
    assert zones_of(core, d) == {"a": 1, "b": 3, "c": 2}      # 3 + 3 + 3 in the end


def test_nodes_without_the_label_form_their_own_branch():
    core = core_with(make_node("a1", labels={"zone": "a"}), make_node("b1", labels={"zone": "b"}),
                     make_node("x1"), make_node("x2", labels={"rack": "r1"}))
    d = core.schedule(tasks(6, spread=["node.labels.zone"]))
    assert zones_of(core, d) == {"a": 2, "b": 2, "": 2}
    assert per_node(d) == {"a1": 2, "b1": 2, "x1": 1, "x2": 1}


def test_remainders_go_one_each():
    core = core_with(*zone_nodes())
    d = core.schedule(tasks(4, spread=["node.labels.zone"]))
    assert sorted(zones_of(core, d).values()) == [1, 1, 2]


def test_full_branch_share_is_redistributed():
    core = core_with(make_node("a1", labels={"zone": "a"}, memory=8 * GB),
                     make_node("b1", labels={"zone": "b"}, memory=1 * GB),
                     make_node("c1", labels={"zone": "c"}, availability="drain"))
    d = core.schedule(tasks(6, memory=1 * GB, spread=["node.labels.zone"]))
    assert zones_of(core, d) == {"a": 5, "b": 1}
    assert not d.unschedulable


def test_engine_label_spread_and_two_levels():
    nodes = []
    for dc in ("d1", "d2"):
        for rack in ("r1", "r2"):
            nodes.append(make_node(f"{dc}{rack}", labels={"dc": dc}, engine_labels={"rack": rack}))
    core = core_with(*nodes)
    d = core.schedule(tasks(8, spread=["node.labels.dc", "engine.labels.rack"]))
    assert per_node(d) == {"d1r1": 2, "d1r2": 2, "d2r1": 2, "d2r2": 2}


def test_spread_unschedulable_remainder_is_explained():
    core = core_with(make_node("a1", labels={"zone": "a"}, memory=1 * GB),
                     make_node("b1", labels={"zone": "b"}, memory=1 * GB))
    d = core.schedule(tasks(3, memory=1 * GB, spread=["node.labels.zone"]))
    assert per_node(d) == {"a1": 1, "b1": 1}
    assert d.unschedulable == {"t0002": "no suitable node (2 nodes lack 1 GB memory)"}


# -- preassigned (global) tasks ----------------------------------------------------

def test_preassigned_tasks_are_checked_on_their_node_only():
    core = core_with(make_node("a"), make_node("b", availability="drain"),
                     make_node("c", memory=256 * MB))
    g = [make_task(f"g-{n}", service="glob", node_id=n, memory=512 * MB) for n in "abc"]
    g.append(make_task("g-zz", service="glob", node_id="zz"))
    d = core.schedule(g)
    assert d.assigned == [("g-a", "a")]
    assert d.unschedulable == {
        "g-b": "no suitable node (1 node not active (availability drain))",
        "g-c": "no suitable node (1 node lacks 512 MB memory)",
        "g-zz": "no suitable node (node zz is not in the cluster)",
    }


def test_preassigned_tasks_go_first():
    core = core_with(make_node("a", memory=1 * GB))
    replicated = make_task("r", service="aaa", memory=512 * MB)
    glob = make_task("g", service="zzz", node_id="a", memory=1 * GB)
    d = core.schedule([replicated, glob])
    assert d.assigned == [("g", "a")]
    assert d.unschedulable == {"r": "no suitable node (1 node lacks 512 MB memory)"}


def test_pending_preassigned_tasks_hold_nothing_until_accepted():
    core = core_with(make_node("a", memory=1 * GB))
    glob = make_task("g", node_id="a", memory=1 * GB, max_replicas=1)
    core.track_task(glob)
    assert core.node_usage("a")["tasks"] == 0
    d = core.schedule([glob])
    assert d.assigned == [("g", "a")]
    assert core.node_usage("a")["reserved"]["memory"] == 1 * GB


# -- bookkeeping -------------------------------------------------------------

def test_decisions_are_accounted_then_replaced_by_the_committed_task():
    core = core_with(make_node("a", memory=2 * GB, cpus=2))
    pending = tasks(2, memory=512 * MB, cpus=0.5, ports=[(80, "tcp")], service="web")
    d = core.schedule(pending)
    assert d.assigned == [("t0000", "a")]        # the second one wants the same port
    usage = core.node_usage("a")
    assert usage == {"reserved": {"cpus": 0.5, "memory": 512 * MB}, "tasks": 1,
                     "services": {"web": 1}, "ports": {(80, "tcp")}}
    committed = commit(core, d, pending)
    assert core.node_usage("a") == usage          # replaced, not counted twice
    core.track_task(dict(committed[0], status={"state": "running"}))
    assert core.node_usage("a") == usage
    # a finished task gives everything back
    core.track_task(dict(committed[0], status={"state": "complete"}))
    assert core.node_usage("a") == {"reserved": {"cpus": 0.0, "memory": 0}, "tasks": 0,
                                    "services": {}, "ports": set()}


def test_a_following_schedule_sees_uncommitted_decisions():
    core = core_with(make_node("a", memory=1 * GB))
    d1 = core.schedule([make_task("x", memory=768 * MB)])
    d2 = core.schedule([make_task("y", memory=512 * MB)])
    assert d1.assigned == [("x", "a")]
    assert d2.unschedulable == {"y": "no suitable node (1 node lacks 512 MB memory)"}


def test_failed_commit_releases_the_reservation():
    core = core_with(make_node("a", memory=1 * GB))
    d = core.schedule([make_task("x", memory=1 * GB)])
    assert d.assigned == [("x", "a")]
    core.forget_task("x")
    assert core.node_usage("a")["reserved"]["memory"] == 0
    assert core.schedule([make_task("y", memory=1 * GB)]).assigned == [("y", "a")]
    # tracking the task still pending (commit lost) also releases it
    core.track_task(make_task("y", memory=1 * GB))
    assert core.node_usage("a")["tasks"] == 0


def test_rescheduling_a_task_releases_its_earlier_decision():
    core = core_with(make_node("a", memory=1 * GB), make_node("b", memory=1 * GB))
    t = make_task("x", memory=1 * GB)
    first = core.schedule([t]).assigned
    second = core.schedule([t]).assigned
    assert len(first) == len(second) == 1
    total = core.node_usage("a")["tasks"] + core.node_usage("b")["tasks"]
    assert total == 1


def test_track_forget_and_moves_are_exact():
    core = core_with(make_node("a"), make_node("b"))
    t = make_task("x", node_id="a", state="running", memory=GB, ports=[(53, "udp")])
    core.track_task(t)
    core.track_task(t)
    assert core.node_usage("a")["tasks"] == 1 and core.node_usage("a")["reserved"]["memory"] == GB
    core.track_task(dict(t, node_id="b"))
    assert core.node_usage("a")["tasks"] == 0 and core.node_usage("a")["ports"] == set()
    assert core.node_usage("b")["ports"] == {(53, "udp")}
    core.track_task(dict(t, node_id="b", desired_state="shutdown"))
    assert core.node_usage("b")["tasks"] == 0
    core.track_task(dict(t, node_id="b"))
    core.forget_task("x")
    core.forget_task("x")
    assert core.node_usage("b") == core.node_usage("never-seen")


def test_tasks_known_before_their_node_count_when_it_arrives():
    core = SchedulerCore()
    core.track_task(make_task("old", node_id="a", state="running", memory=1 * GB))
    core.set_node(make_node("a", memory=1 * GB))
    d = core.schedule([make_task("x", memory=1)])
    assert d.unschedulable == {"x": "no suitable node (1 node lacks 1 B memory)"}


def test_removed_nodes_receive_nothing():
    core = core_with(make_node("a"), make_node("b"))
    core.remove_node("b")
    assert per_node(core.schedule(tasks(3))) == {"a": 3}
    core.remove_node("a")
    assert core.schedule([make_task("z")]).unschedulable == {
        "z": "no suitable node (no nodes in the cluster)"}


def test_schedule_does_not_mutate_its_inputs():
    import copy
    core = core_with(make_node("a"), make_node("b"))
    pending = tasks(3, memory=MB, spread=["node.labels.zone"])
    before = copy.deepcopy(pending)
    core.schedule(pending)
    assert pending == before


# -- performance -------------------------------------------------------------

@pytest.mark.parametrize("n_nodes,n_tasks", [(300, 3000)])
def test_scheduling_many_tasks_is_fast(n_nodes, n_tasks):
    core = core_with(*(make_node(f"n{i:04d}", cpus=64, memory=256 * GB,
                                 labels={"zone": f"z{i % 3}"}) for i in range(n_nodes)))
    pending = tasks(n_tasks, memory=64 * MB, cpus=0.1)
    start = time.perf_counter()
    d = core.schedule(pending)
    elapsed = time.perf_counter() - start
    print(f"\nscheduled {len(d.assigned)} tasks on {n_nodes} nodes in {elapsed:.3f} s")
    assert len(d.assigned) == n_tasks and not d.unschedulable
    assert set(per_node(d).values()) == {n_tasks // n_nodes}
    assert elapsed < 20
    spread = tasks(n_tasks, prefix="s", service="spread", spread=["node.labels.zone"],
                   ports=[(9000, "tcp")])
    start = time.perf_counter()
    d = core.schedule(spread)
    elapsed = time.perf_counter() - start
    print(f"spread + host port: {len(d.assigned)} placed, {len(d.unschedulable)} pending "
          f"in {elapsed:.3f} s")
    assert len(d.assigned) == n_nodes and elapsed < 20
