"""`flotilla stack` commands against an in-memory API (no cluster)."""

import itertools
import json

import click
import pytest
from click.testing import CliRunner

from flotilla.cli import stack as stack_cli
from flotilla.cli.main import cli
from flotilla.model import specs
from flotilla.model.network import NetworkSpec


class FakeApi:
    """Just enough of /v1/services and /v1/networks: canonical specs,
    spec_version bumps only on change, a network's subnet chosen, its
    removal refused while a service is on it (or ``busy`` says its tasks are
    still stopping)."""

    def __init__(self):
        self.services = {}
        self.networks = {}
        self.busy = {}                  # network name -> DELETEs refused before it goes
        self.ids = (f"id{n:04d}" for n in itertools.count(1))
        self.calls = []

    def __call__(self, ctx, method, path, json=None, params=None):
        self.calls.append((method, path))
        if path.startswith("/v1/networks"):
            return self.network_call(method, path, json)
        if method == "GET" and path == "/v1/services":
            return [self.view(s) for s in sorted(self.services.values(), key=lambda s: s["name"])]
        if method == "POST" and path == "/v1/services":
            spec = self.by_id(specs.canonical(specs.ServiceSpec.model_validate(json)))
            s = {"id": next(self.ids), "name": spec["name"], "spec": spec, "spec_version": 1}
            self.services[s["id"]] = s
            return self.view(s)
        ref = path.split("/")[3]
        s = self.services.get(ref) or next((x for x in self.services.values() if x["name"] == ref),
                                           None)
        if s is None:
            raise click.ClickException(f"service {ref} not found")
        if method == "PATCH":
            spec = self.by_id(specs.canonical(specs.ServiceSpec.model_validate(json["spec"])))
            if spec != s["spec"]:
                s.update(spec=spec, spec_version=s["spec_version"] + 1)
            return self.view(s)
        if method == "DELETE":
            del self.services[s["id"]]
            return {"id": s["id"], "removed": True}
        if method == "GET" and path.endswith("/tasks"):
            return []
        raise AssertionError((method, path))

    def find_network(self, ref):
        return self.networks.get(ref) or next(
            (n for n in self.networks.values() if n["name"] == ref), None)

    def by_id(self, spec):
        """As the API stores a spec: its networks by id (400 if one is missing)."""
        for att in spec["task"]["networks"]:
            net = self.find_network(att["target"])
            if net is None:
                raise click.ClickException(f"network {att['target']} not found")
            att["target"] = net["id"]
        return spec

    def users(self, net):
        return [{"id": s["id"], "name": s["name"]} for s in self.services.values()
                if any(a["target"] == net["id"] for a in s["spec"]["task"]["networks"])]

    def network_call(self, method, path, body):
        if method == "GET" and path == "/v1/networks":
            return [dict(n) for n in sorted(self.networks.values(), key=lambda n: n["name"])]
        if method == "POST":
            spec = NetworkSpec.model_validate(body).model_dump(mode="json")
            n = dict(spec, id=next(self.ids), subnet=spec["subnet"] or
                     f"10.0.{len(self.networks)}.0/24")
            self.networks[n["id"]] = n
            return dict(n, services=[])
        n = self.find_network(path.split("/")[3])
        if n is None:
            raise click.ClickException(f"network {path.split('/')[3]} not found")
        if method == "GET":
            return dict(n, services=self.users(n))
        if method == "DELETE":
            if self.users(n):
                raise click.ClickException(f"network {n['name']} is in use by service "
                                           f"{self.users(n)[0]['name']}")
            if self.busy.get(n["name"]):
                self.busy[n["name"]] -= 1
                raise click.ClickException(f"network {n['name']} is still in use by 1 task(s) "
                                           "that are stopping; retry shortly")
            del self.networks[n["id"]]
            return {"id": n["id"], "removed": True}
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
    monkeypatch.setattr(stack_cli, "NETWORK_RETRY", 0.01)
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
    assert res.output.splitlines() == ["Creating network s_default", "Creating service s_db",
                                       "Creating service s_web"]
    assert api.by_name()["s_web"]["spec"]["labels"] == {"flotilla.stack.namespace": "s"}
    [default] = api.networks.values()
    assert default["name"] == "s_default" and default["labels"] == {"flotilla.stack.namespace": "s"}
    assert api.by_name()["s_web"]["spec"]["task"]["networks"] == [
        {"target": default["id"], "aliases": ["web"]}]

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
    assert res.output.splitlines() == ["Removing service one_db", "Removing service one_web",
                                       "Removing network one_default",
                                       "error: stack ghost not found"]
    assert set(api.by_name()) == {"two_db", "two_web", "loose"}
    assert [n["name"] for n in api.networks.values()] == ["two_default"]
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
        f"error: {path}:5: services.web.networks[0]: network x is not declared in the top-level "
        "networks"]
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


