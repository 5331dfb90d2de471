"""Durations ("90s", "5m", "2h30m", "90d", or plain seconds) and their display."""

from __future__ import annotations

import math
import re

_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")


def parse_duration(value) -> float:
    """Seconds from a number or a string such as '60s', '1h30m', '90d'."""
    if isinstance(value, bool):
        raise ValueError("not a duration")
    if isinstance(value, (int, float)):
        if not math.isfinite(value):
            raise ValueError("duration must be a finite number")
        if value < 0:
            raise ValueError("duration must not be negative")
        return float(value)
    if not isinstance(value, str):
        raise ValueError("not a duration")
    text = value.strip().lower()
    if not text:
        raise ValueError("empty duration")
    try:
        seconds = float(text)
    except ValueError:
        pos = 0
        seconds = 0.0
        for m in _PART.finditer(text):
            if m.start() != pos:
                break
            seconds += float(m.group(1)) * _UNITS[m.group(2)]
            pos = m.end()
        if pos != len(text) or pos == 0:
            raise ValueError(
                f"invalid duration {value[:40]!r} (use e.g. 90s, 5m, 2h, 90d)") from None
    if not math.isfinite(seconds):   # "nan", "inf", or beyond 1e308
        raise ValueError(f"invalid duration {value[:40]!r} (use e.g. 90s, 5m, 2h, 90d)")
    if seconds < 0:
        raise ValueError("duration must not be negative")
    return seconds


def format_duration(seconds: float) -> str:
    seconds = float(seconds)
    if seconds < 1 and seconds > 0:
        return f"{int(round(seconds * 1000))}ms"
    s = int(round(seconds))
    out = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if s >= size:
            out.append(f"{s // size}{unit}")
            s %= size
    return "".join(out) or "0s"


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "k": 1024, "m": 1024 ** 2, "g": 1024 ** 3, "t": 1024 ** 4}


def parse_bytes(value) -> int:
    """Bytes from a number or a string such as '64M', '512MB', '1.5G', '2GiB'
    (binary multiples, as Docker uses for memory)."""
    if isinstance(value, bool):
        raise ValueError("not a size")
    if isinstance(value, (int, float)):
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError("size must be a finite number")
        if value < 0:
            raise ValueError("size must not be negative")
        return int(value)
    if not isinstance(value, str):
        raise ValueError("not a size")
    m = _SIZE.match(value)
    if not m:
        raise ValueError(f"invalid size {value[:40]!r} (use e.g. 64M, 512MB, 1G)")
    n = float(m.group(1)) * _SIZE_UNITS[m.group(2).lower()]
    if not math.isfinite(n):
        raise ValueError(f"size {value[:40]!r} is too large")
    return int(n)


def format_bytes(n: int) -> str:
    n = int(n)
    for unit, size in (("GB", 1024 ** 3), ("MB", 1024 ** 2), ("KB", 1024)):
        if n >= size:
            v = n / size
            return f"{v:.0f} {unit}" if v == int(v) else f"{v:.1f} {unit}"
    return f"{n} B"
