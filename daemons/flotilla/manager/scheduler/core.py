"""The scheduler's decision logic: which pending task goes to which node.

SchedulerCore keeps its own view of the nodes and of what the active tasks
take from them; it performs no I/O. It is fed node and task objects, asked
to ``schedule()`` pending tasks, and told the outcome of committing its
decisions.

Counting: a task holds resources, host ports and a place in the per-service
counts of its node when it has a ``node_id``, is active
(``taskmodel.active``) and is past ``pending``. A pending task with a
``node_id`` (a global service's task) is only a request for that node: it
takes nothing until ``schedule()`` accepts it.

Bookkeeping of decisions: ``schedule()`` accounts each assignment at once
under the task's id, so the next placement of the same call, and later
calls, see it. ``track_task()`` with the committed task replaces that share
(never adds a second one); ``forget_task()`` (or ``track_task()`` with a
version of the task that does not count) releases it. Every task handed to
``schedule()`` is treated as unplaced: a share still held under its id from
an earlier decision is released first.

Order of work in ``schedule()``:

1. tasks with a ``node_id`` (preassigned): the pipeline is checked on that
   node only; the task is assigned there or stays pending with the reason;
2. the other tasks, grouped by (service, spec version, requirements),
   groups in (service id, spec version) order, tasks within a group by
   (slot, id); each group is spread over the nodes as described in
   ``placement``.

Tasks that cannot be placed get an explanation such as
``no suitable node (2 nodes lack 512 MB memory; 1 node fails constraint
node.labels.disk==ssd)``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ...model import task as taskmodel
from .filters import Pipeline, Requirements, explain, no_suitable_node
from .nodeinfo import NodeInfo, Share
from .placement import Placer, build_tree, failure_rank

NO_NODES = no_suitable_node("no nodes in the cluster")


@dataclass
class Decisions:
    assigned: list = field(default_factory=list)        # [(task_id, node_id)] in decision order
    unschedulable: dict = field(default_factory=dict)   # task_id -> explanation


def counts_on_node(task: dict) -> bool:
    """The task holds resources on ``task["node_id"]``."""
    if not task.get("node_id"):
        return False
    status = task.get("status") or {}
    state = status.get("state") or "new"
    desired = task.get("desired_state") or "running"
    try:
        return (taskmodel.active({"desired_state": desired, "status": {"state": state}})
                and taskmodel.at_least(state, "assigned"))
    except KeyError:
        return False


def _order_key(task: dict):
    slot = task.get("slot")
    if not isinstance(slot, int):
        slot = None
    return (str(task.get("service_id") or ""), task.get("spec_version") is None,
            task.get("spec_version") or 0, slot is None, slot or 0, str(task.get("id")))


class SchedulerCore:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._infos: dict[str, NodeInfo] = {}
        self._where: dict[str, str] = {}          # task id -> node id its share is on
        self._present: list[NodeInfo] | None = None   # nodes with an object, by id

    # -- feeding -----------------------------------------------------------

    def set_node(self, node: dict) -> None:
        """Add or replace a node."""
        info = self._info(node["id"])
        if info.node is None:
            self._present = None
        info.set_node(node)

    def remove_node(self, node_id: str) -> None:
        info = self._infos.get(node_id)
        if info is None or info.node is None:
            return
        info.node = None
        info.failures.clear()
        self._present = None
        self._drop_if_idle(info)

    def node(self, node_id: str):
        """The node object as last given, or None."""
        info = self._infos.get(node_id)
        return info.node if info is not None else None

    def track_task(self, task: dict) -> None:
        """Add or replace a task; it counts against its node while active."""
        task_id = task["id"]
        self._release(task_id)
        if counts_on_node(task):
            self._hold(task_id, self._info(task["node_id"]), Share.of_task(task))

    def forget_task(self, task_id: str) -> None:
        self._release(task_id)

    def note_failure(self, task: dict) -> None:
        """A task of (service, spec version) failed or was rejected on its node."""
        info = self._infos.get(task.get("node_id") or "")
        if info is None or info.node is None:
            return
        info.note_failure((task.get("service_id"), task.get("spec_version")), self._clock())

    def node_usage(self, node_id: str) -> dict:
        info = self._infos.get(node_id)
        return (info or NodeInfo(node_id)).usage()

    # -- deciding ----------------------------------------------------------

    def schedule(self, pending: list[dict]) -> Decisions:
        decisions = Decisions()
        now = self._clock()
        preassigned: list[dict] = []
        free: list[dict] = []
        for info in self._present_infos():
            if info.failures:
                info.prune_failures(now)
        for task in pending:
            self._release(task["id"])
            (preassigned if task.get("node_id") else free).append(task)

        pipelines: dict[tuple, tuple[Requirements, Pipeline]] = {}

        def prepared(task: dict) -> tuple[Requirements, Pipeline]:
            req = Requirements(task)
            key = (req.service_id, req.spec_version, req.signature)
            hit = pipelines.get(key)
            if hit is None:
                hit = pipelines[key] = (req, Pipeline(req))
            return hit

        for task in sorted(preassigned, key=_order_key):
            self._schedule_preassigned(task, *prepared(task), decisions)

        groups: dict[tuple, list] = {}
        for task in sorted(free, key=_order_key):
            req, pipeline = prepared(task)
            groups.setdefault((req.service_id, req.spec_version, req.signature), []).append(task)
        for key, tasks in groups.items():
            req, pipeline = pipelines[key]
            self._schedule_group(tasks, req, pipeline, now, decisions)
        return decisions

    def _schedule_preassigned(self, task, req, pipeline, decisions) -> None:
        task_id, node_id = task["id"], task["node_id"]
        if req.error:
            decisions.unschedulable[task_id] = no_suitable_node(req.error)
            return
        info = self._infos.get(node_id)
        if info is None or info.node is None:
            decisions.unschedulable[task_id] = no_suitable_node(
                f"node {node_id} is not in the cluster")
            return
        reason = pipeline.check(info)
        if reason is not None:
            decisions.unschedulable[task_id] = no_suitable_node(explain({reason: 1}))
            return
        self._hold(task_id, info, self._share(req))
        decisions.assigned.append((task_id, node_id))

    def _schedule_group(self, tasks, req, pipeline, now, decisions) -> None:
        if req.error:
            for task in tasks:
                decisions.unschedulable[task["id"]] = no_suitable_node(req.error)
            return
        infos = self._present_infos()
        if not infos:
            for task in tasks:
                decisions.unschedulable[task["id"]] = NO_NODES
            return

        fkey = (req.service_id, req.spec_version)
        ranks = {}
        for info in infos:
            if info.failures:
                rank = failure_rank(info.recent_failures(fkey, now))
                if rank:
                    ranks[info.id] = rank

        share = self._share(req)
        queue = iter(tasks)
        assigned = decisions.assigned

        def assign(info):
            task_id = next(queue)["id"]
            self._hold(task_id, info, share)
            assigned.append((task_id, info.id))

        tree = build_tree(infos, req.spreads, req.service_id)
        placed = Placer(pipeline, req.service_id, ranks, assign).place(tree, len(tasks))
        if placed < len(tasks):
            message = pipeline.explain(infos)
            for task in tasks[placed:]:
                decisions.unschedulable[task["id"]] = message

    # -- bookkeeping -------------------------------------------------------

    @staticmethod
    def _share(req: Requirements) -> Share:
        return Share(req.service_id, req.nano_cpus, req.memory, req.ports)

    def _info(self, node_id: str) -> NodeInfo:
        info = self._infos.get(node_id)
        if info is None:
            info = self._infos[node_id] = NodeInfo(node_id)
        return info

    def _present_infos(self) -> list[NodeInfo]:
        if self._present is None:
            self._present = [self._infos[k] for k in sorted(self._infos)
                             if self._infos[k].node is not None]
        return self._present

    def _hold(self, task_id: str, info: NodeInfo, share: Share) -> None:
        info.add(task_id, share)
        self._where[task_id] = info.id

    def _release(self, task_id: str) -> None:
        node_id = self._where.pop(task_id, None)
        if node_id is None:
            return
        info = self._infos.get(node_id)
        if info is not None:
            info.remove(task_id)
            self._drop_if_idle(info)

    def _drop_if_idle(self, info: NodeInfo) -> None:
        if info.idle():
            del self._infos[info.id]
