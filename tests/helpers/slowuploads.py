"""Slow uploads to a manager's API: connections that announce a request
body and then send it a byte at a time, the way a client on a bad link (or
one that wants to hold the server's threads) does.

One thread drives every connection: it opens them (TLS handshake and the
request head at once), sends one more byte of each body every ``interval``
seconds, and reads whatever the server answers. A connection the server
answered and closed is opened again after ``interval`` when ``reopen`` is
set, so that the load stays the same for as long as it runs.
"""

from __future__ import annotations

import collections
import selectors
import socket
import ssl
import threading
import time

from flotilla.common import tls

# kind: (method, path, announced body length, needs the client certificate)
KINDS = {
    # A join request (no certificate needed) that never ends.
    "join": ("POST", "/v1/join", 4096, False),
    # Without a certificate, for an endpoint that needs one.
    "control": ("POST", "/v1/services", 4096, False),
    # Without a certificate, announcing a body over the limit.
    "oversized": ("POST", "/v1/join", 16 * 1024 * 1024, False),
    # With the client certificate: an operator on a very slow link.
    "certified": ("POST", "/v1/configs", 4096, True),
}


class Upload:
    def __init__(self, kind: str, sock: ssl.SSLSocket):
        self.kind = kind
        self.sock = sock
        self.opened = time.monotonic()
        self.sent = 0               # body bytes sent so far
        self.answer = b""
        self.closed = False


class SlowUploads:
    def __init__(self, host: str, port: int, *, counts: dict, ca_path: str,
                 tls_dir: str | None = None, interval: float = 1.0, reopen: bool = False):
        self.host, self.port = host, port
        self.counts = counts
        self.interval = interval
        self.reopen = reopen
        self.anon_ctx = tls.client_context(None, ca_path)
        self.cert_ctx = tls.client_context_from_dir(tls_dir) if tls_dir else None
        self.uploads: list[Upload] = []
        # (kind, status, seconds from opening to the answer, body bytes sent by then)
        self.answers: list[tuple[str, int, float, int]] = []
        self.opened = collections.Counter()
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._sel = selectors.DefaultSelector()
        self._thread = None
        self._lock = threading.Lock()

    # -- driving -----------------------------------------------------------------------
    def start(self) -> "SlowUploads":
        for kind, n in self.counts.items():
            for _ in range(n):
                self._open(kind)
        self._thread = threading.Thread(target=self._run, name="slow-uploads", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)
        for u in self.uploads:
            self._close(u)
        self._sel.close()

    def _open(self, kind: str) -> None:
        method, path, length, certified = KINDS[kind]
        ctx = self.cert_ctx if certified else self.anon_ctx
        try:
            raw = socket.create_connection((self.host, self.port), timeout=10)
            sock = ctx.wrap_socket(raw, server_hostname=tls.MANAGER_SERVER_NAME)
            sock.sendall((f"{method} {path} HTTP/1.1\r\nHost: flotilla\r\n"
                          f"Content-Type: application/json\r\nContent-Length: {length}\r\n"
                          "\r\n").encode())
            sock.setblocking(False)
        except OSError as exc:
            with self._lock:
                self.errors.append(f"{kind}: {exc!r}")
            return
        u = Upload(kind, sock)
        with self._lock:
            self.uploads.append(u)
            self.opened[kind] += 1
        self._sel.register(sock, selectors.EVENT_READ, u)

    def _run(self) -> None:
        next_byte = time.monotonic() + self.interval
        reopen_at: list[tuple[float, str]] = []
        while not self._stop.is_set():
            timeout = max(0.0, min(next_byte - time.monotonic(), 0.2))
            for key, _ in self._sel.select(timeout):
                self._read(key.data)
            now = time.monotonic()
            if now >= next_byte:
                next_byte = now + self.interval
                for u in list(self.uploads):
                    if not u.closed:
                        self._send_byte(u)
            due = [k for t, k in reopen_at if t <= now]
            reopen_at = [(t, k) for t, k in reopen_at if t > now]
            for kind in due:
                self._open(kind)
            for u in [u for u in self.uploads if u.closed]:
                self.uploads.remove(u)
                if self.reopen:
                    reopen_at.append((now + self.interval, u.kind))

    def _send_byte(self, u: Upload) -> None:
        if u.sent >= KINDS[u.kind][2]:
            return
        try:
            u.sock.send(b" ")
            u.sent += 1
        except (ssl.SSLWantWriteError, ssl.SSLWantReadError, BlockingIOError):
            pass
        except OSError:
            self._finish(u)

    def _read(self, u: Upload) -> None:
        try:
            while True:
                data = u.sock.recv(65536)
                if not data:
                    self._finish(u)
                    return
                u.answer += data
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
            return
        except OSError:
            self._finish(u)

    def _finish(self, u: Upload) -> None:
        if u.closed:
            return
        status = 0
        if u.answer.startswith(b"HTTP/1.1 "):
            status = int(u.answer[9:12])
        with self._lock:
            self.answers.append((u.kind, status, time.monotonic() - u.opened, u.sent))
        self._close(u)

    def _close(self, u: Upload) -> None:
        u.closed = True
        try:
            self._sel.unregister(u.sock)
        except (KeyError, ValueError, OSError):
            pass
        try:
            u.sock.close()
        except OSError:
            pass

    # -- what happened -----------------------------------------------------------------
    def snapshot(self) -> list[tuple[str, int, float, int]]:
        with self._lock:
            return list(self.answers)

    def open_now(self) -> collections.Counter:
        with self._lock:
            return collections.Counter(u.kind for u in self.uploads if not u.closed)
