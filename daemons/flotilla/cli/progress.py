"""Waiting for services to converge, with live per-task progress.

``converge`` follows services after a create, update, scale or stack deploy
until every desired task of the current spec runs (healthy, where a
healthcheck exists); ``removed`` follows removed services until their tasks
and containers are gone. On a terminal, progress is a live table; otherwise a
line is printed whenever a task changes state, so logs of scripted runs stay
readable. Failure raises ``click.ClickException`` with the reason.

The wait gives up before its timeout when the service cannot converge: a
crash loop, a rolling update that paused or rolled back, or a task the
scheduler has found no node for (its status message says "no suitable node
(...)", as Nomad's ``job run`` stops at a placement failure). A task still
waiting for the scheduler's first decision ("pending task scheduling") does
not count; an explanation must hold for ``SETTLE`` seconds (the scheduler
retries every second and whenever nodes or tasks change), and not while
another of the services followed is still being updated, whose old tasks
may hold what the task needs. The service itself is kept: its tasks are
placed as soon as a node can take them.
"""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING

import click

from ..model.task import UNSCHEDULABLE
from .context import call

if TYPE_CHECKING:
    from rich.table import Table

POLL = 0.5
# Converged must hold this long: a task that starts and dies at once is not
# a running service (Docker verifies for 5 s).
STABLE = 3.0
FAILED = ("failed", "rejected")
# A "no suitable node" explanation must hold this long before the wait gives
# up: one written just before capacity appeared is acted on within a second.
SETTLE = 2.0
UPDATING = ("updating", "rollback_started")


class ConvergeFailed(click.ClickException):
    pass


def _task_name(t) -> str:
    if t["slot"] is not None:
        return f"{t['service_name']}.{t['slot']}"
    return f"{t['service_name']}.{(t['node_id'] or '')[:12]}"


class _Service:
    """Progress of one service towards its desired state."""

    def __init__(self, ctx, ref: str, started: float, rollback: bool = False):
        self.ctx = ctx
        self.rollback = rollback
        self.stopped = ""
        self.ref = ref
        self.started = started
        self.name = ref
        self.done = False
        self.failures: dict[str, dict] = {}
        self.reason = ""
        self.current: list[dict] = []
        self.desired = 0
        self.updating = False
        self.unplaced: dict | None = None     # a current task the scheduler found no node for
        self.unplaced_since: float | None = None

    def poll(self):
        svc = call(self.ctx, "GET", f"/v1/services/{self.ref}")
        self.name = svc["name"]
        update = svc.get("update_status") or {}
        state = update.get("state")
        self.updating = state in UPDATING
        # A rolling update that paused or rolled back will not converge to
        # what was asked for: say why instead of waiting.
        recent = (update.get("started_at") or 0) >= self.started - 1
        if state in ("paused", "rollback_paused") or (
                recent and state in ("rollback_started", "rollback_completed")
                and not self.rollback):
            self.stopped = update.get("reason") or update.get("message") or state
        tasks = call(self.ctx, "GET", f"/v1/services/{svc['id']}/tasks")
        current = [t for t in tasks if t["up_to_date"]]
        for t in current:
            if t["state"] in FAILED and (t["timestamp"] or 0) >= self.started - 1:
                self.failures[t["id"]] = t
        self.current = sorted((t for t in current if t["desired_state"] in ("running", "ready")),
                              key=lambda t: (t["slot"] or 0, t["node_id"] or ""))
        if svc["mode"] == "replicated":
            self.desired = svc["replicas"]["desired"]
        else:
            self.desired = len(self.current)
        running = [t for t in self.current if t["state"] == "running"
                   and t["desired_state"] == "running"]
        # Replaced tasks still stopping: not converged until they are down.
        stale = [t for t in tasks if t["state"] == "running" and (
            not t["up_to_date"] or t["desired_state"] not in ("running", "ready"))]
        self.done = (len(running) >= self.desired and len(running) == len(self.current)
                     and not stale and state not in ("updating", "rollback_started", "paused",
                                                     "rollback_paused"))
        unplaced = [t for t in self.current if t["state"] == "pending"
                    and (t["message"] or "").startswith(UNSCHEDULABLE)]
        self.unplaced = unplaced[0] if unplaced and not self.done else None
        if self.failures and not self.done:
            last = max(self.failures.values(), key=lambda t: t["timestamp"] or 0)
            self.reason = (f"task {_task_name(last)} {last['state']}: "
                           f"{last['error'] or last['message']}")
        else:
            pending = [t for t in self.current if t["state"] == "pending" and t["message"]]
            self.reason = (f"task {_task_name(pending[0])} pending: {pending[0]['message']}"
                           if pending else "")

    def failing(self) -> bool:
        """A crash loop: more failed tasks of this spec than it has replicas (at least 3)."""
        return len(self.failures) >= max(3, self.desired + 1)

    def running(self) -> int:
        return sum(1 for t in self.current if t["state"] == "running")


