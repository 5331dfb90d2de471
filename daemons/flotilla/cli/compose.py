"""Compose files as Flotilla stacks.

``load`` reads one or more Compose files (merged in order, as Compose merges
``-f`` files), interpolates ``${VAR}`` from the environment and remembers the
file and line of every key. ``translate`` turns the result into service specs
(plain dicts in the shape of ``flotilla.model.specs.ServiceSpec``) for one
stack: service ``web`` of stack ``shop`` becomes service ``shop_web``.

Anything Flotilla cannot honour is an error naming the file, the line and the
key path, e.g. ``compose.yml:14: services.web.network_mode: not supported by
Flotilla``. Nothing is silently dropped, and all errors are reported
together. This module does no network access; ``cli/stack.py`` sends the
specs.
"""

from __future__ import annotations

import os
import re
import shlex
from dataclasses import dataclass, field

import yaml
from yaml.composer import Composer
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, ScalarNode, SequenceNode
from yaml.parser import Parser
from yaml.reader import Reader
from yaml.resolver import BaseResolver
from yaml.scanner import Scanner

from ..common.units import parse_bytes, parse_duration

STACK_LABEL = "flotilla.stack.namespace"
STACK_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,40}$")
SERVICE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")

NOT_SUPPORTED = "not supported by Flotilla"


class ComposeError(Exception):
    """One or more problems, each ``FILE:LINE: KEY.PATH: message``."""

    def __init__(self, errors: list[str]):
        super().__init__("\n".join(errors))
        self.errors = list(errors)


# -- YAML with positions ---------------------------------------------------------------

@dataclass(frozen=True)
class Mark:
    file: str
    line: int

    def __str__(self):
        return f"{self.file}:{self.line}"


class Map(dict):
    """A YAML mapping that remembers where it and each of its keys are."""

    def __init__(self, items=(), mark: Mark | None = None, marks: dict | None = None):
        super().__init__(items)
        self.mark = mark
        self.marks = dict(marks or {})

    def at(self, key) -> Mark | None:
        return self.marks.get(key, self.mark)


class Seq(list):
    """A YAML sequence that remembers where it and each of its items are."""

    def __init__(self, items=(), mark: Mark | None = None, marks: list | None = None):
        super().__init__(items)
        self.mark = mark
        self.marks = list(marks or [])

    def at(self, index: int) -> Mark | None:
        return self.marks[index] if index < len(self.marks) else self.mark


class _Resolver(BaseResolver):
    """YAML 1.2 core schema, as Compose reads files: ``yes``/``no``/``on``/
    ``off`` are strings, ``22:22`` is not a base-60 number, dates are strings."""


_Resolver.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
_Resolver.add_implicit_resolver(
    "tag:yaml.org,2002:int", re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$"),
    list("-+0123456789"))
_Resolver.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
               r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+0123456789."))
_Resolver.add_implicit_resolver(
    "tag:yaml.org,2002:null", re.compile(r"^(?:~|null|Null|NULL|)$"), ["~", "n", "N", ""])
_Resolver.add_implicit_resolver("tag:yaml.org,2002:merge", re.compile(r"^(?:<<)$"), ["<"])


class _Loader(Reader, Scanner, Parser, Composer, SafeConstructor, _Resolver):
    def __init__(self, stream, filename: str):
        Reader.__init__(self, stream)
        Scanner.__init__(self)
        Parser.__init__(self)
        Composer.__init__(self)
        SafeConstructor.__init__(self)
        _Resolver.__init__(self)
        self.filename = filename
        self.problems: list[str] = []
        self.placed: list[tuple[Mark, str]] = []    # problems to name with their key path

    def mark_of(self, node) -> Mark:
        return Mark(self.filename, node.start_mark.line + 1)


class Reset:
    """A value tagged ``!reset``: the key is removed from what the earlier
    files (and this one) set; a later file may set it again."""

    def __init__(self, mark: Mark | None = None):
        self.mark = mark


class Override:
    """A value tagged ``!override``: it replaces what the earlier files set
    instead of being merged into it."""

    def __init__(self, value, mark: Mark | None = None):
        self.value = value
        self.mark = mark


def _construct_map(loader: _Loader, node):
    data = Map(mark=loader.mark_of(node))
    yield data
    seen = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, ScalarNode):
            continue
        if key_node.value in seen:
            loader.problems.append(f"{loader.mark_of(key_node)}: duplicate key {key_node.value!r}")
        seen.add(key_node.value)
    loader.flatten_mapping(node)      # merge keys (<<): merged entries first, own keys win
    for key_node, value_node in node.value:
        if not isinstance(key_node, ScalarNode):
            loader.problems.append(f"{loader.mark_of(key_node)}: keys must be plain strings")
            continue
        key = key_node.value
        data[key] = loader.construct_object(value_node, deep=True)
        data.marks[key] = loader.mark_of(key_node)


def _construct_seq(loader: _Loader, node):
    data = Seq(mark=loader.mark_of(node))
    yield data
    for child in node.value:
        data.append(loader.construct_object(child, deep=True))
        data.marks.append(loader.mark_of(child))


def _construct_int(loader: _Loader, node) -> int:
    text = loader.construct_scalar(node)
    sign = -1 if text.startswith("-") else 1
    text = text.lstrip("+-")
    if text.startswith("0o"):
        return sign * int(text[2:], 8)
    if text.startswith("0x"):
        return sign * int(text[2:], 16)
    return sign * int(text, 10)


def _construct_reset(loader: _Loader, node) -> Reset:
    return Reset(loader.mark_of(node))


def _construct_override(loader: _Loader, node) -> Override:
    """The value as if it had no tag, marked to replace."""
    if isinstance(node, ScalarNode):
        tag = loader.resolve(ScalarNode, node.value, (True, False)) if node.style is None \
            else "tag:yaml.org,2002:str"
        plain = ScalarNode(tag, node.value, node.start_mark, node.end_mark, node.style)
    elif isinstance(node, SequenceNode):
        plain = SequenceNode("tag:yaml.org,2002:seq", node.value, node.start_mark, node.end_mark,
                             node.flow_style)
    else:
        plain = MappingNode("tag:yaml.org,2002:map", node.value, node.start_mark, node.end_mark,
                            node.flow_style)
    return Override(loader.construct_object(plain, deep=True), loader.mark_of(node))


def _construct_unknown(loader: _Loader, node):
    tag = str(node.tag)
    if tag.startswith("tag:yaml.org,2002:"):
        tag = "!!" + tag[len("tag:yaml.org,2002:"):]
    loader.placed.append((loader.mark_of(node), f"unknown YAML tag {tag[:60]!r}: Compose "
                          "files take only !reset (remove what earlier files set) and !override "
                          "(replace it)"))
    return None


