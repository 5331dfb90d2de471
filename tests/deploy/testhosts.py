"""Real test hosts for deployment tests: containers that boot systemd and run
their own sshd and dockerd, reached by Ansible over SSH exactly like VMs.

Everything is built offline from Debian packages and cached under ``.cache/``:

* ``build_node_image()``     the host image ``flotilla-test/node:1`` (debootstrap);
* ``ssh_keypair()``          the SSH key Ansible logs in with (root);
* ``busybox_rootfs()``       the root filesystem archive of ``flotilla-test/busybox:1``,
                             imported on every host by the ``docker`` role;
* ``build_wheelhouse()``     wheels of this checkout (and its dependencies);
* ``build_wheelhouse(version="0.1.0.post1")``  the same package under another
                             version, for upgrade tests.

``TestHosts`` starts and stops the hosts, writes an inventory for them, runs
playbooks and ad-hoc modules, and runs commands on a host with ``docker exec``.

Command line (from the repository root)::

    .venv/bin/python tests/deploy/testhosts.py prepare        # image, key, archives, wheels
    .venv/bin/python tests/deploy/testhosts.py up --inventory /tmp/inv
    .venv/bin/python tests/deploy/testhosts.py down
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import hashlib
import io
import ipaddress
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / ".cache"
VENV = ROOT / ".venv"

NODE_IMAGE = "flotilla-test/node:1"
NODE_BASE_REPO = "flotilla-test/node-base"
BUSYBOX_IMAGE = "flotilla-test/busybox:1"
SUITE = "bookworm"
NODE_PACKAGES = (
    "python3", "python3-venv", "python3-apt", "openssh-server", "iproute2", "docker.io",
    "ca-certificates", "systemd-sysv", "dbus", "sudo", "busybox-static", "curl", "procps",
    # what the role installs for the nodes' networks (flotilla_network_packages)
    "nftables", "wireguard-go", "wireguard-tools",
)
# Bump when the way the root filesystem is prepared changes.
NODE_RECIPE = 3

NETWORK_NAME = "flotilla-test-hosts"
NETWORK_SUBNETS = ("172.31.250.0/24", "172.31.251.0/24", "172.31.252.0/24", "172.31.253.0/24")
HOST_LABEL = "flotilla.testhost"

# What a container needs to boot systemd on this kind of machine
# (--privileged is refused: CAP_SYS_RESOURCE is not in the bounding set).
SYSTEMD_RUN_ARGS = (
    "--cap-add", "ALL", "--cap-drop", "SYS_RESOURCE",
    "--security-opt", "seccomp=unconfined", "--security-opt", "apparmor=unconfined",
    "--cgroupns", "host", "-v", "/sys/fs/cgroup:/sys/fs/cgroup:rw",
    "--tmpfs", "/run", "--tmpfs", "/run/lock", "-e", "container=docker",
)

# Each test host stands for a machine: it weighs as four processes of the test
# lane's (the engine's default is one), so what it runs keeps pace while
# other tests load this machine.
HOST_CPU_ARGS = ("--cpu-shares", "4096")

BUSYBOX_APPLETS = ("sh", "echo", "sleep", "httpd", "ls", "cat", "wget", "nc", "true", "false",
                   "test", "touch", "kill", "rm", "mkdir", "date")

# Runtime dependencies, declared in the built package when pyproject.toml declares none
# (versions come from requirements.txt, used as constraints).
RUNTIME_PACKAGES = ("flask", "werkzeug", "gunicorn", "pysyncobj", "cryptography", "requests",
                    "click", "pydantic", "msgpack", "docker", "supervisor")

SSH_OPTIONS = ("-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
               "-o", "LogLevel=ERROR", "-o", "BatchMode=yes", "-o", "ConnectTimeout=3")


def log(msg: str) -> None:
    print(f"[testhosts {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def run(cmd, *, check=True, capture=True, input=None, timeout=None, env=None, cwd=None):
    """Run a command (a list, or a string for ``sh -c``); return the CompletedProcess."""
    if isinstance(cmd, str):
        cmd = ["sh", "-c", cmd]
    proc = subprocess.run(
        [str(c) for c in cmd], input=input, timeout=timeout, env=env, cwd=cwd,
        stdout=subprocess.PIPE if capture else None,
        stderr=subprocess.STDOUT if capture else None,
        text=not isinstance(input, bytes),
    )
    if check and proc.returncode != 0:
        out = proc.stdout if capture and isinstance(proc.stdout, str) else ""
        raise RuntimeError(f"command failed ({proc.returncode}): {shlex.join(map(str, cmd))}\n{out}")
    return proc


def wait_until(predicate, *, timeout: float, interval: float = 0.25, what: str = "condition"):
    """Poll ``predicate`` until it returns a truthy value (returned) or the deadline passes."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        try:
            value = predicate()
            if value:
                return value
            last = value
        except Exception as exc:  # noqa: BLE001 - reported on timeout
            last = exc
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")
        time.sleep(interval)


