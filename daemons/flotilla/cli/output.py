"""Printing: aligned tables for people, JSON for scripts."""

from __future__ import annotations

import datetime
import json
import sys
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from rich.console import Console


def emit_json(data):
    click.echo(json.dumps(data, indent=2, sort_keys=True))


def console() -> Console:
    """A console that never wraps or truncates table cells when piped."""
    from rich.console import Console     # only when a table is printed
    if sys.stdout.isatty():
        return Console(highlight=False)
    return Console(width=4096, highlight=False, color_system=None, soft_wrap=True)


def table(rows: list[dict], columns: list[tuple[str, str]]):
    """columns: (header, key). Values are rendered with str(), aligned like
    docker's tables (no borders, three spaces between columns)."""
    from rich.table import Table
    t = Table(box=None, show_edge=False, pad_edge=False,
              padding=(0, 3, 0, 0), header_style="bold", expand=False)
    for header, _ in columns:
        t.add_column(header, no_wrap=True, overflow="ignore")
    for row in rows:
        t.add_row(*["" if row.get(k) is None else str(row.get(k)) for _, k in columns])
    out = console()
    with out.capture() as cap:
        out.print(t, markup=False)
    for line in cap.get().splitlines():
        click.echo(line.rstrip())


def age(ts) -> str:
    if not ts:
        return ""
    delta = datetime.datetime.now().timestamp() - float(ts)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if delta >= size:
            return f"{int(delta // size)}{unit} ago"
    return f"{int(max(delta, 0))}s ago"
