"""The packages of flotilla depend on each other one way only, as
docs/architecture.md draws them: read from every module's imports (with
``ast``, so an import inside a function counts too)."""

import ast
import os
import subprocess
import sys

import flotilla

ROOT = os.path.dirname(os.path.abspath(flotilla.__file__))

# Which packages of ours each package may import ("__version__" is the
# package's root module).
ALLOWED = {
    "model": {"common"},
    "common": set(),
    "ca": {"common"},
    "agent": {"model", "ca", "common"},
    "manager": {"model", "ca", "common"},
    "node": {"agent", "manager", "ca", "common", "model"},
    "cli": {"model", "ca", "common"},
}
# The node's own commands (``flotilla node run``, ``init``, ``join``) start
# the node process: the CLI imports the node package for them only, inside
# the command, so that no other command loads it.
LAZY_ONLY = {"cli": {"node"}}
# Libraries a package must not import: the web server and Raft belong to
# the manager (and the agent's listener), never to the vocabulary or the CLI.
SERVER_LIBS = {"flask", "werkzeug", "gunicorn", "pysyncobj"}
FORBIDDEN = {
    "model": SERVER_LIBS,
    "cli": SERVER_LIBS,
    "ca": SERVER_LIBS,
    "common": {"flask", "gunicorn", "pysyncobj"},
    "agent": {"gunicorn", "pysyncobj"},
}


def _modules():
    for dirpath, _, files in os.walk(ROOT):
        for name in sorted(files):
            if name.endswith(".py"):
                path = os.path.join(dirpath, name)
                rel = os.path.relpath(path, os.path.dirname(ROOT))[:-3].replace(os.sep, ".")
                is_pkg = rel.endswith(".__init__")
                yield path, rel[:-len(".__init__")] if is_pkg else rel, is_pkg


def _imports(path, module, is_pkg):
    """(line, imported module, inside a function) for every import."""
    tree = ast.parse(open(path).read(), path)
    out = []

    def visit(node, in_function):
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef,
                                                       ast.Lambda))
            if isinstance(child, ast.Import):
                out.extend((child.lineno, a.name, in_function) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = module.split(".")
                    base = base[:len(base) - child.level + (1 if is_pkg else 0)]
                    target = ".".join(base + ([child.module] if child.module else []))
                else:
                    target = child.module or ""
                if child.module:
                    out.append((child.lineno, target, in_function))
                else:        # from . import x: x is a module of that package
                    out.extend((child.lineno, f"{target}.{a.name}", in_function)
                               for a in child.names)
            visit(child, nested)

    visit(tree, False)
    return out


def _package(module):
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__version__"


def test_packages_import_one_way():
    problems = []
    for path, module, is_pkg in _modules():
        pkg = _package(module)
        if pkg == "__version__":
            continue
        where = os.path.relpath(path, os.path.dirname(ROOT))
        for line, target, in_function in _imports(path, module, is_pkg):
            top = target.split(".")[0]
            if top == "flotilla":
                dep = _package(target)
                if dep in (pkg, "__version__"):
                    continue
                if dep in ALLOWED[pkg]:
                    continue
                if in_function and dep in LAZY_ONLY.get(pkg, ()):
                    continue
                allowed = ", ".join(sorted(ALLOWED[pkg])) or "nothing of flotilla"
                problems.append(f"{where}:{line}: {module} imports {target} "
                                f"({pkg} may import {allowed})")
            elif top in FORBIDDEN.get(pkg, ()):
                problems.append(f"{where}:{line}: {module} imports {target} "
                                f"({pkg} must not use {top})")
    assert not problems, "\n".join(problems)


def test_the_parts_of_the_manager_import_without_cycles():
    """manager/'s modules and sub-packages (api, raft, store, dispatcher...)
    form no cycle: each can be read, and replaced, from the bottom up."""
    edges = {}
    for path, module, is_pkg in _modules():
        parts = module.split(".")
        if parts[1:2] != ["manager"] or len(parts) < 3:
            continue
        where = os.path.relpath(path, os.path.dirname(ROOT))
        for line, target, _ in _imports(path, module, is_pkg):
            t = target.split(".")
            if t[:2] == ["flotilla", "manager"] and len(t) > 2 and t[2] != parts[2]:
                edges.setdefault(parts[2], {}).setdefault(t[2], f"{where}:{line} imports {target}")

    def cycle_from(start):
        stack, seen = [(start, [start])], set()
        while stack:
            node, trail = stack.pop()
            for nxt in edges.get(node, {}):
                if nxt == start:
                    return trail + [start]
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, trail + [nxt]))
        return None

    for part in sorted(edges):
        cycle = cycle_from(part)
        assert cycle is None, "manager parts import in a cycle:\n" + "\n".join(
            edges[a][b] for a, b in zip(cycle, cycle[1:]))


def test_the_rules_cover_every_package():
    packages = {_package(m) for _, m, _ in _modules()} - {"__version__"}
    assert packages == set(ALLOWED)


def test_the_cli_starts_without_the_server_libraries():
    """``flotilla`` (any command but the node's own) loads neither the web
    server, Raft nor pydantic when it starts."""
    code = ("import sys, flotilla.cli.main; "
            "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))")
    loaded = set(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                                text=True).stdout.split())
    assert not loaded & (SERVER_LIBS | {"pydantic"}), sorted(loaded & (SERVER_LIBS | {"pydantic"}))
