"""``flotilla service`` and ``flotilla task``."""

from __future__ import annotations

import contextlib
import copy
import io
import shlex
from typing import Any

import click

from ..common.units import parse_bytes, parse_duration
from . import progress
from .completion import complete_networks
from .context import call
from .fmt import format_option
from .logs import logs as service_logs
from .network import parse_network
from .output import age, emit_json, table


def _kv(values, what):
    out = {}
    for v in values:
        key, sep, val = v.partition("=")
        if not key or not sep:
            raise click.BadParameter(f"{v!r} is not KEY=VALUE", param_hint=what)
        out[key] = val
    return out


def parse_publish(value: str) -> dict:
    """'8080:80', '8080:80/udp' or 'published=8080,target=80,protocol=tcp,mode=host'."""
    if "=" in value:
        fields = dict(part.partition("=")[::2] for part in value.split(","))
        try:
            port: dict[str, Any] = {"published": int(fields.pop("published")),
                                    "target": int(fields.pop("target"))}
        except (KeyError, ValueError):
            raise click.BadParameter(f"{value!r} needs published=N,target=N",
                                     param_hint="--publish") from None
        if "protocol" in fields:
            port["protocol"] = fields.pop("protocol")
        mode = fields.pop("mode", "host")
        if mode != "host":
            raise click.BadParameter("only host mode publishing is supported (mode=host)",
                                     param_hint="--publish")
        if fields:
            raise click.BadParameter(f"unknown field {sorted(fields)[0]!r}", param_hint="--publish")
        return port
    spec, _, proto = value.partition("/")
    published, sep, target = spec.partition(":")
    try:
        port = {"published": int(published), "target": int(target if sep else published)}
    except ValueError:
        raise click.BadParameter(f"{value!r} is not PUBLISHED:TARGET[/PROTOCOL]",
                                 param_hint="--publish") from None
    if proto:
        port["protocol"] = proto
    return port


def parse_mount(value: str) -> dict:
    """'type=bind,source=/a,target=/b,readonly' (Docker's --mount syntax)."""
    mount: dict[str, Any] = {}
    for part in value.split(","):
        key, sep, val = part.partition("=")
        key = {"src": "source", "dst": "target", "destination": "target",
               "ro": "readonly"}.get(key, key)
        if key == "readonly":
            mount["readonly"] = (not sep) or val.lower() in ("1", "true", "yes")
        elif key in ("type", "source", "target"):
            mount[key] = val
        else:
            raise click.BadParameter(f"unknown mount option {key!r}", param_hint="--mount")
    return mount


DEPENDENCY_CONDITIONS = ("started", "healthy", "completed")


def parse_dependency(value: str, hint: str = "--depends-on") -> dict:
    """'db' or 'db:healthy' (conditions: started, the default, healthy, completed)."""
    name, _, condition = value.partition(":")
    condition = condition or "started"
    if not name or condition not in DEPENDENCY_CONDITIONS:
        raise click.BadParameter(f"{value!r} is not SERVICE[:started|healthy|completed]",
                                 param_hint=hint)
    return {"service": name, "condition": condition}


def _dur(_c, _p, v):
    if v is None:
        return None
    try:
        return parse_duration(v)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _size(_c, _p, v):
    if v is None:
        return None
    try:
        return parse_bytes(v)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


HEALTH_FORMS = ("health_cmd", "health_http", "health_tcp", "no_healthcheck")
HEALTH_TIMINGS = ("interval", "timeout", "retries", "start_period")


