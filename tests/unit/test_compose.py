"""Compose files to service specs: translation, errors with lines, interpolation."""

import os
import textwrap

import pytest

from flotilla.cli.compose.errors import ComposeError
from flotilla.cli.compose.merge import load
from flotilla.cli.compose.translate import STACK_LABEL, load_stack, stack_specs, translate
from flotilla.model.specs import ServiceSpec

NS = {"flotilla.stack.namespace": "shop"}

REALISTIC = """\
version: "3.9"

x-defaults: &defaults
  restart_policy:
    condition: on-failure
    delay: 5s
    max_attempts: 3
    window: 2m

x-logging-level: &level
  LOG_LEVEL: ${LOG_LEVEL:-info}

services:
  web:
    image: registry.local/shop/web:${TAG:-1.4}
    entrypoint: /bin/sh -c
    command: ["exec httpd -f -p 80 -h /www"]
    working_dir: /www
    user: "1000"
    hostname: web
    stop_grace_period: 1m30s
    stop_signal: SIGQUIT
    init: true
    environment:
      <<: *level
      CACHE_URL: cache:6379
      DEBUG: "false"
      FROM_SHELL:
    labels:
      - com.example.tier=front
    ports:
      - "8080:80"
      - target: 443
        published: 8443
        protocol: tcp
        mode: host
      - "5353:53/udp"
    volumes:
      - ./static:/www:ro
      - uploads:/uploads
      - type: tmpfs
        target: /tmp
    healthcheck:
      test: wget -q -O- http://127.0.0.1/ || exit 1
      interval: 10s
      timeout: 500ms
      retries: 5
      start_period: 1m
    depends_on:
      cache:
        condition: service_healthy
      worker:
        condition: service_started
    deploy:
      replicas: 2
      labels:
        com.example.owner: team-web
      resources:
        limits: {cpus: "0.5", memory: 512M}
        reservations: {cpus: 0.25, memory: 128M}
      placement:
        constraints: [node.role==worker, node.labels.zone!=dmz]
        preferences:
          - spread: node.labels.zone
        max_replicas_per_node: 1
      update_config:
        parallelism: 1
        delay: 10s
        failure_action: rollback
        monitor: 30s
        max_failure_ratio: 0.2
        order: start-first
      rollback_config:
        parallelism: 0
        order: stop-first
      <<: *defaults

  cache:
    image: redis:7
    command: redis-server --save "" --appendonly no
    healthcheck:
      test: ["CMD", "redis-cli", "ping"]
      interval: 5s
    deploy:
      resources:
        limits:
          memory: 1G

  worker:
    image: registry.local/shop/worker:1.4
    env_file:
      - config/worker.env
    environment:
      - QUEUE=orders
      - LOG_LEVEL=debug
    healthcheck:
      disable: true
    volumes:
      - shared:/shared
    depends_on: [cache]
    deploy:
      mode: global
      placement:
        constraints:
          - node.labels.queue==yes
      <<: *defaults

volumes:
  uploads:
  shared:
    external: true
    name: shop-shared-data
"""

WORKER_ENV = """\
# worker settings
LOG_LEVEL=warning

export BATCH=50
GREETING="hello world"  
LITERAL='$NOT_INTERPOLATED'
HOME_DIR=${HOME}/work # a comment
"""


def write(tmp_path, text, name="compose.yml"):
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return str(path)


def errors_of(tmp_path, text, stack="shop", environ=None, name="compose.yml"):
    path = write(tmp_path, text, name)
    with pytest.raises(ComposeError) as info:
        stack_specs([path], stack, environ if environ is not None else {})
    return path, info.value.errors


def one_error(tmp_path, text, **kw):
    path, errors = errors_of(tmp_path, text, **kw)
    assert len(errors) == 1, errors
    return path, errors[0]


def line_of(text: str, needle: str) -> int:
    """1-based line of the first line containing ``needle``."""
    for n, line in enumerate(textwrap.dedent(text).splitlines(), 1):
        if needle in line:
            return n
    raise AssertionError(needle)


