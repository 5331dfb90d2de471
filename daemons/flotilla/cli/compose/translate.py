"""Translation: a merged Compose project into the service specs of one
stack, each problem placed at its file, line and key path."""

from __future__ import annotations

import os
import re
import shlex
from dataclasses import dataclass, field

from ...common.units import parse_bytes, parse_duration
from ...model.names import DNS_LABEL, NETWORK_NAME, SERVICE_NAME
from .errors import NOT_SUPPORTED, ComposeError
from .interpolate import read_env_file
from .merge import Project, as_seq, load
from .yamlpos import Map, Mark, Seq, join_path

STACK_LABEL = "flotilla.stack.namespace"
STACK_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,40}$")

TOP_KEYS = {"version", "name", "services", "volumes", "networks"}
SERVICE_KEYS = {"image", "command", "entrypoint", "environment", "env_file", "labels", "ports",
                "volumes", "healthcheck", "deploy", "depends_on", "working_dir", "user",
                "hostname", "stop_grace_period", "stop_signal", "init", "networks"}
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
_NETWORKS = (f"{NOT_SUPPORTED}: services join overlay networks (networks:) and reach each "
             "other there by service name")
_LINKS = (f"{NOT_SUPPORTED}: services on a shared network reach each other by service name; "
          "give other names with networks.<network>.aliases")
SERVICE_HINTS = {
    "build": f"{NOT_SUPPORTED}: build and push the image first, then name it with image",
    "restart": f"{NOT_SUPPORTED}: use deploy.restart_policy",
    "scale": f"{NOT_SUPPORTED}: use deploy.replicas",
    "container_name": f"{NOT_SUPPORTED}: containers are named after their service and task",
    "network_mode": _NETWORKS, "links": _LINKS, "external_links": _LINKS,
    "dns": f"{NOT_SUPPORTED}: containers ask their node's resolver, which forwards the names "
           "it does not know to the node's own resolvers",
    "cpus": f"{NOT_SUPPORTED}: use deploy.resources.limits.cpus",
    "mem_limit": f"{NOT_SUPPORTED}: use deploy.resources.limits.memory",
    "mem_reservation": f"{NOT_SUPPORTED}: use deploy.resources.reservations.memory",
    "tmpfs": f"{NOT_SUPPORTED}: use a volume with type: tmpfs",
}
TOP_HINTS: dict[str, str] = {}
DEPLOY_KEYS = {"mode", "replicas", "labels", "resources", "placement", "restart_policy",
               "update_config", "rollback_config", "endpoint_mode"}
DEPLOY_HINTS: dict[str, str] = {}
# A top-level network: the Compose specification's keys.
NETWORK_KEYS = {"driver", "driver_opts", "ipam", "internal", "attachable", "labels", "external",
                "name", "enable_ipv6", "enable_ipv4"}
NETWORK_OPTS = ("encrypted",)
_ADDRESSES = f"{NOT_SUPPORTED}: the managers hand out every address of a network's subnet"
# A service's place on a network (services.NAME.networks.NETWORK).
SERVICE_NETWORK_KEYS = {"aliases"}
SERVICE_NETWORK_HINTS = {
    "ipv4_address": f"{NOT_SUPPORTED}: the managers decide every task's address",
    "ipv6_address": f"{NOT_SUPPORTED}: networks are IPv4 only",
    "link_local_ips": f"{NOT_SUPPORTED}: the managers decide every task's address",
    "mac_address": f"{NOT_SUPPORTED}: a task's MAC follows from its address",
    "priority": f"{NOT_SUPPORTED}: a task joins its networks in the order they are listed",
    "gw_priority": f"{NOT_SUPPORTED}: a task's default route is through its first network",
    "driver_opts": f"{NOT_SUPPORTED}: a task's place on a network takes no options",
    "interface_name": f"{NOT_SUPPORTED}: Docker names a container's interfaces",
}
DEFAULT_NETWORK = "default"
TRUE, FALSE = ("", "true", "1", "yes"), ("false", "0", "no")


