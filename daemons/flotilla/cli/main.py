"""``flotilla``: the one command for nodes and operators."""

from __future__ import annotations

import logging
import sys

import click

from .. import __version__
from . import cluster, completion, config, contexts, network, node, service
from . import events, logs
from . import stack
from .context import Context


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
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


cli.add_command(node.node)
cli.add_command(cluster.cluster)
cli.add_command(config.config)
cli.add_command(network.network)
cli.add_command(service.service)
cli.add_command(service.task)
cli.add_command(stack.stack)
cli.add_command(contexts.context)
cli.add_command(completion.completion)
cli.add_command(events.events)
service.service.add_command(logs.logs)


def main(argv=None):
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    try:
        return cli.main(args=argv, prog_name="flotilla", standalone_mode=True)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