def test_realistic_file(tmp_path):
    path = write(tmp_path, REALISTIC)
    write(tmp_path, WORKER_ENV, "config/worker.env")
    env = {"TAG": "1.5", "FROM_SHELL": "yes", "HOME": "/home/op"}
    name, specs, warnings = stack_specs([path], "shop", env)
    assert name == "shop" and warnings == []
    by_name = {s["name"]: s for s in specs}
    # dependencies first
    assert [s["name"] for s in specs] == ["shop_cache", "shop_worker", "shop_web"]

    restart = {"condition": "on-failure", "delay": 5.0, "max_attempts": 3, "window": 120.0}
    assert by_name["shop_web"] == {
        "name": "shop_web",
        "labels": {"com.example.owner": "team-web", **NS},
        "replicas": 2,
        "task": {
            "container": {
                "image": "registry.local/shop/web:1.5",
                "command": ["/bin/sh", "-c"],
                "args": ["exec httpd -f -p 80 -h /www"],
                "env": ["LOG_LEVEL=info", "CACHE_URL=cache:6379", "DEBUG=false",
                        "FROM_SHELL=yes"],
                "labels": {"com.example.tier": "front", **NS},
                "workdir": "/www",
                "user": "1000",
                "hostname": "web",
                "stop_signal": "SIGQUIT",
                "stop_grace_period": 90.0,
                "init": True,
                "mounts": [
                    {"type": "bind", "source": str(tmp_path / "static"), "target": "/www",
                     "readonly": True},
                    {"type": "volume", "source": "shop_uploads", "target": "/uploads"},
                    {"type": "tmpfs", "target": "/tmp"},
                ],
                "healthcheck": {"test": ["CMD-SHELL", "wget -q -O- http://127.0.0.1/ || exit 1"],
                                "interval": 10.0, "timeout": 0.5, "retries": 5,
                                "start_period": 60.0},
            },
            "resources": {"limits": {"cpus": 0.5, "memory": 512 * 1024 ** 2},
                          "reservations": {"cpus": 0.25, "memory": 128 * 1024 ** 2}},
            "placement": {"constraints": ["node.role==worker", "node.labels.zone!=dmz"],
                          "preferences": [{"spread": "node.labels.zone"}],
                          "max_replicas": 1},
            "restart": restart,
            "networks": [{"target": "shop_default", "aliases": ["web"]}],
        },
        "endpoint": {"ports": [{"published": 8080, "target": 80, "protocol": "tcp"},
                               {"published": 8443, "target": 443, "protocol": "tcp"},
                               {"published": 5353, "target": 53, "protocol": "udp"}]},
        "update": {"parallelism": 1, "delay": 10.0, "failure_action": "rollback",
                   "monitor": 30.0, "max_failure_ratio": 0.2, "order": "start-first"},
        "rollback": {"parallelism": 0, "order": "stop-first"},
        "depends_on": [{"service": "shop_cache", "condition": "healthy"},
                       {"service": "shop_worker", "condition": "started"}],
    }
    assert by_name["shop_cache"] == {
        "name": "shop_cache",
        "labels": NS,
        "task": {
            "container": {"image": "redis:7",
                          "args": ["redis-server", "--save", "", "--appendonly", "no"],
                          "labels": NS,
                          "healthcheck": {"test": ["CMD", "redis-cli", "ping"], "interval": 5.0}},
            "resources": {"limits": {"memory": 1024 ** 3}},
            "networks": [{"target": "shop_default", "aliases": ["cache"]}],
        },
    }
    assert by_name["shop_worker"] == {
        "name": "shop_worker",
        "labels": NS,
        "mode": "global",
        "task": {
            "container": {
                "image": "registry.local/shop/worker:1.4",
                # env_file first, then environment (which wins for LOG_LEVEL)
                "env": ["LOG_LEVEL=debug", "BATCH=50", "GREETING=hello world",
                        "LITERAL=$NOT_INTERPOLATED", "HOME_DIR=/home/op/work", "QUEUE=orders"],
                "labels": NS,
                "mounts": [{"type": "volume", "source": "shop-shared-data", "target": "/shared"}],
                "healthcheck": {"test": ["NONE"]},
            },
            "placement": {"constraints": ["node.labels.queue==yes"]},
            "restart": restart,
            "networks": [{"target": "shop_default", "aliases": ["worker"]}],
        },
        "depends_on": [{"service": "shop_cache", "condition": "started"}],
    }
    for spec in specs:      # what the API will accept
        ServiceSpec.model_validate(spec)


def test_name_defaults_to_the_files_name(tmp_path):
    path = write(tmp_path, """\
        name: blog
        services:
          app: {image: busybox}
        """)
    name, specs, _ = stack_specs([path], None, {})
    assert name == "blog" and [s["name"] for s in specs] == ["blog_app"]
    assert stack_specs([path], "other", {})[1][0]["name"] == "other_app"


@pytest.mark.parametrize("snippet, needle, key_path", [
    ("    build: .\n", "build:", "services.web.build"),
    ("    network_mode: host\n", "network_mode:", "services.web.network_mode"),
    ("    privileged: true\n", "privileged:", "services.web.privileged"),
    ("    secrets: [token]\n", "secrets:", "services.web.secrets"),
    ("    restart: always\n", "restart:", "services.web.restart"),
    ("    deploy:\n      placement:\n        foo: bar\n", "foo:",
     "services.web.deploy.placement.foo"),
    ("    deploy:\n      resources:\n        limits:\n          pids: 10\n", "pids:",
     "services.web.deploy.resources.limits.pids"),
    ("    deploy:\n      restart_policy:\n        when: always\n", "when:",
     "services.web.deploy.restart_policy.when"),
    ("    healthcheck:\n      test: [CMD, true]\n      start_interval: 1s\n", "start_interval:",
     "services.web.healthcheck.start_interval"),
    ("    ports:\n      - target: 80\n        published: 80\n        host_ip: 127.0.0.1\n",
     "host_ip:", "services.web.ports[0].host_ip"),
    ("    volumes:\n      - type: bind\n        source: /srv\n        target: /srv\n"
     "        bind:\n          propagation: shared\n", "bind:", "services.web.volumes[0].bind"),
    ("    depends_on:\n      db:\n        condition: service_started\n        restart: true\n",
     "restart: true", "services.web.depends_on.db.restart"),
])
def test_unsupported_service_keys(tmp_path, snippet, needle, key_path):
    text = "services:\n  web:\n    image: busybox\n" + snippet + "  db:\n    image: busybox\n"
    path, error = one_error(tmp_path, text)
    assert error.startswith(f"{path}:{line_of(text, needle)}: {key_path}: "), error
    assert "not supported by Flotilla" in error


