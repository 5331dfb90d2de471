"""YAML with positions: Compose files read safely (YAML 1.2 scalars, no
arbitrary tags but ``!reset`` and ``!override``, bounded size and depth),
every mapping and sequence remembering the file and line of each item."""

from __future__ import annotations

import re
from dataclasses import dataclass

import yaml
from yaml.composer import Composer
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from yaml.parser import Parser
from yaml.reader import Reader
from yaml.resolver import BaseResolver
from yaml.scanner import Scanner

from .errors import ComposeError

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
    plain: Node
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


# PyYAML's stubs take only PyYAML's own loader classes here, not one built from
# its mixins as this one is: hence the ignores.
_Loader.add_constructor("tag:yaml.org,2002:map", _construct_map)  # type: ignore[type-var]
_Loader.add_constructor("tag:yaml.org,2002:seq", _construct_seq)  # type: ignore[type-var]
_Loader.add_constructor("tag:yaml.org,2002:int", _construct_int)  # type: ignore[type-var]
_Loader.add_constructor("!reset", _construct_reset)  # type: ignore[type-var]
_Loader.add_constructor("!override", _construct_override)  # type: ignore[type-var]
_Loader.add_constructor(None, _construct_unknown)  # type: ignore[type-var]

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
            sub = f"{path}[{key}]" if isinstance(key, int) else join_path(path, key)
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
            sub = f"{where}[{key}]" if isinstance(key, int) else join_path(where, key)
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


def read_yaml(path: str) -> Map:
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


def join_path(path: str, key) -> str:
    """The dotted key path of ``key`` under ``path``."""
    return f"{path}.{key}" if path else str(key)
