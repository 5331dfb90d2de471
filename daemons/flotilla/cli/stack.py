"""``flotilla stack``: deploy Compose files as stacks of services.

A stack is the set of services, and of networks, carrying the label
``flotilla.stack.namespace=NAME``; service ``web`` of stack ``shop`` is the
cluster service ``shop_web``, network ``front`` the network ``shop_front``
(``shop_default`` for services that name none). The translation from
Compose lives in ``compose/``; this module talks to the API: networks are
made before the services that join them and removed after them.
"""

from __future__ import annotations

import time

import click

from .compose.errors import ComposeError
from .compose.translate import STACK_LABEL, StackNetwork, load_stack
from .context import call
from .fmt import format_option
from .output import emit_json, table
from .service import SERVICE_COLUMNS, print_tasks


class StackError(click.ClickException):
    """Errors printed one per line as ``error: ...`` (exit code 1)."""

    def show(self, file=None):
        for line in self.format_message().splitlines():
            click.echo(f"error: {line}", err=True, file=file)


def stack_of(service: dict) -> str | None:
    return (service.get("spec", {}).get("labels") or {}).get(STACK_LABEL)


def stack_services(ctx, name: str) -> list[dict]:
    return [s for s in call(ctx, "GET", "/v1/services") if stack_of(s) == name]


def network_stack_of(network: dict) -> str | None:
    return (network.get("labels") or {}).get(STACK_LABEL)


# A network's settings that a stack deploy compares with the file's, and how
# the API's view shows them.
NETWORK_SETTINGS = ("driver", "subnet", "gateway", "internal", "encrypted", "labels")
# How long a removed stack's network is retried while its tasks stop.
NETWORK_RETRY = 0.5


def _canonical(spec: dict) -> dict:
    from ..model import specs as service_specs
    return service_specs.canonical(service_specs.ServiceSpec.model_validate(spec))


@click.group()
def stack():
    """Deploy and manage stacks (services from Compose files)."""


@stack.command("deploy")
@click.option("-c", "--compose-file", "files", multiple=True, required=True, metavar="FILE",
              type=click.Path(dir_okay=False),
              help="Compose file; repeat to merge several in order.")
@click.option("--prune", is_flag=True,
              help="Remove the stack's services that are no longer in the files.")
@click.option("-d", "--detach", is_flag=True,
              help="Return at once instead of waiting for the services to converge.")
@click.option("--timeout", type=float, default=120.0, show_default=True,
              help="Seconds to wait for convergence.")
@click.argument("name", required=False)
@click.pass_obj
def deploy(ctx, files, prune, detach, timeout, name):
    """Create or update the services of stack NAME from Compose files.

    NAME defaults to the Compose file's top-level name. Services that exist
    are updated only if their spec changed.
    """
    try:
        plan = load_stack(list(files), name)
    except ComposeError as exc:
        raise StackError("\n".join(exc.errors)) from None
    name, wanted = plan.name, plan.services
    for w in plan.warnings:
        click.echo(f"warning: {w}", err=True)

    existing = {s["name"]: s for s in call(ctx, "GET", "/v1/services")}
    problems = [f"service {s['name']} exists and is not part of stack {name}" for s in wanted
                if s["name"] in existing and stack_of(existing[s["name"]]) != name]
    networks = {n["name"]: n for n in call(ctx, "GET", "/v1/networks")}
    problems += [p for net in plan.networks for p in _network_problems(net, networks.get(net.name),
                                                                       name)]
    if problems:
        raise StackError("\n".join(problems))
    for net in plan.networks:
        if net.name not in networks:
            click.echo(f"Creating network {net.name}")
            try:
                networks[net.name] = call(ctx, "POST", "/v1/networks", json=net.spec)
            except click.ClickException as exc:
                raise StackError(f"cannot create network {net.name}: "
                                 f"{exc.format_message()}") from None
    ids_of = {n: networks[n]["id"] for n in networks}
    for spec in wanted:                 # stored by id: compared as stored
        for att in spec["task"]["networks"]:
            att["target"] = ids_of[att["target"]]
    if prune:
        keep = {s["name"] for s in wanted}
        for svc in sorted(existing.values(), key=lambda s: s["name"]):
            if stack_of(svc) == name and svc["name"] not in keep:
                click.echo(f"Removing service {svc['name']}")
                call(ctx, "DELETE", f"/v1/services/{svc['id']}")

    ids = []
    for spec in wanted:
        current = existing.get(spec["name"])
        if current is None:
            click.echo(f"Creating service {spec['name']}")
            created = _send(ctx, "POST", "/v1/services", spec, spec["name"], "create")
            ids.append(created["id"])
            continue
        ids.append(current["id"])
        if _canonical(spec) == current["spec"]:
            click.echo(f"Service {spec['name']} is up to date")
            continue
        updated = _send(ctx, "PATCH", f"/v1/services/{current['id']}", {"spec": spec},
                        spec["name"], "update")
        if updated["spec_version"] != current["spec_version"]:
            click.echo(f"Updating service {spec['name']}")
        else:
            click.echo(f"Service {spec['name']} is up to date")
    if detach or not ids:
        return
    from .progress import converge
    converge(ctx, ids, timeout)