_Loader.add_constructor("tag:yaml.org,2002:map", _construct_map)
_Loader.add_constructor("tag:yaml.org,2002:seq", _construct_seq)
_Loader.add_constructor("tag:yaml.org,2002:int", _construct_int)
_Loader.add_constructor("!reset", _construct_reset)
_Loader.add_constructor("!override", _construct_override)
_Loader.add_constructor(None, _construct_unknown)

# A file nested deeper than this, or whose aliases expand to more values, is
# refused (no Compose file comes near; a few lines of aliases could otherwise
# expand to billions of values).
MAX_DEPTH = 64
MAX_VALUES = 200_000


def _children(v):
    if isinstance(v, Override):
        v = v.value
    if isinstance(v, dict):
        return [(k, x, v.at(k) if isinstance(v, Map) else None) for k, x in v.items()]
    if isinstance(v, list):
        return [(i, x, v.at(i) if isinstance(v, Seq) else None) for i, x in enumerate(v)]
    return []


def path_at(data, line: int, file: str) -> str:
    """The dotted path of the deepest key (or list item) of ``file`` written
    on ``line``, or "" (aliases are not followed twice)."""
    best, seen = "", set()
    stack = [(data, "")]
    while stack:
        cur, path = stack.pop()
        if id(cur) in seen:
            continue
        seen.add(id(cur))
        for key, child, mark in _children(cur):
            sub = f"{path}[{key}]" if isinstance(key, int) else _join(path, key)
            if mark is not None and mark.file == file and mark.line == line and \
                    sub.count(".") + sub.count("[") >= best.count(".") + best.count("["):
                best = sub
            stack.append((child, sub))
    return best


def _check_size(data: Map, path: str) -> None:
    count, stack = 0, [(data, 0, "", data.mark)]
    while stack:
        cur, depth, where, mark = stack.pop()
        count += 1
        problem = None
        if depth > MAX_DEPTH:
            problem = f"values are nested more than {MAX_DEPTH} levels deep"
        elif count > MAX_VALUES:
            problem = f"the file holds more than {MAX_VALUES} values once its aliases are expanded"
        if problem:
            raise ComposeError([f"{mark or path}: {where}: {problem}" if where
                                else f"{mark or path}: {problem}"])
        for key, child, at in _children(cur):
            sub = f"{where}[{key}]" if isinstance(key, int) else _join(where, key)
            stack.append((child, depth + 1, sub if depth < 8 else where, at or mark))


def _one_line(text) -> str:
    return " ".join(str(text).split())


def _parse(text: str, path: str):
    """(data, loader) of one YAML document; ComposeError if it is not YAML."""
    loader = None
    try:
        loader = _Loader(text, path)
        return loader.get_single_data(), loader
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        raise ComposeError([f"{path}:{line}: invalid YAML: "
                            f"{_one_line(exc.problem or exc.context)}"]) from None
    except yaml.reader.ReaderError as exc:
        # a control character: say where, as a line
        line = text.count("\n", 0, max(0, exc.position)) + 1
        char = exc.character
        char = char if isinstance(char, int) else ord(str(char)[:1] or "\0")
        raise ComposeError([f"{path}:{line}: invalid YAML: character U+{char:04X} is not "
                            "allowed (a control character other than tab and newline)"]) from None
    except yaml.YAMLError as exc:
        raise ComposeError([f"{path}: invalid YAML: {_one_line(exc)}"]) from None
    except RecursionError:
        line = loader.line + 1 if loader is not None else 1
        raise ComposeError([f"{path}:{line}: values are nested more than {MAX_DEPTH} levels "
                            "deep"]) from None
    finally:
        if loader is not None:
            loader.dispose()


def _not_utf8(raw: bytes, exc: UnicodeDecodeError, path: str) -> str:
    """Where a file stops being UTF-8: line, key and the bad byte."""
    line = raw.count(b"\n", 0, exc.start) + 1
    try:
        data, _ = _parse(raw.decode("utf-8", "replace"), path)
        key = path_at(data, line, path)
    except ComposeError:
        key = ""
    where = f"{path}:{line}: {key}: " if key else f"{path}:{line}: "
    return (f"{where}the file is not UTF-8 (byte 0x{raw[exc.start]:02x}); "
            "save it as UTF-8")


def _read_yaml(path: str):
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise ComposeError([f"{path}: cannot read: {exc.strerror or exc}"]) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ComposeError([_not_utf8(raw, exc, path)]) from None
    data, loader = _parse(text, path)
    problems = list(loader.problems)
    for mark, message in loader.placed:
        key = path_at(data, mark.line, path)
        problems.append(f"{mark}: {key}: {message}" if key else f"{mark}: {message}")
    if problems:
        raise ComposeError(problems)
    if data is None:
        raise ComposeError([f"{path}:1: the file is empty"])
    if not isinstance(data, Map):
        raise ComposeError([f"{path}:1: the top level must be a mapping"])
    _check_size(data, path)
    return data


# -- interpolation -----------------------------------------------------------------------

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
            return Map(((k, self.value(x, v.at(k), _join(path, k))) for k, x in v.items()),
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
        unset = val is None or (op.startswith(":") and val == "")
        kind = op[-1]
        if kind == "-":
            return self.text(word, self._mark) if unset else val
        if kind == "+":
            return "" if unset else self.text(word, self._mark)
        if unset:   # "?"
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


# -- loading and merging -----------------------------------------------------------------

@dataclass
class Project:
    """Compose files after interpolation and merging."""
    data: Map
    files: list[str]
    directory: str                      # absolute directory of the first file
    env: dict
    warnings: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)     # interpolation problems

    @property
    def name(self) -> str | None:
        name = self.data.get("name")
        return name if isinstance(name, str) and name else None


def load(paths: list[str], environ: dict | None = None) -> Project:
    """Read, interpolate and merge Compose files (later files override)."""
    if not paths:
        raise ComposeError(["no Compose file given"])
    directory = os.path.dirname(os.path.abspath(paths[0]))
    env = dict(os.environ if environ is None else environ)
    errors: list[str] = []          # unreadable files: nothing more can be said
    problems: list[str] = []        # interpolation: reported with the translation's errors
    warnings: list[str] = []
    dotenv = os.path.join(directory, ".env")
    if os.path.isfile(dotenv):
        try:
            values = read_env_file(dotenv, env, errors, warnings)
        except OSError as exc:
            errors.append(f"{dotenv}: cannot read: {exc.strerror or exc}")
            values = {}
        for key, val in values.items():
            if key not in env and val is not None:
                env[key] = val
    merged = None
    interp = Interpolator(env, problems, warnings)
    for path in paths:
        try:
            raw = _read_yaml(path)
        except ComposeError as exc:
            errors.extend(exc.errors)
            continue
        data = interp.value(raw, raw.mark, "")
        merged = _settle(data if merged is None else _merge(merged, data, ()))
    if errors:
        raise ComposeError(errors + problems)
    return Project(merged, list(paths), directory, env, warnings, problems)