@pytest.mark.parametrize("text, needle, key_path", [
    ("services:\n  web: {image: busybox}\nsecrets:\n  token: {file: ./t}\n", "secrets:", "secrets"),
    ("services:\n  web: {image: busybox}\nconfigs: {}\n", "configs:", "configs"),
    ("services:\n  web: {image: busybox}\nvolumes:\n  data:\n    driver: nfs\n", "driver:",
     "volumes.data.driver"),
    ("services:\n  web: {image: busybox}\nvolumes:\n  data:\n    driver_opts: {type: nfs}\n",
     "driver_opts:", "volumes.data.driver_opts"),
])
def test_unsupported_top_level_keys(tmp_path, text, needle, key_path):
    path, error = one_error(tmp_path, text)
    assert error.startswith(f"{path}:{line_of(text, needle)}: {key_path}: "
                            "not supported by Flotilla")


def test_all_errors_are_reported_together_in_line_order(tmp_path):
    text = """\
        services:
          web:
            image: busybox
            network_mode: host
            imgae: typo
            ports: ["80"]
            deploy:
              mode: replicated-job
          api:
            command: serve
        networks: [front]
        """
    path, errors = errors_of(tmp_path, text)
    assert errors == [
        f"{path}:4: services.web.network_mode: not supported by Flotilla: services join overlay "
        "networks (networks:) and reach each other there by service name",
        f"{path}:5: services.web.imgae: unknown key (not part of the Compose specification)",
        f"{path}:6: services.web.ports[0]: '80' has no published port: Flotilla publishes ports "
        "in host mode only, on the node running each task, so the host port must be given "
        "(e.g. \"80:80\")",
        f"{path}:8: services.web.deploy.mode: jobs are not supported by Flotilla",
        f"{path}:9: services.api.image: required: Flotilla runs images (build is not supported)",
        f"{path}:11: networks: must be a mapping",
    ]


NETWORKS = """\
services:
  web:
    image: busybox
    networks:
      front:
        aliases: [www]
      back:
    deploy:
      endpoint_mode: dnsrr
  client:
    image: busybox
  db:
    image: busybox
    networks: [back, shared, legacy]
networks:
  front:
    driver: overlay
    driver_opts: {encrypted: ""}
    ipam:
      driver: default
      config:
        - subnet: 10.9.0.0/24
          gateway: 10.9.0.254
    labels: {tier: front}
    internal: true
  back:
    attachable: true
  shared:
    external: true
  legacy:
    external: {name: old-net}
  unused:
    name: never-made
"""


def test_networks(tmp_path):
    """Services join the networks they name (the stack's default network
    when they name none), with their aliases and their name in the file;
    networks are named STACK_KEY unless external or named; only the
    networks services are on are made."""
    path = write(tmp_path, NETWORKS)
    stack = load_stack([path], "shop", {})
    by_name = {s["name"]: s for s in stack.services}
    assert by_name["shop_web"]["task"]["networks"] == [
        {"target": "shop_front", "aliases": ["www", "web"]},
        {"target": "shop_back", "aliases": ["web"]}]
    assert by_name["shop_web"]["endpoint"] == {"mode": "dnsrr"}
    assert by_name["shop_client"]["task"]["networks"] == [
        {"target": "shop_default", "aliases": ["client"]}]
    assert "endpoint" not in by_name["shop_client"]
    assert by_name["shop_db"]["task"]["networks"] == [
        {"target": "shop_back", "aliases": ["db"]}, {"target": "shared", "aliases": ["db"]},
        {"target": "old-net", "aliases": ["db"]}]
    nets = {n.key: n for n in stack.networks}
    assert [n.name for n in stack.networks] == ["shop_front", "shop_back", "shop_default",
                                                "shared", "old-net"]
    assert nets["front"].spec == {
        "name": "shop_front", "driver": "overlay", "subnet": "10.9.0.0/24",
        "gateway": "10.9.0.254", "attachable": False, "internal": True, "encrypted": True,
        "labels": {"tier": "front", **NS}}
    assert nets["default"].spec == {
        "name": "shop_default", "driver": "overlay", "subnet": None, "gateway": None,
        "attachable": False, "internal": False, "encrypted": False, "labels": NS}
    assert (nets["shared"].external, nets["shared"].spec) == (True, None)
    assert nets["legacy"].external and nets["shared"].where == f"{path}:28: networks.shared"
    # attachable: Docker's tools honour it; here only tasks join networks
    assert stack.warnings == [f"{path}:27: networks.back.attachable: ignored: only services' "
                              "tasks join Flotilla networks"]
    # a network named by the file
    path = write(tmp_path, "services:\n  a: {image: x}\nnetworks:\n  default: {name: plain}\n")
    assert [n.name for n in load_stack([path], "shop", {}).networks] == ["plain"]