def _network_problems(net: StackNetwork, found: dict | None, stack: str) -> list[str]:
    """Why the stack cannot use ``found``, the cluster's network of that
    name (None: there is none), as its network ``net``."""
    where = f"{net.where}: " if net.where else ""
    if net.external:
        if found is None:
            return [f"{where}network {net.name} is external but does not exist: create it "
                    f"first (flotilla network create {net.name})"]
        return []
    if found is None:
        return []
    if network_stack_of(found) != stack:
        return [f"{where}network {net.name} exists and is not part of stack {stack}"]
    assert net.spec is not None
    differ = []
    for key in NETWORK_SETTINGS:
        want = net.spec.get(key)
        if want is None and key in ("subnet", "gateway"):
            continue                    # the managers chose it
        if found.get(key) != want:
            differ.append(f"{key} {found.get(key)!r}, not {want!r}")
    if differ:
        return [f"{where}network {net.name} exists with other settings ({'; '.join(differ)}): "
                f"a network cannot be changed; remove the stack (flotilla stack rm {stack}) "
                "and deploy it again"]
    return []


def _send(ctx, method, path, body, service, what):
    try:
        return call(ctx, method, path, json=body)
    except click.ClickException as exc:
        raise StackError(f"cannot {what} service {service}: {exc.format_message()}") from None


@stack.command("ls")
@format_option
@click.pass_obj
def ls(ctx) -> None:
    """List stacks."""
    counts: dict[str, int] = {}
    for s in call(ctx, "GET", "/v1/services"):
        name = stack_of(s)
        if name:
            counts[name] = counts.get(name, 0) + 1
    rows = [{"name": n, "services": counts[n]} for n in sorted(counts)]
    if ctx.json:
        emit_json(rows)
    else:
        table(rows, [("NAME", "name"), ("SERVICES", "services")])


def _existing(ctx, name) -> list[dict]:
    found = stack_services(ctx, name)
    if not found:
        raise StackError(f"stack {name} not found")
    return found


@stack.command("services")
@click.argument("name")
@format_option
@click.option("-q", "--quiet", is_flag=True, help="Only print service ids.")
@click.pass_obj
def services(ctx, name, quiet):
    """List the services of stack NAME."""
    items = _existing(ctx, name)
    if quiet:
        for s in items:
            click.echo(s["id"])
    elif ctx.json:
        emit_json(items)
    else:
        rows = [dict(s, id12=s["id"][:12],
                     reps=f"{s['replicas']['running']}/{s['replicas']['desired']}",
                     ports_col=", ".join(f"*:{p['published']}->{p['target']}/{p['protocol']}"
                                         for p in s["ports"]))
                for s in items]
        table(rows, SERVICE_COLUMNS)


@stack.command("ps")
@click.argument("name")
@format_option
@click.option("-q", "--quiet", is_flag=True, help="Only print task ids.")
@click.pass_obj
def ps(ctx, name, quiet):
    """List the tasks of stack NAME."""
    tasks = []
    for s in _existing(ctx, name):
        tasks.extend(call(ctx, "GET", f"/v1/services/{s['id']}/tasks"))
    print_tasks(ctx, tasks, quiet)


@stack.command("rm")
@click.argument("names", nargs=-1, required=True)
@click.option("--wait", is_flag=True, help="Wait until the stacks' tasks are gone.")
@click.option("--timeout", type=float, default=120.0, show_default=True,
              help="Seconds to wait with --wait.")
@click.pass_obj
def rm(ctx, names, wait, timeout):
    """Remove stacks: their services, then their networks.

    A network is removed once the tasks that had an address on it have
    stopped (waiting up to --timeout); networks the stack joined but did not
    make (external) stay."""
    everything = call(ctx, "GET", "/v1/services")
    all_networks = call(ctx, "GET", "/v1/networks")
    missing, removed, networks = [], [], []
    for name in names:
        items = [s for s in everything if stack_of(s) == name]
        nets = [n for n in all_networks if network_stack_of(n) == name]
        if not items and not nets:
            missing.append(name)
            continue
        for s in items:
            click.echo(f"Removing service {s['name']}")
            call(ctx, "DELETE", f"/v1/services/{s['id']}")
            removed.append(s["id"])
        networks += nets
    deadline = time.monotonic() + timeout
    failed = [f for n in sorted(networks, key=lambda n: n["name"])
              for f in _remove_network(ctx, n, deadline, timeout)]
    if wait and removed:
        from .progress import removed as wait_removed
        wait_removed(ctx, removed, max(deadline - time.monotonic(), 0.0))
    failed += [f"stack {n} not found" for n in missing]
    if failed:
        raise StackError("\n".join(failed))


def _remove_network(ctx, network: dict, deadline: float, timeout: float) -> list[str]:
    """Remove a stack's network, retrying while tasks of its removed
    services still hold addresses on it; the problem, if any, as a line."""
    click.echo(f"Removing network {network['name']}")
    while True:
        try:
            call(ctx, "DELETE", f"/v1/networks/{network['id']}")
            return []
        except click.ClickException as exc:
            why = exc.format_message()
        try:
            now = call(ctx, "GET", f"/v1/networks/{network['id']}")
        except click.ClickException:
            return []                   # gone meanwhile
        if now.get("services"):         # someone else's service joined it
            return [f"cannot remove network {network['name']}: {why}"]
        if time.monotonic() >= deadline:
            return [f"cannot remove network {network['name']} within {timeout:g}s: {why}; "
                    f"remove it later with: flotilla network rm {network['name']}"]
        time.sleep(NETWORK_RETRY)
