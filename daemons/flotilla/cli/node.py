"""``flotilla node``: run a node, and manage the cluster's nodes."""

from __future__ import annotations

import os
import sys

import click

from ..common import logs
from ..common.config import ConfigError, NodeConfig
from ..common.units import format_duration, parse_duration
from .context import call
from .fmt import format_option
from .output import emit_json, table


def _duration(_ctx, _param, value):
    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _show_duration(seconds: float) -> str:
    return format_duration(seconds) if seconds == int(seconds) else f"{seconds:g}s"


@click.group()
def node():
    """Run this node, or manage the cluster's nodes."""


def address_options(fn):
    for opt in reversed([
        click.option("--data-dir", required=True, type=click.Path(file_okay=False),
                     help="Where this node keeps its identity, certificates and Raft data."),
        click.option("--listen", metavar="HOST:PORT",
                     help="Manager API address (default 0.0.0.0:4242)."),
        click.option("--advertise", metavar="HOST[:PORT]",
                     help="API address other nodes use (default: the listen address)."),
        click.option("--raft-listen", metavar="HOST:PORT",
                     help="Raft address (default: API port + 10000)."),
        click.option("--raft-advertise", metavar="HOST:PORT",
                     help="Raft address other managers use."),
        click.option("--agent-listen", metavar="HOST:PORT",
                     help="Agent listener, where managers push work (default: API port + 20000)."),
        click.option("--agent-advertise", metavar="HOST:PORT", help="Agent address managers use."),
        click.option("--dispatcher-listen", metavar="HOST:PORT",
                     help="Where the leader takes agents' heartbeats and status reports "
                          "(default: API port + 30000)."),
        click.option("--dispatcher-advertise", metavar="HOST:PORT",
                     help="Dispatcher address agents use."),
        click.option("--hostname", help="Name shown for this node (default: the host name)."),
        click.option("--wireguard-port", type=click.IntRange(1, 65535), metavar="PORT",
                     help="UDP port of this node's WireGuard tunnel, which carries encrypted "
                          "networks between hosts (default 51820)."),
    ]):
        fn = opt(fn)
    return fn


POOL_FLAG, MASK_FLAG = "--default-addr-pool", "--default-addr-pool-mask-length"
# Swarm's defaults, as model/network.py has them (not imported until needed:
# the CLI starts without pydantic).
DEFAULT_POOL, DEFAULT_MASK = "10.0.0.0/8", 24


def address_pool(pools, mask_length) -> dict | None:
    """The cluster's address pool from ``--default-addr-pool`` (CIDRs) and
    ``--default-addr-pool-mask-length``, Swarm's defaults for what is left
    out (None when neither is given); a one-line error naming the flag."""
    if not pools and mask_length is None:
        return None
    from pydantic import ValidationError

    from ..model import network as netmodel

    pool = list(pools) or list(netmodel.DEFAULT_ADDR_POOL)
    size = netmodel.DEFAULT_SUBNET_SIZE if mask_length is None else mask_length
    if not netmodel.MIN_PREFIX <= size <= netmodel.MAX_PREFIX:
        raise click.ClickException(f"{MASK_FLAG}: {size} is not between "
                                   f"{netmodel.MIN_PREFIX} and {netmodel.MAX_PREFIX}")
    try:
        return netmodel.AddressPool(default_addr_pool=pool,
                                    subnet_size=size).model_dump(mode="json")
    except ValidationError as exc:
        e = exc.errors()[0]
        msg = e["msg"].removeprefix("Value error, ")
        flag = MASK_FLAG if e["loc"][:1] == ("subnet_size",) else POOL_FLAG
        raise click.ClickException(f"{flag}: {msg}") from None


