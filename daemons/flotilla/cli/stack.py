"""``flotilla stack``: deploy Compose files as stacks of services.

A stack is the set of services carrying the service label
``flotilla.stack.namespace=NAME``; service ``web`` of stack ``shop`` is the
cluster service ``shop_web``. The translation from Compose lives in
``compose/``; this module talks to the API.
"""

from __future__ import annotations

import click

from .compose.errors import ComposeError
from .compose.translate import STACK_LABEL, stack_specs
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
        name, wanted, warnings = stack_specs(list(files), name)
    except ComposeError as exc:
        raise StackError("\n".join(exc.errors)) from None
    for w in warnings:
        click.echo(f"warning: {w}", err=True)

    existing = {s["name"]: s for s in call(ctx, "GET", "/v1/services")}
    foreign = [s["name"] for s in wanted
               if s["name"] in existing and stack_of(existing[s["name"]]) != name]
    if foreign:
        raise StackError("\n".join(f"service {n} exists and is not part of stack {name}"
                                   for n in foreign))
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
    """Remove stacks: all of their services."""
    everything = call(ctx, "GET", "/v1/services")
    missing, removed = [], []
    for name in names:
        items = [s for s in everything if stack_of(s) == name]
        if not items:
            missing.append(name)
            continue
        for s in items:
            click.echo(f"Removing service {s['name']}")
            call(ctx, "DELETE", f"/v1/services/{s['id']}")
            removed.append(s["id"])
    if wait and removed:
        from .progress import removed as wait_removed
        wait_removed(ctx, removed, timeout)
    if missing:
        raise StackError("\n".join(f"stack {n} not found" for n in missing))
