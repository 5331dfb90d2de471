"""Interpolation: ``${VAR}`` and its forms in Compose values, and env
files."""

from __future__ import annotations

import re

from ...model.names import ENV_KEY
from .yamlpos import Map, Mark, Override, Seq, join_path

_VAR = re.compile(r"[_A-Za-z][_A-Za-z0-9]*")
_BRACED = re.compile(r"([_A-Za-z][_A-Za-z0-9]*)(?:(:?[-?+])(.*))?\Z", re.S)


class _Bad(Exception):
    pass


class Interpolator:
    """``$VAR``, ``${VAR}``, ``${VAR:-default}``, ``${VAR-default}``,
    ``${VAR:?error}``, ``${VAR?error}``, ``${VAR:+alt}``, ``${VAR+alt}`` and
    ``$$`` for a literal ``$``, as Compose does. Defaults may nest."""

    def __init__(self, env: dict, errors: list[str], warnings: list[str]):
        self.env = env
        self.errors = errors
        self.warnings = warnings
        self._mark = None
        self._warned: set[str] = set()

    def value(self, v, mark, path: str):
        if isinstance(v, Override):
            return Override(self.value(v.value, mark, path), v.mark)
        if isinstance(v, Map):
            return Map(((k, self.value(x, v.at(k), join_path(path, k))) for k, x in v.items()),
                       v.mark, v.marks)
        if isinstance(v, Seq):
            return Seq((self.value(x, v.at(i), f"{path}[{i}]") for i, x in enumerate(v)),
                       v.mark, v.marks)
        if isinstance(v, str) and "$" in v:
            try:
                return self.text(v, mark)
            except _Bad as exc:
                self.errors.append(f"{mark}: {path}: {exc}")
        return v

    def text(self, s: str, mark=None) -> str:
        self._mark = mark
        out, i, n = [], 0, len(s)
        while i < n:
            j = s.find("$", i)
            if j < 0:
                out.append(s[i:])
                break
            out.append(s[i:j])
            nxt = s[j + 1:j + 2]
            if nxt == "$":
                out.append("$")
                i = j + 2
            elif nxt == "{":
                end = self._close(s, j + 2)
                out.append(self._braced(s[j + 2:end], s))
                i = end + 1
            else:
                m = _VAR.match(s, j + 1)
                if not m:
                    raise _Bad(f"invalid interpolation format in {s!r}: write $$ for a literal $")
                out.append(self._get(m.group(0)))
                i = m.end()
        return "".join(out)

    @staticmethod
    def _close(s: str, i: int) -> int:
        depth = 1
        while i < len(s):
            if s.startswith("$$", i):
                i += 2
                continue
            if s.startswith("${", i):
                depth += 1
                i += 2
                continue
            if s[i] == "}":
                depth -= 1
                if depth == 0:
                    return i
            i += 1
        raise _Bad(f"invalid interpolation format in {s!r}: unclosed ${{")

    def _braced(self, expr: str, whole: str) -> str:
        m = _BRACED.match(expr)
        if not m:
            raise _Bad(f"invalid interpolation format ${{{expr}}} in {whole!r}")
        name, op, word = m.groups()
        if op is None:
            return self._get(name)
        val = self.env.get(name)
        if op.startswith(":") and val == "":
            val = None      # ":-", ":+" and ":?" take an empty value as unset
        kind = op[-1]
        if kind == "-":
            return self.text(word, self._mark) if val is None else val
        if kind == "+":
            return "" if val is None else self.text(word, self._mark)
        if val is None:   # "?"
            reason = self.text(word, self._mark) if word else ""
            raise _Bad(f"required variable {name} is missing a value"
                       + (f": {reason}" if reason else ""))
        return val

    def _get(self, name: str) -> str:
        val = self.env.get(name)
        if val is None:
            if name not in self._warned:
                self._warned.add(name)
                where = f"{self._mark}: " if self._mark else ""
                self.warnings.append(f"{where}variable {name} is not set, "
                                     "defaulting to a blank string")
            return ""
        return val


def read_env_file(path: str, env: dict | None = None, problems: list | None = None,
                  warnings: list | None = None) -> dict:
    """KEY=VALUE lines; blank lines and ``#`` comments skipped; an optional
    ``export``; values may be quoted ('single' is literal, "double" and bare
    values are interpolated); a bare KEY takes its value from ``env``.
    Returns KEY -> value (None for a bare KEY missing from ``env``)."""
    problems = problems if problems is not None else []
    env = dict(env or {})
    with open(path, "rb") as f:
        data = f.read()
    out: dict = {}
    interp = Interpolator(env, problems, warnings if warnings is not None else [])
    for n, encoded in enumerate(data.splitlines(), 1):
        try:
            raw = encoded.decode("utf-8")
        except UnicodeDecodeError as exc:
            key = encoded.partition(b"=")[0].strip().decode("utf-8", "replace")
            key = key[7:].lstrip() if key.startswith("export ") else key
            where = f"{key[:60]}: " if ENV_KEY.match(key) else ""
            problems.append(f"{path}:{n}: {where}the file is not UTF-8 "
                            f"(byte 0x{encoded[exc.start]:02x}); save it as UTF-8")
            continue
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[7:].lstrip()
        key, sep, val = line.partition("=")
        key = key.strip()
        if not ENV_KEY.match(key):
            problems.append(f"{path}:{n}: invalid line {raw[:60]!r} (expected KEY=VALUE)")
            continue
        if not sep:
            out[key] = env.get(key)
            continue
        val = val.strip()
        if len(val) >= 2 and val[0] == val[-1] == "'":
            val = val[1:-1]
        else:
            if len(val) >= 2 and val[0] == val[-1] == '"':
                val = (val[1:-1].replace("\\n", "\n").replace('\\"', '"').replace("\\\\", "\\"))
            else:
                val = re.split(r"\s+#", val, maxsplit=1)[0]
            try:
                val = interp.text(val, Mark(path, n))
            except _Bad as exc:
                problems.append(f"{path}:{n}: {exc}")
                continue
        out[key] = val
        env[key] = val
    return out