def pool_options(with_init: str = ""):
    """The address pool's flags; ``with_init``: what their help starts with."""
    def deco(fn):
        fn = click.option(MASK_FLAG, "pool_mask", type=int, metavar="N",
                          help=f"{with_init}Prefix length of the subnets cut from the pool "
                               f"for networks that name none (default {DEFAULT_MASK}).")(fn)
        return click.option(POOL_FLAG, "pools", multiple=True, metavar="CIDR",
                            help=f"{with_init}Address pool of the networks that name no subnet "
                                 f"(repeatable; default {DEFAULT_POOL}).")(fn)
    return deco


def _prepare(o, init, join_addr, token, cert_expiry, heartbeat_period, *, resume_ok,
             pools=(), pool_mask=None):
    """Create or join a cluster in the data dir, or load the node already
    there. Returns the node configuration."""
    from ..node import bootstrap

    if init and join_addr:
        raise click.UsageError("--init and --join are mutually exclusive")
    if join_addr and not token:
        raise click.UsageError("--join needs --token")
    if cert_expiry is not None and cert_expiry < 60:
        raise click.BadParameter("must be at least 60s", param_hint="--cert-expiry")
    network = address_pool(pools, pool_mask)
    pool_flag = POOL_FLAG if pools else MASK_FLAG
    data_dir = os.path.abspath(o["data_dir"])
    cfg = NodeConfig.load(data_dir)
    addrs = (o["listen"], o["advertise"], o["raft_listen"], o["raft_advertise"],
             o["agent_listen"], o["agent_advertise"], o["dispatcher_listen"],
             o["dispatcher_advertise"])
    try:
        if cfg is not None and cfg.initialised():
            if not resume_ok:
                raise click.ClickException(f"{data_dir} already holds node {cfg.node_id} of "
                                           f"cluster {cfg.cluster_id}")
            for flag, value in (("--cert-expiry", cert_expiry),
                                ("--heartbeat-period", heartbeat_period)):
                if value is not None:
                    # A cluster setting: applying it here would surprise
                    # the other nodes, ignoring it would surprise the user.
                    raise click.ClickException(
                        f"{flag} is a cluster setting, taken only when --init creates the "
                        f"cluster; {data_dir} already holds node {cfg.node_id} of cluster "
                        f"{cfg.cluster_id}: change it with `flotilla cluster update {flag} "
                        f"{_show_duration(value)}` and start the node without it")
            if network is not None:
                raise click.ClickException(
                    f"{pool_flag} is a cluster setting, taken only when --init creates the "
                    f"cluster; {data_dir} already holds node {cfg.node_id} of cluster "
                    f"{cfg.cluster_id}: it cannot be changed afterwards (see `flotilla "
                    f"cluster inspect`); start the node without it")
            if init or join_addr:
                click.echo(f"{data_dir} already holds node {cfg.node_id} of cluster "
                           f"{cfg.cluster_id}: resuming it", err=True)
            if not cfg.agent_listen or not cfg.dispatcher_listen:
                # written by an older version: derive what is missing
                cfg.fill_addresses(None, None, None, None, *addrs[4:])
                cfg.save()
            manager = cfg.role == "manager" or os.path.isdir(cfg.raft_dir)
            flags = {k: o[k] for k in ("listen", "advertise", "raft_listen", "raft_advertise",
                                       "agent_listen", "agent_advertise", "dispatcher_listen",
                                       "dispatcher_advertise", "hostname")}
            changes = cfg.apply_restart_flags(flags, manager)
            port = o.get("wireguard_port")
            if port and port != cfg.wireguard_port:
                changes.append(f"wireguard-port {cfg.wireguard_port} -> {port} "
                               "(from --wireguard-port)")
                cfg.wireguard_port = port
            if changes:
                cfg.save()
                for change in changes:
                    click.echo(f"node {cfg.node_id}: {change}", err=True)
            return cfg
        if not (init or join_addr):
            raise click.ClickException(f"{data_dir} holds no node: start with --init or --join")
        if join_addr and network is not None:
            raise click.ClickException(f"{pool_flag} is a cluster setting, taken only when "
                                       "--init creates the cluster, not with --join")
        cfg = NodeConfig(data_dir=data_dir, hostname=o["hostname"] or "")
        if o.get("wireguard_port"):
            cfg.wireguard_port = o["wireguard_port"]
        cfg.fill_addresses(*addrs)
        if init:
            bootstrap.init_cluster(cfg, cert_expiry=cert_expiry, heartbeat=heartbeat_period,
                                   network=network)
            click.echo(f"Cluster {cfg.cluster_id} created. Admin bundle: {cfg.admin_dir}", err=True)
        else:
            bootstrap.join_cluster(cfg, join_addr, token)
            click.echo(f"Joined cluster {cfg.cluster_id} as {cfg.role} {cfg.node_id}", err=True)
        return cfg
    except (bootstrap.BootstrapError, ConfigError) as exc:
        raise click.ClickException(str(exc)) from None