@contextlib.contextmanager
def cache_lock(name: str):
    """Serialise builds of one cached artefact across processes."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / f".{name}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def docker(*args, check=True, input=None, timeout=None):
    return run(["docker", *args], check=check, input=input, timeout=timeout)


def ensure_docker() -> None:
    """Make sure the local engine answers (starting it with the project's script if not)."""
    if run(["docker", "info"], check=False).returncode == 0:
        return
    log("starting the Docker engine (tests/images/setup-docker.sh)")
    run([ROOT / "tests/images/setup-docker.sh"], capture=False)


def image_labels(image: str) -> dict | None:
    proc = docker("image", "inspect", "--format", "{{json .Config.Labels}}", image, check=False)
    if proc.returncode != 0:
        return None
    return json.loads(proc.stdout.strip() or "null") or {}


# --------------------------------------------------------------------------- SSH key

def ssh_keypair() -> tuple[Path, Path]:
    """The (private, public) key pair Ansible uses for root on the test hosts; made once."""
    key_dir = CACHE / "ssh"
    private, public = key_dir / "id_ed25519", key_dir / "id_ed25519.pub"
    if private.exists() and public.exists():
        os.chmod(private, 0o600)
        return private, public
    with cache_lock("ssh"):
        if not (private.exists() and public.exists()):
            key_dir.mkdir(parents=True, exist_ok=True)
            os.chmod(key_dir, 0o700)
            for p in (private, public):
                p.unlink(missing_ok=True)
            run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "flotilla-test-hosts",
                 "-f", private])
        os.chmod(private, 0o600)
        os.chmod(public, 0o600)
    return private, public


# --------------------------------------------------------------------------- node image

# Files written into the host root filesystem (path -> (mode, content)).
NODE_FILES = {
    "etc/docker/daemon.json": (0o644, json.dumps({"storage-driver": "vfs"}, indent=2) + "\n"),
    # Each host gets its own SSH host keys at first boot.
    "etc/systemd/system/ssh.service.d/host-keys.conf": (0o644, (
        "[Service]\n"
        "ExecStartPre=\n"
        "ExecStartPre=/usr/bin/ssh-keygen -A\n"
        "ExecStartPre=/usr/sbin/sshd -t\n")),
    "etc/ssh/sshd_config.d/test-hosts.conf": (0o644, (
        "PermitRootLogin prohibit-password\n"
        "PasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\n"
        "UseDNS no\n")),
    # The journal stays in memory (/run is a tmpfs).
    "etc/systemd/journald.conf.d/volatile.conf": (0o644, (
        "[Journal]\nStorage=volatile\nRuntimeMaxUse=32M\n")),
    # Nothing here benefits from periodic apt runs or filesystem checks.
    "etc/apt/apt.conf.d/99test-hosts": (0o644, (
        'APT::Install-Recommends "false";\n'
        'APT::Periodic::Enable "0";\n')),
}
# Units pointless or failing in a container.
NODE_MASKED_UNITS = ("apt-daily.timer", "apt-daily-upgrade.timer", "e2scrub_all.timer",
                     "e2scrub_reap.service", "fstrim.timer", "systemd-remount-fs.service",
                     "getty.target", "console-getty.service")


def _mirror() -> str:
    sources = Path("/etc/apt/sources.list.d/debian.sources")
    if sources.exists():
        for line in sources.read_text().splitlines():
            if line.startswith("URIs:"):
                return line.split()[1]
    return "http://deb.debian.org/debian"


def node_base_key() -> str:
    recipe = {"suite": SUITE, "packages": sorted(NODE_PACKAGES), "recipe": NODE_RECIPE,
              "files": NODE_FILES, "masked": NODE_MASKED_UNITS}
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


def _ensure_debootstrap() -> None:
    if shutil.which("debootstrap"):
        return
    log("installing debootstrap")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    run(["apt-get", "update", "-qq"], env=env)
    run(["apt-get", "install", "-y", "-qq", "debootstrap"], env=env)