NETWORKED = """\
services:
  web:
    image: busybox
    networks:
      front: {aliases: [www]}
      shared:
  worker:
    image: busybox
networks:
  front:
    ipam:
      config: [{subnet: 10.9.0.0/24}]
  shared:
    external: true
"""


def test_deploy_makes_the_networks_first_and_checks_existing_ones(api, tmp_path):
    path = tmp_path / "compose.yml"
    path.write_text(NETWORKED)
    # an external network that does not exist: nothing is made
    res = run("deploy", "-d", "-c", str(path), "s")
    assert res.exit_code == 1
    assert res.output.splitlines() == [
        f"error: {path}:13: networks.shared: network shared is external but does not exist: "
        "create it first (flotilla network create shared)"]
    assert not [c for c in api.calls if c[0] != "GET"]

    shared = api(None, "POST", "/v1/networks", json={"name": "shared"})
    res = run("deploy", "-d", "-c", str(path), "s")
    assert res.exit_code == 0, res.output
    assert res.output.splitlines() == ["Creating network s_front", "Creating network s_default",
                                       "Creating service s_web", "Creating service s_worker"]
    nets = {n["name"]: n for n in api.networks.values()}
    assert nets["s_front"]["subnet"] == "10.9.0.0/24"
    assert api.by_name()["s_web"]["spec"]["task"]["networks"] == [
        {"target": nets["s_front"]["id"], "aliases": ["www", "web"]},
        {"target": shared["id"], "aliases": ["web"]}]

    # again: the networks exist, the services are up to date
    before = len(api.calls)
    res = run("deploy", "-d", "-c", str(path), "s")
    assert res.output.splitlines() == ["Service s_web is up to date",
                                       "Service s_worker is up to date"]
    assert [c for c in api.calls[before:] if c[0] != "GET"] == []

    # a network cannot be changed: said, and nothing is sent
    path.write_text(NETWORKED.replace("10.9.0.0/24", "10.8.0.0/24"))
    res = run("deploy", "-d", "-c", str(path), "s")
    assert res.exit_code == 1
    assert res.output.splitlines() == [
        f"error: {path}:10: networks.front: network s_front exists with other settings (subnet "
        "'10.9.0.0/24', not '10.8.0.0/24'): a network cannot be changed; remove the stack "
        "(flotilla stack rm s) and deploy it again"]
    # nor is another stack's network taken over
    path.write_text(NETWORKED)
    res = run("deploy", "-d", "-c", str(path), "t")
    assert res.exit_code == 0, res.output
    path.write_text(NETWORKED.replace("front:\n    ipam", "front:\n    name: s_front\n    ipam"))
    res = run("deploy", "-d", "-c", str(path), "t")
    assert res.exit_code == 1
    assert res.output.splitlines() == [
        f"error: {path}:10: networks.front: network s_front exists and is not part of stack t"]


def test_rm_removes_the_stacks_networks_after_its_services(api, tmp_path):
    path = tmp_path / "compose.yml"
    path.write_text(NETWORKED)
    api(None, "POST", "/v1/networks", json={"name": "shared"})
    assert run("deploy", "-d", "-c", str(path), "s").exit_code == 0
    # the removed services' tasks hold their addresses a while: retried until they are gone
    api.busy["s_front"] = 3
    res = run("rm", "s")
    assert res.exit_code == 0, res.output
    assert res.output.splitlines() == ["Removing service s_web", "Removing service s_worker",
                                       "Removing network s_default", "Removing network s_front"]
    assert [n["name"] for n in api.networks.values()] == ["shared"]     # not the stack's
    assert api.busy["s_front"] == 0

    # a service of its own joined the stack's network: that network stays, said so
    assert run("deploy", "-d", "-c", str(path), "s").exit_code == 0
    default = next(n for n in api.networks.values() if n["name"] == "s_default")
    api(None, "POST", "/v1/services", json={"name": "loose", "task": {
        "container": {"image": "x"}, "networks": [{"target": default["id"]}]}})
    res = run("rm", "s")
    assert res.exit_code == 1
    assert res.output.splitlines()[-1] == (
        "error: cannot remove network s_default: network s_default is in use by service loose")
    assert sorted(n["name"] for n in api.networks.values()) == ["s_default", "shared"]
    # a stack left with networks only is still a stack to remove
    del api.services[api.by_name()["loose"]["id"]]
    res = run("rm", "s")
    assert res.exit_code == 0 and res.output.splitlines() == ["Removing network s_default"]