@pytest.mark.parametrize("text, needle, key_path, message", [
    ("    networks:\n      front:\n        ipv4_address: 10.9.0.5\n", "ipv4_address",
     "services.web.networks.front.ipv4_address", "not supported by Flotilla: the managers"),
    ("    networks:\n      front:\n        priority: 10\n", "priority",
     "services.web.networks.front.priority", "not supported by Flotilla"),
    ("    networks:\n      front:\n        gw_priority: 10\n", "gw_priority",
     "services.web.networks.front.gw_priority", "not supported by Flotilla"),
    ("    networks: [front, elsewhere]\n", "networks:", "services.web.networks[1]",
     "network elsewhere is not declared in the top-level networks"),
    ("    networks: front\n", "networks:", "services.web.networks",
     "must be a list of networks or a mapping"),
    ("    networks:\n      front:\n        aliases: www\n", "aliases",
     "services.web.networks.front.aliases", "must be a list"),
    ("    networks:\n      front:\n        aliases: [-www]\n", "aliases",
     "services.web.networks.front.aliases", "alias '-www' is not a DNS label"),
    ("    deploy:\n      endpoint_mode: round\n", "endpoint_mode",
     "services.web.deploy.endpoint_mode", "must be vip or dnsrr"),
    ("    links: [db]\n", "links", "services.web.links", "reach each other by service name"),
    ("networks:\n  front:\n    driver: bridge\n", "driver:", "networks.front.driver",
     "'bridge' is not supported by Flotilla: its networks are overlay networks"),
    ("networks:\n  front:\n    driver_opts:\n      com.docker.network.driver.mtu: 1400\n",
     "mtu", "networks.front.driver_opts.com.docker.network.driver.mtu",
     "not supported by Flotilla (known options: encrypted)"),
    ("networks:\n  front:\n    driver_opts: {encrypted: maybe}\n", "encrypted",
     "networks.front.driver_opts.encrypted", "must be true or false"),
    ("networks:\n  front:\n    ipam:\n      config:\n        - subnet: 10.9.0.0/24\n"
     "          ip_range: 10.9.0.0/25\n", "ip_range", "networks.front.ipam.config[0].ip_range",
     "not supported by Flotilla: the managers hand out every address"),
    ("networks:\n  front:\n    ipam:\n      config:\n        - subnet: 10.9.0.0/24\n"
     "        - subnet: 10.8.0.0/24\n", "10.8.0.0", "networks.front.ipam.config[1]",
     "a network has one subnet"),
    ("networks:\n  front:\n    ipam:\n      config:\n        - subnet: 10.9.0.1/24\n",
     "subnet", "networks.front.ipam.config[0].subnet", "is not an IPv4 subnet in CIDR form"),
    ("networks:\n  front:\n    ipam:\n      config:\n        - subnet: fd00::/64\n",
     "subnet", "networks.front.ipam.config[0].subnet", "only IPv4 subnets are supported"),
    ("networks:\n  front:\n    ipam:\n      driver: dhcp\n", "driver:",
     "networks.front.ipam.driver", "'dhcp' is not supported by Flotilla"),
    ("networks:\n  front:\n    ipam:\n      options: {a: b}\n", "options:",
     "networks.front.ipam.options", "not supported by Flotilla"),
    ("networks:\n  front:\n    enable_ipv6: true\n", "enable_ipv6",
     "networks.front.enable_ipv6", "not supported by Flotilla: networks are IPv4 only"),
    ("networks:\n  front:\n    external: true\n    internal: true\n", "internal",
     "networks.front.internal", "cannot be set for an external network"),
    ("networks:\n  front:\n    scope: swarm\n", "scope", "networks.front.scope",
     "unknown key (not part of the Compose specification)"),
    ("networks:\n  front:\n    labels: {flotilla.stack.namespace: x}\n", "labels",
     "networks.front.labels", "label flotilla.stack.namespace is reserved"),
    ("networks:\n  front:\n    name: bad name\n", "name:", "networks.front.name",
     "must be 1-63 characters"),
    ("networks:\n  front:\n    external: true\n    name: bad name\n", "name:", "networks.front",
     "network name 'bad name' must be"),
])
def test_network_errors_name_the_key(tmp_path, text, needle, key_path, message):
    """Each network key Flotilla cannot honour is an error at its line."""
    service, _, top = text.partition("networks:\n  front:") if text.startswith("networks:") \
        else (text, "", "")
    top = "networks:\n  front:" + top if top else "networks:\n  front: {}\n"
    full = "services:\n  web:\n    image: busybox\n" + service + top
    path, error = one_error(tmp_path, full)
    assert error.startswith(f"{path}:{line_of(full, needle)}: {key_path}: "), error
    assert message in error, error


def test_a_service_on_a_network_needs_a_name_to_look_up(tmp_path):
    path, error = one_error(tmp_path, "services:\n  web.v2:\n    image: busybox\n")
    assert error == (f"{path}:2: services.web.v2: service name shop_web.v2 is looked up on its "
                     "networks, so it must be a DNS label: letters, digits, '-' and '_', "
                     "starting and ending with a letter or digit")


def test_service_networks_merge_by_network(tmp_path):
    base = write(tmp_path, """\
        services:
          web:
            image: busybox
            networks:
              front: {aliases: [www]}
              back:
        networks: {front: {}, back: {}, side: {}}
        """, "compose.yml")
    override = write(tmp_path, """\
        services:
          web:
            networks:
              front: {aliases: [site]}
              side:
        """, "compose.override.yml")
    stack = load_stack([base, override], "s", {})
    assert stack.services[0]["task"]["networks"] == [
        {"target": "s_front", "aliases": ["www", "site", "web"]},
        {"target": "s_back", "aliases": ["web"]}, {"target": "s_side", "aliases": ["web"]}]
    with open(override, "w") as f:
        f.write("services:\n  web:\n    networks: !override [side]\n")
    stack = load_stack([base, override], "s", {})
    assert stack.services[0]["task"]["networks"] == [{"target": "s_side", "aliases": ["web"]}]


def test_image_missing(tmp_path):
    path, error = one_error(tmp_path, "services:\n  web:\n    command: [sleep, '1']\n")
    assert error == (f"{path}:2: services.web.image: required: Flotilla runs images "
                     "(build is not supported)")
    path, error = one_error(tmp_path, "services:\n  web:\n")
    assert error.startswith(f"{path}:2: services.web.image: required")