def _volume_target(item):
    if isinstance(item, Map):
        target = item.get("target")
        return target if isinstance(target, str) else None
    if isinstance(item, str):
        parts = item.split(":")
        return parts[1] if len(parts) > 1 else parts[0]
    return None


def _as_map(v):
    """environment / labels in list form (KEY=VALUE) as a mapping, for merging."""
    if not isinstance(v, Seq) or not all(isinstance(x, str) for x in v):
        return v
    out = Map(mark=v.mark)
    for i, item in enumerate(v):
        key, sep, val = item.partition("=")
        out[key] = val if sep else None
        out.marks[key] = v.at(i)
    return out


def _as_seq(v):
    if isinstance(v, Seq):
        return v
    mark = getattr(v, "mark", None)
    return Seq([v], mark, [mark])


def _deps_map(v):
    if not isinstance(v, Seq):
        return v
    out = Map(mark=v.mark)
    for i, name in enumerate(v):
        if isinstance(name, str):
            out[name] = Map({"condition": "service_started"}, v.at(i), {"condition": v.at(i)})
            out.marks[name] = v.at(i)
    return out


def _concat(a, b, unique=True):
    if not (isinstance(a, Seq) and isinstance(b, Seq)):
        return b
    out = Seq(a, a.mark, a.marks)
    for i, item in enumerate(b):
        if unique and item in out:
            continue
        out.append(item)
        out.marks.append(b.at(i))
    return out


def _merge_volumes(a, b):
    if not (isinstance(a, Seq) and isinstance(b, Seq)):
        return b
    replaced = {_volume_target(x) for x in b}
    out = Seq(mark=a.mark)
    for i, item in enumerate(a):
        if _volume_target(item) not in replaced:
            out.append(item)
            out.marks.append(a.at(i))
    for i, item in enumerate(b):
        out.append(item)
        out.marks.append(b.at(i))
    return out


_MERGE_RULES = {
    ("services", "*", "environment"): lambda a, b: _merge(_as_map(a), _as_map(b), ()),
    ("services", "*", "labels"): lambda a, b: _merge(_as_map(a), _as_map(b), ()),
    ("services", "*", "deploy", "labels"): lambda a, b: _merge(_as_map(a), _as_map(b), ()),
    ("services", "*", "depends_on"): lambda a, b: _merge(_deps_map(a), _deps_map(b), ()),
    ("services", "*", "env_file"): lambda a, b: _concat(_as_seq(a), _as_seq(b)),
    ("services", "*", "ports"): _concat,
    ("services", "*", "volumes"): _merge_volumes,
    ("services", "*", "deploy", "placement", "constraints"): _concat,
    ("services", "*", "deploy", "placement", "preferences"): _concat,
    ("services", "*", "command"): lambda a, b: b,
    ("services", "*", "entrypoint"): lambda a, b: b,
}


def _settle(v):
    """The merge's result with the merge tags applied: keys (and list items)
    tagged ``!reset`` removed, ``!override`` values in place."""
    if isinstance(v, Override):
        v = v.value
    if isinstance(v, Map):
        out = Map(mark=v.mark)
        for key, x in v.items():
            if not isinstance(x, Reset):
                out[key] = _settle(x)
                out.marks[key] = v.at(key)
        return out
    if isinstance(v, Seq):
        out = Seq(mark=v.mark)
        for i, x in enumerate(v):
            if not isinstance(x, Reset):
                out.append(_settle(x))
                out.marks.append(v.at(i))
        return out
    return v


def _merge(a, b, path: tuple):
    """Compose's merge of a later file into an earlier one: mappings merge key
    by key, environment and labels by variable, volumes by target, ports and
    constraints are appended, anything else is replaced; a value tagged
    ``!override`` replaces, one tagged ``!reset`` removes (see ``_settle``)."""
    if isinstance(b, Override):
        return b.value
    if isinstance(b, Reset):
        return b
    pattern = ("services", "*") + path[2:] if len(path) >= 2 and path[0] == "services" else path
    rule = _MERGE_RULES.get(pattern)
    if rule is not None:
        return rule(a, b)
    if isinstance(a, Map) and isinstance(b, Map):
        out = Map(a, a.mark, a.marks)
        for key, value in b.items():
            out[key] = _merge(out[key], value, path + (key,)) if key in out else value
            out.marks[key] = b.at(key)
        return out
    return b


# -- translation -------------------------------------------------------------------------

def _join(path: str, key) -> str:
    return f"{path}.{key}" if path else str(key)


TOP_KEYS = {"version", "name", "services", "volumes"}
SERVICE_KEYS = {"image", "command", "entrypoint", "environment", "env_file", "labels", "ports",
                "volumes", "healthcheck", "deploy", "depends_on", "working_dir", "user",
                "hostname", "stop_grace_period", "stop_signal", "init"}
# Every other key of the Compose specification's service definition: named
# "not supported by Flotilla" (anything else is reported as an unknown key).
COMPOSE_SERVICE_KEYS = {
    "annotations", "attach", "blkio_config", "build", "cap_add", "cap_drop", "cgroup",
    "cgroup_parent", "configs", "container_name", "cpu_count", "cpu_percent", "cpu_period",
    "cpu_quota", "cpu_rt_period", "cpu_rt_runtime", "cpu_shares", "cpus", "cpuset",
    "credential_spec", "develop", "device_cgroup_rules", "devices", "dns", "dns_opt",
    "dns_search", "domainname", "driver_opts", "expose", "extends", "external_links",
    "extra_hosts", "gpus", "group_add", "ipc", "isolation", "label_file", "links", "logging",
    "mac_address", "mem_limit", "mem_reservation", "mem_swappiness", "memswap_limit", "models",
    "network_mode", "networks", "oom_kill_disable", "oom_score_adj", "pid", "pids_limit",
    "platform", "post_start", "pre_stop", "privileged", "profiles", "provider", "pull_policy",
    "read_only", "restart", "runtime", "scale", "secrets", "security_opt", "shm_size",
    "stdin_open", "storage_opt", "sysctls", "tmpfs", "tty", "ulimits", "use_api_socket",
    "userns_mode", "uts", "volumes_from",
}
_NETWORKS = (f"{NOT_SUPPORTED}: there are no stack networks; containers use the engine's "
             "default network and reach each other through published ports")