@node.command("run")
@address_options
@click.option("--init", is_flag=True,
              help="Create a new cluster with this node as its first manager.")
@click.option("--join", "join_addr", metavar="HOST:PORT", help="Join the cluster of this manager.")
@click.option("--token", envvar="FLOTILLA_JOIN_TOKEN", help="Join token (worker or manager).")
@click.option("--cert-expiry", callback=_duration,
              help="With --init: node certificate lifetime (e.g. 90d, 60s).")
@click.option("--heartbeat-period", callback=_duration,
              help="With --init: agent heartbeat period (default 1s).")
@pool_options("With --init: ")
@click.option("--log-level", default="info",
              type=click.Choice(["debug", "info", "warning", "error"]))
@click.option("--repair-journal", is_flag=True,
              help="If this manager's Raft journal is damaged (a bad record with intact ones "
                   "after it), cut it at the bad record and start. The entries after it are "
                   "lost on this manager and fetched again from the leader: repair one "
                   "manager at a time, while the others have a leader.")
def run(init, join_addr, token, cert_expiry, heartbeat_period, log_level, repair_journal,
        pools, pool_mask, **o):
    """Run this node in the foreground (agent always; manager when its role is manager).

    A manager whose Raft journal is damaged in the middle (not just a tail
    torn by a crash, which is cut on its own) refuses to start and names the
    file and byte; --repair-journal cuts it there."""
    from ..node.daemon import NodeDaemon, check_raft_journal

    logs.setup(log_level, "node")
    cfg = _prepare(o, init, join_addr, token, cert_expiry, heartbeat_period, resume_ok=True,
                   pools=pools, pool_mask=pool_mask)
    try:
        said = check_raft_journal(cfg.raft_dir, repair=repair_journal)
    except (OSError, RuntimeError) as exc:
        raise click.ClickException(str(exc)) from None
    if said:
        click.echo(said, err=True)
    sys.exit(NodeDaemon(cfg, log_level).run())


@node.command("init")
@address_options
@click.option("--cert-expiry", callback=_duration,
              help="Node certificate lifetime (e.g. 90d, 60s).")
@click.option("--heartbeat-period", callback=_duration, help="Agent heartbeat period (default 1s).")
@pool_options()
def init_cmd(cert_expiry, heartbeat_period, pools, pool_mask, **o):
    """Create a new cluster in --data-dir and exit; start it with `node run --data-dir`."""
    logs.setup("warning", "node")
    cfg = _prepare(o, True, None, None, cert_expiry, heartbeat_period, resume_ok=False,
                   pools=pools, pool_mask=pool_mask)
    click.echo(cfg.node_id)


@node.command("join")
@address_options
@click.option("--join", "join_addr", required=True, metavar="HOST:PORT",
              help="A manager of the cluster.")
@click.option("--token", envvar="FLOTILLA_JOIN_TOKEN", required=True,
              help="Join token (or FLOTILLA_JOIN_TOKEN, which keeps it out of process listings).")
def join_cmd(join_addr, token, **o):
    """Join a cluster with --data-dir and exit; start it with `node run --data-dir`."""
    logs.setup("warning", "node")
    cfg = _prepare(o, False, join_addr, token, None, None, resume_ok=False)
    click.echo(cfg.node_id)