def parse_health_http(value: str) -> dict:
    """'80' or '80/health': the port inside the container, then the path."""
    port, sep, path = value.partition("/")
    try:
        check: dict[str, Any] = {"port": int(port)}
    except ValueError:
        raise click.BadParameter(f"{value!r} is not PORT[/PATH]",
                                 param_hint="--health-http") from None
    if sep:
        check["path"] = "/" + path
    return check


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def health_form(o: dict) -> dict | None:
    """The healthcheck the flags ask for, without timings (None: no form flag)."""
    chosen = [f for f in HEALTH_FORMS if o.get(f)]
    if len(chosen) > 1:
        raise click.UsageError(f"{_flag(chosen[0])} and {_flag(chosen[1])} cannot be used together")
    timed = [k for k in HEALTH_TIMINGS if o.get(f"health_{k}") is not None]
    if o.get("no_healthcheck") and timed:
        raise click.UsageError(
            f"{_flag('health_' + timed[0])} cannot be used with --no-healthcheck")
    if o.get("no_healthcheck"):
        return {"test": ["NONE"]}
    if o.get("health_cmd"):
        return {"test": ["CMD-SHELL", o["health_cmd"]]}
    if o.get("health_http"):
        return {"http": parse_health_http(o["health_http"])}
    if o.get("health_tcp") is not None:
        return {"tcp": {"port": o["health_tcp"]}}
    return None


def health_timings(o: dict) -> dict:
    return {k: o[f"health_{k}"] for k in HEALTH_TIMINGS if o.get(f"health_{k}") is not None}


def _own_healthcheck(hc: dict | None) -> bool:
    """The spec has a healthcheck of its own (not none, not disabled)."""
    return bool(hc and (hc.get("http") or hc.get("tcp")
                        or (hc.get("test") and hc["test"][0] != "NONE")))


def build_spec(o: dict, image: str, command: tuple) -> dict:
    container: dict[str, Any] = {"image": image}
    if command:
        container["args"] = list(command)
    if o["entrypoint"]:
        container["command"] = o["entrypoint"].split()
    if o["env"]:
        container["env"] = list(o["env"])
    if o["container_label"]:
        container["labels"] = _kv(o["container_label"], "--container-label")
    for key, opt in (("workdir", "workdir"), ("user", "user"), ("hostname", "hostname"),
                     ("stop_signal", "stop_signal")):
        if o[opt]:
            container[key] = o[opt]
    if o["stop_grace_period"] is not None:
        container["stop_grace_period"] = o["stop_grace_period"]
    if o["init"]:
        container["init"] = True
    if o["mount"]:
        container["mounts"] = [parse_mount(m) for m in o["mount"]]
    hc = health_form(o)
    if hc is None and health_timings(o):
        raise click.UsageError("--health-interval, --health-timeout, --health-retries and "
                               "--health-start-period need --health-cmd, --health-http or "
                               "--health-tcp")
    if hc is not None:
        container["healthcheck"] = dict(hc, **health_timings(o))
    task: dict[str, Any] = {"container": container}
    resources = {}
    for kind, cpu, mem in (("limits", "limit_cpu", "limit_memory"),
                           ("reservations", "reserve_cpu", "reserve_memory")):
        part = {}
        if o[cpu] is not None:
            part["cpus"] = o[cpu]
        if o[mem] is not None:
            part["memory"] = o[mem]
        if part:
            resources[kind] = part
    if resources:
        task["resources"] = resources
    restart: dict[str, Any] = {}
    for key in ("condition", "delay", "max_attempts", "window"):
        if o[f"restart_{key}"] is not None:
            restart[key] = o[f"restart_{key}"]
    if restart:
        task["restart"] = restart
    placement: dict[str, Any] = {}
    if o["constraint"]:
        placement["constraints"] = list(o["constraint"])
    if o["placement_pref"]:
        prefs = []
        for p in o["placement_pref"]:
            kind, _, what = p.partition("=")
            if kind != "spread" or not what:
                raise click.BadParameter(f"{p!r}: use spread=node.labels.KEY",
                                         param_hint="--placement-pref")
            prefs.append({"spread": what})
        placement["preferences"] = prefs
    if o["replicas_max_per_node"] is not None:
        placement["max_replicas"] = o["replicas_max_per_node"]
    if placement:
        task["placement"] = placement
    if o.get("network"):
        task["networks"] = [parse_network(n) for n in o["network"]]
    spec: dict[str, Any] = {"name": o["name"], "mode": o["mode"], "task": task}
    for section in ("update", "rollback"):
        cfg = {key: o[f"{section}_{key}"] for key in ("parallelism", "delay", "failure_action",
                                                       "monitor", "max_failure_ratio", "order")
               if o.get(f"{section}_{key}") is not None}
        if cfg:
            spec[section] = cfg
    if o["replicas"] is not None:
        spec["replicas"] = o["replicas"]
    if o["label"]:
        spec["labels"] = _kv(o["label"], "--label")
    endpoint: dict[str, Any] = {}
    if o.get("endpoint_mode"):
        endpoint["mode"] = o["endpoint_mode"]
    if o["publish"]:
        endpoint["ports"] = [parse_publish(p) for p in o["publish"]]
    if endpoint:
        spec["endpoint"] = endpoint
    if o.get("depends_on"):
        spec["depends_on"] = [parse_dependency(d) for d in o["depends_on"]]
    return spec