def test_ports(tmp_path):
    text = """\
        services:
          web:
            image: busybox
            ports:
              - 8000-8001:9000-9001
              - 53:53/udp
        """
    _, specs, _ = stack_specs([write(tmp_path, text)], "s", {})
    assert specs[0]["endpoint"]["ports"] == [
        {"published": 8000, "target": 9000, "protocol": "tcp"},
        {"published": 8001, "target": 9001, "protocol": "tcp"},
        {"published": 53, "target": 53, "protocol": "udp"}]
    text = """\
        services:
          web:
            image: busybox
            ports:
              - 80
              - target: 80
                published: 8080
                mode: ingress
              - target: 81
              - "127.0.0.1:82:82"
              - 8000-8010:80
        """
    path, errors = errors_of(tmp_path, text)
    assert len(errors) == 5
    assert errors[0].startswith(f"{path}:5: services.web.ports[0]: '80' has no published port")
    assert errors[1].startswith(f"{path}:8: services.web.ports[1].mode: ingress is not supported")
    assert "host mode only" in errors[1]
    assert errors[2].startswith(f"{path}:9: services.web.ports[2].published: required")
    assert errors[3].startswith(f"{path}:10: services.web.ports[3]: '127.0.0.1:82:82': a host IP")
    assert errors[4].startswith(f"{path}:11: services.web.ports[4]: '8000-8010:80': the published "
                                "and target ranges")


def test_volumes(tmp_path):
    text = """\
        services:
          web:
            image: busybox
            volumes:
              - /srv/data:/data
              - ~/conf:/conf:ro
              - /anonymous
              - type: volume
                source: cache
                target: /cache
                read_only: true
              - type: bind
                source: ../shared
                target: /shared
        volumes:
          cache: {}
        """
    path = write(tmp_path, text, "app/compose.yml")
    _, specs, _ = stack_specs([path], "s", {})
    assert specs[0]["task"]["container"]["mounts"] == [
        {"type": "bind", "source": "/srv/data", "target": "/data"},
        {"type": "bind", "source": os.path.expanduser("~/conf"), "target": "/conf",
         "readonly": True},
        {"type": "volume", "target": "/anonymous"},
        {"type": "volume", "source": "s_cache", "target": "/cache", "readonly": True},
        {"type": "bind", "source": str(tmp_path / "shared"), "target": "/shared"}]
    text = """\
        services:
          web:
            image: busybox
            volumes:
              - undeclared:/x
              - /a:/b:nocopy
              - /c:/d
              - /e:/d
              - type: tmpfs
                target: /t
                tmpfs:
                  size: 1000
              - type: npipe
                source: x
                target: /n
        """
    path, errors = errors_of(tmp_path, text)
    assert [e.split(": ", 2)[:2] for e in errors] == [
        [f"{path}:5", "services.web.volumes[0]"],
        [f"{path}:6", "services.web.volumes[1]"],
        [f"{path}:8", "services.web.volumes[3]"],
        [f"{path}:11", "services.web.volumes[4].tmpfs"],
        [f"{path}:13", "services.web.volumes[5].type"]]
    assert "not declared in the top-level volumes" in errors[0]
    assert "/d is mounted twice" in errors[2]


def test_interpolation(tmp_path):
    text = """\
        services:
          web:
            image: "busybox:${TAG}"
            command: ["sh", "-c", "echo $$HOME ${GREETING:-hi} ${EMPTY:-was-empty} ${EMPTY-kept}"]
            environment:
              A: "${UNSET}"
              B: $NAME-suffix
              C: "${NAME:+alt} ${UNSET:+alt} ${UNSET:-${NAME}}"
            deploy:
              replicas: ${REPLICAS:-3}
        """
    env = {"TAG": "1.36", "EMPTY": "", "NAME": "n"}
    path = write(tmp_path, text)
    _, specs, warnings = stack_specs([path], "s", env)
    c = specs[0]["task"]["container"]
    assert c["image"] == "busybox:1.36"
    assert c["args"] == ["sh", "-c", "echo $HOME hi was-empty "]
    assert c["env"] == ["A=", "B=n-suffix", "C=alt  n"]
    assert specs[0]["replicas"] == 3
    assert warnings == [f"{path}:6: variable UNSET is not set, defaulting to a blank string"]


def test_interpolation_errors(tmp_path):
    text = """\
        services:
          web:
            image: busybox
            environment:
              TOKEN: ${TOKEN:?set TOKEN to the API token}
              PRICE: costs $5
              OPEN: ${OPEN
        """
    path, errors = errors_of(tmp_path, text)
    assert errors[0] == (f"{path}:5: services.web.environment.TOKEN: required variable TOKEN "
                         "is missing a value: set TOKEN to the API token")
    assert errors[1].startswith(f"{path}:6: services.web.environment.PRICE: invalid interpolation "
                                "format")
    assert errors[2].startswith(f"{path}:7: services.web.environment.OPEN: invalid interpolation")


def test_dotenv_next_to_the_file(tmp_path):
    write(tmp_path, "TAG=from-dotenv\nOTHER=dotenv\n", ".env")
    path = write(tmp_path, "services:\n  web:\n    image: busybox:${TAG}\n"
                           "    environment: [X=$OTHER]\n")
    _, specs, _ = stack_specs([path], "s", {"OTHER": "shell"})
    assert specs[0]["task"]["container"]["image"] == "busybox:from-dotenv"
    assert specs[0]["task"]["container"]["env"] == ["X=shell"]      # the shell wins


