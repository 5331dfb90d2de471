"""One node = one foreground process.

The node always runs the agent side (session with the dispatcher,
certificate renewal). While its role is manager it also runs the manager
daemon as a child process (gunicorn + Raft member), started and stopped at
run time as the role changes:

- promotion: the dispatcher reports desired role manager; the node renews
  its certificate (the CA now issues OU=manager), starts the manager, which
  asks the leader to add it to Raft;
- demotion: the leader removes the member from Raft, then reports the
  observed role worker; the node stops its manager, forgets its Raft data and
  renews its certificate as a worker.

The child dies with the node (PR_SET_PDEATHSIG), so ``kill -9`` of the node
takes its manager down too, like a host failure.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

from ..agent.agent import Agent
from ..ca import certs
from ..common.httpclient import Client
from ..common.procutil import die_with_parent
from ..manager.raft.journal import EXIT_JOURNAL_DAMAGED, check_journal, repair_journal
from .renewer import Renewer

log = logging.getLogger(__name__)

EXIT_REMOVED = 3
EXIT_JOURNAL = 2


def check_raft_journal(raft_dir: str, repair: bool = False) -> str | None:
    """Before the node starts: a manager's Raft journal damaged in the
    middle (not just a tail torn by a crash, which is cut on its own) is
    raised (``JournalDamaged``, naming the file and byte), or, with
    ``repair``, cut there. Returns what the repair did."""
    if repair:
        return repair_journal(raft_dir) or "raft journal not damaged: nothing to repair"
    damage = check_journal(raft_dir)
    if damage is not None:
        raise damage
    return None


class NodeDaemon:
    def __init__(self, cfg, log_level: str = "info"):
        self.cfg = cfg
        self.log_level = log_level
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._view = None
        self._child: subprocess.Popen | None = None
        self._child_backoff = 0.5
        self._next_start = 0.0
        self._removed = False
        self._journal_damaged = False
        self._cert_cache: tuple[tuple, certs.CertIdentity] | None = None
        self._members_sig = None
        self.client = Client(self._addresses(), cfg.bundle_path, cfg.ca_path, timeout=10,
                             retry_for=5)
        self.renewer = Renewer(cfg, self.client, on_renewed=self._on_renewed)
        self.agent = Agent(cfg, self.client, on_update=self._on_update,
                           on_removed=self._on_removed)

    # -- addresses and certificate --------------------------------------------------
    def _addresses(self):
        """Every manager this node knows of: those named in the answers it
        got (kept in node.json), and, on a manager, the members its own
        manager recorded with the Raft membership (``raft/members.json``),
        which it knows of as soon as they join, before any answer says so.
        Its own manager first: when that one does not serve (no leader,
        hung), requests go on to the others."""
        addrs = sorted(set(self.cfg.managers) | set(self._member_apis()))
        if self.cfg.role == "manager":
            local = self.cfg.advertise
            addrs = [local] + [a for a in addrs if a != local]
        return addrs or [self.cfg.advertise]

    def _member_apis(self) -> list[str]:
        if self.cfg.role != "manager":
            return []
        from ..manager.raft.security import saved_api_addresses

        try:
            return saved_api_addresses(os.path.join(self.cfg.raft_dir, "members.json"))
        except (OSError, ValueError):
            return []

    def _refresh_addresses(self):
        """Pick up a change of the Raft members' addresses (checked by the
        file's change time, every pass of the main loop)."""
        try:
            st = os.stat(os.path.join(self.cfg.raft_dir, "members.json"))
            sig = (st.st_ino, st.st_mtime_ns, st.st_size)
        except OSError:
            sig = None
        if sig == self._members_sig:
            return
        self._members_sig = sig
        addrs = self._addresses()
        if addrs != self.client.addresses:
            log.info("managers known: %s", ", ".join(addrs))
            self.client.addresses = addrs

    def cert(self) -> certs.CertIdentity:
        st = os.stat(self.cfg.bundle_path)
        sig = (st.st_ino, st.st_mtime_ns, st.st_size)
        if self._cert_cache is None or self._cert_cache[0] != sig:
            with open(self.cfg.bundle_path, "rb") as f:
                self._cert_cache = (sig, certs.identity_from_pem(f.read()))
        return self._cert_cache[1]

    # -- callbacks from the agent side ------------------------------------------------
    def _on_update(self, reply):
        view = reply.get("node") or {}
        managers = reply.get("managers") or []
        with self._lock:
            self._view = view
        if managers and sorted(managers) != sorted(self.cfg.managers):
            self.cfg.managers = sorted(managers)
            self.cfg.save()
            self.client.addresses = self._addresses()
        want = "manager" if "manager" in (view.get("desired_role"), view.get("role")) else "worker"
        if want != self.cert().role:
            log.info("role is changing to %s: renewing the certificate", want)
            self.renewer.force()
        self._wake.set()

    def _on_renewed(self, ident):
        if ident.role != self.cfg.role:
            self.cfg.role = ident.role
            self.cfg.save()
            self.client.addresses = self._addresses()
        self._wake.set()

    def _on_removed(self):
        self._removed = True
        self._stop.set()
        self._wake.set()

    # -- the manager child ------------------------------------------------------------
    def _want_manager(self) -> bool:
        if self.cert().role != "manager":
            return False
        with self._lock:
            view = self._view
        if view is None:
            return self.cfg.role == "manager"
        return "manager" in (view.get("desired_role"), view.get("role"))

    def _child_alive(self) -> bool:
        return self._child is not None and self._child.poll() is None

    def _start_child(self):
        cmd = [sys.executable, "-m", "flotilla.manager.server", "--data-dir", self.cfg.data_dir,
               "--log-level", self.log_level]
        log.info("starting manager")
        # glibc gives each of the manager's many threads an allocation arena
        # of its own (up to 8 per core) and rarely hands their free space
        # back; 4 arenas kept the leader of a 30,000-task cluster 25-30 MB
        # smaller at the same speed. An operator's own setting wins.
        env = dict(os.environ)
        env.setdefault("MALLOC_ARENA_MAX", "4")
        self._child = subprocess.Popen(cmd, preexec_fn=die_with_parent, env=env)
        self._child_started = time.monotonic()

    def _stop_child(self, timeout: float = 10.0):
        child = self._child
        if child is None:
            return
        if child.poll() is None:
            log.info("stopping manager")
            child.send_signal(signal.SIGTERM)
            try:
                child.wait(timeout)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        self._child = None

    def _reconcile(self):
        want = self._want_manager()
        alive = self._child_alive()
        if self._child is not None and not alive:
            code = self._child.returncode
            if code == EXIT_JOURNAL_DAMAGED:
                # The manager refused its Raft journal (it said why on
                # stderr): starting it again would refuse again.
                log.error("manager refused its damaged raft journal: stopping this node "
                          "(see `flotilla node run --help`, --repair-journal)")
                self._child = None
                self._journal_damaged = True
                self._stop.set()
                return
            ran = time.monotonic() - self._child_started
            self._child = None
            self._child_backoff = 0.5 if ran > 30 else min(self._child_backoff * 2, 10.0)
            self._next_start = time.monotonic() + self._child_backoff
            log.warning("manager exited with status %s; restarting in %.1fs", code,
                        self._child_backoff)
        if want and self._child is None and time.monotonic() >= self._next_start:
            self._start_child()
        elif not want and alive:
            self._stop_child()
        if not want:
            with self._lock:
                view = self._view
            if view and view.get("role") == "worker" and os.path.isdir(self.cfg.raft_dir):
                # Demoted for good: this member's Raft data must not be
                # reused if the node is promoted again later.
                shutil.rmtree(self.cfg.raft_dir, ignore_errors=True)
                log.info("left the managers: raft data removed")

    # -- main loop --------------------------------------------------------------------
    def run(self) -> int:
        def on_signal(*_) -> None:
            self._stop.set()
            self._wake.set()

        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, on_signal)
        log.info("node %s (%s) of cluster %s starting; role %s", self.cfg.node_id,
                 self.cfg.hostname, self.cfg.cluster_id, self.cert().role)
        self.renewer.start()
        self.agent.start()
        try:
            while not self._stop.is_set():
                self._refresh_addresses()
                self._reconcile()
                self._wake.wait(0.2)
                self._wake.clear()
        finally:
            self.agent.stop()
            self.renewer.stop(timeout=2)
            self._stop_child()
            self.client.close()
        if self._removed:
            log.error("node removed from the cluster: exiting")
            return EXIT_REMOVED
        if self._journal_damaged:
            return EXIT_JOURNAL
        return 0