def service_options(fn):
    opts = [
        click.option("--name", required=True, help="Service name."),
        click.option("--mode", type=click.Choice(["replicated", "global"]), default="replicated"),
        click.option("--replicas", type=int, help="Number of tasks (replicated mode)."),
        click.option("--depends-on", multiple=True, metavar="SERVICE[:CONDITION]",
                     help="Start tasks only once SERVICE is started (default), healthy or "
                          "completed."),
        click.option("--env", "-e", multiple=True, metavar="KEY=VALUE"),
        click.option("--label", "-l", multiple=True, metavar="KEY=VALUE", help="Service label."),
        click.option("--container-label", multiple=True, metavar="KEY=VALUE"),
        click.option("--mount", multiple=True, metavar="type=bind,source=/x,target=/y"),
        click.option("--publish", "-p", multiple=True, metavar="PUBLISHED:TARGET[/udp]",
                     help="Publish a port on the node running the task (host mode)."),
        click.option("--network", multiple=True, metavar="NAME|name=NAME,alias=A",
                     shell_complete=complete_networks,
                     help="Join the tasks to a network, the service's name (and aliases) "
                          "resolving there."),
        click.option("--endpoint-mode", type=click.Choice(["vip", "dnsrr"]),
                     help="vip (default): the name resolves to one virtual IP per network; "
                          "dnsrr: to the tasks' addresses."),
        click.option("--constraint", multiple=True, metavar="EXPR",
                     help="e.g. node.labels.disk==ssd"),
        click.option("--placement-pref", multiple=True, metavar="spread=node.labels.KEY"),
        click.option("--replicas-max-per-node", type=int),
        click.option("--reserve-cpu", type=float), click.option("--reserve-memory", callback=_size),
        click.option("--limit-cpu", type=float), click.option("--limit-memory", callback=_size),
        click.option("--restart-condition", type=click.Choice(["none", "on-failure", "any"])),
        click.option("--restart-delay", callback=_dur),
        click.option("--restart-max-attempts", type=int),
        click.option("--restart-window", callback=_dur),
        click.option("--health-cmd",
                     help="Healthcheck command, run in the container by the engine."),
        click.option("--health-http", metavar="PORT[/PATH]",
                     help="Healthcheck: GET on this port inside the container, e.g. 80/health."),
        click.option("--health-tcp", type=click.IntRange(1, 65535), metavar="PORT",
                     help="Healthcheck: a TCP connection to this port inside the container."),
        click.option("--health-interval", callback=_dur),
        click.option("--health-timeout", callback=_dur), click.option("--health-retries", type=int),
        click.option("--health-start-period", callback=_dur),
        click.option("--no-healthcheck", is_flag=True, help="Disable the image's HEALTHCHECK."),
        click.option("--entrypoint"), click.option("--workdir", "-w"), click.option("--user", "-u"),
        click.option("--hostname"), click.option("--stop-grace-period", callback=_dur),
        click.option("--stop-signal"), click.option("--init", is_flag=True),
        click.option("--update-parallelism", type=int, help="Tasks replaced at a time (0: all)."),
        click.option("--update-delay", callback=_dur, help="Wait between batches."),
        click.option("--update-failure-action",
                     type=click.Choice(["pause", "continue", "rollback"])),
        click.option("--update-monitor", callback=_dur,
                     help="How long each new task is watched for failure."),
        click.option("--update-max-failure-ratio", type=float),
        click.option("--update-order", type=click.Choice(["stop-first", "start-first"])),
        click.option("--rollback-parallelism", type=int),
        click.option("--rollback-delay", callback=_dur),
        click.option("--rollback-failure-action", type=click.Choice(["pause", "continue"])),
        click.option("--rollback-monitor", callback=_dur),
        click.option("--rollback-max-failure-ratio", type=float),
        click.option("--rollback-order", type=click.Choice(["stop-first", "start-first"])),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


@click.group()
def service():
    """Manage services."""


def wait_options(fn):
    fn = click.option("--timeout", default=120.0, show_default=True, type=float, metavar="SECONDS",
                      help="How long to wait for convergence.")(fn)
    fn = click.option("--detach", "-d", is_flag=True,
                      help="Return at once instead of waiting for the tasks to converge.")(fn)
    return fn


@service.command("create", context_settings={"allow_interspersed_args": False})
@service_options
@wait_options
@format_option
@click.option("-q", "--quiet", is_flag=True, help="Print only the service id.")
@click.argument("image")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@click.pass_obj
def create(ctx, image, command, detach, timeout, quiet, **o):
    """Create a service running IMAGE [COMMAND [ARG...]] and wait until it converges."""
    if o["mode"] == "global" and o["replicas"] is not None:
        raise click.UsageError("--replicas cannot be used with --mode global")
    res = call(ctx, "POST", "/v1/services", json=build_spec(o, image, command))
    if ctx.json:
        emit_json(res)
    else:
        click.echo(res["id"])
    if not detach:
        _converge(ctx, [res["id"]], timeout, quiet or ctx.json)


def _converge(ctx, refs, timeout, quiet=False, rollback=False):
    if quiet:
        with contextlib.redirect_stdout(io.StringIO()):
            progress.converge(ctx, refs, timeout, rollback=rollback)
    else:
        progress.converge(ctx, refs, timeout, rollback=rollback)


SERVICE_COLUMNS = [("ID", "id12"), ("NAME", "name"), ("MODE", "mode"), ("REPLICAS", "reps"),
                   ("IMAGE", "image"), ("PORTS", "ports_col")]


@service.command("ls")
@format_option
@click.option("-q", "--quiet", is_flag=True)
@click.pass_obj
def ls(ctx, quiet):
    """List services."""
    items = call(ctx, "GET", "/v1/services")
    if quiet:
        for s in items:
            click.echo(s["id"])
    elif ctx.json:
        emit_json(items)
    else:
        rows = []
        for s in items:
            rows.append(dict(s, id12=s["id"][:12],
                             reps=f"{s['replicas']['running']}/{s['replicas']['desired']}",
                             ports_col=", ".join(_ports(s["ports"]))))
        table(rows, SERVICE_COLUMNS)


@service.command("inspect")
@click.argument("refs", nargs=-1, required=True)
@click.option("--pretty", is_flag=True, help="Print a summary for people instead of JSON.")
@click.pass_obj
def inspect(ctx, refs, pretty):
    """Show services as JSON (or a summary with --pretty)."""
    found = [call(ctx, "GET", f"/v1/services/{r}") for r in refs]
    if not pretty:
        emit_json(found)
        return
    names = {}
    if any(s["spec"]["task"].get("networks") for s in found):
        names = {n["id"]: n["name"] for n in call(ctx, "GET", "/v1/networks")}
    for i, s in enumerate(found):
        if i:
            click.echo()
        for line in pretty_service(s, names):
            click.echo(line.rstrip())


def _ports(ports) -> list[str]:
    return [f"*:{p['published']}->{p['target']}/{p['protocol']}" for p in ports]


def pretty_service(s: dict, network_names: dict) -> list[str]:
    """``service inspect --pretty``: the lines for service view ``s``;
    ``network_names``: network id -> name."""
    spec, c = s["spec"], s["spec"]["task"]["container"]
    lines = [f"ID:             {s['id']}", f"Name:           {s['name']}",
             f"Service Mode:   {spec['mode'].capitalize()}"]
    if spec["mode"] == "replicated":
        lines.append(f" Replicas:      {s['replicas']['running']}/{s['replicas']['desired']} "
                     "running")
    if spec.get("labels"):
        lines.append("Labels:")
        lines += [f" {k}={v}" for k, v in sorted(spec["labels"].items())]
    if s.get("update_status"):
        lines.append(f"Update Status:  {s['update_status']['state'].replace('_', ' ')}")
    lines.append("ContainerSpec:")
    lines.append(f" Image:         {c['image']}")
    if c.get("command"):
        lines.append(f" Command:       {shlex.join(c['command'])}")
    if c.get("args"):
        lines.append(f" Args:          {shlex.join(c['args'])}")
    endpoint = spec.get("endpoint") or {}
    lines.append(f"Endpoint Mode:  {endpoint.get('mode', 'vip')}")
    attached = spec["task"].get("networks") or []
    if attached:
        vips = {v["network_id"]: v["addr"] for v in s.get("virtual_ips") or ()}
        rows = [(network_names.get(a["target"], a["target"][:12]),
                 f"VIP {vips[a['target']]}" if a["target"] in vips else "",
                 f"aliases: {', '.join(a['aliases'])}" if a["aliases"] else "")
                for a in attached]
        widths = [max(len(r[i]) for r in rows) for i in range(2)]
        lines.append("Networks:")
        lines += [f" {r[0]:<{widths[0]}}   {r[1]:<{widths[1]}}   {r[2]}" for r in rows]
    if endpoint.get("ports"):
        lines.append("Ports:")
        lines += [f" {p}" for p in _ports(endpoint["ports"])]
    return lines


TASK_COLUMNS = [("ID", "id12"), ("NAME", "name"), ("IMAGE", "image"), ("NODE", "node"),
                ("DESIRED STATE", "desired_col"), ("CURRENT STATE", "current"), ("ERROR", "err"),
                ("CONTAINER", "container")]


def print_tasks(ctx, tasks, quiet=False):
    if quiet:
        for t in tasks:
            click.echo(t["id"])
    elif ctx.json:
        emit_json(tasks)
    else:
        rows = []
        for t in tasks:
            name = t["service_name"] + (f".{t['slot']}" if t["slot"] is not None
                                        else f".{(t['node_id'] or '')[:12]}")
            err = t["error"] or (t["message"] if t["state"] == "pending"
                                 or t["desired_state"] == "ready" else "")
            rows.append(dict(t, id12=t["id"][:12], name=name,
                             desired_col=t["desired_state"].capitalize(),
                             current=f"{t['state'].capitalize()} {age(t['timestamp'])}",
                             err=(err or "")[:70], container=(t["container_id"] or "")[:12]))
        table(rows, TASK_COLUMNS)


@service.command("ps")
@click.argument("ref")
@format_option
@click.option("-q", "--quiet", is_flag=True)
@click.pass_obj
def ps(ctx, ref, quiet):
    """List a service's tasks: id, slot, node, desired and current state, error, container."""
    print_tasks(ctx, call(ctx, "GET", f"/v1/services/{ref}/tasks"), quiet)


@service.command("scale")
@click.argument("pairs", nargs=-1, required=True, metavar="SERVICE=REPLICAS...")
@wait_options
@click.pass_obj
def scale(ctx, pairs, detach, timeout):
    """Set the number of replicas of services and wait until they converge."""
    wanted = []
    for pair in pairs:
        name, sep, n = pair.partition("=")
        if not sep or not n.isdigit():
            raise click.BadParameter(f"{pair!r} is not SERVICE=REPLICAS")
        wanted.append((name, int(n)))
    ids = []
    for name, n in wanted:
        ids.append(call(ctx, "PATCH", f"/v1/services/{name}", json={"replicas": n})["id"])
        click.echo(f"{name} scaled to {n}")
    if not detach:
        _converge(ctx, ids, timeout)


@service.command("update", context_settings={"allow_interspersed_args": True})
@click.argument("ref")
@click.option("--image", help="New image.")
@click.option("--args", "args_", metavar="\"ARG ...\"", help="New command arguments (shell words).")
@click.option("--entrypoint", help="New entrypoint (shell words; '' for the image's).")
@click.option("--replicas", type=int)
@click.option("--env-add", multiple=True, metavar="KEY=VALUE")
@click.option("--env-rm", multiple=True, metavar="KEY")
@click.option("--label-add", multiple=True, metavar="KEY=VALUE", help="Service label.")
@click.option("--label-rm", multiple=True, metavar="KEY")
@click.option("--container-label-add", multiple=True, metavar="KEY=VALUE")
@click.option("--container-label-rm", multiple=True, metavar="KEY")
@click.option("--publish-add", multiple=True, metavar="PUBLISHED:TARGET[/udp]")
@click.option("--publish-rm", multiple=True, metavar="PUBLISHED[/udp]")
@click.option("--network-add", multiple=True, metavar="NAME|name=NAME,alias=A",
              shell_complete=complete_networks)
@click.option("--network-rm", multiple=True, metavar="NAME", shell_complete=complete_networks)
@click.option("--endpoint-mode", type=click.Choice(["vip", "dnsrr"]))
@click.option("--constraint-add", multiple=True, metavar="EXPR")
@click.option("--constraint-rm", multiple=True, metavar="EXPR")
@click.option("--mount-add", multiple=True, metavar="type=bind,source=/x,target=/y")
@click.option("--mount-rm", multiple=True, metavar="TARGET")
@click.option("--depends-on-add", multiple=True, metavar="SERVICE[:CONDITION]",
              help="Add or change a dependency (condition started, healthy or completed).")
@click.option("--depends-on-rm", multiple=True, metavar="SERVICE")
@click.option("--reserve-cpu", type=float)
@click.option("--reserve-memory", callback=_size)
@click.option("--limit-cpu", type=float)
@click.option("--limit-memory", callback=_size)
@click.option("--restart-condition", type=click.Choice(["none", "on-failure", "any"]))
@click.option("--restart-delay", callback=_dur)
@click.option("--restart-max-attempts", type=int)
@click.option("--restart-window", callback=_dur)
@click.option("--health-cmd")
@click.option("--health-http", metavar="PORT[/PATH]")
@click.option("--health-tcp", type=click.IntRange(1, 65535), metavar="PORT")
@click.option("--health-interval", callback=_dur)
@click.option("--health-timeout", callback=_dur)
@click.option("--health-retries", type=int)
@click.option("--health-start-period", callback=_dur)
@click.option("--no-healthcheck", is_flag=True)
@click.option("--stop-grace-period", callback=_dur)
@click.option("--update-parallelism", type=int)
@click.option("--update-delay", callback=_dur)
@click.option("--update-failure-action", type=click.Choice(["pause", "continue", "rollback"]))
@click.option("--update-monitor", callback=_dur)
@click.option("--update-max-failure-ratio", type=float)
@click.option("--update-order", type=click.Choice(["stop-first", "start-first"]))
@click.option("--rollback-parallelism", type=int)
@click.option("--rollback-delay", callback=_dur)
@click.option("--rollback-failure-action", type=click.Choice(["pause", "continue"]))
@click.option("--rollback-monitor", callback=_dur)
@click.option("--rollback-max-failure-ratio", type=float)
@click.option("--rollback-order", type=click.Choice(["stop-first", "start-first"]))
@click.option("--force", is_flag=True, help="Replace every task even if nothing changed.")
@wait_options
@format_option
@click.pass_obj
def update(ctx, ref, detach, timeout, **o):
    """Change a service's spec; its tasks are replaced to match."""
    current = call(ctx, "GET", f"/v1/services/{ref}")
    spec = update_spec(current["spec"], o,
                       network_id=lambda r: call(ctx, "GET", f"/v1/networks/{r}")["id"])
    res = call(ctx, "PATCH", f"/v1/services/{current['id']}",
               json={"spec": spec, "version": current["version"]})
    if ctx.json:
        emit_json(res)
    elif res["spec_version"] == current["spec_version"]:
        click.echo(f"{res['name']}: nothing to change")
    else:
        click.echo(res["id"])
    if not detach:
        _converge(ctx, [res["id"]], timeout, ctx.json)


def _apply_kv(mapping: dict, add, rm, what):
    out = dict(mapping)
    for key in rm:
        out.pop(key, None)
    out.update(_kv(add, what))
    return out


def update_networks(attached: list[dict], add, rm, network_id) -> list[dict]:
    """The service's networks after ``--network-rm`` then ``--network-add``
    (as Docker's: a network to remove must exist; one already attached
    cannot be added again, but may be removed and added back with other
    aliases in one update). ``network_id``: a network's id from its name,
    id or id prefix."""
    added = [parse_network(a, "--network-add") for a in add]
    gone = {network_id(r) for r in rm}
    out = [a for a in attached if a["target"] not in gone]
    have = {a["target"] for a in out}
    for att in added:
        nid = network_id(att["target"])
        if nid in have:
            raise click.ClickException(f"--network-add: the service is already on network "
                                       f"{att['target']}")
        out.append(dict(att, target=nid))
        have.add(nid)
    return out


def update_spec(spec: dict, o: dict, network_id=None) -> dict:
    """The new spec: ``spec`` (the stored one) with the flags in ``o``
    applied; ``network_id`` finds a network's id (see ``update_networks``)."""
    spec = copy.deepcopy(spec)
    task = spec["task"]
    c = task["container"]
    if o["image"]:
        c["image"] = o["image"]
    if o["args_"] is not None:
        c["args"] = shlex.split(o["args_"]) or None
    if o["entrypoint"] is not None:
        c["command"] = shlex.split(o["entrypoint"]) or None
    if o["replicas"] is not None:
        if spec["mode"] != "replicated":
            raise click.UsageError("--replicas applies only to replicated services")
        spec["replicas"] = o["replicas"]
    if o["env_add"] or o["env_rm"]:
        env = {e.partition("=")[0]: e for e in c["env"]}
        for key in o["env_rm"]:
            env.pop(key.partition("=")[0], None)
        for item in o["env_add"]:
            if "=" not in item:
                raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--env-add")
            env[item.partition("=")[0]] = item
        c["env"] = list(env.values())
    spec["labels"] = _apply_kv(spec["labels"], o["label_add"], o["label_rm"], "--label-add")
    c["labels"] = _apply_kv(c["labels"], o["container_label_add"], o["container_label_rm"],
                            "--container-label-add")
    ports = spec["endpoint"]["ports"]
    for item in o["publish_rm"]:
        num, _, proto = item.partition("/")
        ports = [p for p in ports if not (str(p["published"]) == num
                                          and p["protocol"] == (proto or "tcp"))]
    for item in o["publish_add"]:
        new = dict({"protocol": "tcp", "mode": "host"}, **parse_publish(item))
        ports = [p for p in ports if (p["published"], p["protocol"])
                 != (new["published"], new["protocol"])] + [new]
    spec["endpoint"]["ports"] = ports
    if o.get("endpoint_mode"):
        spec["endpoint"]["mode"] = o["endpoint_mode"]
    if o.get("network_add") or o.get("network_rm"):
        task["networks"] = update_networks(task.get("networks") or [], o["network_add"],
                                           o["network_rm"], network_id)
    placement = task["placement"]
    placement["constraints"] = [x for x in placement["constraints"] if x not in o["constraint_rm"]]
    placement["constraints"] += [x for x in o["constraint_add"]
                                 if x not in placement["constraints"]]
    c["mounts"] = [m for m in c["mounts"] if m["target"] not in o["mount_rm"]]
    c["mounts"] += [parse_mount(m) for m in o["mount_add"]]
    if o.get("depends_on_add") or o.get("depends_on_rm"):
        added = [parse_dependency(d, "--depends-on-add") for d in o["depends_on_add"]]
        gone = set(o["depends_on_rm"]) | {d["service"] for d in added}
        spec["depends_on"] = [d for d in spec.get("depends_on") or ()
                              if d["service"] not in gone] + added
    for kind, cpu, mem in (("limits", "limit_cpu", "limit_memory"),
                           ("reservations", "reserve_cpu", "reserve_memory")):
        if o[cpu] is not None:
            task["resources"][kind]["cpus"] = o[cpu]
        if o[mem] is not None:
            task["resources"][kind]["memory"] = o[mem]
    for key in ("condition", "delay", "max_attempts", "window"):
        if o[f"restart_{key}"] is not None:
            task["restart"][key] = o[f"restart_{key}"]
    form, timings = health_form(o), health_timings(o)
    if form == {"test": ["NONE"]}:
        c["healthcheck"] = form
    elif form is not None or timings:
        # a new form keeps the timings already set, as Docker's update does
        old = c.get("healthcheck")
        if not _own_healthcheck(old):
            if form is None:
                raise click.UsageError("the service has no healthcheck of its own to change: "
                                       "add --health-cmd, --health-http or --health-tcp")
            old = {}
        hc = {k: old[k] for k in HEALTH_TIMINGS if k in old}
        hc.update(form or {k: old[k] for k in ("test", "http", "tcp") if old.get(k) is not None})
        c["healthcheck"] = dict(hc, **timings)
    if o["stop_grace_period"] is not None:
        c["stop_grace_period"] = o["stop_grace_period"]
    for section in ("update", "rollback"):
        cfg = spec.setdefault(section, {})
        for key in ("parallelism", "delay", "failure_action", "monitor", "max_failure_ratio",
                    "order"):
            if o.get(f"{section}_{key}") is not None:
                cfg[key] = o[f"{section}_{key}"]
    if o["force"]:
        task["force_update"] = int(task.get("force_update") or 0) + 1
    return spec


@service.command("rollback")
@click.argument("ref")
@wait_options
@format_option
@click.pass_obj
def rollback(ctx, ref, detach, timeout):
    """Go back to the service's previous spec (with its rollback settings)."""
    res = call(ctx, "POST", f"/v1/services/{ref}/rollback")
    emit_json(res) if ctx.json else click.echo(res["id"])
    if not detach:
        _converge(ctx, [res["id"]], timeout, ctx.json, rollback=True)


@service.command("pause")
@click.argument("ref")
@click.pass_obj
def pause(ctx, ref):
    """Pause the service's rolling update (or rollback) after the batch under way."""
    res = call(ctx, "POST", f"/v1/services/{ref}/pause")
    click.echo(f"{res['name']}: {res['update_status']['state'].replace('_', ' ')}")


@service.command("resume")
@click.argument("ref")
@wait_options
@click.pass_obj
def resume(ctx, ref, detach, timeout):
    """Resume the service's paused rolling update (or rollback)."""
    res = call(ctx, "POST", f"/v1/services/{ref}/resume")
    click.echo(f"{res['name']}: {res['update_status']['state'].replace('_', ' ')}")
    if not detach:
        _converge(ctx, [res["id"]], timeout,
                  rollback=res["update_status"]["state"].startswith("rollback"))


@service.command("rm")
@click.argument("refs", nargs=-1, required=True)
@wait_options
@click.pass_obj
def rm(ctx, refs, detach, timeout):
    """Remove services; waits until their containers are stopped and removed."""
    ids = []
    for ref in refs:
        sid = call(ctx, "DELETE", f"/v1/services/{ref}")["id"]
        ids.append(sid)
        click.echo(ref)
    if not detach:
        progress.removed(ctx, ids, timeout)


@click.group()
def task():
    """Inspect tasks."""


@task.command("ls")
@click.option("--service", "service_ref", help="Only this service's tasks.")
@click.option("--node", help="Only tasks on this node.")
@click.option("--desired", help="Only tasks with this desired state (e.g. running).")
@format_option
@click.option("-q", "--quiet", is_flag=True)
@click.pass_obj
def task_ls(ctx, service_ref, node, desired, quiet):
    """List tasks."""
    params = {"service": service_ref, "node": node, "desired": desired}
    print_tasks(ctx, call(ctx, "GET", "/v1/tasks", params=params), quiet)


@task.command("inspect")
@click.argument("task_id")
@click.pass_obj
def task_inspect(ctx, task_id):
    """Show a task as JSON."""
    emit_json(call(ctx, "GET", f"/v1/tasks/{task_id}"))


service.add_command(service_logs)