def test_env_file_relative_to_the_compose_file(tmp_path, monkeypatch):
    write(tmp_path, "A=1\nB=2\n", "deploy/env/common.env")
    write(tmp_path, "B=3\n", "deploy/env/web.env")
    path = write(tmp_path, """\
        services:
          web:
            image: busybox
            env_file: [env/common.env, {path: env/web.env}, {path: env/none.env, required: false}]
        """, "deploy/compose.yml")
    monkeypatch.chdir("/")
    _, specs, _ = stack_specs([path], "s", {})
    assert specs[0]["task"]["container"]["env"] == ["A=1", "B=3"]
    text = "services:\n  web:\n    image: busybox\n    env_file: missing.env\n"
    path, error = one_error(tmp_path, text)
    assert error.startswith(f"{path}:4: services.web.env_file: cannot read missing.env")
    write(tmp_path, "GOOD=1\nnot a line\n", "bad.env")
    _, error = one_error(tmp_path, "services:\n  web:\n    image: busybox\n    env_file: bad.env\n")
    assert error == f"{tmp_path / 'bad.env'}:2: invalid line 'not a line' (expected KEY=VALUE)"


def test_depends_on(tmp_path):
    text = """\
        services:
          a:
            image: busybox
            depends_on:
              b: {condition: service_completed_successfully}
          b:
            image: busybox
            depends_on: [c]
          c:
            image: busybox
        """
    _, specs, _ = stack_specs([write(tmp_path, text)], "s", {})
    assert [s["name"] for s in specs] == ["s_c", "s_b", "s_a"]
    assert specs[2]["depends_on"] == [{"service": "s_b", "condition": "completed"}]
    text = """\
        services:
          a:
            image: busybox
            depends_on:
              ghost: {condition: service_started}
              b: {condition: service_ready}
              a:
          b:
            image: busybox
            depends_on: [a]
        """
    path, errors = errors_of(tmp_path, text)
    assert errors == [
        f"{path}:5: services.a.depends_on.ghost: service ghost is not defined in this file",
        f"{path}:6: services.a.depends_on.b.condition: must be service_started, service_healthy, "
        "service_completed_successfully",
        f"{path}:7: services.a.depends_on.a: a service cannot depend on itself"]
    text = """\
        services:
          a:
            image: busybox
            depends_on: [b]
          b:
            image: busybox
            depends_on: [a]
        """
    path, error = one_error(tmp_path, text)
    assert error == f"{path}:2: services.a.depends_on: dependency cycle: a -> b -> a"


def test_validation_errors_point_at_the_key(tmp_path):
    text = """\
        services:
          web:
            image: busybox
            healthcheck:
              test: [RUN, x]
            environment:
              1BAD: x
            deploy:
              resources:
                limits: {memory: 1K}
              placement:
                constraints: ["node.role=worker"]
              update_config:
                failure_action: explode
            stop_grace_period: 2h
        """
    path, errors = errors_of(tmp_path, text)
    assert errors == [
        f"{path}:5: services.web.healthcheck.test: test must start with CMD, CMD-SHELL or NONE",
        f"{path}:6: services.web.environment: environment entry '1BAD=x' is not KEY=VALUE",
        f"{path}:10: services.web.deploy.resources.limits.memory: memory must be at least 4 MB "
        "(or 0 for none)",
        f"{path}:12: services.web.deploy.placement.constraints: invalid constraint "
        "'node.role=worker': expected key==value or key!=value",
        f"{path}:14: services.web.deploy.update_config.failure_action: Input should be 'pause', "
        "'continue' or 'rollback'",
        f"{path}:15: services.web.stop_grace_period: stop grace period must be between 0s "
        "and 3600s",
    ]


def test_service_templates(tmp_path):
    """Swarm's placeholders pass through to the spec (each node expands them);
    an unknown one is an error at its own line."""
    text = """\
        services:
          web:
            image: busybox
            hostname: "{{.Service.Name}}-{{.Task.Slot}}"
            environment:
              NODE_ID: "{{.Node.ID}}"
              HOST: "{{ .Node.Hostname }}"
            volumes:
              - /srv/{{.Node.Hostname}}:/data/{{.Task.Slot}}
        """
    _, specs, _ = stack_specs([write(tmp_path, text)], "s", {})
    container = specs[0]["task"]["container"]
    assert container["hostname"] == "{{.Service.Name}}-{{.Task.Slot}}"
    assert container["env"] == ["NODE_ID={{.Node.ID}}", "HOST={{ .Node.Hostname }}"]
    assert container["mounts"] == [{"type": "bind", "source": "/srv/{{.Node.Hostname}}",
                                    "target": "/data/{{.Task.Slot}}"}]
    text = """\
        services:
          web:
            image: busybox
            environment:
              GOOD: "{{.Node.ID}}"
              BAD: "{{.Node.Name}}"
          db:
            image: busybox
            hostname: "{{.Task.Number}}"
            environment: ["A=1", 'B={{index .Service.Labels "x"}}', 'C={{index .Node "x"}}']
        """
    path, errors = errors_of(tmp_path, text)
    assert [e.split(" (")[0] for e in errors] == [
        f"{path}:6: services.web.environment.BAD: unknown template placeholder {{{{.Node.Name}}}}",
        f"{path}:9: services.db.hostname: unknown template placeholder {{{{.Task.Number}}}}",
        f"{path}:10: services.db.environment[2]: unknown template placeholder "
        '{{index .Node "x"}}: index takes .Service.Labels']