@dataclass
class StackNetwork:
    """A network the stack's services are on: one the stack makes
    (``spec``, a NetworkSpec body) or an ``external`` one that must exist."""
    key: str                    # its name in the files
    name: str                   # its name in the cluster
    external: bool
    spec: dict | None
    where: str | None           # "FILE:LINE: networks.KEY" where declared, to place messages
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
        self.declared: dict[str, StackNetwork] = {}     # top-level networks, by key
        self.used: list[str] = []                         # keys the services are on, in order

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
            self.err(m.at(key), join_path(path, key), message)

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
                    text = self.string(val, v.at(key), join_path(path, key))
                    if text is not None:
                        out[key] = text
            return out
        self.err(mark, path, "must be a list of KEY=VALUE or a mapping")
        return None

    def warn(self, mark, path: str, message: str):
        self.project.warnings.append(f"{mark}: {path}: {message}")

    # -- top level ------------------------------------------------------------------------
    def run(self) -> list[dict]:
        data = self.project.data
        if not STACK_NAME.match(self.stack):
            self.errors.append(f"invalid stack name {self.stack!r}: use up to 41 letters, digits, "
                               "'_' or '-', starting with a letter or digit")
            return []
        self.keys(data, "", TOP_KEYS, TOP_HINTS)
        self.top_volumes(data)
        self.top_networks(data)
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

    # -- networks -------------------------------------------------------------------------
    def top_networks(self, data: Map):
        nets = data.get("networks")
        if nets is None:
            return
        if not isinstance(nets, Map):
            self.err(data.at("networks"), "networks", "must be a mapping")
            return
        for key, conf in nets.items():
            if key.startswith("x-"):
                continue
            path, mark = f"networks.{key}", nets.at(key)
            conf = self.mapping(conf, mark, path)
            if conf is not None:
                self.declared[key] = self.network(key, conf, mark, path)

    def network(self, key: str, conf: Map, mark, path: str) -> StackNetwork:
        """One top-level network: the spec of one the stack makes, or the
        name of an external one."""
        where = f"{mark}: {path}"
        self.keys(conf, path, NETWORK_KEYS, known=NETWORK_KEYS)
        external, ext_name = False, None
        if conf.get("external") is not None:
            ext = conf["external"]
            if isinstance(ext, Map):        # the old form: external: {name: NAME}
                self.keys(ext, f"{path}.external", {"name"})
                external = True
                if ext.get("name") is not None:
                    ext_name = self.string(ext["name"], ext.at("name"), f"{path}.external.name")
            else:
                external = bool(self.boolean(ext, conf.at("external"), f"{path}.external"))
        if conf.get("name") is not None:
            name = self.string(conf["name"], conf.at("name"), f"{path}.name") or key
        elif external:
            name = ext_name or key          # an external network is named as written
        else:
            name = f"{self.stack}_{key}"
        if external and not NETWORK_NAME.match(name):
            self.err(conf.at("name") if "name" in conf else mark, path,
                     f"network name {name!r} must be 1-63 characters: letters, digits, '_', "
                     "'.', '-'")
        if external:
            for other in conf:
                if other not in ("external", "name") and not other.startswith("x-") \
                        and other in NETWORK_KEYS:
                    self.err(conf.at(other), join_path(path, other),
                             "cannot be set for an external network (it exists already; the "
                             "stack only joins it)")
        if external:
            return StackNetwork(key, name, True, None, where)
        spec: dict = {"name": name, "driver": "overlay"}
        fields: dict = {}                   # spec field -> (path, mark), to place errors
        if conf.get("driver") is not None:
            driver = conf["driver"]
            if driver != "overlay":
                self.err(conf.at("driver"), f"{path}.driver",
                         f"{driver!r} is {NOT_SUPPORTED}: its networks are overlay networks "
                         "(driver: overlay, or no driver)")
        if conf.get("driver_opts") is not None:
            opts = self.mapping(conf["driver_opts"], conf.at("driver_opts"),
                                f"{path}.driver_opts") or Map()
            for opt, value in opts.items():
                where_opt = f"{path}.driver_opts.{opt}"
                if opt not in NETWORK_OPTS:
                    self.err(opts.at(opt), where_opt,
                             f"{NOT_SUPPORTED} (known options: {', '.join(NETWORK_OPTS)})")
                    continue
                text = None if isinstance(value, (Map, Seq)) else \
                    "" if value is None else str(value).lower()
                if text in TRUE:
                    spec[opt] = True
                elif text in FALSE:
                    spec[opt] = False
                else:
                    self.err(opts.at(opt), where_opt, "must be true or false (or empty: true)")
        if conf.get("ipam") is not None:
            self.ipam(conf["ipam"], conf.at("ipam"), f"{path}.ipam", spec, fields)
        if conf.get("internal") is not None:
            spec["internal"] = self.boolean(conf["internal"], conf.at("internal"),
                                            f"{path}.internal")
        if conf.get("attachable") is not None and \
                self.boolean(conf["attachable"], conf.at("attachable"), f"{path}.attachable"):
            self.warn(conf.at("attachable"), f"{path}.attachable",
                      "ignored: only services' tasks join Flotilla networks")
        if conf.get("enable_ipv6") is not None and \
                self.boolean(conf["enable_ipv6"], conf.at("enable_ipv6"), f"{path}.enable_ipv6"):
            self.err(conf.at("enable_ipv6"), f"{path}.enable_ipv6",
                     f"{NOT_SUPPORTED}: networks are IPv4 only")
        if conf.get("enable_ipv4") is not None and not \
                self.boolean(conf["enable_ipv4"], conf.at("enable_ipv4"), f"{path}.enable_ipv4"):
            self.err(conf.at("enable_ipv4"), f"{path}.enable_ipv4",
                     f"{NOT_SUPPORTED}: networks are IPv4 only")
        labels: dict = {}
        if conf.get("labels") is not None:
            labels = self.pairs(conf["labels"], conf.at("labels"), f"{path}.labels", False) or {}
            self.reserved(labels, conf.at("labels"), f"{path}.labels")
            fields["labels"] = (f"{path}.labels", conf.at("labels"))
        spec["labels"] = {**labels, STACK_LABEL: self.stack}
        fields["name"] = (f"{path}.name", conf.at("name")) if "name" in conf else (path, mark)
        return StackNetwork(key, name, False, self.valid_network(spec, fields, path, mark), where)

    def ipam(self, v, mark, path, spec: dict, fields: dict):
        ipam = self.mapping(v, mark, path)
        if ipam is None:
            return
        self.keys(ipam, path, {"driver", "config"},
                  {"options": f"{NOT_SUPPORTED}: the managers are the only address manager"})
        driver = ipam.get("driver")
        if driver is not None and driver != "default":
            self.err(ipam.at("driver"), f"{path}.driver",
                     f"{driver!r} is {NOT_SUPPORTED}: the managers are the only address "
                     "manager (driver: default, or no driver)")
        config = ipam.get("config")
        if config is None:
            return
        if not isinstance(config, Seq):
            self.err(ipam.at("config"), f"{path}.config", "must be a list")
            return
        if len(config) > 1:
            self.err(config.at(1), f"{path}.config[1]",
                     "a network has one subnet: give only one entry")
            return
        for i, entry in enumerate(config):
            where = f"{path}.config[{i}]"
            entry = self.mapping(entry, config.at(i), where)
            if entry is None:
                continue
            self.keys(entry, where, {"subnet", "gateway"},
                      {"ip_range": _ADDRESSES, "aux_addresses": _ADDRESSES})
            for key in ("subnet", "gateway"):
                if entry.get(key) is not None:
                    spec[key] = self.string(entry[key], entry.at(key), f"{where}.{key}")
                    fields[key] = (f"{where}.{key}", entry.at(key))

    def valid_network(self, spec: dict, fields: dict, path: str, mark) -> dict | None:
        from pydantic import ValidationError

        from ...model.network import NetworkSpec
        try:
            return NetworkSpec.model_validate(spec).model_dump(mode="json")
        except ValidationError as exc:
            for e in exc.errors():
                where, at = fields.get(e["loc"][0], (path, mark)) if e["loc"] else (path, mark)
                message = e["msg"]
                if message.startswith("Value error, "):
                    message = message[len("Value error, "):]
                self.err(at, where, message)
            return None

    def service_networks(self, name: str, svc: Map, mark, path: str,
                         origin: _Origin) -> list[dict]:
        """A service's networks (the stack's default network when it names
        none), each with its aliases and, as docker stack deploy gives it,
        the service's name in the file."""
        v = svc.get("networks")
        where, at_networks = f"{path}.networks", svc.at("networks")
        items: list[tuple[str, list[str], object, str]] = []      # key, aliases, mark, path
        aliases_at: dict[str, tuple] = {}
        if v is None or (isinstance(v, (Map, Seq)) and not v):
            items.append((DEFAULT_NETWORK, [], at_networks, where))
        elif isinstance(v, Seq):
            for i, key in enumerate(v):
                key = self.string(key, v.at(i), f"{where}[{i}]")
                if key is not None:
                    items.append((key, [], v.at(i), f"{where}[{i}]"))
        elif isinstance(v, Map):
            for key, conf in v.items():
                at = join_path(where, key)
                aliases: list[str] = []
                if conf is not None:
                    conf = self.mapping(conf, v.at(key), at)
                    if conf is None:
                        continue
                    self.keys(conf, at, SERVICE_NETWORK_KEYS, SERVICE_NETWORK_HINTS)
                    if conf.get("aliases") is not None:
                        aliases = self.strings(conf["aliases"], conf.at("aliases"),
                                               f"{at}.aliases") or []
                    if conf.get("aliases") is not None:
                        aliases_at[key] = (f"{at}.aliases", conf.at("aliases"))
                items.append((key, aliases, v.at(key), at))
        else:
            self.err(at_networks, where, "must be a list of networks or a mapping")
            return []
        full = f"{self.stack}_{name}"
        if SERVICE_NAME.match(full) and not (DNS_LABEL.match(full) and DNS_LABEL.match(name)):
            self.err(mark, path, f"service name {full} is looked up on its networks, so it must "
                     "be a DNS label: letters, digits, '-' and '_', starting and ending with a "
                     "letter or digit")
        out: list[dict] = []
        for key, aliases, at_mark, at in items:
            if key not in self.declared and key != DEFAULT_NETWORK:
                self.err(at_mark, at, f"network {key} is not declared in the top-level networks")
                continue
            if key not in self.used:
                self.used.append(key)
            origin.add(("task", "networks", len(out)), at, at_mark)
            if key in aliases_at:
                origin.add(("task", "networks", len(out), "aliases"), *aliases_at[key])
            out.append({"target": self.network_name(key),
                        "aliases": aliases + ([name] if name not in aliases else [])})
        return out

    def network_name(self, key: str) -> str:
        net = self.declared.get(key)
        return net.name if net is not None else f"{self.stack}_{DEFAULT_NETWORK}"

    def stack_networks(self) -> list[StackNetwork]:
        """The networks the services are on, in the order they are first named."""
        out = []
        for key in self.used:
            net = self.declared.get(key)
            if net is None:                 # the default network, not declared
                name = f"{self.stack}_{DEFAULT_NETWORK}"
                net = StackNetwork(key, name, False, self.valid_network(
                    {"name": name, "labels": {STACK_LABEL: self.stack}}, {}, "networks", None),
                    None)
            out.append(net)
        return out

    def ordered(self, specs: list[dict], marks: dict) -> list[dict]:
        """Dependencies first (file order otherwise); a cycle is an error."""
        by_name = {s["name"]: s for s in specs}
        out: list[dict] = []
        state: dict[str, str] = {}      # name -> visiting | done

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
            return join_path(path, key)

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
        task["networks"] = self.service_networks(name, svc, mark, path, origin)
        spec["task"] = task
        if svc.get("ports") is not None:
            ports = self.ports(svc["ports"], at("ports"), sub("ports"), origin)
            if ports:
                spec.setdefault("endpoint", {})["ports"] = ports
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

        from ...model.specs import ServiceSpec
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
            files = files if isinstance(files, Seq) else as_seq(files)
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
        if d.get("endpoint_mode") is not None:
            mode = d["endpoint_mode"]
            if mode not in ("vip", "dnsrr"):
                self.err(at("endpoint_mode"), f"{path}.endpoint_mode", "must be vip or dnsrr")
            else:
                spec.setdefault("endpoint", {})["mode"] = mode
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
                where = join_path(path, dep)
                condition: str | None = "started"
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
        out: list[dict] = []
        for dep, condition, m, where in items:
            if dep == name:
                self.err(m, where, "a service cannot depend on itself")
            elif dep not in services:
                self.err(m, where, f"service {dep} is not defined in this file")
            else:
                origin.add(("depends_on", len(out)), where, m)
                out.append({"service": f"{self.stack}_{dep}", "condition": condition})
        return out


