"""Service templates, as Docker Swarm expands them.

A service's environment values, container hostname and mount sources and
targets may hold Go template actions that each node fills in for each task
when it creates the container (SwarmKit's ``template`` package)::

    NODE_ID={{.Node.ID}}            hostname: {{.Service.Name}}-{{.Task.Slot}}

Placeholders (``FIELDS``): ``.Service.ID``, ``.Service.Name``, ``.Node.ID``,
``.Node.Hostname``, ``.Node.Platform.OS``, ``.Node.Platform.Architecture``,
``.Task.ID``, ``.Task.Name`` (``<service>.<slot>.<task id>``, the node id in
place of the slot for a global service) and ``.Task.Slot`` (the node id for
a global service), and ``.Service.Labels`` (``{{index .Service.Labels "k"}}``
for one label): a task whose container uses them carries its service's
labels as they were when the task was created (``service_labels``), as
Swarm's tasks carry their service's annotations.

Only these forms of Go's text/template are taken: ``{{.A.B}}`` (spaces
inside the braces allowed), ``{{index .Service.Labels "key"}}``, a string
literal (``{{"{{"}}`` writes ``{{``), a comment ``{{/* ... */}}``, and the
trim markers ``{{- `` / `` -}}``. Anything else, and a ``{{`` that is never
closed, is a TemplateError naming the action.
"""

from __future__ import annotations

import json
import re

FIELDS = (".Service.ID", ".Service.Name", ".Service.Labels", ".Node.ID", ".Node.Hostname",
          ".Node.Platform.OS", ".Node.Platform.Architecture", ".Task.ID", ".Task.Name",
          ".Task.Slot")

_FIELD = re.compile(r"(?:\.[A-Za-z_][A-Za-z0-9_]*)+\Z")
_STRING = r'"(?:[^"\\\n]|\\.)*"|`[^`]*`'
_LITERAL = re.compile(rf"(?:{_STRING})\Z", re.S)
_INDEX = re.compile(rf"index\s+(\.[A-Za-z0-9_.]+)\s+({_STRING})\Z", re.S)
_SPACE = " \t\r\n"


class TemplateError(ValueError):
    pass


def _short(action: str) -> str:
    return action if len(action) <= 60 else action[:57] + "..."


def _string(token: str) -> str:
    if token.startswith("`"):
        return token[1:-1]
    try:
        value = json.loads(token)
    except ValueError:
        raise TemplateError(f"invalid string {_short(token)} in a template") from None
    return value


def _known() -> str:
    usable = list(FIELDS)
    return ", ".join(usable[:-1]) + " or " + usable[-1]


def _action(body: str, whole: str):
    """One action's meaning: ("text", s), ("field", name) or ("index", name, key)."""
    text = body.strip(_SPACE)
    if text.startswith("/*") and text.endswith("*/") and len(text) >= 4:
        return ("text", "")
    if _LITERAL.match(text):
        return ("text", _string(text))
    if _FIELD.match(text):
        if text not in FIELDS:
            raise TemplateError(f"unknown template placeholder {_short(whole)} "
                                f"(use {_known()})")
        return ("field", text)
    m = _INDEX.match(text)
    if m:
        if m.group(1) != ".Service.Labels":
            raise TemplateError(f"unknown template placeholder {_short(whole)}: index takes "
                                ".Service.Labels")
        return ("index", m.group(1), _string(m.group(2)))
    raise TemplateError(f"unknown template placeholder {_short(whole)} (only {{{{.Field}}}} "
                        f"placeholders are supported: {_known()})")


def _close(s: str, i: int) -> int:
    """The index of the ``}}`` ending the action whose body starts at
    ``i`` (string literals inside may hold ``}}``), or -1."""
    n = len(s)
    while i < n:
        c = s[i]
        if c == "}" and s.startswith("}}", i):
            return i
        if c == '"':
            i += 1
            while i < n and s[i] != '"':
                if s[i] == "\n":
                    return -1
                i += 2 if s[i] == "\\" else 1
        elif c == "`":
            i = s.find("`", i + 1)
            if i < 0:
                return -1
        i += 1
    return -1


