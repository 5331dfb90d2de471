"""Task placement: which node runs each pending task.

Pure decision logic (no store, no threads); the leader feeds it nodes and
tasks and commits what it decides.

- ``core.SchedulerCore``: node/task bookkeeping and ``schedule()``
- ``filters``: the filter pipeline and the "no suitable node" wording
- ``placement``: spread preferences and ranking of nodes
- ``constraint``: matching nodes against placement constraints (their
  syntax is ``model/constraint.py``)
- ``nodeinfo``: incremental per-node counters
"""

from .core import Decisions, SchedulerCore, counts_on_node
from .filters import format_bytes

__all__ = ["Decisions", "SchedulerCore", "counts_on_node", "format_bytes"]
