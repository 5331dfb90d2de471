"""``flotilla events``: what changes in the cluster, as it happens."""

from __future__ import annotations

import datetime
import json

import click

from .context import Context, call
from .fmt import format_option

WAIT = 30          # seconds the manager holds a request open for new events
FILTER_KEYS = {"type": "type", "service": "service", "node": "node", "action": "action",
               "event": "action"}


def parse_filters(values) -> dict:
    """``KEY=VALUE`` pairs; several values for one key mean any of them
    (type and action only), different keys must all match."""
    out: dict[str, list[str]] = {}
    for v in values:
        key, sep, val = v.partition("=")
        key = key.strip().lower()
        if not sep or not val or key not in FILTER_KEYS:
            raise click.BadParameter(f"{v!r} is not one of type=, service=, node=, action=",
                                     param_hint="--filter")
        out.setdefault(FILTER_KEYS[key], []).append(val.strip())
    for key in ("service", "node"):
        if len(out.get(key, ())) > 1:
            raise click.BadParameter(f"give one {key}= filter at most", param_hint="--filter")
    return {k: ",".join(vs) for k, vs in out.items()}


def _when(ts) -> str:
    return datetime.datetime.fromtimestamp(float(ts)).isoformat(timespec="milliseconds")


def _change(attrs, key, prev_key) -> str:
    return f"{attrs.get(prev_key)} -> {attrs.get(key)}"


def describe(ev: dict) -> str:
    """One line, e.g. ``... task state web.1 (3f2a1b2c3d4e) assigned -> running node=host1``."""
    a = ev.get("attributes") or {}
    head = (f"{_when(ev['time'])} {ev['type']} {ev['action']} {ev.get('name') or ''} "
            f"({ev['id'][:12]})")
    parts = []
    if ev["type"] == "task":
        if ev["action"] == "state":
            parts.append(_change(a, "state", "previous_state"))
        elif ev["action"] in ("create", "remove"):
            parts.append(f"state={a.get('state')}")
        if "previous_desired_state" in a:
            parts.append(f"desired={_change(a, 'desired_state', 'previous_desired_state')}")
        elif ev["action"] != "state":
            parts.append(f"desired={a.get('desired_state')}")
        if a.get("node") or a.get("node_id"):
            parts.append(f"node={a.get('node') or a['node_id'][:12]}")
        if a.get("exit_code") is not None:
            parts.append(f"exit_code={a['exit_code']}")
        if a.get("error"):
            parts.append(f"error={json.dumps(a['error'])}")
        elif a.get("message") and ev["action"] == "create":
            parts.append(f"message={json.dumps(a['message'])}")
    elif ev["type"] == "node":
        if ev["action"] == "state":
            parts.append(_change(a, "state", "previous_state"))
            if a.get("message"):
                parts.append(f"message={json.dumps(a['message'])}")
        else:
            parts += [f"role={a.get('role')}", f"availability={a.get('availability')}"]
            if a.get("changed"):
                parts.append(f"changed={','.join(a['changed'])}")
    elif ev["type"] == "service":
        if "previous_replicas" in a:
            parts.append(f"replicas={_change(a, 'replicas', 'previous_replicas')}")
        elif a.get("replicas") is not None:
            parts.append(f"replicas={a['replicas']}")
        if "previous_image" in a:
            parts.append(f"image={_change(a, 'image', 'previous_image')}")
        else:
            parts.append(f"image={a.get('image')}")
        parts.append(f"mode={a.get('mode')}")
    elif a.get("changed"):
        parts.append(f"changed={','.join(a['changed'])}")
    return " ".join([head] + parts)


@click.command("events")
@click.option("--since", type=click.IntRange(min=0), metavar="INDEX",
              help="Start after this event index (as printed by --format json); "
                   "default: only new events (with --once: every event still kept).")
@click.option("--filter", "-f", "filters", multiple=True, metavar="KEY=VALUE",
              help="type=service|task|node|cluster|config, service=NAME, node=HOST, "
                   "action=create|update|remove|state (repeatable).")
@click.option("--once", is_flag=True, help="Print the events there are now and exit.")
@format_option
@click.pass_obj
def events(ctx: Context, since, filters, once):
    """Stream cluster events: services, tasks, nodes and configs being
    created, updated and removed, and task and node state changes.

    Follows until interrupted; use --since INDEX to resume where an earlier
    run stopped.
    """
    params = parse_filters(filters)
    cursor = since if since is not None else (0 if once else None)
    wait = 0 if once else WAIT
    warned = False
    try:
        while True:
            answer = call(ctx, "GET", "/v1/events",
                          params=dict(params, since=cursor, wait=wait), timeout=wait + 15)
            if answer.get("truncated") and since is not None and not warned:
                click.echo(f"warning: some events after index {since} are no longer kept; "
                           "showing the oldest kept", err=True)
                warned = True
            for ev in answer["events"]:
                click.echo(json.dumps(ev, sort_keys=True) if ctx.json else describe(ev))
            cursor = answer["index"]
            if once and not answer["events"]:
                return
    except KeyboardInterrupt:
        click.get_current_context().exit(130)