SERVICE_HINTS = {
    "build": f"{NOT_SUPPORTED}: build and push the image first, then name it with image",
    "restart": f"{NOT_SUPPORTED}: use deploy.restart_policy",
    "scale": f"{NOT_SUPPORTED}: use deploy.replicas",
    "container_name": f"{NOT_SUPPORTED}: containers are named after their service and task",
    "networks": _NETWORKS, "network_mode": _NETWORKS, "links": _NETWORKS,
    "external_links": _NETWORKS,
    "cpus": f"{NOT_SUPPORTED}: use deploy.resources.limits.cpus",
    "mem_limit": f"{NOT_SUPPORTED}: use deploy.resources.limits.memory",
    "mem_reservation": f"{NOT_SUPPORTED}: use deploy.resources.reservations.memory",
    "tmpfs": f"{NOT_SUPPORTED}: use a volume with type: tmpfs",
}
TOP_HINTS = {"networks": _NETWORKS}
DEPLOY_KEYS = {"mode", "replicas", "labels", "resources", "placement", "restart_policy",
               "update_config", "rollback_config"}
DEPLOY_HINTS = {"endpoint_mode": f"{NOT_SUPPORTED}: there is no virtual IP or DNS round robin; "
                                 "ports are published on the nodes running the tasks"}
UPDATE_KEYS = {"parallelism", "delay", "failure_action", "monitor", "max_failure_ratio", "order"}
CONDITIONS = {"service_started": "started", "service_healthy": "healthy",
              "service_completed_successfully": "completed"}


@dataclass
class _Origin:
    """Where each part of a spec came from, to place validation errors."""
    service_path: str
    service_mark: Mark
    parts: dict = field(default_factory=dict)
    exact: dict = field(default_factory=dict)

    def add(self, spec_path: tuple, path: str, mark, exact: bool = False):
        (self.exact if exact else self.parts)[spec_path] = (path, mark)

    def find(self, loc: tuple):
        if tuple(loc) in self.exact:
            return self.exact[tuple(loc)]
        for n in range(len(loc), 0, -1):
            hit = self.parts.get(tuple(loc[:n]))
            if hit is not None:
                return hit
        return self.service_path, self.service_mark


