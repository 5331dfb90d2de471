"""The manager daemon: the API under gunicorn, with the Raft member in the
worker process.

One process owns the Raft member, so gunicorn runs exactly one worker
(gthread, many threads) and never preloads the app: the member, the store
and their threads are created in the worker, after the fork. The worker is
``apiworker.ApiWorker``, which reads the TLS handshake, the request head
and the body without a thread, so slow clients hold neither the threads
nor the admission slots. The TLS
context is rebuilt whenever the node's certificate bundle changes on disk,
so a renewed certificate is served from the next connection on.
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import ssl
import sys
import time
from typing import Any

from gunicorn.app.base import BaseApplication
from werkzeug.exceptions import HTTPException

from ..common import gcpolicy, logs, tls
from ..common.procutil import die_with_parent
from ..common.config import NodeConfig
from ..common.httpclient import ApiError, Client
from .raft.journal import EXIT_JOURNAL_DAMAGED, check_journal
from .raft.node import RaftSettings

log = logging.getLogger(__name__)

def raise_fd_limit(want: int = 65536) -> None:
    """Every agent holds a connection to the API and one from the
    dispatcher's pusher: lift the soft limit on open files (often 1024)
    toward the hard limit."""
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        target = want if hard == resource.RLIM_INFINITY else min(want, hard)
        if soft != resource.RLIM_INFINITY and soft < target:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError):
        pass


def raft_join(cfg: NodeConfig, timeout: float = 120.0) -> dict:
    """Ask the leader to add this manager to Raft; returns its answer:
    ``members`` (Raft address -> node id) and ``api`` (-> API address)."""
    targets = [a for a in cfg.managers if a != cfg.advertise] or cfg.managers
    client = Client(targets, cfg.bundle_path, cfg.ca_path, timeout=15, retry_for=5)
    deadline = time.monotonic() + timeout
    delay = 0.2
    while True:
        try:
            result = client.post("/v1/raft/join", {"raft_addr": cfg.raft_advertise,
                                                   "api_addr": cfg.advertise})
            return result
        except ApiError as exc:
            if time.monotonic() > deadline:
                raise
            log.info("joining raft: %s (retrying)", exc)
            time.sleep(delay)
            delay = min(delay * 2, 2.0)


def raft_settings_from_env() -> RaftSettings:
    kw: dict[str, Any] = {}
    for name in ("election_min", "election_max", "heartbeat", "compaction_entries",
                 "compaction_bytes"):
        value = os.environ.get(f"FLOTILLA_RAFT_{name.upper()}")
        if value:
            kw[name] = int(value) if name.startswith("compaction") else float(value)
    return RaftSettings(**kw)


class ManagerApplication(BaseApplication):
    def __init__(self, cfg: NodeConfig, log_level: str = "info"):
        self.cfg_node = cfg
        self.log_level = log_level
        self.manager = None
        self.api = None
        self.control = None
        self._ssl = tls.ReloadingContext(self._make_context, [cfg.bundle_path, cfg.ca_path],
                                         check_interval=0.5)
        super().__init__()

    def _make_context(self):
        ctx = tls.server_context(self.cfg_node.bundle_path, self.cfg_node.ca_path,
                                 client_cert="optional")
        # Refused handshakes are counted; blocking reads and writes time out.
        return tls.install_counting(ctx, bounded=True)

    def refused(self, reason: str) -> None:
        """Count a refused connection (called by the worker)."""
        if self.manager is not None:
            self.manager.counters.inc(reason)

    def answered(self, method: str, path: str, status: int, seconds: float) -> None:
        """Time a request the worker answered itself (401 without a client
        certificate, 413, a body too slow), by endpoint as the application
        times the ones it answers (called by the worker)."""
        if self.manager is None or self.api is None:
            return
        try:
            endpoint = self.api.url_map.bind("flotilla").match(path, method)[0]
        except HTTPException:       # unknown path, wrong method, redirect
            endpoint = None
        self.manager.metrics.observe_request(method, endpoint, status, seconds)

    def load_config(self):
        cfg = self.cfg_node
        reloader = self._ssl
        settings = {
            "bind": [cfg.listen],
            "workers": 1,
            "worker_class": "flotilla.manager.apiworker.ApiWorker",
            "threads": int(os.environ.get("FLOTILLA_API_THREADS", "64")),
            # Connections open at once, idle and slow ones included (they
            # hold no thread); beyond this, new ones wait in the backlog.
            # Every agent keeps a connection open (heartbeats and status
            # reports) and gthread counts the ones being served too, so
            # this is well above the number of agents a cluster may have.
            "worker_connections": int(os.environ.get("FLOTILLA_API_CONNECTIONS", "4096")),
            "timeout": 120,
            "graceful_timeout": 5,
            "keepalive": 30,
            "backlog": 512,
            "certfile": cfg.bundle_path,
            "keyfile": cfg.bundle_path,
            "ca_certs": cfg.ca_path,
            "cert_reqs": ssl.CERT_OPTIONAL,
            "ssl_context": lambda _conf, _factory: reloader.get(),
            "post_fork": lambda _server, _worker: die_with_parent(),
            "worker_exit": lambda _server, _worker: self._shutdown(),
            "loglevel": self.log_level,
            "errorlog": "-",
            "accesslog": None,
            "proc_name": f"flotilla-manager {cfg.node_id[:12]}",
            "limit_request_line": 8190,
            "limit_request_fields": 100,
            "limit_request_field_size": 8190,
            # gunicorn's own admin socket is one more listener nobody needs.
            "control_socket_disable": True,
            # No proxy in front of a manager is trusted with forwarding headers.
            "forwarded_allow_ips": "",
            "proxy_allow_ips": "",
        }
        for key, value in settings.items():
            self.cfg.set(key, value)

    def load(self):
        from .api.app import create_app
        from .control import ControlServer
        from .manager import Manager

        gcpolicy.install()
        cfg = self.cfg_node
        joined = None
        members_file = os.path.join(cfg.raft_dir, "members.json")
        if not os.path.exists(members_file) and not os.path.exists(cfg.bootstrap_path):
            joined = raft_join(cfg)
        self.manager = Manager(cfg, raft_settings_from_env(),
                               join_members=joined["members"] if joined else None,
                               join_apis=joined.get("api") if joined else None)
        self.manager.start()
        app = create_app(self.manager)
        self.control = ControlServer(cfg.control_socket, app, cfg.cluster_id)
        self.control.start()
        self.api = app
        return app

    def _shutdown(self):
        if self.control is not None:
            self.control.stop()
        if self.manager is not None:
            self.manager.stop()


def main(argv=None):
    parser = argparse.ArgumentParser(prog="flotilla-manager")
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--log-level", default=os.environ.get("FLOTILLA_LOG_LEVEL", "info"))
    args = parser.parse_args(argv)
    logs.setup(args.log_level, "manager")
    die_with_parent()
    raise_fd_limit()
    cfg = NodeConfig.load(args.data_dir)
    if cfg is None or not cfg.initialised():
        print(f"flotilla-manager: {args.data_dir} holds no node identity", file=sys.stderr)
        return 2
    try:
        damage = check_journal(cfg.raft_dir)
    except (OSError, RuntimeError) as exc:
        damage = exc
    if damage is not None:
        print(f"flotilla-manager: {damage}", file=sys.stderr)
        return EXIT_JOURNAL_DAMAGED
    ManagerApplication(cfg, args.log_level).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
