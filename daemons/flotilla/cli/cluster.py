"""``flotilla cluster``: join tokens, cluster-wide settings, admin bundles."""

from __future__ import annotations

import datetime
import os
import urllib.parse

import click

from ..ca import certs
from ..common import fsutil
from ..common.units import format_duration, parse_duration
from .context import call
from .fmt import format_option
from .node import DEFAULT_MASK, DEFAULT_POOL
from .output import emit_json, table


@click.group()
def cluster():
    """Cluster-wide settings, join tokens and admin bundles."""


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
        remote = ctx.host and not ctx.host.startswith("unix")
        manager = ctx.host.split(",")[0] if remote else "MANAGER:4242"
        click.echo(f"To add a {role} to this cluster, run on the new node:\n\n"
                   f"    flotilla node run --data-dir DIR --listen ADDR --join {manager} "
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
@click.option("--network-key-rotation", callback=_dur,
              help="How often each node's WireGuard key (encrypted networks) is replaced "
                   "(default 12h, min 1m), e.g. 6h.")
@click.option("--rotate-network-keys", is_flag=True,
              help="Replace every node's WireGuard key now.")
@format_option
@click.pass_obj
def update(ctx, cert_expiry, heartbeat_period, task_history_limit, network_key_rotation,
           rotate_network_keys):
    """Change cluster-wide settings."""
    body = {k: v for k, v in (("cert_expiry", cert_expiry), ("heartbeat_period", heartbeat_period),
                              ("task_history_limit", task_history_limit),
                              ("network_key_rotation", network_key_rotation)) if v is not None}
    if rotate_network_keys:
        body["rotate_network_keys"] = True
    if not body:
        raise click.UsageError("nothing to update")
    res = call(ctx, "PATCH", "/v1/cluster", json=body)
    if ctx.json:
        emit_json(res)
    else:
        _print_cluster(res)
        if rotate_network_keys:
            click.echo("Every node is asked for a new WireGuard key (node inspect: network_key).")


def _print_cluster(c):
    spec = c["spec"]
    click.echo(f"Cluster:              {c['id']}")
    click.echo(f"Node cert expiry:     {format_duration(spec['ca']['node_cert_expiry'])}")
    click.echo(f"Heartbeat period:     {format_duration(spec['dispatcher']['heartbeat_period'])}")
    click.echo(f"Task history limit:   {spec['orchestration']['task_history_limit']}")
    # A cluster made before networks has no pool of its own: the defaults.
    pool = spec.get("network") or {"default_addr_pool": [DEFAULT_POOL], "subnet_size": DEFAULT_MASK}
    click.echo(f"Default address pool: {', '.join(pool['default_addr_pool'])}")
    click.echo(f"Subnet size:          /{pool['subnet_size']}")
    keys = spec.get("network_keys") or {"rotation_period": 12 * 3600}
    click.echo(f"Network key rotation: {format_duration(keys['rotation_period'])}")
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


# -- admin bundles -------------------------------------------------------------------------

@cluster.group("admin")
def admin():
    """Operators' client bundles (admin certificates): create, list, revoke."""


def _when(ts) -> str:
    if ts is None:
        return ""
    return datetime.datetime.fromtimestamp(float(ts)).strftime("%Y-%m-%d %H:%M")


def _bundle_dir(out: str) -> str:
    out = os.path.abspath(out)
    for name in ("cert.pem", "key.pem"):
        if os.path.exists(os.path.join(out, name)):
            raise click.ClickException(f"{out} already holds a client bundle ({name}); "
                                       "choose an empty directory")
    return out


@admin.command("create")
@click.argument("name")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False),
              help="Directory to write the bundle to (ca.pem, cert.pem, key.pem).")
@click.option("--expiry", callback=_dur, help="Certificate lifetime (default 365d), e.g. 90d.")
@format_option
@click.pass_obj
def admin_create(ctx, name, out, expiry):
    """Issue a client bundle named NAME and write it to --out.

    The private key is generated here and never sent: the cluster signs a
    certificate signing request for it."""
    out = _bundle_dir(out)
    key = certs.new_key()
    body = {"name": name, "csr": certs.make_csr(key).decode()}
    if expiry is not None:
        body["expiry"] = expiry
    res = call(ctx, "POST", "/v1/cluster/admins", json=body)
    try:
        fsutil.ensure_private_dir(out)
        fsutil.atomic_write(os.path.join(out, "key.pem"), certs.key_to_pem(key), 0o600)
        fsutil.atomic_write(os.path.join(out, "cert.pem"), res["cert"], 0o644)
        fsutil.atomic_write(os.path.join(out, "ca.pem"), res["ca"], 0o644)
    except OSError as exc:
        raise click.ClickException(f"cannot write the bundle to {out}: "
                                   f"{exc.strerror or exc}") from None
    rec = {k: v for k, v in res.items() if k not in ("cert", "ca")}
    if ctx.json:
        emit_json(dict(rec, dir=out))
    else:
        click.echo(f"Admin bundle {rec['name']} (serial {rec['serial']}, valid until "
                   f"{_when(rec['not_after'])}) written to {out}")


@admin.command("ls")
@format_option
@click.pass_obj
def admin_ls(ctx):
    """List the client bundles, revoked and expired ones included."""
    res = call(ctx, "GET", "/v1/cluster/admins")
    if ctx.json:
        emit_json(res)
        return
    # "*" marks the bundle this command ran with, as docker marks its node.
    rows = [dict(r, name=r["name"] + (" *" if r.get("current") else ""),
                 expires=_when(r["not_after"]), created=_when(r["created_at"]),
                 revoked=_when(r.get("revoked_at"))) for r in res]
    table(rows, [("NAME", "name"), ("SERIAL", "serial"), ("STATE", "state"),
                 ("CREATED", "created"), ("EXPIRES", "expires"), ("REVOKED", "revoked")])


@admin.command("revoke")
@click.argument("name", required=False)
@click.option("--cert", "cert_file", type=click.Path(dir_okay=False),
              help="Revoke the bundle whose certificate this is (e.g. DIR/cert.pem), "
                   "recorded or not.")
@format_option
@click.pass_obj
def admin_revoke(ctx, name, cert_file):
    """Revoke the client bundle NAME (or the one of --cert): refused everywhere at once."""
    if (name is None) == (cert_file is None):
        raise click.UsageError("give a bundle NAME or --cert FILE (one of them)")
    if cert_file is not None:
        try:
            with open(cert_file) as f:
                pem = f.read(65536)
        except OSError as exc:
            raise click.ClickException(f"cannot read {cert_file}: {exc.strerror or exc}") from None
        res = call(ctx, "POST", "/v1/cluster/admins/revoke", json={"cert": pem})
    else:
        res = call(ctx, "POST", f"/v1/cluster/admins/{urllib.parse.quote(name, safe='')}/revoke")
    if ctx.json:
        emit_json(res)
    else:
        click.echo(f"Admin bundle {res['name'] or res['id']} (serial {res['serial']}) is "
                   f"{'revoked' if res['state'] == 'revoked' else res['state']}.")