def parse(s: str) -> list:
    """The template as a list of literal strings and actions."""
    parts: list = []
    i = 0
    trim_next = False
    while True:
        j = s.find("{{", i)
        literal = s[i:] if j < 0 else s[i:j]
        if trim_next:
            literal = literal.lstrip(_SPACE)
        if j < 0:
            if literal:
                parts.append(literal)
            return parts
        start = j + 2
        if s.startswith("-", start) and s[start + 1:start + 2] in tuple(_SPACE):
            literal = literal.rstrip(_SPACE)
            start += 1
        if literal:
            parts.append(literal)
        end = _close(s, start)
        if end < 0:
            raise TemplateError(f"unclosed template action {_short(s[j:])} "
                                "(write {{\"{{\"}} for a literal {{)")
        body = s[start:end]
        trim_next = body.endswith("-") and body[-2:-1] in tuple(_SPACE)
        if trim_next:
            body = body[:-1]
        parts.append(_action(body, s[j:end + 2]))
        i = end + 2


def is_template(s) -> bool:
    return isinstance(s, str) and "{{" in s


def check(s: str) -> None:
    """Raise TemplateError if ``s`` is not a template a node can expand."""
    if is_template(s):
        parse(s)


def _templated_fields(container: dict):
    """The values of a container spec that each node expands."""
    for entry in container.get("env") or ():
        yield entry.partition("=")[2]
    yield container.get("hostname")
    for m in container.get("mounts") or ():
        yield m.get("source")
        yield m.get("target")


def uses_labels(container: dict) -> bool:
    """Whether the container spec's templates read the service's labels
    (the spec was checked: every template in it parses)."""
    for value in _templated_fields(container):
        if is_template(value) and ".Service.Labels" in value:
            if any(isinstance(p, tuple) and p[0] != "text" and p[1] == ".Service.Labels"
                   for p in parse(value)):
                return True
    return False


def sample(s: str) -> str:
    """``s`` with every placeholder replaced by ``x``: what checks on the
    shape of an expanded value (an absolute path, a volume name) can read."""
    if not is_template(s):
        return s
    return "".join(p if isinstance(p, str) else p[1] if p[0] == "text" else "x"
                   for p in parse(s))


def _go_map(m: dict) -> str:
    return "map[" + " ".join(f"{k}:{m[k]}" for k in sorted(m)) + "]"


def expand(s, context: dict) -> str:
    """``s`` with its placeholders filled from ``context`` (see ``context``)."""
    if not is_template(s):
        return s
    out = []
    for part in parse(s):
        if isinstance(part, str):
            out.append(part)
        elif part[0] == "text":
            out.append(part[1])
        elif part[0] == "index":
            out.append(str((context.get(part[1]) or {}).get(part[2], "")))
        else:
            value = context.get(part[1], "")
            out.append(_go_map(value) if isinstance(value, dict) else str(value))
    return "".join(out)


def context(task: dict, node_id: str, hostname: str, platform: dict) -> dict:
    """What the placeholders stand for, for one task on one node."""
    slot = task.get("slot")
    slot_text = str(slot) if slot else node_id
    service_name = task.get("service_name") or ""
    return {
        ".Service.ID": task.get("service_id") or "",
        ".Service.Name": service_name,
        ".Service.Labels": dict(task.get("service_labels") or {}),
        ".Node.ID": node_id,
        ".Node.Hostname": hostname or "",
        ".Node.Platform.OS": (platform or {}).get("os") or "",
        ".Node.Platform.Architecture": (platform or {}).get("arch") or "",
        ".Task.ID": task["id"],
        ".Task.Name": f"{service_name}.{slot_text}.{task['id']}",
        ".Task.Slot": slot_text,
    }


def expand_container(container: dict, ctx: dict) -> dict:
    """A copy of a container spec with its templated fields expanded: the
    values of environment entries, the hostname, mount sources and targets
    (the fields Swarm expands; labels, command and arguments are kept)."""
    out = dict(container)
    env = []
    for entry in container.get("env") or ():
        key, sep, value = entry.partition("=")
        env.append(f"{key}={expand(value, ctx)}" if sep and is_template(value) else entry)
    out["env"] = env
    if container.get("hostname"):
        out["hostname"] = expand(container["hostname"], ctx)
    out["mounts"] = [dict(m, source=expand(m.get("source") or "", ctx),
                          target=expand(m.get("target") or "", ctx))
                     for m in container.get("mounts") or ()]
    return out
