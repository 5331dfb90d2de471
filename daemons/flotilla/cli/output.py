"""Printing: aligned tables for people, JSON for scripts."""

from __future__ import annotations

import datetime
import json

import click


def emit_json(data):
    click.echo(json.dumps(data, indent=2, sort_keys=True))


def table(rows: list[dict], columns: list[tuple[str, str]]):
    """columns: (header, key). Values are rendered with str()."""
    cells = [[h for h, _ in columns]]
    for row in rows:
        cells.append(["" if row.get(k) is None else str(row.get(k)) for _, k in columns])
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    for r in cells:
        click.echo("   ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())


def age(ts) -> str:
    if not ts:
        return ""
    delta = datetime.datetime.now().timestamp() - float(ts)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if delta >= size:
            return f"{int(delta // size)}{unit} ago"
    return f"{int(max(delta, 0))}s ago"