class _Translator:
    def __init__(self, project: Project, stack: str):
        self.project = project
        self.stack = stack
        self.errors: list[str] = []
        self.volumes: dict[str, str] = {}

    # -- helpers ------------------------------------------------------------------------
    def err(self, mark, path: str, message: str):
        self.errors.append(f"{mark}: {path}: {message}" if path else f"{mark}: {message}")

    def keys(self, m: Map, path: str, allowed, hints=None, known=None) -> None:
        for key in m:
            if key in allowed or key.startswith("x-"):
                continue
            message = (hints or {}).get(key)
            if message is None:
                message = NOT_SUPPORTED if known is None or key in known else \
                    "unknown key (not part of the Compose specification)"
            self.err(m.at(key), _join(path, key), message)

    def mapping(self, v, mark, path) -> Map | None:
        if v is None:
            return Map(mark=mark)
        if not isinstance(v, Map):
            self.err(mark, path, "must be a mapping")
            return None
        return v

    def string(self, v, mark, path):
        if v is None or isinstance(v, (Map, Seq)):
            self.err(mark, path, "must be a string")
            return None
        if isinstance(v, bool):
            return "true" if v else "false"
        return str(v)

    def integer(self, v, mark, path):
        if isinstance(v, int) and not isinstance(v, bool):
            return v
        if isinstance(v, str) and re.fullmatch(r"[-+]?\d+", v.strip()):
            return int(v)
        self.err(mark, path, "must be an integer")
        return None

    def number(self, v, mark, path):
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return float(v)
        if isinstance(v, str):
            try:
                return float(v)
            except ValueError:
                pass
        self.err(mark, path, "must be a number")
        return None

    def boolean(self, v, mark, path):
        if isinstance(v, bool):
            return v
        if isinstance(v, str) and v.strip().lower() in ("true", "false"):
            return v.strip().lower() == "true"
        self.err(mark, path, "must be true or false")
        return None

    def duration(self, v, mark, path):
        try:
            return parse_duration(v)
        except ValueError as exc:
            self.err(mark, path, str(exc) if isinstance(v, str)
                     else "must be a duration such as 10s or 1m30s")
            return None

    def size(self, v, mark, path):
        try:
            return parse_bytes(v)
        except ValueError as exc:
            self.err(mark, path, str(exc) if isinstance(v, str)
                     else "must be a size such as 512M or 1G")
            return None

    def strings(self, v, mark, path) -> list[str] | None:
        if not isinstance(v, Seq):
            self.err(mark, path, "must be a list")
            return None
        out = [self.string(x, v.at(i), f"{path}[{i}]") for i, x in enumerate(v)]
        return None if None in out else out

    def words(self, v, mark, path) -> list[str] | None:
        """A command: a string split like a shell does, or a list."""
        if isinstance(v, str):
            try:
                return shlex.split(v)
            except ValueError as exc:
                self.err(mark, path, f"cannot split {v!r}: {exc}")
                return None
        if isinstance(v, Seq):
            return self.strings(v, mark, path)
        self.err(mark, path, "must be a string or a list")
        return None

    def pairs(self, v, mark, path, null_from_env: bool) -> dict | None:
        """environment / labels: KEY=VALUE list or mapping."""
        out = {}
        if isinstance(v, Seq):
            for i, item in enumerate(v):
                text = self.string(item, v.at(i), f"{path}[{i}]")
                if text is None:
                    continue
                key, sep, val = text.partition("=")
                if sep:
                    out[key] = val
                elif null_from_env:
                    if key in self.project.env:
                        out[key] = self.project.env[key]
                else:
                    out[key] = ""
            return out
        if isinstance(v, Map):
            for key, val in v.items():
                if val is None:
                    if null_from_env:
                        if key in self.project.env:
                            out[key] = self.project.env[key]
                    else:
                        out[key] = ""
                else:
                    text = self.string(val, v.at(key), _join(path, key))
                    if text is not None:
                        out[key] = text
            return out
        self.err(mark, path, "must be a list of KEY=VALUE or a mapping")
        return None

    # -- top level ------------------------------------------------------------------------
    def run(self) -> list[dict]:
        data = self.project.data
        if not STACK_NAME.match(self.stack):
            self.errors.append(f"invalid stack name {self.stack!r}: use up to 41 letters, digits, "
                               "'_' or '-', starting with a letter or digit")
            return []
        self.keys(data, "", TOP_KEYS, TOP_HINTS)
        self.top_volumes(data)
        services = data.get("services")
        if not isinstance(services, Map) or not services:
            self.err(data.at("services") if "services" in data else data.mark, "services",
                     "no services defined" if not services else "must be a mapping")
            return []
        specs, marks = [], {}
        for name, svc in services.items():
            spec = self.service(name, svc, services.at(name), services)
            if spec is not None:
                specs.append(spec)
                marks[spec["name"]] = services.at(name)
        return self.ordered(specs, marks)

    def top_volumes(self, data: Map):
        vols = data.get("volumes")
        if vols is None:
            return
        if not isinstance(vols, Map):
            self.err(data.at("volumes"), "volumes", "must be a mapping")
            return
        for key, conf in vols.items():
            path, mark = f"volumes.{key}", vols.at(key)
            actual = f"{self.stack}_{key}"
            conf = self.mapping(conf, mark, path)
            if conf is None:
                continue
            self.keys(conf, path, {"external", "name"},
                      {k: f"{NOT_SUPPORTED}: volumes are local to each node and use the "
                          "engine's default driver" for k in ("driver", "driver_opts", "labels")})
            external = self.boolean(conf["external"], conf.at("external"), f"{path}.external") \
                if "external" in conf else False
            if "name" in conf:
                actual = self.string(conf["name"], conf.at("name"), f"{path}.name") or actual
            elif external:
                actual = key
            self.volumes[key] = actual

    def ordered(self, specs: list[dict], marks: dict) -> list[dict]:
        """Dependencies first (file order otherwise); a cycle is an error."""
        by_name = {s["name"]: s for s in specs}
        out, state = [], {}

        def visit(name, trail):
            if state.get(name) == "done":
                return
            if state.get(name) == "visiting":
                cycle = trail[trail.index(name):] + [name]
                short = [n[len(self.stack) + 1:] for n in cycle]
                self.err(marks[name], f"services.{short[0]}.depends_on",
                         "dependency cycle: " + " -> ".join(short))
                return
            state[name] = "visiting"
            for dep in by_name[name].get("depends_on", []):
                if dep["service"] in by_name:
                    visit(dep["service"], trail + [name])
            state[name] = "done"
            out.append(by_name[name])

        for s in specs:
            visit(s["name"], [])
        return out

    # -- one service ----------------------------------------------------------------------
    def service(self, name: str, svc, mark, services: Map) -> dict | None:
        path = f"services.{name}"
        first_error = len(self.errors)
        svc = self.mapping(svc, mark, path)
        if svc is None:
            return None
        self.keys(svc, path, SERVICE_KEYS, SERVICE_HINTS, COMPOSE_SERVICE_KEYS)
        full = f"{self.stack}_{name}"
        if not SERVICE_NAME.match(full):
            self.err(mark, path, f"service name {full} must be 1-63 characters: letters, digits, "
                     "'_', '.', '-'")
        origin = _Origin(path, mark)
        at = svc.at

        def sub(key):
            return _join(path, key)

        container: dict = {}
        if "image" not in svc or svc["image"] in (None, ""):
            self.err(at("image") if "image" in svc else mark, sub("image"),
                     "required: Flotilla runs images (build is not supported)")
        else:
            container["image"] = self.string(svc["image"], at("image"), sub("image"))
            origin.add(("task", "container", "image"), sub("image"), at("image"))
        for key, target in (("entrypoint", "command"), ("command", "args")):
            if svc.get(key) is not None:
                words = self.words(svc[key], at(key), sub(key))
                if words is not None:
                    container[target] = words
                    origin.add(("task", "container", target), sub(key), at(key))
        env = self.environment(svc, path)
        if env:
            container["env"] = [f"{k}={v}" for k, v in env.items()]
            key = "environment" if "environment" in svc else "env_file"
            origin.add(("task", "container", "env"), sub(key), at(key))
            self.env_origins(list(env), svc.get("environment"), sub("environment"), origin)
        labels = {}
        if svc.get("labels") is not None:
            labels = self.pairs(svc["labels"], at("labels"), sub("labels"), False) or {}
            self.reserved(labels, at("labels"), sub("labels"))
            origin.add(("task", "container", "labels"), sub("labels"), at("labels"))
        container["labels"] = {**labels, STACK_LABEL: self.stack}
        for key, target in (("working_dir", "workdir"), ("user", "user"), ("hostname", "hostname"),
                            ("stop_signal", "stop_signal")):
            if svc.get(key) is not None:
                container[target] = self.string(svc[key], at(key), sub(key))
                origin.add(("task", "container", target), sub(key), at(key))
        if svc.get("stop_grace_period") is not None:
            container["stop_grace_period"] = self.duration(svc["stop_grace_period"],
                                                           at("stop_grace_period"),
                                                           sub("stop_grace_period"))
            origin.add(("task", "container", "stop_grace_period"), sub("stop_grace_period"),
                       at("stop_grace_period"))
        if svc.get("init") is not None:
            container["init"] = self.boolean(svc["init"], at("init"), sub("init"))
        if svc.get("volumes") is not None:
            mounts = self.mounts(svc["volumes"], at("volumes"), sub("volumes"), origin)
            if mounts:
                container["mounts"] = mounts
        if svc.get("healthcheck") is not None:
            hc = self.healthcheck(svc["healthcheck"], at("healthcheck"), sub("healthcheck"), origin)
            if hc is not None:
                container["healthcheck"] = hc

        spec: dict = {"name": full, "labels": {STACK_LABEL: self.stack}}
        task: dict = {"container": container}
        if svc.get("deploy") is not None:
            self.deploy(svc["deploy"], at("deploy"), sub("deploy"), spec, task, origin)
        spec["task"] = task
        if svc.get("ports") is not None:
            ports = self.ports(svc["ports"], at("ports"), sub("ports"), origin)
            if ports:
                spec["endpoint"] = {"ports": ports}
        if svc.get("depends_on") is not None:
            deps = self.depends_on(name, svc["depends_on"], at("depends_on"), sub("depends_on"),
                                   services, origin)
            if deps:
                spec["depends_on"] = deps
        if len(self.errors) > first_error:
            return None
        return self.validate(spec, origin)

    @staticmethod
    def env_origins(keys: list, environment, path: str, origin: _Origin):
        """Place each environment entry at its own line (an entry from an
        env_file keeps the service's)."""
        for i, key in enumerate(keys):
            if isinstance(environment, Map) and key in environment:
                origin.add(("task", "container", "env", i), f"{path}.{key}", environment.at(key),
                           exact=True)
            elif isinstance(environment, Seq):
                for j, item in enumerate(environment):
                    if isinstance(item, str) and item.partition("=")[0] == key:
                        origin.add(("task", "container", "env", i), f"{path}[{j}]",
                                   environment.at(j), exact=True)

    def reserved(self, labels: dict, mark, path):
        if STACK_LABEL in labels:
            self.err(mark, path, f"label {STACK_LABEL} is reserved: it holds the stack name")

    def validate(self, spec: dict, origin: _Origin) -> dict | None:
        from pydantic import ValidationError

        from ..model.specs import ServiceSpec
        try:
            ServiceSpec.model_validate(spec)
        except ValidationError as exc:
            for e in exc.errors():
                path, mark = origin.find(tuple(e["loc"]))
                message = e["msg"]
                if message.startswith("Value error, "):
                    message = message[len("Value error, "):]
                self.err(mark, path, message)
            return None
        return spec

    def environment(self, svc: Map, path: str) -> dict:
        """env_file entries first, then environment, later ones winning."""
        env: dict = {}
        if svc.get("env_file") is not None:
            files = svc["env_file"]
            files = files if isinstance(files, Seq) else _as_seq(files)
            for i, item in enumerate(files):
                mark, where = files.at(i) or svc.at("env_file"), f"{path}.env_file"
                required = True
                if isinstance(item, Map):
                    self.keys(item, f"{where}[{i}]", {"path", "required"})
                    if "required" in item:
                        required = self.boolean(item["required"], item.at("required"),
                                                f"{where}[{i}].required")
                    item = item.get("path")
                rel = self.string(item, mark, where)
                if rel is None:
                    continue
                full = os.path.normpath(os.path.join(self.project.directory,
                                                     os.path.expanduser(rel)))
                if not os.path.isfile(full) and required is False:
                    continue
                try:
                    problems: list[str] = []
                    values = read_env_file(full, self.project.env, problems, self.project.warnings)
                except OSError as exc:
                    self.err(mark, where, f"cannot read {rel}: {exc.strerror or exc}")
                    continue
                self.errors.extend(problems)
                env.update({k: v for k, v in values.items() if v is not None})
        if svc.get("environment") is not None:
            env.update(self.pairs(svc["environment"], svc.at("environment"),
                                  f"{path}.environment", True) or {})
        return env

    def ports(self, v, mark, path, origin: _Origin) -> list[dict]:
        out: list[dict] = []
        if not isinstance(v, Seq):
            self.err(mark, path, "must be a list")
            return out
        origin.add(("endpoint", "ports"), path, mark)
        for i, item in enumerate(v):
            m, p = v.at(i), f"{path}[{i}]"
            if isinstance(item, Map):
                found = self.port_long(item, m, p)
            elif isinstance(item, (str, int)) and not isinstance(item, bool):
                found = self.port_short(str(item), m, p)
            else:
                self.err(m, p, "must be a string such as \"8080:80\" or a mapping")
                continue
            for port in found:
                origin.add(("endpoint", "ports", len(out)), p, m)
                out.append(port)
        return out

    def port_range(self, text: str):
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", text.strip())
        if not m:
            return None
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) else lo
        return list(range(lo, hi + 1)) if hi >= lo else None

    def port_short(self, text: str, mark, path) -> list[dict]:
        body, _, proto = text.partition("/")
        proto = proto or "tcp"
        if body.startswith("[") or body.count(":") >= 2:
            self.err(mark, path, f"{text!r}: a host IP is {NOT_SUPPORTED}: ports are published "
                     "on every address of the node running the task")
            return []
        published, sep, target = body.rpartition(":")
        targets = self.port_range(target)
        if targets is None:
            self.err(mark, path, f"{text!r} is not PUBLISHED:TARGET[/PROTOCOL]")
            return []
        if not sep:
            self.err(mark, path, f"{text!r} has no published port: Flotilla publishes ports in "
                     "host mode only, on the node running each task, so the host port must be "
                     f"given (e.g. \"{targets[0]}:{targets[0]}\")")
            return []
        pubs = self.port_range(published)
        if pubs is None:
            self.err(mark, path, f"{text!r} is not PUBLISHED:TARGET[/PROTOCOL]")
            return []
        if len(pubs) != len(targets):
            self.err(mark, path,
                     f"{text!r}: the published and target ranges must have the same length")
            return []
        return [{"published": p, "target": t, "protocol": proto} for p, t in zip(pubs, targets)]

    def port_long(self, m: Map, mark, path) -> list[dict]:
        self.keys(m, path, {"target", "published", "protocol", "mode"},
                  {"host_ip": f"{NOT_SUPPORTED}: ports are published on every address of the node"})
        if "target" not in m:
            self.err(mark, f"{path}.target", "required")
            return []
        target = self.integer(m["target"], m.at("target"), f"{path}.target")
        mode = m.get("mode", "host")
        if mode == "ingress":
            self.err(m.at("mode"), f"{path}.mode", "ingress is not supported: Flotilla has no "
                     "routing mesh and publishes ports in host mode only, on the node running "
                     "each task (use mode: host)")
            return []
        if mode != "host":
            self.err(m.at("mode"), f"{path}.mode", "must be host")
            return []
        if m.get("published") is None:
            self.err(mark, f"{path}.published", "required: in host mode the port is published "
                     "on the node running the task, so it must be given")
            return []
        published = m["published"]
        if isinstance(published, str) and "-" in published:
            self.err(m.at("published"), f"{path}.published",
                     "a range of published ports for one target is not supported")
            return []
        published = self.integer(published, m.at("published"), f"{path}.published")
        if target is None or published is None:
            return []
        return [{"published": published, "target": target,
                 "protocol": str(m.get("protocol") or "tcp")}]

    # -- volumes --------------------------------------------------------------------------
    def mounts(self, v, mark, path, origin: _Origin) -> list[dict]:
        out: list[dict] = []
        if not isinstance(v, Seq):
            self.err(mark, path, "must be a list")
            return out
        targets: set = set()
        for i, item in enumerate(v):
            m, p = v.at(i), f"{path}[{i}]"
            if isinstance(item, Map):
                mount = self.volume_long(item, m, p)
            elif isinstance(item, str):
                mount = self.volume_short(item, m, p)
            else:
                self.err(m, p, "must be a string such as ./data:/data or a mapping")
                continue
            if mount is None:
                continue
            if mount["target"] in targets:
                self.err(m, p, f"{mount['target']} is mounted twice")
                continue
            targets.add(mount["target"])
            origin.add(("task", "container", "mounts", len(out)), p, m)
            out.append(mount)
        return out

    def source(self, src: str, mark, path, kind: str | None):
        """(type, source) for a short-syntax source or a long-syntax one."""
        if kind == "bind" or (kind is None and src.startswith(("/", ".", "~"))):
            full = os.path.normpath(os.path.join(self.project.directory, os.path.expanduser(src)))
            return "bind", full
        if src not in self.volumes:
            self.err(mark, path, f"volume {src!r} is not declared in the top-level volumes")
            return "volume", None
        return "volume", self.volumes[src]

    def volume_short(self, text: str, mark, path):
        parts = text.split(":")
        if len(parts) == 1:
            return {"type": "volume", "target": parts[0]}       # anonymous volume
        if len(parts) > 3 or not parts[0] or not parts[1]:
            self.err(mark, path, f"{text!r} is not SOURCE:TARGET[:ro]")
            return None
        readonly = False
        for opt in (parts[2].split(",") if len(parts) == 3 else ()):
            if opt == "ro":
                readonly = True
            elif opt != "rw":
                self.err(mark, path, f"volume option {opt!r} is {NOT_SUPPORTED} (only ro and rw)")
                return None
        kind, src = self.source(parts[0], mark, path, None)
        if src is None:
            return None
        mount = {"type": kind, "source": src, "target": parts[1]}
        if readonly:
            mount["readonly"] = True
        return mount

    def volume_long(self, m: Map, mark, path):
        self.keys(m, path, {"type", "source", "target", "read_only"})
        kind = m.get("type")
        if kind not in ("bind", "volume", "tmpfs"):
            self.err(m.at("type") if "type" in m else mark, f"{path}.type",
                     "required: bind, volume or tmpfs" if kind is None
                     else f"{kind!r} is {NOT_SUPPORTED} (bind, volume or tmpfs)")
            return None
        target = self.string(m.get("target"), m.at("target") if "target" in m else mark,
                             f"{path}.target")
        if target is None:
            return None
        mount = {"type": kind, "target": target}
        src = m.get("source")
        if kind == "tmpfs":
            if src:
                self.err(m.at("source"), f"{path}.source", "tmpfs mounts take no source")
                return None
        elif kind == "bind" and not src:
            self.err(mark, f"{path}.source", "required for a bind mount")
            return None
        elif src:
            src = self.string(src, m.at("source"), f"{path}.source")
            if src is None:
                return None
            _, resolved = self.source(src, m.at("source"), f"{path}.source", kind)
            if resolved is None:
                return None
            mount["source"] = resolved
        if m.get("read_only") is not None:
            ro = self.boolean(m["read_only"], m.at("read_only"), f"{path}.read_only")
            if ro:
                mount["readonly"] = True
        return mount

    # -- healthcheck ------------------------------------------------------------------------
    def healthcheck(self, v, mark, path, origin: _Origin):
        hc = self.mapping(v, mark, path)
        if hc is None:
            return None
        origin.add(("task", "container", "healthcheck"), path, mark)
        self.keys(hc, path, {"test", "interval", "timeout", "retries", "start_period", "disable"})
        if hc.get("disable") is not None and self.boolean(hc["disable"], hc.at("disable"),
                                                          f"{path}.disable"):
            if "test" in hc:
                self.err(hc.at("test"), f"{path}.test", "cannot be used with disable: true")
            return {"test": ["NONE"]}
        if hc.get("test") is None:
            self.err(mark, f"{path}.test", "required: Flotilla cannot change only the timings "
                     "of the image's healthcheck")
            return None
        test = hc["test"]
        if isinstance(test, str):
            test = ["CMD-SHELL", test]
        else:
            test = self.strings(test, hc.at("test"), f"{path}.test")
        origin.add(("task", "container", "healthcheck", "test"), f"{path}.test", hc.at("test"))
        out = {"test": test}
        for key in ("interval", "timeout", "start_period"):
            if hc.get(key) is not None:
                out[key] = self.duration(hc[key], hc.at(key), f"{path}.{key}")
                origin.add(("task", "container", "healthcheck", key), f"{path}.{key}", hc.at(key))
        if hc.get("retries") is not None:
            out["retries"] = self.integer(hc["retries"], hc.at("retries"), f"{path}.retries")
            origin.add(("task", "container", "healthcheck", "retries"), f"{path}.retries",
                       hc.at("retries"))
        return out

    # -- deploy -----------------------------------------------------------------------------
    def deploy(self, v, mark, path, spec: dict, task: dict, origin: _Origin):
        d = self.mapping(v, mark, path)
        if d is None:
            return
        self.keys(d, path, DEPLOY_KEYS, DEPLOY_HINTS)
        at = d.at
        if d.get("mode") is not None:
            mode = d["mode"]
            if mode in ("replicated-job", "global-job"):
                self.err(at("mode"), f"{path}.mode", f"jobs are {NOT_SUPPORTED}")
            elif mode not in ("replicated", "global"):
                self.err(at("mode"), f"{path}.mode", "must be replicated or global")
            else:
                spec["mode"] = mode
        if d.get("replicas") is not None:
            if spec.get("mode") == "global":
                self.err(at("replicas"), f"{path}.replicas", "cannot be set for a global service")
            else:
                spec["replicas"] = self.integer(d["replicas"], at("replicas"), f"{path}.replicas")
                origin.add(("replicas",), f"{path}.replicas", at("replicas"))
        if d.get("labels") is not None:
            labels = self.pairs(d["labels"], at("labels"), f"{path}.labels", False) or {}
            self.reserved(labels, at("labels"), f"{path}.labels")
            spec["labels"] = {**labels, STACK_LABEL: self.stack}
            origin.add(("labels",), f"{path}.labels", at("labels"))
        if d.get("resources") is not None:
            self.resources(d["resources"], at("resources"), f"{path}.resources", task, origin)
        if d.get("placement") is not None:
            self.placement(d["placement"], at("placement"), f"{path}.placement", task, origin)
        if d.get("restart_policy") is not None:
            self.restart(d["restart_policy"], at("restart_policy"), f"{path}.restart_policy",
                         task, origin)
        for key, target in (("update_config", "update"), ("rollback_config", "rollback")):
            if d.get(key) is not None:
                conf = self.update_config(d[key], at(key), f"{path}.{key}", target, origin)
                if conf is not None:
                    spec[target] = conf

    def resources(self, v, mark, path, task, origin):
        r = self.mapping(v, mark, path)
        if r is None:
            return
        self.keys(r, path, {"limits", "reservations"})
        out = {}
        for kind in ("limits", "reservations"):
            if r.get(kind) is None:
                continue
            part = self.mapping(r[kind], r.at(kind), f"{path}.{kind}")
            if part is None:
                continue
            self.keys(part, f"{path}.{kind}", {"cpus", "memory"})
            got = {}
            if part.get("cpus") is not None:
                got["cpus"] = self.number(part["cpus"], part.at("cpus"), f"{path}.{kind}.cpus")
                origin.add(("task", "resources", kind, "cpus"), f"{path}.{kind}.cpus",
                           part.at("cpus"))
            if part.get("memory") is not None:
                got["memory"] = self.size(part["memory"], part.at("memory"),
                                          f"{path}.{kind}.memory")
                origin.add(("task", "resources", kind, "memory"), f"{path}.{kind}.memory",
                           part.at("memory"))
            if got:
                out[kind] = got
        if out:
            task["resources"] = out
            origin.add(("task", "resources"), path, mark)
            origin.add(("task",), path, mark, exact=True)     # reservation larger than limit

    def placement(self, v, mark, path, task, origin):
        p = self.mapping(v, mark, path)
        if p is None:
            return
        self.keys(p, path, {"constraints", "preferences", "max_replicas_per_node"})
        out = {}
        if p.get("constraints") is not None:
            got = self.strings(p["constraints"], p.at("constraints"), f"{path}.constraints")
            if got is not None:
                out["constraints"] = got
                origin.add(("task", "placement", "constraints"), f"{path}.constraints",
                           p.at("constraints"))
        if p.get("preferences") is not None:
            prefs = p["preferences"]
            if not isinstance(prefs, Seq):
                self.err(p.at("preferences"), f"{path}.preferences", "must be a list")
            else:
                got = []
                for i, item in enumerate(prefs):
                    where = f"{path}.preferences[{i}]"
                    item = self.mapping(item, prefs.at(i), where)
                    if item is None:
                        continue
                    self.keys(item, where, {"spread"})
                    if "spread" not in item:
                        self.err(prefs.at(i), f"{where}.spread", "required")
                        continue
                    origin.add(("task", "placement", "preferences", len(got)), f"{where}.spread",
                               item.at("spread"))
                    got.append({"spread": self.string(item["spread"], item.at("spread"),
                                                      f"{where}.spread")})
                out["preferences"] = got
        if p.get("max_replicas_per_node") is not None:
            out["max_replicas"] = self.integer(p["max_replicas_per_node"],
                                               p.at("max_replicas_per_node"),
                                               f"{path}.max_replicas_per_node")
            origin.add(("task", "placement", "max_replicas"), f"{path}.max_replicas_per_node",
                       p.at("max_replicas_per_node"))
        if out:
            task["placement"] = out

    def restart(self, v, mark, path, task, origin):
        r = self.mapping(v, mark, path)
        if r is None:
            return
        self.keys(r, path, {"condition", "delay", "max_attempts", "window"})
        out = {}
        if r.get("condition") is not None:
            out["condition"] = self.string(r["condition"], r.at("condition"), f"{path}.condition")
        for key in ("delay", "window"):
            if r.get(key) is not None:
                out[key] = self.duration(r[key], r.at(key), f"{path}.{key}")
        if r.get("max_attempts") is not None:
            out["max_attempts"] = self.integer(r["max_attempts"], r.at("max_attempts"),
                                               f"{path}.max_attempts")
        for key in out:
            origin.add(("task", "restart", key), f"{path}.{key}", r.at(key))
        if out:
            task["restart"] = out

    def update_config(self, v, mark, path, target, origin):
        u = self.mapping(v, mark, path)
        if u is None:
            return None
        self.keys(u, path, UPDATE_KEYS)
        out = {}
        if u.get("parallelism") is not None:
            out["parallelism"] = self.integer(u["parallelism"], u.at("parallelism"),
                                              f"{path}.parallelism")
        for key in ("delay", "monitor"):
            if u.get(key) is not None:
                out[key] = self.duration(u[key], u.at(key), f"{path}.{key}")
        if u.get("max_failure_ratio") is not None:
            out["max_failure_ratio"] = self.number(u["max_failure_ratio"],
                                                   u.at("max_failure_ratio"),
                                                   f"{path}.max_failure_ratio")
        for key in ("failure_action", "order"):
            if u.get(key) is not None:
                out[key] = self.string(u[key], u.at(key), f"{path}.{key}")
        for key in out:
            origin.add((target, key), f"{path}.{key}", u.at(key))
        return out

    def depends_on(self, name, v, mark, path, services: Map, origin) -> list[dict]:
        items: list[tuple] = []        # (service, condition, mark, path)
        if isinstance(v, Seq):
            for i, dep in enumerate(v):
                dep = self.string(dep, v.at(i), f"{path}[{i}]")
                if dep is not None:
                    items.append((dep, "started", v.at(i), f"{path}[{i}]"))
        elif isinstance(v, Map):
            for dep, conf in v.items():
                where = _join(path, dep)
                condition = "started"
                if conf is not None:
                    conf = self.mapping(conf, v.at(dep), where)
                    if conf is None:
                        continue
                    self.keys(conf, where, {"condition"})
                    if conf.get("condition") is not None:
                        given = conf["condition"]
                        condition = CONDITIONS.get(given) if isinstance(given, str) else None
                        if condition is None:
                            self.err(conf.at("condition"), f"{where}.condition",
                                     "must be " + ", ".join(CONDITIONS))
                            continue
                items.append((dep, condition, v.at(dep), where))
        else:
            self.err(mark, path, "must be a list of services or a mapping")
            return []
        out = []
        for dep, condition, m, where in items:
            if dep == name:
                self.err(m, where, "a service cannot depend on itself")
            elif dep not in services:
                self.err(m, where, f"service {dep} is not defined in this file")
            else:
                origin.add(("depends_on", len(out)), where, m)
                out.append({"service": f"{self.stack}_{dep}", "condition": condition})
        return out


def translate(project: Project, stack: str) -> list[dict]:
    """Service specs for ``stack``, dependencies first; raises ComposeError."""
    t = _Translator(project, stack)
    specs = t.run()
    errors = project.errors + t.errors
    if errors:
        raise ComposeError(_by_position(errors, project.files))
    return specs


def _by_position(errors: list[str], files: list[str]) -> list[str]:
    """Errors in file order, then line order; the rest first."""
    order = {f: i for i, f in enumerate(files)}

    def key(text):
        for f, i in order.items():
            m = re.match(re.escape(f) + r":(\d+): ", text)
            if m:
                return (1, i, int(m.group(1)))
        return (0, 0, 0)

    seen, out = set(), []
    for e in sorted(errors, key=key):
        if e not in seen:
            seen.add(e)
            out.append(e)
    return out


def stack_specs(paths: list[str], stack: str | None = None, environ: dict | None = None):
    """Load, merge and translate: (stack name, specs, warnings)."""
    project = load(paths, environ)
    name = stack or project.name
    if not name:
        raise ComposeError(["no stack name: give one, or set name at the top of the Compose file"])
    return name, translate(project, name), project.warnings
