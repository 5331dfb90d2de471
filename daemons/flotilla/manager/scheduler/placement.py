"""Placing a group of interchangeable tasks (same service, spec version and
requirements) on nodes.

Spread preferences build a tree: each ``spread`` level splits the nodes by
the value of a label (nodes without it share the "" branch). Every branch
carries the number of the service's active tasks on its nodes, counting
nodes that cannot take new tasks (their tasks are still there).

At each level the tasks still to place are handed out so that every branch
ends with an equal share of the service's tasks, the remainder one each
(branches with fewer tasks first, then in label order with "" last). A
branch that cannot take its share is closed and what it could not take is
handed out again over the branches still open.

On a leaf, each task goes to the best node that currently passes the
pipeline; the node is checked again after every placement, since resources,
host ports and the per-node replica count shrink. Best means, in order:
fewer than MAX_FAILURES recent failures of this service version (nodes with
more sort last, most failures last), fewer active tasks of the service,
fewer active tasks in total, then node id.
"""

from __future__ import annotations

import heapq

from .nodeinfo import MAX_FAILURES, NodeInfo


class Branch:
    __slots__ = ("value", "tasks", "children", "nodes")

    def __init__(self, value: str):
        self.value = value
        self.tasks = 0
        self.children: list[Branch] | None = None    # below a spread level, None on a leaf
        self.nodes: list[NodeInfo] = []              # on a leaf

    def __repr__(self) -> str:
        return f"Branch({self.value!r}, tasks={self.tasks})"


def build_tree(infos, spreads, service_id) -> Branch:
    """Arrange nodes (sorted by id) under one level per spread descriptor."""
    root = Branch("")
    if not spreads:
        root.nodes = list(infos)
        root.tasks = sum(i.by_service.get(service_id, 0) for i in infos)
        return root
    maps: dict[int, dict[str, Branch]] = {id(root): {}}
    for info in infos:
        count = info.by_service.get(service_id, 0)
        root.tasks += count
        branch = root
        for depth, (source, name) in enumerate(spreads):
            value = info.label(source, name)
            children = maps[id(branch)]
            child = children.get(value)
            if child is None:
                child = children[value] = Branch(value)
                if depth + 1 < len(spreads):
                    maps[id(child)] = {}
            child.tasks += count
            branch = child
        branch.nodes.append(info)
    _freeze(root, maps)
    return root


def _freeze(branch: Branch, maps: dict) -> None:
    children = maps.get(id(branch))
    if children is None:
        return
    branch.children = [children[v] for v in sorted(children, key=lambda v: (v == "", v))]
    for child in branch.children:
        _freeze(child, maps)


def split_evenly(branches, n: int) -> list[int]:
    """How many of n new tasks each branch gets so that their task counts
    end up as even as possible."""
    shares = [0] * len(branches)
    if not branches or n <= 0:
        return shares
    heap = [(b.tasks, i) for i, b in enumerate(branches)]
    heapq.heapify(heap)
    for _ in range(n):
        count, i = heap[0]
        shares[i] += 1
        heapq.heapreplace(heap, (count + 1, i))
    return shares


class Placer:
    """Places up to n tasks of one group on a tree.

    ``assign(info)`` is called once per placement, in decision order; it
    must account the task on ``info`` (so the pipeline and the ranking see
    it) before returning.
    """

    def __init__(self, pipeline, service_id, failure_rank, assign):
        self.pipeline = pipeline
        self.service_id = service_id
        self.failure_rank = failure_rank   # node id -> recent failures (0 below MAX_FAILURES)
        self.assign = assign

    def place(self, branch: Branch, n: int) -> int:
        if n <= 0:
            return 0
        if branch.children is None:
            got = self._place_on_leaf(branch.nodes, n)
        else:
            got = self._split(branch.children, n)
        branch.tasks += got
        return got

    def _split(self, children, n: int) -> int:
        placed = 0
        open_branches = list(children)
        while placed < n and open_branches:
            full = set()
            for branch, want in zip(open_branches, split_evenly(open_branches, n - placed)):
                if want:
                    got = self.place(branch, want)
                    placed += got
                    if got < want:
                        full.add(id(branch))
            if not full:
                break
            open_branches = [b for b in open_branches if id(b) not in full]
        return placed

    def _key(self, info):
        return (self.failure_rank.get(info.id, 0), info.by_service.get(self.service_id, 0),
                info.total, info.id)

    def _place_on_leaf(self, nodes, n: int) -> int:
        check = self.pipeline.check
        heap = [(self._key(info), i) for i, info in enumerate(nodes) if check(info) is None]
        heapq.heapify(heap)
        placed = 0
        while placed < n and heap:
            _, i = heapq.heappop(heap)
            info = nodes[i]
            self.assign(info)
            placed += 1
            if check(info) is None:
                heapq.heappush(heap, (self._key(info), i))
        return placed


def failure_rank(count: int) -> int:
    """The ranking weight of a node's recent failures."""
    return count if count >= MAX_FAILURES else 0