def test_type_errors_and_durations(tmp_path):
    text = """\
        services:
          web:
            image: busybox
            init: maybe
            healthcheck:
              test: [CMD, "true"]
              interval: soon
            deploy:
              replicas: two
              resources:
                reservations: {cpus: lots}
        """
    path, errors = errors_of(tmp_path, text)
    assert errors == [
        f"{path}:4: services.web.init: must be true or false",
        f"{path}:7: services.web.healthcheck.interval: invalid duration 'soon' (use e.g. 90s, 5m, "
        "2h, 90d)",
        f"{path}:9: services.web.deploy.replicas: must be an integer",
        f"{path}:11: services.web.deploy.resources.reservations.cpus: must be a number"]


def test_yaml_1_2_scalars(tmp_path):
    text = """\
        services:
          web:
            image: busybox
            environment:
              ANSWER: no
              CLOCK: 22:22
              ON: on
            ports: [22:22]
        """
    _, specs, _ = stack_specs([write(tmp_path, text)], "s", {})
    assert specs[0]["task"]["container"]["env"] == ["ANSWER=no", "CLOCK=22:22", "ON=on"]
    assert specs[0]["endpoint"]["ports"] == [{"published": 22, "target": 22, "protocol": "tcp"}]


def test_yaml_errors_and_duplicates(tmp_path):
    path, error = one_error(tmp_path, "services:\n  web:\n    image: [busybox\n")
    assert error.startswith(f"{path}:4: invalid YAML")
    text = "services:\n  web:\n    image: busybox\n  web:\n    image: alpine\n"
    path, error = one_error(tmp_path, text)
    assert error == f"{path}:4: duplicate key 'web'"
    path, error = one_error(tmp_path, "")
    assert error == f"{path}:1: the file is empty"
    path, error = one_error(tmp_path, "version: '3'\n")
    assert error == f"{path}:1: services: no services defined"


def test_stack_scoped_names(tmp_path):
    text = "services:\n  web:\n    image: busybox\n"
    path = write(tmp_path, text)
    project = load([path], {})
    assert translate(project, "a")[0]["name"] == "a_web"
    with pytest.raises(ComposeError) as info:
        translate(project, "bad name")
    assert info.value.errors[0].startswith("invalid stack name 'bad name'")
    long_name = "x" * 60
    path, error = one_error(tmp_path, f"services:\n  {long_name}:\n    image: busybox\n")
    assert error.startswith(f"{path}:2: services.{long_name}: service name "
                            f"shop_{long_name} must be 1-63 characters")
    path, error = one_error(tmp_path, """\
        services:
          web:
            image: busybox
            labels: {flotilla.stack.namespace: other}
        """)
    assert error.startswith(f"{path}:4: services.web.labels: "
                            "label flotilla.stack.namespace is reserved")


def test_merge_files_in_order(tmp_path):
    base = write(tmp_path, """\
        services:
          web:
            image: busybox:1
            command: [sleep, "10"]
            environment: [A=1, B=2]
            labels: {tier: front}
            ports: ["8080:80"]
            volumes: ["/srv/a:/data", "/srv/logs:/logs"]
            deploy:
              replicas: 2
              placement:
                constraints: [node.role==worker]
        """, "compose.yml")
    override = write(tmp_path, """\
        services:
          web:
            image: busybox:2
            command: [sleep, "20"]
            environment:
              B: three
            ports: ["8443:443"]
            volumes: ["/srv/b:/data"]
            deploy:
              placement:
                constraints: [node.labels.zone==a]
            network_mode: host
          extra:
            image: busybox
        """, "compose.prod.yml")
    with pytest.raises(ComposeError) as info:
        stack_specs([base, override], "s", {})
    assert info.value.errors == [f"{override}:12: services.web.network_mode: not supported by "
                                 "Flotilla: services join overlay networks (networks:) and reach "
                                 "each other there by service name"]
    with open(override) as f:
        text = f.read().replace("    network_mode: host\n", "")
    with open(override, "w") as f:
        f.write(text)
    _, specs, _ = stack_specs([base, override], "s", {})
    web = specs[0]
    c = web["task"]["container"]
    assert c["image"] == "busybox:2" and c["args"] == ["sleep", "20"]
    assert c["env"] == ["A=1", "B=three"]
    assert c["labels"] == {"tier": "front", **{"flotilla.stack.namespace": "s"}}
    assert c["mounts"] == [{"type": "bind", "source": "/srv/logs", "target": "/logs"},
                           {"type": "bind", "source": "/srv/b", "target": "/data"}]
    assert [p["published"] for p in web["endpoint"]["ports"]] == [8080, 8443]
    assert web["replicas"] == 2
    assert web["task"]["placement"]["constraints"] == ["node.role==worker", "node.labels.zone==a"]
    assert [s["name"] for s in specs] == ["s_web", "s_extra"]


def test_anchors_and_extension_fields(tmp_path):
    text = """\
        x-base: &base
          image: busybox
          deploy:
            x-note: ignored
            replicas: 2
        services:
          a:
            <<: *base
            x-owner: me
          b:
            <<: *base
            image: alpine
        """
    _, specs, _ = stack_specs([write(tmp_path, text)], "s", {})
    assert [(s["name"], s["task"]["container"]["image"], s["replicas"]) for s in specs] == [
        ("s_a", "busybox", 2), ("s_b", "alpine", 2)]
    # an error inside an anchor is reported where the anchor is written
    text = """\
        x-base: &base
          image: busybox
          privileged: true
        services:
          a:
            <<: *base
        """
    path, error = one_error(tmp_path, text)
    assert error.startswith(f"{path}:3: services.a.privileged: not supported by Flotilla")


