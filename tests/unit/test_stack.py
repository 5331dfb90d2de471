"""`flotilla stack` commands against an in-memory API (no cluster)."""

import itertools
import json

import click
import pytest
from click.testing import CliRunner

from flotilla.cli import stack as stack_cli
from flotilla.cli.main import cli
from flotilla.model import specs


class FakeApi:
    """Just enough of /v1/services: canonical specs, spec_version bumps only on change."""

    def __init__(self):
        self.services = {}
        self.ids = (f"id{n:04d}" for n in itertools.count(1))
        self.calls = []

    def __call__(self, ctx, method, path, json=None, params=None):
        self.calls.append((method, path))
        if method == "GET" and path == "/v1/services":
            return [self.view(s) for s in sorted(self.services.values(), key=lambda s: s["name"])]
        if method == "POST" and path == "/v1/services":
            spec = specs.canonical(specs.ServiceSpec.model_validate(json))
            s = {"id": next(self.ids), "name": spec["name"], "spec": spec, "spec_version": 1}
            self.services[s["id"]] = s
            return self.view(s)
        ref = path.split("/")[3]
        s = self.services.get(ref) or next((x for x in self.services.values() if x["name"] == ref),
                                           None)
        if s is None:
            raise click.ClickException(f"service {ref} not found")
        if method == "PATCH":
            spec = specs.canonical(specs.ServiceSpec.model_validate(json["spec"]))
            if spec != s["spec"]:
                s.update(spec=spec, spec_version=s["spec_version"] + 1)
            return self.view(s)
        if method == "DELETE":
            del self.services[s["id"]]
            return {"id": s["id"], "removed": True}
        if method == "GET" and path.endswith("/tasks"):
            return []
        raise AssertionError((method, path))

    @staticmethod
    def view(s):
        return dict(s, mode=s["spec"]["mode"], image=s["spec"]["task"]["container"]["image"],
                    ports=s["spec"]["endpoint"]["ports"],
                    replicas={"desired": s["spec"]["replicas"], "running": 0})

    def by_name(self):
        return {s["name"]: s for s in self.services.values()}


@pytest.fixture
def api(monkeypatch):
    fake = FakeApi()
    monkeypatch.setattr(stack_cli, "call", fake)
    return fake


def run(*args):
    return CliRunner().invoke(cli, ["--host", "127.0.0.1:1", "--tls-dir", "/nonexistent",
                                    "stack", *args])


FILE = """\
services:
  web:
    image: busybox
    environment: [MODE={mode}]
    depends_on: [db]
  db:
    image: busybox
"""


def test_deploy_create_update_prune(api, tmp_path):
    path = tmp_path / "compose.yml"
    path.write_text(FILE.format(mode="a"))
    res = run("deploy", "-d", "-c", str(path), "s")
    assert res.exit_code == 0, res.output
    assert res.output.splitlines() == ["Creating service s_db", "Creating service s_web"]
    assert api.by_name()["s_web"]["spec"]["labels"] == {"flotilla.stack.namespace": "s"}

    res = run("deploy", "-d", "-c", str(path), "s")
    assert res.output.splitlines() == ["Service s_db is up to date", "Service s_web is up to date"]
    assert not [c for c in api.calls if c[0] == "PATCH"]       # compared client-side

    path.write_text(FILE.format(mode="b"))
    res = run("deploy", "-d", "-c", str(path), "s")
    assert res.output.splitlines() == ["Service s_db is up to date", "Updating service s_web"]
    versions = {n: s["spec_version"] for n, s in api.by_name().items()}
    assert versions == {"s_web": 2, "s_db": 1}

    path.write_text("services:\n  web:\n    image: busybox\n")
    res = run("deploy", "-d", "--prune", "-c", str(path), "s")
    assert res.output.splitlines() == ["Removing service s_db", "Updating service s_web"]
    assert set(api.by_name()) == {"s_web"}


def test_ls_services_rm(api, tmp_path):
    path = tmp_path / "compose.yml"
    path.write_text(FILE.format(mode="a"))
    assert run("deploy", "-d", "-c", str(path), "one").exit_code == 0
    assert run("deploy", "-d", "-c", str(path), "two").exit_code == 0
    api(None, "POST", "/v1/services", json={"name": "loose", "task": {"container": {"image": "x"}}})
    res = run("ls")
    assert [line.split() for line in res.output.splitlines()] == [
        ["NAME", "SERVICES"], ["one", "2"], ["two", "2"]]
    assert json.loads(run("ls", "--format", "json").output) == [
        {"name": "one", "services": 2}, {"name": "two", "services": 2}]
    res = run("services", "one")
    assert "one_web" in res.output and "two_web" not in res.output
    res = run("rm", "one", "ghost")
    assert res.exit_code == 1
    assert "Removing service one_db" in res.output and "Removing service one_web" in res.output
    assert "error: stack ghost not found" in res.output
    assert set(api.by_name()) == {"two_db", "two_web", "loose"}
    res = run("ps", "one")
    assert res.exit_code == 1 and "error: stack one not found" in res.output


def test_compose_errors_and_foreign_services(api, tmp_path):
    path = tmp_path / "compose.yml"
    path.write_text("services:\n  web:\n    image: busybox\n    build: .\n    networks: [x]\n")
    res = run("deploy", "-c", str(path), "s")
    assert res.exit_code == 1
    assert res.output.splitlines() == [
        f"error: {path}:4: services.web.build: not supported by Flotilla: build and push the "
        "image first, then name it with image",
        f"error: {path}:5: services.web.networks: not supported by Flotilla: there are no stack "
        "networks; containers use the engine's default network and reach each other through "
        "published ports"]
    assert api.calls == []                                       # nothing sent
    api(None, "POST", "/v1/services", json={"name": "s_web", "task": {"container": {"image": "x"}}})
    path.write_text("services:\n  web:\n    image: busybox\n")
    res = run("deploy", "-d", "-c", str(path), "s")
    assert res.exit_code == 1
    assert res.output.strip() == "error: service s_web exists and is not part of stack s"
    res = run("deploy", "-d", "-c", str(path))
    assert res.exit_code == 1
    assert "no stack name: give one, or set name at the top of the Compose file" in res.output


def test_unreadable_files_are_one_line_errors(api, tmp_path):
    """A Compose file that is not UTF-8, a condition of the wrong type: one
    line each naming file, line and key, exit code 1, nothing sent."""
    path = tmp_path / "compose.yml"
    path.write_bytes(b"services:\n  web:\n    image: busybox\n    environment:\n"
                     b"      NAME: caf\xe9\n")
    res = run("deploy", "-c", str(path), "s")
    assert res.exit_code == 1 and isinstance(res.exception, SystemExit), res.exception
    assert res.output.splitlines() == [
        f"error: {path}:5: services.web.environment.NAME: the file is not UTF-8 (byte 0xe9); "
        "save it as UTF-8"]
    path.write_text("services:\n  web:\n    image: busybox\n"
                    "    depends_on: {db: {condition: [service_started]}}\n"
                    "  db:\n    image: busybox\n    ports: !reset\n")
    res = run("deploy", "-c", str(path), "s")
    assert res.exit_code == 1 and isinstance(res.exception, SystemExit), res.exception
    assert res.output.splitlines() == [
        f"error: {path}:4: services.web.depends_on.db.condition: must be service_started, "
        "service_healthy, service_completed_successfully"]
    assert api.calls == []
