"""``flotilla network``: overlay networks the services' tasks join.

The managers decide a network's subnet (from the cluster's address pool
unless ``--subnet`` names one), its gateway and VXLAN id; ``--format json``
and ``inspect`` show them. ``--network`` on ``service create`` (and
``--network-add`` on ``service update``) takes Docker's two forms, parsed by
``parse_network`` here.
"""

from __future__ import annotations

import click

from ..model.task import finished
from .completion import complete_networks
from .context import call
from .fmt import format_option
from .output import emit_json, table

# Options a network takes (``-o KEY[=VALUE]``), as model/network.py lists them.
OPTIONS = ("encrypted",)
TRUE, FALSE = ("", "true", "1", "yes"), ("false", "0", "no")
# Docker's --network fields that give a task's own addresses or driver
# options: here the managers decide every address.
UNSUPPORTED_FIELDS = ("ip", "ip6", "mac-address", "link-local-ip", "driver-opt", "gw-priority")


def parse_opts(values) -> dict:
    """``--opt KEY[=VALUE]`` into the network spec's fields; a one-line
    error naming an unknown key or a value that is neither true nor false.
    ``encrypted`` alone means true, as in Docker."""
    out: dict = {}
    for value in values:
        key, _, val = value.partition("=")
        if key not in OPTIONS:
            raise click.ClickException(f"--opt: unknown network option {key!r} "
                                       f"(known: {', '.join(OPTIONS)})")
        if val.lower() in TRUE:
            out[key] = True
        elif val.lower() in FALSE:
            out[key] = False
        else:
            raise click.ClickException(f"--opt: {value!r}: use {key}, {key}=true or {key}=false")
    return out


def parse_network(value: str, flag: str = "--network") -> dict:
    """A service's place on a network: ``NAME`` or Docker's long form
    ``name=NAME,alias=A,alias=B``. Returns ``{"target", "aliases"}``."""
    if "=" not in value:
        if not value.strip() or "," in value:
            raise click.ClickException(f"{flag}: {value!r} is not NAME or "
                                       "name=NAME[,alias=ALIAS...]")
        return {"target": value.strip(), "aliases": []}
    att: dict = {"target": None, "aliases": []}
    for part in value.split(","):
        key, sep, val = part.partition("=")
        key, val = key.strip().lower(), val.strip()
        if not sep or not key:
            raise click.ClickException(f"{flag}: {part!r} in {value!r} is not KEY=VALUE")
        if key == "name":
            if att["target"] is not None:
                raise click.ClickException(f"{flag}: {value!r} names two networks")
            att["target"] = val
        elif key == "alias":
            att["aliases"].append(val)
        elif key in UNSUPPORTED_FIELDS:
            raise click.ClickException(f"{flag}: {key} is not supported (the managers "
                                       "decide every address)")
        else:
            raise click.ClickException(f"{flag}: unknown field {key!r} in {value!r} "
                                       "(known: name, alias)")
    if not att["target"]:
        raise click.ClickException(f"{flag}: {value!r} names no network (name=NAME)")
    return att


@click.group()
def network():
    """Manage networks."""


@network.command("create")
@click.argument("name")
@click.option("--driver", "-d", default="overlay", show_default=True,
              help="Network driver (overlay: one subnet across the nodes).")
@click.option("--subnet", metavar="CIDR",
              help="The network's subnet, e.g. 10.1.0.0/24 (default: from the cluster's "
                   "address pool).")
@click.option("--gateway", metavar="IP", help="Gateway address (default: the subnet's first).")
@click.option("--attachable", is_flag=True, help="Let containers outside services attach.")
@click.option("--internal", is_flag=True, help="No traffic out of the network.")
@click.option("--opt", "-o", "opts", multiple=True, metavar="KEY[=VALUE]",
              help="Network option: encrypted (encrypted=true|false).")
@click.option("--label", "-l", multiple=True, metavar="KEY=VALUE")
@click.pass_obj
def create(ctx, name, driver, subnet, gateway, attachable, internal, opts, label):
    """Create a network."""
    body = {"name": name, "driver": driver, "attachable": attachable, "internal": internal,
            "labels": dict(v.partition("=")[::2] for v in label), **parse_opts(opts)}
    if subnet is not None:
        body["subnet"] = subnet
    if gateway is not None:
        body["gateway"] = gateway
    res = call(ctx, "POST", "/v1/networks", json=body)
    emit_json(res) if ctx.json else click.echo(res["id"])


def _yes(value) -> str:
    return "yes" if value else "no"


NETWORK_COLUMNS = [("ID", "id12"), ("NAME", "name"), ("DRIVER", "driver"), ("SUBNET", "subnet"),
                   ("GATEWAY", "gateway"), ("ENCRYPTED", "encrypted_col"),
                   ("INTERNAL", "internal_col"), ("ATTACHABLE", "attachable_col")]


@network.command("ls")
@format_option
@click.option("-q", "--quiet", is_flag=True)
@click.pass_obj
def ls(ctx, quiet):
    """List networks."""
    items = call(ctx, "GET", "/v1/networks")
    if quiet:
        for n in items:
            click.echo(n["id"])
    elif ctx.json:
        emit_json(items)
    else:
        table([dict(n, id12=n["id"][:12], encrypted_col=_yes(n["encrypted"]),
                    internal_col=_yes(n["internal"]), attachable_col=_yes(n["attachable"]))
               for n in items], NETWORK_COLUMNS)


def _with_tasks(ctx, n: dict, nodes: dict) -> dict:
    """``n`` with, for each of its services, the tasks holding an address
    on it (as ``docker network inspect --verbose`` shows them)."""
    for s in n.get("services") or ():
        s["tasks"] = []
        for t in call(ctx, "GET", "/v1/tasks", params={"service": s["id"]}):
            addr = next((a["addr"] for a in t["networks"] if a["network_id"] == n["id"]), None)
            if addr is None or finished(t["state"]):
                continue
            name = f"{t['service_name']}." + (str(t["slot"]) if t["slot"] is not None
                                              else (t["node_id"] or "")[:12])
            s["tasks"].append({"id": t["id"], "name": name, "addr": addr, "state": t["state"],
                               "node": nodes.get(t["node_id"], t["node_id"])})
    return n


@network.command("inspect")
@click.argument("refs", nargs=-1, required=True, shell_complete=complete_networks)
@click.option("--verbose", "-v", is_flag=True,
              help="Also list each service's tasks with their addresses on the network.")
@click.pass_obj
def inspect(ctx, refs, verbose):
    """Show networks as JSON (by name, id or id prefix), with the services on them."""
    found = [call(ctx, "GET", f"/v1/networks/{r}") for r in refs]
    if verbose:
        nodes = {n["id"]: n["hostname"] for n in call(ctx, "GET", "/v1/nodes")}
        found = [_with_tasks(ctx, n, nodes) for n in found]
    emit_json(found)


@network.command("rm")
@click.argument("refs", nargs=-1, required=True, shell_complete=complete_networks)
@click.pass_obj
def rm(ctx, refs):
    """Remove networks no service uses."""
    for ref in refs:
        call(ctx, "DELETE", f"/v1/networks/{ref}")
        click.echo(ref)
