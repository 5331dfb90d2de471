"""The one error of the Compose translator: every problem found, each a
``FILE:LINE: KEY.PATH: message`` line."""

from __future__ import annotations

NOT_SUPPORTED = "not supported by Flotilla"


class ComposeError(Exception):
    """One or more problems, each ``FILE:LINE: KEY.PATH: message``."""

    def __init__(self, errors: list[str]):
        super().__init__("\n".join(errors))
        self.errors = list(errors)