def test_stack_label_constant():
    assert STACK_LABEL == "flotilla.stack.namespace"


def _write_bytes(tmp_path, name, data: bytes):
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return str(path)


def _errors(paths, environ=None):
    with pytest.raises(ComposeError) as info:
        stack_specs(paths, "shop", environ if environ is not None else {})
    return info.value.errors


def test_files_that_are_not_utf8_name_file_line_and_key(tmp_path):
    path = _write_bytes(tmp_path, "compose.yml", b"services:\n  web:\n    image: busybox\n"
                        b"    environment:\n      NAME: caf\xe9\n")
    assert _errors([path]) == [f"{path}:5: services.web.environment.NAME: the file is not UTF-8 "
                               "(byte 0xe9); save it as UTF-8"]
    # an env_file: every line that is not UTF-8, by line and variable
    env = _write_bytes(tmp_path, "app.env", b"A=1\nNAME=caf\xe9\nexport B=\xff\n")
    path = _write_bytes(tmp_path, "compose.yml", b"services:\n  web:\n    image: busybox\n"
                        b"    env_file: app.env\n")
    assert _errors([path]) == [
        f"{env}:2: NAME: the file is not UTF-8 (byte 0xe9); save it as UTF-8",
        f"{env}:3: B: the file is not UTF-8 (byte 0xff); save it as UTF-8"]
    # the .env next to the Compose file
    dotenv = _write_bytes(tmp_path, ".env", b"# settings\nTAG=\xe91\n")
    assert _errors([path]) == [f"{dotenv}:2: TAG: the file is not UTF-8 (byte 0xe9); "
                               "save it as UTF-8"]


def test_a_condition_of_the_wrong_type_is_an_error(tmp_path):
    path, error = one_error(tmp_path, """\
        services:
          web:
            image: busybox
            depends_on: {db: {condition: [service_started]}}
          db:
            image: busybox
        """)
    assert error == (f"{path}:4: services.web.depends_on.db.condition: must be service_started, "
                     "service_healthy, service_completed_successfully")


def test_merge_tags_reset_and_override(tmp_path):
    base = write(tmp_path, """\
        services:
          web:
            image: busybox:1
            environment: {A: "1", B: "2"}
            ports: ["8080:80", "8443:443"]
            volumes: ["/srv/a:/data"]
            deploy:
              replicas: 3
              placement: {constraints: [node.role==worker]}
        """)
    override = write(tmp_path, """\
        services:
          web:
            environment:
              B: !reset null
              C: "3"
            ports: !override ["9090:90"]
            volumes: !reset []
            deploy:
              replicas: !reset
              placement: !override
                constraints: [node.labels.zone==a]
        """, "compose.override.yml")
    _, specs, _ = stack_specs([base, override], "s", {})
    web = specs[0]
    c = web["task"]["container"]
    assert c["env"] == ["A=1", "C=3"]
    assert "mounts" not in c
    assert [p["published"] for p in web["endpoint"]["ports"]] == [9090]
    assert "replicas" not in web                          # back to the default (1)
    assert web["task"]["placement"]["constraints"] == ["node.labels.zone==a"]
    # a later file may set a reset key again; in a single file the tags
    # simply remove or set
    again = write(tmp_path, "services:\n  web:\n    volumes: [\"/srv/c:/c\"]\n", "third.yml")
    _, specs, _ = stack_specs([base, override, again], "s", {})
    assert specs[0]["task"]["container"]["mounts"] == [
        {"type": "bind", "source": "/srv/c", "target": "/c"}]
    single = write(tmp_path, """\
        services:
          web:
            image: !override busybox:3
            ports: !reset ["1:1"]
            environment: [A=1, !reset B=2]
        """, "single.yml")
    _, specs, _ = stack_specs([single], "s", {})
    c = specs[0]["task"]["container"]
    assert c["image"] == "busybox:3" and c["env"] == ["A=1"] and "endpoint" not in specs[0]


def test_unknown_yaml_tags_name_line_and_key(tmp_path):
    path, errors = errors_of(tmp_path, """\
        services:
          web:
            image: busybox
            ports: !merge ["8080:80"]
            labels: !!python/object:os.system {}
        """)
    assert errors == [
        f"{path}:4: services.web.ports: unknown YAML tag '!merge': Compose files take only "
        "!reset (remove what earlier files set) and !override (replace it)",
        f"{path}:5: services.web.labels: unknown YAML tag '!!python/object:os.system': Compose "
        "files take only !reset (remove what earlier files set) and !override (replace it)"]


def test_files_too_deep_or_too_large_are_refused(tmp_path):
    laughs = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 10)}]\n"
        for i in range(8)) + "services: {web: {image: busybox}}\n"
    path, error = one_error(tmp_path, laughs)
    assert error.startswith(f"{path}:") and "more than 200000 values once its aliases" in error
    path, error = one_error(tmp_path, "services: {web: {image: busybox, x-a: "
                            + "[" * 100 + "]" * 100 + "}}\n")
    assert error.startswith(f"{path}:1: services.web.x-a") and "nested more than 64" in error
    path, error = one_error(tmp_path, "services: {web: {image: busybox, x-a: "
                            + "[" * 5000 + "]" * 5000 + "}}\n")
    assert error == f"{path}:1: values are nested more than 64 levels deep"
    path, error = one_error(tmp_path, "services:\n  web:\n    image: busy\x01box\n")
    assert error == (f"{path}:3: invalid YAML: character U+0001 is not allowed (a control "
                     "character other than tab and newline)")