def _prepare_tree(tree: Path) -> None:
    for rel, (mode, content) in NODE_FILES.items():
        path = tree / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
        os.chmod(path, mode)
    for unit in NODE_MASKED_UNITS:
        link = tree / "etc/systemd/system" / unit
        link.unlink(missing_ok=True)
        link.symlink_to("/dev/null")
    # A fresh machine id and fresh SSH host keys in every container.
    (tree / "etc/machine-id").write_text("")
    (tree / "var/lib/dbus/machine-id").unlink(missing_ok=True)
    for key in (tree / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    root_ssh = tree / "root/.ssh"
    root_ssh.mkdir(mode=0o700, parents=True, exist_ok=True)
    # Package sources as on the machine that built the image.
    host_sources = Path("/etc/apt/sources.list.d/debian.sources")
    if host_sources.exists():
        shutil.copy(host_sources, tree / "etc/apt/sources.list.d/debian.sources")
        (tree / "etc/apt/sources.list").unlink(missing_ok=True)
    for deb in (tree / "var/cache/apt/archives").glob("*.deb"):
        deb.unlink()


def node_rootfs(force: bool = False) -> Path:
    """The host root filesystem archive (debootstrap), cached by package list and recipe."""
    key = node_base_key()
    out_dir = CACHE / "node-image"
    tarball = out_dir / f"rootfs-{key}.tar"
    if tarball.exists() and not force:
        return tarball
    with cache_lock("node-image"):
        if tarball.exists() and not force:
            return tarball
        _ensure_debootstrap()
        out_dir.mkdir(parents=True, exist_ok=True)
        tree = out_dir / f"tree-{key}"
        if tree.exists():
            shutil.rmtree(tree)
        t0 = time.monotonic()
        log(f"debootstrap {SUITE} with {len(NODE_PACKAGES)} packages into {tree} (about a minute)")
        proc = run(["debootstrap", "--variant=minbase", "--include=" + ",".join(NODE_PACKAGES),
                    SUITE, tree, _mirror()], check=False)
        if proc.returncode != 0:
            tail = "\n".join(proc.stdout.splitlines()[-30:])
            raise RuntimeError(f"debootstrap failed ({proc.returncode}):\n{tail}")
        _prepare_tree(tree)
        partial = tarball.with_suffix(".tar.partial")
        run(["tar", "--numeric-owner", "--xattrs", "--xattrs-include=*", "-C", tree,
             "-cf", partial, "."])
        partial.rename(tarball)
        shutil.rmtree(tree)
        for old in out_dir.glob("rootfs-*.tar"):
            if old != tarball:
                old.unlink()
        log(f"root filesystem ready in {time.monotonic() - t0:.0f}s: {tarball} "
            f"({tarball.stat().st_size // 2**20} MiB)")
    return tarball


def build_node_image(force: bool = False) -> str:
    """Build ``flotilla-test/node:1`` when missing or out of date; return its name.

    The slow part (debootstrap) is cached as a tarball and as the base image
    ``flotilla-test/node-base:<key>``; the final image only adds root's
    authorized SSH key, so a warm call takes well under a second.
    """
    ensure_docker()
    _, public = ssh_keypair()
    key = node_base_key()
    key_id = hashlib.sha256(public.read_bytes()).hexdigest()[:16]
    wanted = {"flotilla.test.base": key, "flotilla.test.sshkey": key_id}
    labels = image_labels(NODE_IMAGE)
    if not force and labels is not None and all(labels.get(k) == v for k, v in wanted.items()):
        return NODE_IMAGE
    with cache_lock("node-image-docker"):
        labels = image_labels(NODE_IMAGE)
        if not force and labels is not None and all(labels.get(k) == v for k, v in wanted.items()):
            return NODE_IMAGE
        t0 = time.monotonic()
        base = f"{NODE_BASE_REPO}:{key}"
        if force or image_labels(base) is None:
            tarball = node_rootfs(force=force)
            log(f"importing {tarball.name} as {base}")
            docker("import", "-c", 'CMD ["/sbin/init"]', tarball, base, timeout=900)
        cid = docker("create", base).stdout.strip()
        try:
            buf = io.BytesIO()
            with tarfile.open(fileobj=buf, mode="w") as tar:
                info = tarfile.TarInfo("root/.ssh")
                info.type, info.mode = tarfile.DIRTYPE, 0o700
                tar.addfile(info)
                data = public.read_bytes()
                info = tarfile.TarInfo("root/.ssh/authorized_keys")
                info.size, info.mode = len(data), 0o600
                tar.addfile(info, io.BytesIO(data))
            docker("cp", "-", f"{cid}:/", input=buf.getvalue())
            changes = ['CMD ["/sbin/init"]']
            changes += [f"LABEL {k}={v}" for k, v in wanted.items()]
            docker("commit", *[a for c in changes for a in ("-c", c)], cid, NODE_IMAGE)
        finally:
            docker("rm", "-f", cid, check=False)
        # Base images of older recipes are no longer needed.
        tags = docker("image", "ls", "--format", "{{.Repository}}:{{.Tag}}", NODE_BASE_REPO).stdout
        for tag in tags.split():
            if tag != base:
                docker("image", "rm", tag, check=False)
        log(f"{NODE_IMAGE} ready in {time.monotonic() - t0:.1f}s")
    return NODE_IMAGE


# --------------------------------------------------------------------------- busybox image archive

def busybox_rootfs() -> Path:
    """Root filesystem archive for ``flotilla-test/busybox:1`` (as tests/images/setup-docker.sh)."""
    busybox = Path("/bin/busybox")
    if not busybox.exists():
        ensure_docker()  # setup-docker.sh installs busybox-static
    data = busybox.read_bytes()
    digest = hashlib.sha256(data + repr(BUSYBOX_APPLETS).encode()).hexdigest()[:16]
    out = CACHE / "images" / "flotilla-test-busybox-1.tar"
    stamp = out.with_suffix(".sha")
    if out.exists() and stamp.exists() and stamp.read_text() == digest:
        return out
    with cache_lock("busybox"):
        out.parent.mkdir(parents=True, exist_ok=True)
        partial = out.with_suffix(".partial")
        now = int(time.time())
        with tarfile.open(partial, "w") as tar:
            def add(name, kind, mode, content=b"", target=""):
                info = tarfile.TarInfo(name)
                info.type, info.mode, info.mtime = kind, mode, now
                info.linkname = target
                info.size = len(content) if kind == tarfile.REGTYPE else 0
                tar.addfile(info, io.BytesIO(content) if kind == tarfile.REGTYPE else None)
            for d, mode in (("bin", 0o755), ("tmp", 0o1777), ("www", 0o755)):
                add(d, tarfile.DIRTYPE, mode)
            add("bin/busybox", tarfile.REGTYPE, 0o755, data)
            for applet in BUSYBOX_APPLETS:
                add(f"bin/{applet}", tarfile.SYMTYPE, 0o777, target="busybox")
            add("www/index.html", tarfile.REGTYPE, 0o644, b"flotilla test image\n")
        partial.rename(out)
        stamp.write_text(digest)
    return out


# --------------------------------------------------------------------------- wheelhouse

def _source_files():
    yield ROOT / "pyproject.toml"
    yield ROOT / "requirements.txt"
    for path in sorted((ROOT / "daemons").rglob("*")):
        rel = path.relative_to(ROOT).parts
        if path.is_file() and "__pycache__" not in rel and not any(p.endswith(".egg-info") for p in rel) \
                and path.suffix != ".pyc":
            yield path


def source_hash() -> str:
    h = hashlib.sha256()
    for path in _source_files():
        h.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def _copy_source(dest: Path) -> None:
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (ROOT / name).exists():
            shutil.copy(ROOT / name, dest / name)
    shutil.copytree(ROOT / "daemons", dest / "daemons",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"))


def _declare_dependencies(pyproject: Path) -> None:
    """Declare the runtime dependencies in a copied pyproject.toml that has none,
    so that installing the wheel from the wheelhouse installs them too."""
    text = pyproject.read_text()
    if re.search(r"^dependencies\s*=", text, flags=re.M):
        return
    deps = ", ".join(f'"{name}"' for name in RUNTIME_PACKAGES)
    text, n = re.subn(r"^\[project\]\s*$", f"[project]\ndependencies = [{deps}]", text, count=1, flags=re.M)
    if n != 1:
        raise RuntimeError(f"no [project] table in {pyproject}")
    pyproject.write_text(text)


def build_wheelhouse(version: str | None = None) -> Path:
    """Wheels of this checkout and its dependencies, for ``flotilla_wheelhouse``.

    Cached in ``.cache/wheelhouse-<hash>`` (hash of pyproject.toml,
    requirements.txt and the daemons tree). With ``version``, the package is
    built from a copy of the source whose ``__version__`` is ``version``
    (``.cache/wheelhouse-<hash>-<version>``).
    """
    key = source_hash()
    out = CACHE / (f"wheelhouse-{key}" + (f"-{version}" if version else ""))
    if out.is_dir():
        return out
    with cache_lock("wheelhouse"):
        if out.is_dir():
            return out
        t0 = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="flotilla-src-") as tmp:
            src, partial = Path(tmp) / "src", Path(tmp) / "wheels"
            src.mkdir()
            _copy_source(src)
            if version:
                init = src / "daemons/flotilla/__init__.py"
                text, n = re.subn(r'^__version__\s*=.*$', f'__version__ = "{version}"',
                                  init.read_text(), flags=re.M)
                if n != 1:
                    raise RuntimeError(f"no __version__ line in {init}")
                init.write_text(text)
            pip = [VENV / "bin/python", "-m", "pip", "wheel", "--quiet", "--wheel-dir", partial,
                   "--constraint", ROOT / "requirements.txt"]
            _declare_dependencies(src / "pyproject.toml")
            run([*pip, src], timeout=900)
            staging = out.with_name(out.name + ".partial")
            shutil.rmtree(staging, ignore_errors=True)
            shutil.copytree(partial, staging)
            staging.rename(out)
        # Wheelhouses of older sources, unused for a day, are not needed any more.
        for old in CACHE.glob("wheelhouse-*"):
            if old.is_dir() and not old.name.startswith(f"wheelhouse-{key}") \
                    and time.time() - old.stat().st_mtime > 86400:
                shutil.rmtree(old, ignore_errors=True)
        log(f"wheelhouse {out.name} built in {time.monotonic() - t0:.0f}s "
            f"({len(list(out.glob('*.whl')))} wheels)")
    return out


# --------------------------------------------------------------------------- network

def _subnets_in_use(exclude: str | None = None) -> list[ipaddress.IPv4Network]:
    nets = []
    for nid in docker("network", "ls", "-q").stdout.split():
        info = json.loads(docker("network", "inspect", nid).stdout)[0]
        if info["Name"] == exclude:
            continue
        for cfg in (info.get("IPAM") or {}).get("Config") or []:
            with contextlib.suppress(KeyError, ValueError):
                nets.append(ipaddress.ip_network(cfg["Subnet"], strict=False))
    for line in run(["ip", "-4", "route", "show"]).stdout.splitlines():
        first = line.split()[0] if line.split() else ""
        if "/" in first:
            with contextlib.suppress(ValueError):
                nets.append(ipaddress.ip_network(first, strict=False))
    return nets


def ensure_network(name: str = NETWORK_NAME) -> str:
    """Create the test hosts' bridge network (own subnet, no clash); return its subnet."""
    proc = docker("network", "inspect", name, check=False)
    if proc.returncode == 0:
        return json.loads(proc.stdout)[0]["IPAM"]["Config"][0]["Subnet"]
    with cache_lock("network"):
        proc = docker("network", "inspect", name, check=False)
        if proc.returncode == 0:
            return json.loads(proc.stdout)[0]["IPAM"]["Config"][0]["Subnet"]
        used = _subnets_in_use()
        for candidate in NETWORK_SUBNETS:
            net = ipaddress.ip_network(candidate)
            if not any(net.overlaps(u) for u in used if u.prefixlen > 0):
                docker("network", "create", "--driver", "bridge", "--subnet", candidate,
                       "--label", f"{HOST_LABEL}=1", name)
                return candidate
    raise RuntimeError(f"every candidate subnet {NETWORK_SUBNETS} clashes with a network in use")


def remove_network(name: str = NETWORK_NAME) -> None:
    proc = docker("network", "inspect", "--format", "{{len .Containers}}", name, check=False)
    if proc.returncode == 0 and proc.stdout.strip() == "0":
        docker("network", "rm", name, check=False)


# --------------------------------------------------------------------------- hosts

@dataclasses.dataclass
class Host:
    name: str
    role: str  # manager | worker
    ip: str = ""

    def __str__(self) -> str:
        return self.name


@dataclasses.dataclass
class PlaybookResult:
    rc: int
    output: str
    recap: dict  # host -> {ok, changed, unreachable, failed, skipped, rescued, ignored}
    duration: float
    results: dict = dataclasses.field(default_factory=dict)  # ad-hoc runs: host -> module result

    @property
    def ok(self) -> bool:
        return self.rc == 0 and all(r["failed"] == 0 and r["unreachable"] == 0
                                    for r in self.recap.values())

    @property
    def changed(self) -> int:
        return sum(r["changed"] for r in self.recap.values())

    def tail(self, lines: int = 80) -> str:
        return "\n".join(self.output.splitlines()[-lines:])

    def check(self) -> "PlaybookResult":
        if not self.ok:
            raise AssertionError(f"ansible failed (rc={self.rc}, recap={self.recap}):\n{self.tail()}")
        return self


_RECAP_LINE = re.compile(r"^(\S+)\s*:\s*((?:\w+=\d+\s*)+)$")


def parse_recap(output: str) -> dict:
    """Per-host counters of the PLAY RECAP section of ansible-playbook's output."""
    recap, in_recap = {}, False
    for line in output.splitlines():
        if line.startswith("PLAY RECAP"):
            in_recap, recap = True, {}
            continue
        if in_recap:
            m = _RECAP_LINE.match(line.strip())
            if not m:
                if line.strip():
                    in_recap = False
                continue
            recap[m.group(1)] = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", m.group(2))}
    return recap


def docker_exec(name: str, cmd, *, check: bool = True, timeout: float | None = 120,
                input: str | None = None) -> subprocess.CompletedProcess:
    """Run ``cmd`` (string for ``sh -c``, or a list) in a host container as root."""
    argv = ["sh", "-c", cmd] if isinstance(cmd, str) else list(cmd)
    return run(["docker", "exec", *(["-i"] if input is not None else []), name, *argv],
               check=check, timeout=timeout, input=input)


class TestHosts:
    """A set of test hosts on the test network, with an inventory for Ansible::

        hosts = TestHosts()
        hosts.start(managers=3, workers=2)      # flt-m1..3, flt-w1..2, ready for SSH
        hosts.write_inventory(wheelhouse=build_wheelhouse())
        hosts.run_playbook("site").check().recap
        hosts.exec("flt-m1", "docker ps")
        hosts.teardown()
    """

    __test__ = False  # not a pytest test class

    def __init__(self, prefix: str = "flt", workdir: str | os.PathLike | None = None,
                 network: str = NETWORK_NAME):
        self.prefix = prefix
        self.network = network
        self._own_workdir = workdir is None
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="flotilla-hosts-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.hosts: list[Host] = []
        self.inventory_dir = self.workdir / "inventory"
        self.inventory_vars: dict = {}
        self.private_key, _ = ssh_keypair()
        self.label = f"{HOST_LABEL}={prefix}"
        # Added to the environment of ansible commands (e.g. ANSIBLE_ROLES_PATH).
        self.extra_env: dict[str, str] = {}

    # -- lookup
    def __getitem__(self, name: str) -> Host:
        for h in self.hosts:
            if h.name == name:
                return h
        raise KeyError(name)

    @property
    def managers(self) -> list[Host]:
        return [h for h in self.hosts if h.role == "manager"]

    @property
    def workers(self) -> list[Host]:
        return [h for h in self.hosts if h.role == "worker"]

    def _next_name(self, role: str) -> str:
        letter = "m" if role == "manager" else "w"
        taken = {h.name for h in self.hosts}
        n = 1
        while f"{self.prefix}-{letter}{n}" in taken:
            n += 1
        return f"{self.prefix}-{letter}{n}"

    # -- lifecycle
    def start(self, managers: int = 3, workers: int = 2, timeout: float = 180) -> list[Host]:
        """Start the hosts (the image and network are made when missing); wait until ready."""
        build_node_image()
        ensure_network(self.network)
        new = [self._create(self._next_name("manager"), "manager") for _ in range(managers)]
        new += [self._create(self._next_name("worker"), "worker") for _ in range(workers)]
        self.wait_ready(new, timeout=timeout)
        return new

    def add_host(self, role: str = "worker", timeout: float = 180, write_inventory: bool = True) -> Host:
        """Start one more host (e.g. for add_node tests) and add it to the inventory."""
        assert role in ("manager", "worker"), role
        build_node_image()
        ensure_network(self.network)
        host = self._create(self._next_name(role), role)
        self.wait_ready([host], timeout=timeout)
        if write_inventory and self.inventory_dir.exists():
            self.write_inventory(**self.inventory_vars)
        return host

    def _create(self, name: str, role: str) -> Host:
        docker("rm", "-fv", name, check=False)
        docker("run", "-d", "--name", name, "--hostname", name, "--network", self.network,
               "--label", self.label, "--label", f"{HOST_LABEL}.role={role}",
               *SYSTEMD_RUN_ARGS, *HOST_CPU_ARGS, "--stop-signal", "SIGRTMIN+3", "-v", "/var/lib/docker",
               NODE_IMAGE)
        ip = docker("inspect", "--format",
                    f'{{{{(index .NetworkSettings.Networks "{self.network}").IPAddress}}}}',
                    name).stdout.strip()
        host = Host(name, role, ip)
        self.hosts.append(host)
        return host

    def _ready(self, host: Host) -> bool:
        state = docker("inspect", "--format", "{{.State.Status}}", host.name, check=False).stdout.strip()
        if state != "running":
            raise RuntimeError(f"{host.name} is {state}:\n{docker('logs', '--tail', '40', host.name, check=False).stdout}")
        system = docker_exec(host.name, ["systemctl", "is-system-running"], check=False).stdout.strip()
        if system not in ("running", "degraded"):
            return False
        units = docker_exec(host.name, ["systemctl", "is-active", "ssh", "docker"], check=False)
        if units.returncode != 0:
            return False
        if docker_exec(host.name, ["docker", "info", "--format", "{{.Driver}}"], check=False).returncode:
            return False
        return self.ssh(host, "true", check=False, timeout=10).returncode == 0

    def wait_ready(self, hosts=None, timeout: float = 180) -> None:
        """Wait until systemd is up, sshd and dockerd are active and SSH logins work."""
        pending = list(hosts if hosts is not None else self.hosts)
        t0 = time.monotonic()

        def poll():
            for h in list(pending):
                if self._ready(h):
                    pending.remove(h)
            return not pending

        try:
            wait_until(poll, timeout=timeout, interval=0.3, what="test hosts to be ready")
        except TimeoutError:
            details = []
            for h in pending:
                out = docker_exec(h.name, "systemctl is-system-running; systemctl --failed --no-legend; "
                                          "journalctl -b --no-pager -n 30", check=False).stdout
                details.append(f"--- {h.name}\n{out}")
            raise TimeoutError(f"hosts not ready after {timeout}s: {[h.name for h in pending]}\n"
                               + "\n".join(details)) from None
        log(f"{len(hosts or self.hosts)} host(s) ready in {time.monotonic() - t0:.1f}s")

    def remove_host(self, name: str) -> None:
        docker("rm", "-fv", name, check=False)
        self.hosts = [h for h in self.hosts if h.name != name]

    def teardown(self) -> None:
        """Remove the hosts (and the network once no container uses it). Safe to call twice."""
        self._close_ssh_masters()
        ids = docker("ps", "-aq", "--filter", f"label={self.label}", check=False).stdout.split()
        if ids:
            docker("rm", "-fv", *ids, check=False)
        self.hosts = []
        remove_network(self.network)
        if self._own_workdir and self.workdir.exists():
            shutil.rmtree(self.workdir, ignore_errors=True)

    def _close_ssh_masters(self) -> None:
        cp_dir = self.workdir / "cp"
        if cp_dir.is_dir():
            for sock in cp_dir.iterdir():
                run(["ssh", "-o", f"ControlPath={sock}", "-O", "exit", "host"], check=False, timeout=10)

    # -- commands on hosts
    def exec(self, host, cmd, *, check: bool = True, timeout: float | None = 120,
             input: str | None = None) -> subprocess.CompletedProcess:
        """Run ``cmd`` on ``host`` with ``docker exec`` (string: through ``sh -c``)."""
        return docker_exec(str(host), cmd, check=check, timeout=timeout, input=input)

    def ssh(self, host, cmd: str, *, check: bool = True, timeout: float | None = 60):
        host = self[str(host)] if not isinstance(host, Host) else host
        return run(["ssh", *SSH_OPTIONS, "-i", self.private_key, f"root@{host.ip}", cmd],
                   check=check, timeout=timeout)

    def journal(self, host, unit: str = "flotilla@*", lines: int = 200) -> str:
        return self.exec(host, ["journalctl", "--no-pager", "-n", str(lines), "-u", unit],
                         check=False).stdout

    def save_diagnostics(self) -> Path:
        """Write each host's journal (flotilla, docker, systemd state) under ``<workdir>/logs``."""
        logs = self.workdir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        for h in self.hosts:
            out = self.exec(h, "systemctl is-system-running; systemctl --failed --no-legend; "
                               "journalctl -b --no-pager -n 2000 -u 'flotilla@*' -u docker -u ssh",
                            check=False).stdout
            (logs / f"{h.name}-journal.txt").write_text(out)
        return logs

    # -- Ansible
    def write_inventory(self, wheelhouse: str | os.PathLike | None = None,
                        extra_vars: dict | None = None) -> Path:
        """Write ``<workdir>/inventory`` (hosts.yml and group_vars/all.yml); return its path."""
        self.inventory_vars = {"wheelhouse": wheelhouse, "extra_vars": extra_vars}
        group = lambda role: {h.name: {"ansible_host": h.ip} for h in self.hosts if h.role == role}  # noqa: E731
        hosts = {"all": {"children": {"cluster": {"children": {
            "managers": {"hosts": group("manager") or None},
            "workers": {"hosts": group("worker") or None},
        }}}}}
        group_vars = {
            "ansible_user": "root",
            "ansible_ssh_private_key_file": str(self.private_key),
            "ansible_ssh_common_args": " ".join(SSH_OPTIONS[:6]),
            "ansible_python_interpreter": "/usr/bin/python3",
            # Swarm's default period, not Flotilla's 1 s: a node is down after 15 s
            # without a heartbeat, not 3 s, so a test host starved of CPU by the
            # rest of the test lane is not taken for a failed machine.
            "flotilla_cluster_heartbeat_period": "5s",
            "docker_daemon_options": {"storage-driver": "vfs"},
            "docker_import_images": [{"name": BUSYBOX_IMAGE, "src": str(busybox_rootfs())}],
        }
        if wheelhouse is not None:
            group_vars["flotilla_wheelhouse"] = str(wheelhouse)
        group_vars.update(extra_vars or {})
        (self.inventory_dir / "group_vars").mkdir(parents=True, exist_ok=True)
        _write_yaml(self.inventory_dir / "hosts.yml", hosts,
                    "Test hosts (containers with systemd, sshd and dockerd); generated.")
        _write_yaml(self.inventory_dir / "group_vars" / "all.yml", group_vars,
                    "Settings for the test hosts; generated.")
        return self.inventory_dir

    def ansible_env(self) -> dict:
        """A clean environment for ansible commands."""
        (self.workdir / "cp").mkdir(exist_ok=True)
        return {
            "PATH": f"{VENV}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": os.environ.get("HOME", "/root"),
            "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
            "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
            "ANSIBLE_HOST_KEY_CHECKING": "False",
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_SSH_CONTROL_PATH_DIR": str(self.workdir / "cp"),
            "ANSIBLE_LOCAL_TEMP": str(self.workdir / "ansible-tmp"),
            "PYTHONUNBUFFERED": "1",
            **self.extra_env,
        }

    def _ansible(self, argv: list, timeout: float, log_name: str) -> tuple[int, str]:
        """Run an ansible command; return (rc, output). The output also goes, line by
        line with the seconds since the start, to ``<workdir>/logs/`` while it runs."""
        if not (self.inventory_dir / "hosts.yml").exists():
            self.write_inventory()
        logs = self.workdir / "logs"
        logs.mkdir(exist_ok=True)
        log_path = logs / f"{time.strftime('%H%M%S')}-{log_name}.log"
        lines: list[str] = []
        t0 = time.monotonic()
        with open(log_path, "w") as log_file:
            log_file.write(f"$ {shlex.join(map(str, argv))}\n")
            proc = subprocess.Popen([str(a) for a in argv], cwd=ROOT, env=self.ansible_env(), text=True,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    start_new_session=True)

            def pump():
                for line in proc.stdout:
                    lines.append(line)
                    log_file.write(f"[{time.monotonic() - t0:7.1f}s] {line}")
                    log_file.flush()

            reader = threading.Thread(target=pump, daemon=True)
            reader.start()
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
                proc.wait()
                reader.join(5)
                raise TimeoutError(f"{argv[0]} timed out after {timeout}s; log: {log_path}\n"
                                   + "".join(lines[-40:])) from None
            reader.join()
        return proc.returncode, "".join(lines)

    def run_playbook(self, playbook: str, limit: str | None = None, extra_vars: dict | None = None,
                     args=(), timeout: float = 1800) -> PlaybookResult:
        """``ansible-playbook -i <inventory> playbooks/<playbook> [-l limit] [-e json]``."""
        path = Path(playbook)
        if not path.is_absolute() and path.parts[0] != "playbooks":
            path = Path("playbooks") / path
        if path.suffix not in (".yml", ".yaml"):
            path = path.with_suffix(".yml")
        argv = [VENV / "bin/ansible-playbook", "-i", self.inventory_dir, path]
        if limit:
            argv += ["-l", limit]
        if extra_vars:
            argv += ["-e", json.dumps(extra_vars)]
        argv += list(args)
        t0 = time.monotonic()
        rc, output = self._ansible(argv, timeout, path.stem)
        return PlaybookResult(rc, output, parse_recap(output), time.monotonic() - t0)

    def run_ansible(self, pattern: str, module: str, module_args: str | None = None,
                    args=(), timeout: float = 300) -> PlaybookResult:
        """An ad-hoc module run: ``ansible <pattern> -m <module> [-a args]``.

        ``results`` maps each host to the module's result (as JSON); ``recap``
        has per-host counters (ok, changed, failed, unreachable).
        """
        tree = Path(tempfile.mkdtemp(prefix="tree-", dir=self.workdir))
        argv = [VENV / "bin/ansible", "-i", self.inventory_dir, pattern, "-m", module, "--tree", tree]
        if module_args:
            argv += ["-a", module_args]
        argv += list(args)
        t0 = time.monotonic()
        rc, output = self._ansible(argv, timeout, f"adhoc-{module.rsplit('.', 1)[-1]}")
        results, recap = {}, {}
        for path in sorted(tree.iterdir()):
            res = json.loads(path.read_text())
            results[path.name] = res
            unreachable = int(bool(res.get("unreachable")))
            failed = int(not unreachable and (bool(res.get("failed")) or res.get("rc", 0) != 0))
            recap[path.name] = {"ok": int(not (failed or unreachable)), "changed": int(bool(res.get("changed"))),
                                "unreachable": unreachable, "failed": failed}
        shutil.rmtree(tree, ignore_errors=True)
        return PlaybookResult(rc, output, recap, time.monotonic() - t0, results)


def _write_yaml(path: Path, data, comment: str) -> None:
    try:
        import yaml
    except ImportError:  # JSON is YAML too
        text = json.dumps(data, indent=2) + "\n"
    else:
        class Dumper(yaml.SafeDumper):
            def increase_indent(self, flow=False, indentless=False):  # indented lists
                return super().increase_indent(flow, False)

        text = yaml.dump(data, Dumper=Dumper, default_flow_style=False, sort_keys=False, width=1000)
    path.write_text(f"---\n# {comment}\n{text}")


def remove_all_hosts(network: str = NETWORK_NAME) -> None:
    """Remove every test host container and the test network."""
    ids = docker("ps", "-aq", "--filter", f"label={HOST_LABEL}", check=False).stdout.split()
    if ids:
        docker("rm", "-fv", *ids, check=False)
    remove_network(network)


def prepare() -> dict:
    """Build everything test hosts need; return the paths."""
    t0 = time.monotonic()
    image = build_node_image()
    private, public = ssh_keypair()
    paths = {
        "image": image,
        "ssh_private_key": str(private),
        "ssh_public_key": str(public),
        "busybox_rootfs": str(busybox_rootfs()),
        "wheelhouse": str(build_wheelhouse()),
    }
    log(f"prepared in {time.monotonic() - t0:.1f}s")
    return paths


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Test hosts for deployment tests.")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare", help="build the node image, SSH key, busybox archive and wheels")
    p.add_argument("--shell", action="store_true", help="print shell variable assignments")
    p = sub.add_parser("image", help="build the node image")
    p.add_argument("--force", action="store_true")
    p = sub.add_parser("wheelhouse", help="build the wheelhouse; print its path")
    p.add_argument("--version", help="build the package under this version")
    p = sub.add_parser("up", help="start hosts and write an inventory")
    p.add_argument("--managers", type=int, default=3)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--prefix", default="flt")
    p.add_argument("--workdir", required=True, help="where the inventory and logs go")
    sub.add_parser("down", help="remove every test host and the test network")
    a = parser.parse_args(argv)

    if a.cmd == "prepare":
        paths = prepare()
        if a.shell:
            for k, v in paths.items():
                print(f"{k.upper()}={shlex.quote(v)}")
        else:
            print(json.dumps(paths, indent=2))
    elif a.cmd == "image":
        print(build_node_image(force=a.force))
    elif a.cmd == "wheelhouse":
        print(build_wheelhouse(a.version))
    elif a.cmd == "up":
        hosts = TestHosts(prefix=a.prefix, workdir=a.workdir)
        hosts.start(a.managers, a.workers)
        print(hosts.write_inventory(wheelhouse=build_wheelhouse()))
    elif a.cmd == "down":
        remove_all_hosts()
    return 0


if __name__ == "__main__":
    sys.exit(main())
