"""``flotilla completion SHELL``: print the shell completion script."""

from __future__ import annotations

import click
from click.shell_completion import CompletionItem, get_completion_class


@click.command("completion")
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
@click.pass_context
def completion(ctx, shell):
    """Print the completion script for SHELL.

    \b
    bash:  source <(flotilla completion bash)
    zsh:   source <(flotilla completion zsh)
    fish:  flotilla completion fish | source
    """
    cls = get_completion_class(shell)
    root = ctx.find_root()
    comp = cls(root.command, {}, root.info_name or "flotilla", "_FLOTILLA_COMPLETE")
    click.echo(comp.source())


def _names(ctx: click.Context, path: str) -> list[str]:
    """The names the API lists at ``path``, for completing an argument: the
    cluster found from the command line as far as it is typed (``--host``,
    ``--context``, ...); nothing if it cannot be reached at once."""
    from .context import Context

    params = ctx.find_root().params
    try:
        client = Context(params.get("host"), params.get("tls_dir"), "table",
                         params.get("context_name")).client()
        client.timeout, client.retry_for = 3, 0
        return [item["name"] for item in client.request("GET", path)]
    except Exception:       # completion never prints an error
        return []


def complete_networks(ctx: click.Context, _param, incomplete: str) -> list[CompletionItem]:
    """Network names; after ``name=`` too (``--network name=NET,alias=...``)."""
    prefix = "name=" if incomplete.startswith("name=") else ""
    if "=" in incomplete[len(prefix):] or "," in incomplete:
        return []
    return [CompletionItem(prefix + name) for name in _names(ctx, "/v1/networks")
            if (prefix + name).startswith(incomplete)]
