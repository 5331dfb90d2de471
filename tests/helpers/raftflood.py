"""Connections to a manager's Raft port that it must refuse, at a steady rate.

Each attempt is one of four kinds, in turn: a TCP connection closed at once
(``tcp``), TLS without a client certificate (``no_cert``), TLS with a
manager certificate from another cluster's CA (``other_ca``), and TLS with
a certificate of this cluster that is not a manager's (``not_manager``:
refused by the peer check after the handshake). The client side does the
whole handshake and waits for the server to close, as a real client would.

    python -m tests.helpers.raftflood HOST:PORT --rate 200 --seconds 30 \\
        --cert NOT_A_MANAGER.pem [--key KEY.pem]

runs until the time is up or SIGTERM, then prints one JSON line: the
attempts made by kind and the rate achieved.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import ssl
import tempfile
import threading
import time

KINDS = ("tcp", "no_cert", "other_ca", "not_manager")
SERVER_NAME = "flotilla-manager"


def _client_context(bundle):
    """``bundle``: None, a PEM with key and chain, or (cert file, key file)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False          # who the server is does not matter here
    ctx.verify_mode = ssl.CERT_NONE
    if isinstance(bundle, (tuple, list)):
        ctx.load_cert_chain(bundle[0], bundle[1])
    elif bundle is not None:
        ctx.load_cert_chain(bundle)
    return ctx


def other_ca_bundle(directory: str) -> str:
    """A manager certificate from a CA of its own, written under ``directory``."""
    from flotilla.ca import certs

    root = certs.RootCA.create("intruders")
    key, cert = root.issue(certs.ROLE_MANAGER, "intruder", "intruders", 3600)
    path = os.path.join(directory, "intruder.pem")
    certs.write_node_bundle(path, key, cert)
    return path


class Flooder:
    """Opens ``rate`` refused connections a second to ``addr`` until stopped."""

    def __init__(self, addr: str, *, rate: float, not_manager_bundle,
                 other_ca_bundle_path: str, threads: int = 24, timeout: float = 3.0):
        host, port = addr.rsplit(":", 1)
        self.addr = (host, int(port))
        self.rate = rate
        self.timeout = timeout
        self._contexts = {
            "no_cert": _client_context(None),
            "other_ca": _client_context(other_ca_bundle_path),
            "not_manager": _client_context(not_manager_bundle),
        }
        self._threads = threads
        self._inflight = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.attempts = {k: 0 for k in KINDS}
        self.skipped = 0            # no free thread when one was due
        self.started_at = self.stopped_at = 0.0

    def start(self):
        self.started_at = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="raft-flooder", daemon=True)
        self._thread.start()
        return self

    def stop(self):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        deadline = time.monotonic() + self.timeout + 2
        while time.monotonic() < deadline:      # the attempts in flight finish
            with self._lock:
                if not self._inflight:
                    break
            time.sleep(0.05)
        self.stopped_at = time.monotonic()

    @property
    def total(self) -> int:
        with self._lock:
            return sum(self.attempts.values())

    def achieved_rate(self) -> float:
        end = self.stopped_at or time.monotonic()
        return self.total / max(1e-9, end - self.started_at)

    def _run(self):
        interval = 1.0 / self.rate
        due = time.monotonic()
        n = 0
        while not self._stop.is_set():
            now = time.monotonic()
            if now < due:
                self._stop.wait(due - now)
                continue
            due += interval
            if due < now - 1.0:         # fell far behind: do not burst to catch up
                due = now
            kind = KINDS[n % len(KINDS)]
            n += 1
            with self._lock:
                if self._inflight >= self._threads:
                    self.skipped += 1
                    continue
                self._inflight += 1
            threading.Thread(target=self._attempt, args=(kind,), daemon=True).start()

    def _attempt(self, kind):
        try:
            with socket.create_connection(self.addr, timeout=self.timeout) as raw:
                if kind != "tcp":
                    try:
                        ctx = self._contexts[kind]
                        with ctx.wrap_socket(raw, server_hostname=SERVER_NAME) as s:
                            s.recv(1)       # the server's alert or close
                    except (ssl.SSLError, OSError):
                        pass
        except OSError:
            pass
        finally:
            with self._lock:
                self.attempts[kind] += 1
                self._inflight -= 1


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("addr")
    ap.add_argument("--rate", type=float, default=200)
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--cert", required=True, help="a certificate of the cluster, not a "
                    "manager's (PEM; with its key unless --key)")
    ap.add_argument("--key", default=None)
    args = ap.parse_args(argv)
    bundle = (args.cert, args.key) if args.key else args.cert
    stopped = []        # set by the handler: no lock may be taken in a signal handler
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopped.append(True))
    with tempfile.TemporaryDirectory(prefix="raftflood-") as d:
        flood = Flooder(args.addr, rate=args.rate, not_manager_bundle=bundle,
                        other_ca_bundle_path=other_ca_bundle(d)).start()
        end = time.monotonic() + args.seconds
        while not stopped and time.monotonic() < end:
            time.sleep(0.1)
        flood.stop()
    print(json.dumps({"attempts": flood.attempts, "total": flood.total, "skipped": flood.skipped,
                      "rate": round(flood.achieved_rate(), 1)}), flush=True)


if __name__ == "__main__":
    main()
