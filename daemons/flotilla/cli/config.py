"""``flotilla config``: small named blobs kept in the cluster."""

from __future__ import annotations

import base64
import sys

import click

from .context import call
from .fmt import format_option
from .output import age, emit_json, table


@click.group()
def config():
    """Manage configs."""


@config.command("create")
@click.argument("name")
@click.argument("file", type=click.File("rb"))
@click.option("--label", "-l", multiple=True, metavar="KEY=VALUE")
@click.pass_obj
def create(ctx, name, file, label):
    """Create a config from FILE ('-' for stdin)."""
    data = base64.b64encode(file.read()).decode()
    labels = dict(v.partition("=")[::2] for v in label)
    res = call(ctx, "POST", "/v1/configs", json={"name": name, "data": data, "labels": labels})
    emit_json(res) if ctx.json else click.echo(res["id"])


@config.command("ls")
@format_option
@click.option("-q", "--quiet", is_flag=True)
@click.pass_obj
def ls(ctx, quiet):
    """List configs."""
    items = call(ctx, "GET", "/v1/configs")
    if quiet:
        for c in items:
            click.echo(c["id"])
    elif ctx.json:
        emit_json(items)
    else:
        rows = [dict(c, id=c["id"][:12], created=age(c["created_at"])) for c in items]
        table(rows, [("ID", "id"), ("NAME", "name"), ("SIZE", "size"), ("CREATED", "created")])


@config.command("inspect")
@click.argument("ref")
@click.option("--data", is_flag=True, help="Print only the decoded content.")
@click.pass_obj
def inspect(ctx, ref, data):
    """Show a config."""
    res = call(ctx, "GET", f"/v1/configs/{ref}")
    if data:
        sys.stdout.buffer.write(base64.b64decode(res["data"]))
    else:
        emit_json(res)


@config.command("rm")
@click.argument("refs", nargs=-1, required=True)
@click.pass_obj
def rm(ctx, refs):
    """Remove configs."""
    for ref in refs:
        click.echo(call(ctx, "DELETE", f"/v1/configs/{ref}")["id"])
