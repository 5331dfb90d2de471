"""``flotilla``: the one command for nodes and operators."""

from __future__ import annotations

import importlib
import logging
import sys

import click

from .. import __version__
from .context import Context

# Each command's module is imported when the command runs (or help lists
# it): ``flotilla node run`` does not load the Compose translator, and
# ``flotilla service ls`` not the node's daemon.
COMMANDS = {
    "node": "node:node",
    "cluster": "cluster:cluster",
    "config": "config:config",
    "network": "network:network",
    "service": "service:service",
    "task": "service:task",
    "stack": "stack:stack",
    "context": "contexts:context",
    "completion": "completion:completion",
    "events": "events:events",
}


class LazyGroup(click.Group):
    """A group whose commands are ``module:attribute`` paths under this package."""

    def __init__(self, *args, lazy: dict[str, str] | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = dict(lazy or {})

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(self.lazy))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.lazy and cmd_name not in self.commands:
            module, _, attr = self.lazy[cmd_name].partition(":")
            command = getattr(importlib.import_module(f"{__package__}.{module}"), attr)
            self.add_command(command, cmd_name)
        return super().get_command(ctx, cmd_name)


@click.group(cls=LazyGroup, lazy=COMMANDS,
             context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", "-v", prog_name="flotilla",
                      message="%(prog)s version %(version)s")
@click.option("--host", "-H", envvar="FLOTILLA_HOST", metavar="ADDR[,ADDR...]",
              help="Manager API address(es) host:port, or unix:///path/control.sock.")
@click.option("--tls-dir", envvar="FLOTILLA_TLS_DIR", metavar="DIR",
              type=click.Path(file_okay=False),
              help="Client bundle directory with ca.pem, cert.pem and key.pem.")
@click.option("--context", "context_name", envvar="FLOTILLA_CONTEXT", metavar="NAME",
              help="Saved context to use (see 'flotilla context'); default: the current one.")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table",
              show_default=True, help="Output format.")
@click.pass_context
def cli(ctx, host, tls_dir, context_name, fmt):
    """Flotilla: a small, secure, durable container orchestrator."""
    ctx.obj = Context(host, tls_dir, fmt, context_name)


def main(argv=None):
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    try:
        return cli.main(args=argv, prog_name="flotilla", standalone_mode=True)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