def _unplaceable(services: list[_Service], now: float) -> _Service | None:
    """The first service with a task that fits on no node, once the
    scheduler's explanation has held for ``SETTLE`` seconds and no other
    service followed is still making progress on an update (its old tasks
    may hold the resources or ports the task needs)."""
    for s in services:
        if s.unplaced is None:
            s.unplaced_since = None
        elif s.unplaced_since is None:
            s.unplaced_since = now
    for s in services:
        if s.unplaced_since is None or now - s.unplaced_since < SETTLE:
            continue
        if any(o.updating and o.unplaced is None for o in services if o is not s):
            continue
        return s
    return None


def _render(services: list[_Service], elapsed: float) -> Table:
    from rich.table import Table     # only at a terminal
    grid = Table.grid(padding=(0, 2))
    for s in services:
        mark = "[green]converged[/]" if s.done else f"{s.running()}/{s.desired} running"
        grid.add_row(f"[bold]{s.name}[/]", mark, "")
        for t in s.current:
            state = t["state"]
            colour = "green" if state == "running" else "red" if state in FAILED else "yellow"
            detail = t["error"] or (t["message"] if state != "running" else "") or ""
            grid.add_row(f"  {_task_name(t)}", f"[{colour}]{state}[/]",
                         f"{t['node'] or ''} {detail[:60]}".strip())
    grid.add_row(f"[dim]{elapsed:.0f}s[/]", "", "")
    return grid


def _is_tty() -> bool:
    return sys.stdout.isatty()


def converge(ctx, service_refs: list[str], timeout: float = 120.0, rollback: bool = False) -> None:
    """Block until every service runs its desired tasks, or fail with the reason."""
    started = time.time()
    deadline = time.monotonic() + timeout
    services = [_Service(ctx, ref, started, rollback) for ref in service_refs]
    seen: dict[str, str] = {}
    stable_since = None
    live = None
    if _is_tty():
        from rich.console import Console
        from rich.live import Live
        live = Live(console=Console(), auto_refresh=False, transient=False)
    try:
        if live is not None:
            live.start()
        while True:
            for s in services:
                s.poll()
            if live is not None:
                live.update(_render(services, time.time() - started), refresh=True)
            else:
                _print_changes(services, seen)
            if all(s.done for s in services):
                stable_since = stable_since or time.monotonic()
                if time.monotonic() - stable_since >= STABLE:
                    break
            else:
                stable_since = None
            stopped = [s for s in services if s.stopped]
            if stopped:
                raise ConvergeFailed(f"service {stopped[0].name}: {stopped[0].stopped}")
            broken = [s for s in services if not s.done and s.failing()]
            if broken:
                raise ConvergeFailed(f"service {broken[0].name} is failing: {broken[0].reason}")
            stuck = _unplaceable(services, time.monotonic())
            if stuck is not None:
                t = stuck.unplaced
                assert t is not None        # a service is unplaceable only with such a task
                raise ConvergeFailed(f"service {stuck.name}: task {_task_name(t)} cannot be "
                                     f"placed: {t['message']}; the service is kept and its tasks "
                                     "start when a node can take them")
            if time.monotonic() >= deadline:
                late = [s for s in services if not s.done]
                why = f": {late[0].reason}" if late[0].reason else ""
                raise ConvergeFailed(f"service {late[0].name} did not converge within "
                                     f"{timeout:g}s ({late[0].running()}/{late[0].desired} "
                                     f"running){why}")
            time.sleep(POLL)
    finally:
        if live is not None:
            live.stop()
    for s in services:
        click.echo(f"{s.name}: converged ({s.running()}/{s.desired} running)")


def _print_changes(services, seen):
    for s in services:
        for t in s.current:
            key = t["id"]
            state = t["state"]
            if seen.get(key) != state:
                detail = t["error"] or (t["message"] if state not in ("running",) else "")
                where = f" on {t['node']}" if t["node"] else ""
                click.echo(f"{_task_name(t)}: {state}{where}" + (f" ({detail})" if detail else ""))
                seen[key] = state


def removed(ctx, service_ids: list[str], timeout: float = 120.0) -> None:
    """Block until no task of these (removed) services is left."""
    deadline = time.monotonic() + timeout
    left = set(service_ids)
    last_count = None
    while left:
        count = 0
        for sid in sorted(left):
            try:
                tasks = call(ctx, "GET", "/v1/tasks", params={"service": sid})
            except click.ClickException:
                tasks = []
            if not tasks:
                left.discard(sid)
            count += len(tasks)
        if not left:
            break
        if count != last_count and not _is_tty():
            click.echo(f"waiting for {count} task(s) to stop")
        last_count = count
        if time.monotonic() >= deadline:
            raise ConvergeFailed(f"{count} task(s) still stopping after {timeout:g}s")
        time.sleep(POLL)
