"""A Docker engine of its own for a test host (a network namespace).

The engine has its own data root, exec root (and so its own containerd),
pid file and unix socket, and runs inside the host's network namespace
with no bridge and no iptables rules of its own: containers get no network,
which is all the test workloads need. ``iptables=True`` lets the engine
manage the namespace's iptables and forwarding as on a real host (FORWARD
policy DROP, rules per bridge network); ``default_bridge=True`` gives it
Docker's default bridge (``docker0``) too, where containers started without
a network go. Images come from the machine's engine
(``docker save | docker load``): no registry is involved.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

from .netns import in_netns, run


class HostDocker:
    def __init__(self, netns: str, base: str, iptables: bool = False,
                 default_bridge: bool = False):
        self.netns = netns
        self.iptables = iptables
        self.default_bridge = default_bridge
        self.base = base
        self.data_root = os.path.join(base, "data")
        self.exec_root = os.path.join(base, "exec")
        self.pidfile = os.path.join(base, "docker.pid")
        self.socket = os.path.join(base, "docker.sock")
        self.log_path = os.path.join(base, "dockerd.log")
        self.proc: subprocess.Popen | None = None
        self.restarts = 0

    @property
    def host_url(self) -> str:
        return f"unix://{self.socket}"

    def cli(self, *args: str, check: bool = True, timeout: float = 60.0):
        return run("docker", "-H", self.host_url, *args, check=check, timeout=timeout)

    # -- lifecycle -----------------------------------------------------------------
    def start(self, timeout: float = 120.0) -> None:
        os.makedirs(self.base, exist_ok=True)
        cmd = in_netns(self.netns, [
            "dockerd", "--data-root", self.data_root, "--exec-root", self.exec_root,
            "--pidfile", self.pidfile, "-H", self.host_url,
            *([] if self.default_bridge else ["--bridge=none"]),
            *(f"--{flag}={str(self.iptables).lower()}"
              for flag in ("iptables", "ip-masq", "ip-forward")),
            "--containerd-namespace", f"{self.netns}",
            "--containerd-plugins-namespace", f"{self.netns}-plugins",
        ])
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        log.close()
        self.wait_ready(timeout)

    def ready(self) -> bool:
        try:
            return self.cli("version", "--format", "{{.Server.Version}}", check=False,
                            timeout=10).returncode == 0
        except subprocess.TimeoutExpired:       # starting up on a busy machine
            return False

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"dockerd in {self.netns} exited: {self.tail()}")
            if self.ready():
                return
            time.sleep(0.2)
        raise RuntimeError(f"dockerd in {self.netns} not ready after {timeout}s: {self.tail()}")

    def stop(self, timeout: float = 60.0) -> None:
        """Stop the engine as a service manager would (SIGTERM: it stops its
        containers and its containerd), SIGKILL if it does not exit."""
        pid = self.pid()
        if pid is None:
            return
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        if not _wait_gone(pid, timeout):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            _wait_gone(pid, 10)
        if self.proc is not None:
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                pass

    def restart(self) -> None:
        self.stop()
        self.start()
        self.restarts += 1

    def pid(self) -> int | None:
        if self.proc is not None and self.proc.poll() is None:
            return self.proc.pid
        try:
            with open(self.pidfile) as f:
                pid = int(f.read().strip())
            os.kill(pid, 0)
            return pid
        except (OSError, ValueError):
            return None

    # -- content -------------------------------------------------------------------
    def load_image(self, image: str) -> None:
        save = subprocess.Popen(["docker", "save", image], stdout=subprocess.PIPE)
        try:
            res = subprocess.run(["docker", "-H", self.host_url, "load", "-q"], stdin=save.stdout,
                                 capture_output=True, text=True, timeout=120)
        finally:
            save.stdout.close()
            save.wait(60)
        if res.returncode != 0 or save.returncode != 0:
            raise RuntimeError(f"loading {image} into {self.netns} failed: {res.stderr}")

    def remove_all_containers(self) -> None:
        ids = self.cli("ps", "-aq", check=False).stdout.split()
        if ids:
            self.cli("rm", "-f", *ids, check=False, timeout=120)

    def tail(self, n: int = 3000) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()[-n:]
        except OSError:
            return ""

    def teardown(self) -> None:
        """Remove containers and stop the engine; safe when nothing runs."""
        if self.pid() is not None:
            self.remove_all_containers()
            self.stop()


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        # a zombie child of ours still answers kill(0): reap it if we can
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
            if done == pid:
                return True
        except ChildProcessError:
            pass
        time.sleep(0.1)
    return False


def unmount_under(path: str) -> None:
    """Lazily unmount everything mounted below ``path`` (overlay layers and
    shm mounts an engine that was killed left behind)."""
    path = os.path.realpath(path)
    with open("/proc/self/mounts") as f:
        points = [line.split()[1] for line in f]
    for point in sorted(points, key=len, reverse=True):
        point = point.encode().decode("unicode_escape")
        if point == path or point.startswith(path + "/"):
            run("umount", "-l", point, check=False)
