"""A per-command ``--format`` that overrides the global one."""

from __future__ import annotations

import functools

import click

from .context import Context


def format_option(fn):
    @click.option("--format", "fmt", type=click.Choice(["table", "json"]), default=None,
                  help="Output format (overrides the global --format).")
    @functools.wraps(fn)
    def wrapper(*args, fmt=None, **kwargs):
        if fmt is not None:
            click.get_current_context().find_object(Context).format = fmt
        return fn(*args, **kwargs)
    return wrapper