def translate_stack(project: Project, stack: str) -> tuple[list[dict], list[StackNetwork]]:
    """Service specs for ``stack``, dependencies first, and the networks
    they are on; raises ComposeError."""
    t = _Translator(project, stack)
    specs = t.run()
    networks = t.stack_networks() if specs else []
    errors = project.errors + t.errors
    if errors:
        raise ComposeError(_by_position(errors, project.files))
    return specs, networks


def translate(project: Project, stack: str) -> list[dict]:
    """Service specs for ``stack``, dependencies first; raises ComposeError."""
    return translate_stack(project, stack)[0]


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


@dataclass
class Stack:
    """What a stack deploy sends: its name, its services' specs
    (dependencies first), the networks they are on and the warnings."""
    name: str
    services: list[dict]
    networks: list[StackNetwork]
    warnings: list[str]


def load_stack(paths: list[str], stack: str | None = None,
               environ: dict | None = None) -> Stack:
    """Load, merge and translate Compose files; raises ComposeError."""
    project = load(paths, environ)
    name = stack or project.name
    if not name:
        raise ComposeError(["no stack name: give one, or set name at the top of the Compose file"])
    specs, networks = translate_stack(project, name)
    return Stack(name, specs, networks, project.warnings)


def stack_specs(paths: list[str], stack: str | None = None, environ: dict | None = None):
    """Load, merge and translate: (stack name, specs, warnings)."""
    s = load_stack(paths, stack, environ)
    return s.name, s.services, s.warnings
