"""Child processes that do not outlive their parent."""

from __future__ import annotations

import ctypes
import signal
from typing import Any, Callable

PR_SET_PDEATHSIG = 1

# Looked up once, at import: a process forked from a threaded one must not
# load a library (another thread may have held the loader's lock).
_prctl: Callable[..., Any] | None
try:
    _prctl = ctypes.CDLL("libc.so.6", use_errno=True).prctl
except (OSError, AttributeError):
    _prctl = None


def die_with_parent():
    """Linux: get SIGKILL when the parent process (strictly: the thread
    that forked this one) dies, so no orphan is left."""
    if _prctl is not None:
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
