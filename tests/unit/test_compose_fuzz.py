"""The Compose loader never fails with a traceback: mutated Compose files,
``.env`` and ``env_file`` files (flipped and inserted bytes, invalid UTF-8,
truncations, moved lines, values of the wrong type, deleted keys, YAML tags)
give either service specs or ``ComposeError`` lines, one line each.

Deterministic: the cases come from fixed seeds, and a failure names the
seed that reproduces it (``FLOTILLA_FUZZ_SEED=<seed>`` runs that case
alone). ``FLOTILLA_FUZZ_CASES`` sets how many cases run (default 2,000).
"""

import copy
import os
import random
import time

import yaml

from flotilla.cli.compose.errors import ComposeError
from flotilla.cli.compose.translate import stack_specs
from tests.unit.test_compose import REALISTIC, WORKER_ENV

# libyaml where present: the mutations are not what is measured
_YamlLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_YamlDumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
CASES = int(os.environ.get("FLOTILLA_FUZZ_CASES", "2000"))
ONLY = os.environ.get("FLOTILLA_FUZZ_SEED")

SMALL = """\
name: shop
services:
  web:
    image: busybox:1
    command: ["sleep", "3600"]
    hostname: "{{.Service.Name}}-{{.Task.Slot}}"
    environment:
      NODE_ID: "{{.Node.ID}}"
      TAG: ${TAG:-1}
    env_file: [app.env]
    ports: ["8080:80", {target: 443, published: 8443, mode: host}]
    volumes: ["data:/data", "/srv:/srv:ro", {type: tmpfs, target: /tmp}]
    depends_on: {db: {condition: service_healthy}}
    deploy:
      replicas: 2
      resources: {reservations: {memory: 64M, cpus: 0.5}}
      update_config: {parallelism: 1, delay: 5s, order: start-first}
  db:
    image: busybox:1
    healthcheck: {test: ["CMD", "true"], interval: 1s, retries: 3}
    deploy: {mode: global, placement: {constraints: [node.role==worker]}}
volumes:
  data: {}
"""

OVERRIDE = """\
services:
  web:
    image: busybox:2
    ports: !override ["9090:90"]
    environment:
      TAG: !reset null
      EXTRA: "yes"
    volumes: !reset []
  db:
    deploy: !reset {}
"""

OVERRIDE_PLAIN = """\
services:
  web:
    command: [sleep, "10"]
    environment: [EXTRA=1, TAG=2]
    labels: {tier: front}
    ports: ["9090:90"]
    volumes: ["/srv/b:/data", {type: bind, source: /x, target: /srv}]
    depends_on: [db]
    env_file: [app.env]
    deploy:
      labels: [a=b]
      placement: {constraints: [node.labels.zone==a], preferences: [{spread: node.labels.zone}]}
"""

APP_ENV = """\
# app settings
A=1
export B="two words"
C='$literal'
D=${A}-x
"""

CORPUS = [
    {"compose.yml": REALISTIC, "config/worker.env": WORKER_ENV, ".env": "TAG=2\nLOG_LEVEL=info\n"},
    {"compose.yml": SMALL, "app.env": APP_ENV},
    {"compose.yml": SMALL, "override.yml": OVERRIDE, "app.env": APP_ENV, ".env": "TAG=3\n"},
    {"compose.yml": SMALL, "override.yml": OVERRIDE_PLAIN, "app.env": APP_ENV},
]

# Byte strings that tend to break parsers: invalid UTF-8, YAML syntax, tags,
# interpolation and templates.
SNIPPETS = [b"\xff", b"\xc3(", b"\xe9", b"\xed\xa0\x80", b"\xf0\x9f", b"\x00", b"\t", b"\r",
            b"!reset ", b"!override ", b"!foo ", b"!!python/object:os.system ", b"!!binary ",
            b"&a ", b"*a", b"<<: *a", b"[", b"]", b"{", b"}", b": ", b"- ", b"\n", b"'", b'"',
            b"#", b"---\n", b"...\n", b"%YAML 1.2\n", b"?", b"|", b">", b"{{", b"}}",
            b"{{.Node.Foo}}", b"${", b"${X:?}", b"$", b"$$", b"=", b"export ",
            b"99999999999999999999", b"-1", b"1e999", b".nan", b"~", b"null", b"true", b"0x",
            b"0o9"]

VALUES = [None, True, False, 0, -1, 7, 2 ** 70, 1.5, -0.0, "", "x", "1G", "512M", "10s", "1m30s",
          "soon", "8080:80", "80", "1-3:4-6", "a:b:c:d", "/abs:/path:ro", "./rel:/p", "vol:/p",
          "{{.Node.ID}}", "{{.Nope}}", "{{", "${X}", "$", "service_started", "host", "ingress",
          "global", "replicated-job", "CMD-SHELL true", "node.role==worker", "node.nope==x",
          [], {}, ["a"], [1, 2], [None], [[1]], [{"a": 1}], {"a": 1}, {"a": None},
          {"condition": ["service_started"]}, {"condition": "service_healthy"},
          {"target": [1]}, {"target": "/t", "type": "bind"}, {"type": "bind"}, {"path": 3},
          {"test": {"a": 1}}, {"memory": []}, {"cpus": "lots"}, "x" * 300, "é ü 中文 😀"]


