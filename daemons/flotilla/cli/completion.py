"""``flotilla completion SHELL``: print the shell completion script."""

from __future__ import annotations

import click
from click.shell_completion import get_completion_class


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
