"""Loading and merging: several Compose files into one project, later files
overriding earlier ones as Compose does (``!reset`` and ``!override``
included)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from .errors import ComposeError
from .interpolate import Interpolator, read_env_file
from .yamlpos import Map, Override, Reset, Seq, read_yaml

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
            raw = read_yaml(path)
        except ComposeError as exc:
            errors.extend(exc.errors)
            continue
        data = interp.value(raw, raw.mark, "")
        merged = _settle(data if merged is None else _merge(merged, data, ()))
    if errors:
        raise ComposeError(errors + problems)
    assert merged is not None       # a file was read (else errors said why not)
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


def as_seq(v):
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


def _networks_map(v):
    """A service's networks in list form as a mapping, for merging."""
    if not isinstance(v, Seq) or not all(isinstance(x, str) for x in v):
        return v
    out = Map(mark=v.mark)
    for i, name in enumerate(v):
        out[name] = None
        out.marks[name] = v.at(i)
    return out


def _merge_networks(a, b):
    """A service's networks: by network, a later file's aliases added to
    the earlier ones; a network listed again without settings keeps them."""
    a, b = _networks_map(a), _networks_map(b)
    if not (isinstance(a, Map) and isinstance(b, Map)):
        return b
    out = Map(a, a.mark, a.marks)
    for key, value in b.items():
        old = out.get(key)
        if value is None and key in out:
            continue
        if isinstance(old, Map) and isinstance(value, Map):
            merged = _merge(old, value, ())
            if isinstance(merged, Map) and isinstance(value.get("aliases"), Seq):
                merged["aliases"] = _concat(old.get("aliases"), value["aliases"])
            value = merged
        out[key] = value
        out.marks[key] = b.at(key)
    return out


_MERGE_RULES = {
    ("services", "*", "networks"): _merge_networks,
    ("services", "*", "environment"): lambda a, b: _merge(_as_map(a), _as_map(b), ()),
    ("services", "*", "labels"): lambda a, b: _merge(_as_map(a), _as_map(b), ()),
    ("services", "*", "deploy", "labels"): lambda a, b: _merge(_as_map(a), _as_map(b), ()),
    ("services", "*", "depends_on"): lambda a, b: _merge(_deps_map(a), _deps_map(b), ()),
    ("services", "*", "env_file"): lambda a, b: _concat(as_seq(a), as_seq(b)),
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
