"""Logging setup shared by the daemons: one line per record on stderr."""

from __future__ import annotations

import logging
import sys


def setup(level: str = "info", component: str = "node") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(
        f"%(asctime)s {component}[%(process)d] %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    logging.getLogger("urllib3").setLevel(logging.WARNING)
    logging.getLogger("pysyncobj").setLevel(logging.WARNING)