NODE_COLUMNS = [("ID", "id"), ("HOSTNAME", "hostname"), ("ADDRESS", "addr"), ("ROLE", "role_col"),
                ("AVAILABILITY", "availability"), ("STATE", "state"), ("MANAGER", "manager_col")]


def _row(n):
    row = dict(n)
    row["id"] = n["id"][:12] + (" *" if n.get("self") else "")
    row["role_col"] = (n["role"] if n["role"] == n["desired_role"]
                       else f"{n['role']} -> {n['desired_role']}")
    mgr = n.get("manager")
    row["manager_col"] = ("Leader" if n.get("leader") else
                          (mgr["reachability"].capitalize() if mgr else ""))
    return row


@node.command("ls")
@format_option
@click.option("-q", "--quiet", is_flag=True, help="Only print ids.")
@click.pass_obj
def ls(ctx, quiet):
    """List nodes."""
    nodes = call(ctx, "GET", "/v1/nodes")
    if quiet:
        for n in nodes:
            click.echo(n["id"])
    elif ctx.json:
        emit_json(nodes)
    else:
        table([_row(n) for n in nodes], NODE_COLUMNS)


@node.command("inspect")
@click.argument("ref")
@click.pass_obj
def inspect(ctx, ref):
    """Show one node (by id, id prefix or hostname) as JSON."""
    emit_json(call(ctx, "GET", f"/v1/nodes/{ref}"))


def _show(ctx, n, verb):
    if ctx.json:
        emit_json(n)
    else:
        click.echo(f"Node {n['hostname']} ({n['id'][:12]}) {verb}.")


@node.command("promote")
@click.argument("refs", nargs=-1, required=True)
@click.pass_obj
def promote(ctx, refs):
    """Make nodes managers."""
    for ref in refs:
        _show(ctx, call(ctx, "POST", f"/v1/nodes/{ref}/promote"), "is being promoted to manager")


@node.command("demote")
@click.argument("refs", nargs=-1, required=True)
@click.option("--force", is_flag=True, help="Demote even if the remaining managers lack quorum.")
@click.pass_obj
def demote(ctx, refs, force):
    """Make managers workers (refused if it would lose quorum)."""
    for ref in refs:
        _show(ctx, call(ctx, "POST", f"/v1/nodes/{ref}/demote",
                        params={"force": "1" if force else None}), "is being demoted to worker")


@node.command("rm")
@click.argument("refs", nargs=-1, required=True)
@click.option("--force", is_flag=True, help="Remove even if the node is up.")
@click.pass_obj
def rm(ctx, refs, force):
    """Remove nodes from the cluster (their certificates stop working at once)."""
    for ref in refs:
        res = call(ctx, "DELETE", f"/v1/nodes/{ref}", params={"force": "1" if force else None})
        if ctx.json:
            emit_json(res)
        else:
            click.echo(res["id"])


def _labels(values):
    out = {}
    for v in values:
        key, sep, val = v.partition("=")
        if not key:
            raise click.BadParameter(f"invalid label {v!r}", param_hint="--label-add")
        out[key] = val
    return out


@node.command("update")
@click.argument("ref")
@click.option("--availability", type=click.Choice(["active", "pause", "drain"]))
@click.option("--label-add", multiple=True, metavar="KEY=VALUE")
@click.option("--label-rm", multiple=True, metavar="KEY")
@click.pass_obj
def update(ctx, ref, availability, label_add, label_rm):
    """Change a node's availability or labels."""
    body = {}
    if availability:
        body["availability"] = availability
    if label_add:
        body["labels_add"] = _labels(label_add)
    if label_rm:
        body["labels_rm"] = list(label_rm)
    if not body:
        raise click.UsageError("nothing to update")
    n = call(ctx, "PATCH", f"/v1/nodes/{ref}", json=body)
    if ctx.json:
        emit_json(n)
    else:
        click.echo(n["id"])
