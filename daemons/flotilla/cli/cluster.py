"""``flotilla cluster``: join tokens and cluster-wide settings."""

from __future__ import annotations

import click

from ..common.units import format_duration, parse_duration
from .context import call
from .fmt import format_option
from .output import emit_json


@click.group()
def cluster():
    """Cluster-wide settings and join tokens."""


@cluster.command("join-token")
@click.argument("role", type=click.Choice(["worker", "manager"]))
@click.option("--rotate", is_flag=True, help="Replace the token; the old one stops working.")
@click.option("-q", "--quiet", is_flag=True, help="Only print the token.")
@format_option
@click.pass_obj
def join_token(ctx, role, rotate, quiet):
    """Show (or rotate) the token that lets a node join as ROLE."""
    if rotate:
        res = call(ctx, "POST", f"/v1/cluster/join-tokens/{role}/rotate")
    else:
        res = call(ctx, "GET", f"/v1/cluster/join-tokens/{role}")
    if quiet:
        click.echo(res["token"])
    elif ctx.json:
        emit_json(res)
    else:
        if rotate:
            click.echo(f"Rotated the {role} join token.")
        click.echo(f"To add a {role} to this cluster, run on the new node:\n\n"
                   f"    flotilla node run --data-dir DIR --listen ADDR --join "
                   f"{ctx.host.split(',')[0] if ctx.host and not ctx.host.startswith('unix') else 'MANAGER:4242'} "
                   f"--token {res['token']}\n")


def _dur(_c, _p, v):
    if v is None:
        return None
    try:
        parse_duration(v)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    return v


@cluster.command("update")
@click.option("--cert-expiry", callback=_dur, help="Node certificate lifetime (min 60s), e.g. 90d.")
@click.option("--heartbeat-period", callback=_dur, help="Agent heartbeat period, e.g. 5s.")
@click.option("--task-history-limit", type=int, help="Finished tasks kept per slot.")
@format_option
@click.pass_obj
def update(ctx, cert_expiry, heartbeat_period, task_history_limit):
    """Change cluster-wide settings."""
    body = {k: v for k, v in (("cert_expiry", cert_expiry), ("heartbeat_period", heartbeat_period),
                              ("task_history_limit", task_history_limit)) if v is not None}
    if not body:
        raise click.UsageError("nothing to update")
    res = call(ctx, "PATCH", "/v1/cluster", json=body)
    if ctx.json:
        emit_json(res)
    else:
        _print_cluster(res)


def _print_cluster(c):
    spec = c["spec"]
    click.echo(f"Cluster:              {c['id']}")
    click.echo(f"Node cert expiry:     {format_duration(spec['ca']['node_cert_expiry'])}")
    click.echo(f"Heartbeat period:     {format_duration(spec['dispatcher']['heartbeat_period'])}")
    click.echo(f"Task history limit:   {spec['orchestration']['task_history_limit']}")
    click.echo(f"Root CA digest:       {c['root_ca']['digest']}")


@cluster.command("inspect")
@format_option
@click.pass_obj
def inspect(ctx):
    """Show the cluster's settings."""
    res = call(ctx, "GET", "/v1/cluster")
    if ctx.json:
        emit_json(res)
    else:
        _print_cluster(res)


@cluster.command("status")
@format_option
@click.pass_obj
def status(ctx):
    """Raft status as seen by the leader."""
    res = call(ctx, "GET", "/v1/raft")
    if ctx.json:
        emit_json(res)
    else:
        for k in ("state", "term", "leader", "commit_index", "members", "connected", "has_quorum"):
            click.echo(f"{k + ':':<15} {res.get(k)}")
