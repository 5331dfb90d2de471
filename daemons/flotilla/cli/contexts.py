"""Saved contexts: a name for a cluster's manager addresses and the admin
client bundle to reach them (``flotilla context``).

Layout under ``$FLOTILLA_CONFIG_DIR`` (default ``~/.config/flotilla``)::

    config.json                      {"current": "prod"}
    contexts/<name>/context.json     {"name", "host", "description"}
    contexts/<name>/{ca,cert,key}.pem  copies of the admin bundle (0600)

Every file is written to a temporary name and renamed into place.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile

import click

from .output import emit_json, table

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
BUNDLE = ("ca.pem", "cert.pem", "key.pem")
DEFAULT = "default"


def config_dir() -> str:
    return os.environ.get("FLOTILLA_CONFIG_DIR") or os.path.join(
        os.path.expanduser("~"), ".config", "flotilla")


def _context_dir(name: str) -> str:
    return os.path.join(config_dir(), "contexts", name)


def _write(path: str, data: bytes, mode: int = 0o600) -> None:
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _read_json(path: str, default):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        return default
    except (OSError, ValueError) as exc:
        raise click.ClickException(f"cannot read {path}: {exc}") from None


def current_name() -> str:
    return _read_json(os.path.join(config_dir(), "config.json"), {}).get("current") or DEFAULT


def load(name: str) -> dict:
    """A saved context: {"name", "host", "description", "tls_dir"}."""
    if not NAME.match(name or ""):
        raise click.ClickException(f"invalid context name {name!r}")
    meta = _read_json(os.path.join(_context_dir(name), "context.json"), None)
    if meta is None:
        raise click.ClickException(f"context {name} does not exist (see 'flotilla context ls')")
    return dict(meta, tls_dir=_context_dir(name))


def all_contexts() -> list[dict]:
    root = os.path.join(config_dir(), "contexts")
    names = sorted(os.listdir(root)) if os.path.isdir(root) else []
    out = []
    for name in names:
        if NAME.match(name) and os.path.isfile(os.path.join(root, name, "context.json")):
            out.append(load(name))
    return out


@click.group()
def context():
    """Manage saved cluster contexts (addresses and admin credentials)."""


@context.command("create")
@click.argument("name")
@click.option("--host", "-H", "host", required=True, metavar="ADDR[,ADDR...]",
              help="Manager API address(es) host:port.")
@click.option("--tls-dir", required=True, type=click.Path(file_okay=False, exists=True),
              help="Admin client bundle (ca.pem, cert.pem, key.pem) to copy into the context.")
@click.option("--description", default="", help="Free text shown by 'context ls'.")
@click.option("--use", "use_it", is_flag=True, help="Make it the current context.")
def create(name, host, tls_dir, description, use_it):
    """Save a context NAME for a cluster."""
    if not NAME.match(name) or name == DEFAULT:
        raise click.ClickException(f"invalid context name {name!r} "
                                   f"(letters, digits, '_', '.', '-'; not {DEFAULT!r})")
    if os.path.exists(os.path.join(_context_dir(name), "context.json")):
        raise click.ClickException(f"context {name} already exists")
    for f in BUNDLE:
        if not os.path.isfile(os.path.join(tls_dir, f)):
            raise click.ClickException(f"{tls_dir} has no {f} (expected ca.pem, cert.pem, key.pem)")
    for f in BUNDLE:
        with open(os.path.join(tls_dir, f), "rb") as src:
            _write(os.path.join(_context_dir(name), f), src.read())
    meta = {"name": name, "host": host, "description": description}
    _write(os.path.join(_context_dir(name), "context.json"), json.dumps(meta, indent=2).encode())
    if use_it:
        _set_current(name)
    click.echo(name)


def _set_current(name: str) -> None:
    path = os.path.join(config_dir(), "config.json")
    cfg = _read_json(path, {})
    cfg["current"] = name
    _write(path, json.dumps(cfg, indent=2).encode())


@context.command("use")
@click.argument("name")
def use(name):
    """Make NAME the current context ('default' for none)."""
    if name != DEFAULT:
        load(name)
    _set_current(name)
    click.echo(f"Current context is now {name}")


@context.command("ls")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default=None)
@click.option("-q", "--quiet", is_flag=True, help="Only names.")
@click.pass_context
def ls(cctx, fmt, quiet):
    """List contexts."""
    current = current_name()
    items = [dict(c, current=c["name"] == current) for c in all_contexts()]
    fmt = fmt or cctx.find_root().params.get("fmt") or "table"
    if quiet:
        for c in items:
            click.echo(c["name"])
    elif fmt == "json":
        emit_json(items)
    else:
        rows = [{"name": DEFAULT + (" *" if current == DEFAULT else ""), "host": "FLOTILLA_HOST or "
                 "the local control socket", "description": "Built-in"}]
        rows += [dict(c, name=c["name"] + (" *" if c["current"] else "")) for c in items]
        table(rows, [("NAME", "name"), ("HOST", "host"), ("DESCRIPTION", "description")])


@context.command("inspect")
@click.argument("names", nargs=-1)
def inspect(names):
    """Show contexts (the current one by default) as JSON."""
    names = names or (current_name(),)
    emit_json([load(n) for n in names])


@context.command("rm")
@click.argument("names", nargs=-1, required=True)
def rm(names):
    """Remove contexts."""
    for name in names:
        load(name)
        shutil.rmtree(_context_dir(name))
        if current_name() == name:
            _set_current(DEFAULT)
        click.echo(name)
