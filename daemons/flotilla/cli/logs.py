"""``flotilla service logs``: the output of a service's tasks."""

from __future__ import annotations

import json
import time
import urllib.parse

import click

from .context import Context, call
from .fmt import format_option

POLL_INTERVAL = 1.0
# Each follow-up poll asks again for this much time before the newest line
# seen, so a line written a moment before another one but delivered later
# is not lost; the lines already printed are recognised and skipped.
OVERLAP = 2.0


def _tail(_ctx, _param, value):
    if value is None or value == "all":
        return None
    try:
        n = int(value)
    except ValueError:
        raise click.BadParameter("a number of lines, or 'all'") from None
    if not 0 <= n <= 10_000:
        raise click.BadParameter("between 0 and 10000, or 'all'")
    return n


def prefix(entry: dict, task_ids: bool = True) -> str:
    """``web.1.3f2a1b2c3d4e@host1`` (docker's form; global tasks use the node id)."""
    slot = entry.get("slot")
    middle = str(slot) if slot is not None else (entry.get("node_id") or "")[:12]
    name = f"{entry.get('service')}.{middle}"
    if task_ids:
        name += f".{entry['task_id'][:12]}"
    return f"{name}@{entry.get('node') or (entry.get('node_id') or '')[:12]}"


def _key(entry: dict) -> tuple:
    return (entry["task_id"], entry["stream"], entry["timestamp"], entry["line"])


class _Printer:
    def __init__(self, json_out: bool, timestamps: bool, task_ids: bool):
        self.json_out = json_out
        self.timestamps = timestamps
        self.task_ids = task_ids
        self.width = 0
        self.warned: set[str] = set()

    def entries(self, entries):
        if not self.json_out:
            self.width = max([self.width] + [len(prefix(e, self.task_ids)) for e in entries])
        for e in entries:
            if self.json_out:
                click.echo(json.dumps(e, sort_keys=True))
                continue
            text = f"{e['timestamp']} {e['line']}" if self.timestamps else e["line"]
            click.echo(f"{prefix(e, self.task_ids).ljust(self.width)}    | {text}",
                       err=e["stream"] == "stderr")

    def unreachable(self, nodes):
        for u in nodes:
            if u["node_id"] in self.warned:
                continue
            self.warned.add(u["node_id"])
            name = u.get("node") or u["node_id"]
            if u.get("truncated"):
                click.echo(f"warning: logs from node {name} truncated: {u['error']} "
                           "(ask for fewer lines with --tail or --since)", err=True)
            else:
                click.echo(f"warning: logs from node {name} unavailable: {u['error']}", err=True)


@click.command("logs")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines until interrupted.")
@click.option("--tail", callback=_tail, metavar="N",
              help="Only the last N lines of each task (default: all).")
@click.option("-t", "--timestamps", is_flag=True, help="Show when each line was written.")
@click.option("--no-task-ids", is_flag=True, help="Leave task ids out of the line prefix.")
@format_option
@click.argument("ref", metavar="SERVICE")
@click.pass_obj
def logs(ctx: Context, follow, tail, timestamps, no_task_ids, ref):
    """Print what a service's tasks wrote to stdout and stderr (stderr lines
    go to stderr), oldest first, each prefixed with its task and node.

    Nodes that cannot be reached, or that answer too slowly (5 s) or too
    much (over 8 MiB) for one request, are reported once on stderr; the
    lines of the others are still printed.
    """
    out = _Printer(ctx.json, timestamps, not no_task_ids)
    path = f"/v1/services/{urllib.parse.quote(ref, safe='')}/logs"
    seen: dict[tuple, float] = {}
    newest = None
    started = time.time()
    params = {"tail": tail}
    try:
        while True:
            answer = call(ctx, "GET", path, params=params)
            fresh = [e for e in answer["entries"] if _key(e) not in seen]
            out.entries(fresh)
            out.unreachable(answer.get("unreachable") or ())
            if not follow:
                return
            for e in fresh:
                seen[_key(e)] = e["time"]
                newest = e["time"] if newest is None else max(newest, e["time"])
            if newest is not None:
                params = {"since": newest - OVERLAP}
                seen = {k: t for k, t in seen.items() if t >= newest - 2 * OVERLAP}
            elif tail == 0:
                params = {"tail": None, "since": started - OVERLAP}
            time.sleep(POLL_INTERVAL)
    except KeyboardInterrupt:
        click.get_current_context().exit(130)