def _nodes(data, path=()):
    """Every (container, key) pair of a plain document."""
    out = []
    stack = [(data, path)]
    while stack:
        cur, p = stack.pop()
        if isinstance(cur, dict):
            for k, v in cur.items():
                out.append((cur, k))
                stack.append((v, p + (k,)))
        elif isinstance(cur, list):
            for i, v in enumerate(cur):
                out.append((cur, i))
                stack.append((v, p + (i,)))
    return out


def structural(rng: random.Random, text: str) -> bytes:
    """Change the document's shape: a value of another type, a deleted or
    renamed key, a value wrapped in a list or a mapping."""
    try:
        data = copy.deepcopy(yaml.load(text, Loader=_YamlLoader))   # aliases unshared
    except yaml.YAMLError:
        return text.encode()
    for _ in range(rng.randint(1, 4)):
        nodes = _nodes(data)
        if not nodes:
            break
        parent, key = rng.choice(nodes)
        action = rng.random()
        if action < 0.5:
            parent[key] = copy.deepcopy(rng.choice(VALUES))
        elif action < 0.65 and isinstance(parent, dict):
            del parent[key]
        elif action < 0.75 and isinstance(parent, dict):
            parent[rng.choice(["x-ext", "restart", "bogus", "networks", "deploy", "labels", "1",
                               "environment", "condition", "!reset"])] = parent.pop(key)
        elif action < 0.85:
            parent[key] = [parent[key]]
        else:
            parent[key] = {rng.choice(["a", "condition", "target", "test"]): parent[key]}
    try:
        return yaml.dump(data, Dumper=_YamlDumper, sort_keys=False,
                         allow_unicode=rng.random() < 0.5).encode()
    except yaml.YAMLError:
        return text.encode()


def textual(rng: random.Random, raw: bytes) -> bytes:
    """Damage the bytes: flips, inserts, deletions, truncation, moved lines."""
    for _ in range(rng.randint(1, 3)):
        action = rng.random()
        pos = rng.randint(0, len(raw))
        if action < 0.25:
            raw = raw[:pos] + rng.choice(SNIPPETS) + raw[pos:]
        elif action < 0.4 and raw:
            pos = min(pos, len(raw) - 1)
            raw = raw[:pos] + bytes([rng.randrange(256)]) + raw[pos + 1:]
        elif action < 0.5:
            raw = raw[:pos]
        elif action < 0.6:
            raw = raw[:pos] + raw[pos + rng.randint(1, 40):]
        else:
            lines = raw.split(b"\n")
            i, j = rng.randrange(len(lines)), rng.randrange(len(lines))
            if action < 0.7:
                del lines[i]
            elif action < 0.8:
                lines.insert(i, lines[j])
            elif action < 0.9:
                lines[i], lines[j] = lines[j], lines[i]
            else:
                lines[i] = b"  " * rng.randint(0, 4) + lines[i].lstrip()
            raw = b"\n".join(lines)
    return raw


def case(seed: int, directory: str) -> list[str]:
    """Write one mutated project into ``directory``; return the Compose files."""
    rng = random.Random(seed)
    files = dict(rng.choice(CORPUS))
    victims = rng.sample(sorted(files), k=rng.randint(1, len(files)))
    out = {}
    for name, text in files.items():
        if name not in victims:
            out[name] = text.encode()
        elif name.endswith(".yml") and rng.random() < 0.5:
            out[name] = structural(rng, text)
            if rng.random() < 0.3:
                out[name] = textual(rng, out[name])
        else:
            out[name] = textual(rng, text.encode())
    for name, raw in out.items():
        path = os.path.join(directory, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(raw)
    return [os.path.join(directory, n) for n in ("compose.yml", "override.yml") if n in out]


def test_mutated_compose_files_never_raise_a_traceback(tmp_path):
    seeds = [int(ONLY)] if ONLY else range(CASES)
    failures, outcomes = [], {"specs": 0, "errors": 0}
    started = time.monotonic()
    for seed in seeds:
        directory = tmp_path / f"c{seed}"
        directory.mkdir()
        paths = case(seed, str(directory))
        try:
            stack_specs(paths, "shop", {"HOME": "/root"})
            outcomes["specs"] += 1
        except ComposeError as exc:
            outcomes["errors"] += 1
            bad = [e for e in exc.errors if "\n" in e or "\r" in e or not e.strip()]
            if bad:
                failures.append(f"seed {seed}: error not on one line: {bad[0]!r}")
        except Exception as exc:   # noqa: BLE001 (the point of the test)
            failures.append(f"seed {seed}: {type(exc).__name__}: {exc}"[:300])
    took = time.monotonic() - started
    assert not failures, (f"{len(failures)} of {len(seeds)} cases failed:\n"
                          + "\n".join(failures[:20]))
    if not ONLY:
        # both outcomes occur: the mutations neither always break the files
        # nor never do
        assert outcomes["specs"] > len(seeds) // 50 and outcomes["errors"] > len(seeds) // 2, \
            outcomes
    print(f"{len(seeds)} cases in {took:.1f}s: {outcomes}")
