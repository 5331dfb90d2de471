"""The dispatcher's front: agents' heartbeats and status reports, taken on
a port of the leader's own and served from the push process.

Heartbeats and status reports are most of a large cluster's requests (a
thousand agents send 200 heartbeats a second). In the manager process each
one costs a TLS read and write, an HTTP parse and a validation under the
GIL that Raft and the leader's components need, plus a wait to take the
GIL back after every system call. Here they are served by the push
process (``pushproc.py``), which has a GIL of its own: this module reads
and checks them there, and only the checked content crosses to the
dispatcher, many requests to one frame, answered the same way.

The API keeps serving the same two paths: the dispatcher's address comes
with each registration's answer, and an agent that cannot use it (no
leader there any more, a refusal it does not expect) goes back to the API.

Every connection is mutual TLS with a certificate from the cluster's CA;
the subject must be a node of this cluster (an admin certificate is
refused), and the dispatcher checks that the node exists and that neither
it nor the certificate (by serial) is revoked. A client must complete its
handshake and each request within ``REQUEST_TIMEOUT``; an idle kept-alive
connection is closed after ``IDLE_TIMEOUT``; bodies are limited to
``MAX_BODY``. Refusals use the API's error shape.
"""

from __future__ import annotations

import collections
import functools
import logging
import selectors
import socket
import ssl
import threading
import time
from typing import Callable

import httptools

from ...ca import certs
from ...common.jsonbody import dumps_line
from ...model.session import Heartbeat, StatusReport
from ...model.validation import ApiError, Model, error_body, validate

log = logging.getLogger(__name__)

PATHS: dict[bytes, tuple[str, type[Model]]] = {
    b"/v1/dispatcher/heartbeat": ("heartbeat", Heartbeat),
    b"/v1/dispatcher/status": ("status", StatusReport),
}
MAX_BODY = 1024 * 1024
DRAIN_LIMIT = 8 * MAX_BODY      # a larger announced body is refused before it is read
MAX_HEAD = 16 * 1024
REQUEST_TIMEOUT = 10.0
IDLE_TIMEOUT = 120.0
ANSWER_TIMEOUT = 30.0
READ_CHUNK = 64 * 1024
MAX_CONNECTIONS = 8192
MAX_QUEUED = 4                  # complete requests read ahead of an answer
REASONS = {200: b"OK", 400: b"Bad Request", 401: b"Unauthorized", 403: b"Forbidden",
           404: b"Not Found", 405: b"Method Not Allowed", 409: b"Conflict",
           413: b"Content Too Large", 414: b"URI Too Long", 415: b"Unsupported Media Type",
           421: b"Misdirected Request", 431: b"Request Header Fields Too Large",
           503: b"Service Unavailable"}


class _Refuse(Exception):
    """Stops the parser: the request is answered with this error, and the
    connection closed."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class _Conn:
    """A connection, and the parser's callbacks (httptools calls them on
    this object while it reads a request)."""

    __slots__ = ("sock", "parser", "handshaken", "node_id", "serial", "refusal", "deadline",
                 "out", "waiting", "events", "closing", "handler", "pending", "ready", "eof",
                 "in_request", "in_head", "head_fed", "raw_head", "target", "body", "too_large",
                 "keep_alive", "close_after")

    def __init__(self, sock: ssl.SSLSocket) -> None:
        self.sock = sock
        self.parser = httptools.HttpRequestParser(self)
        self.handshaken = False
        self.node_id: str | None = None
        self.serial: str | None = None      # of the client's certificate, in hex
        # (status, code, message) for every request
        self.refusal: tuple[int, str, str] | None = None
        self.deadline = time.monotonic() + REQUEST_TIMEOUT
        self.out = b""
        self.waiting: int | None = None     # id of the request the dispatcher is answering
        self.events = 0
        self.closing = False
        self.handler: Callable[[], None] | None = None    # the selector's data
        self.pending = bytearray()  # read, not yet parsed (while an answer is awaited)
        self.ready: collections.deque = collections.deque()   # complete requests
        self.eof = False
        self.in_request = False     # between the first byte of a request and its end
        self.in_head = False
        self.head_fed = 0           # bytes of the request's target and headers
        self.raw_head = 0           # bytes read while its head is incomplete
        self.target = b""
        self.body = bytearray()
        self.too_large = False
        self.keep_alive = True
        self.close_after = False    # the client asked to close after the awaited answer

    # -- httptools callbacks ----------------------------------------------------------
    def on_message_begin(self):
        # a new request begins: it has REQUEST_TIMEOUT to arrive
        self.deadline = min(self.deadline, time.monotonic() + REQUEST_TIMEOUT)
        self.in_request = self.in_head = True
        self.head_fed = self.raw_head = 0
        self.target = b""
        self.body = bytearray()
        self.too_large = False

    def on_url(self, url: bytes):
        self.target += url
        self.head_fed += len(url)
        if len(self.target) > MAX_HEAD:
            raise _Refuse(414, "bad_request", "request target too long")

    def on_header(self, name: bytes, value: bytes):
        self.head_fed += len(name) + len(value) + 4
        if self.head_fed > MAX_HEAD:
            raise _Refuse(431, "bad_request", "request head too large")
        if name.lower() == b"content-length" and value.strip().isdigit() and \
                int(value) > MAX_BODY:
            if int(value) > DRAIN_LIMIT:
                raise _Refuse(413, "too_large",
                              f"request body too large (the limit is {MAX_BODY})")
            self.too_large = True   # read and dropped: the client sees the 413

    def on_headers_complete(self):
        self.in_head = False
        self.head_fed = 0
        self.deadline = time.monotonic() + REQUEST_TIMEOUT
        self.keep_alive = self.parser.should_keep_alive()
        if self.parser.get_method() != b"POST" and self.target in PATHS:
            raise _Refuse(405, "method_not_allowed", "only POST is allowed here")

    def on_body(self, data: bytes):
        if not self.too_large:
            self.body += data
            if len(self.body) > MAX_BODY:
                self.too_large = True
                self.body = bytearray()

    def on_message_complete(self):
        self.in_request = False
        self.ready.append((self.target, bytes(self.body), self.too_large, self.keep_alive))
        self.body = bytearray()
        if len(self.ready) > MAX_QUEUED:
            raise _Refuse(400, "bad_request", "too many requests sent ahead of the answers")


class FrontServer:
    """Serves the listening socket ``listener`` (see the module doc) from
    the event loop of the process's pusher: one thread drives the pushes'
    and the front's sockets, so neither waits for the GIL after its system
    calls while the other runs.

    The loop calls :meth:`open` once, then :meth:`tick` after every pass
    and every 20 ms within a long one (answers do not wait for a pass over
    a thousand pushes to end), and :meth:`close` when it ends; the front's
    sockets are registered in the loop's selector with a callable as their
    data. ``forward(request_id, kind, node_id, body, serial)`` hands a
    checked request to the dispatcher (which checks revocation); its answer comes back through
    :meth:`answer`, from any thread.
    """

    def __init__(self, listener: socket.socket, context, cluster_id: str, forward):
        self._listener = listener
        self._context = context
        self._cluster_id = cluster_id
        self._forward = forward
        self._sel: selectors.BaseSelector | None = None     # the loop's, from open()
        self._wake = None
        self._conns: dict[int, _Conn] = {}          # by file descriptor
        self._waiting: dict[int, _Conn] = {}        # by request id
        self._next_id = 0
        self._lock = threading.Lock()
        self._answers: list = []
        self._woken = False
        self._next_sweep = 0.0

    # -- from other threads ---------------------------------------------------------
    def answer(self, answers) -> None:
        """[(request id, HTTP status, body), ...] from the dispatcher."""
        with self._lock:
            self._answers.extend(answers)
            if self._woken:
                return
            self._woken = True
        if self._wake is not None:
            self._wake()

    # -- on the loop's thread -------------------------------------------------------
    def open(self, sel: selectors.BaseSelector, wake) -> None:
        """Start serving from ``sel``; ``wake()`` interrupts its select."""
        self._sel = sel
        self._wake = wake
        self._listener.setblocking(False)
        sel.register(self._listener, selectors.EVENT_READ, self._accept)
        self._next_sweep = time.monotonic() + 1.0

    def tick(self) -> None:
        """From the loop, often: answers, and time limits."""
        self._deliver()
        now = time.monotonic()
        if now >= self._next_sweep:
            self._next_sweep = now + 1.0
            self._sweep(now)

    def close(self) -> None:
        for conn in list(self._conns.values()):
            self._close(conn)
        if self._sel is not None:
            try:
                self._sel.unregister(self._listener)
            except (KeyError, ValueError):
                pass
        self._listener.close()

    def _accept(self):
        while True:
            try:
                raw, _addr = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:     # out of descriptors, ...: the rest wait in the backlog
                log.warning("dispatcher front: accept failed: %s", exc)
                return
            if len(self._conns) >= MAX_CONNECTIONS:
                raw.close()
                continue
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                sock = self._context().wrap_socket(raw, server_side=True,
                                                   do_handshake_on_connect=False)
            except (OSError, ValueError):
                raw.close()
                continue
            sock.setblocking(False)
            conn = _Conn(sock)
            conn.handler = functools.partial(self._on_event, conn)
            self._conns[sock.fileno()] = conn
            conn.events = selectors.EVENT_READ
            self._sel.register(sock, conn.events, conn.handler)

    def _on_event(self, conn: _Conn):
        try:
            if not conn.handshaken:
                conn.sock.do_handshake()
                conn.handshaken = True
                conn.node_id, conn.serial, conn.refusal = self._identify(conn.sock)
            if not conn.closing:
                self._read(conn)
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLWantWriteError:
            self._want(conn, selectors.EVENT_WRITE)
            return
        except OSError:             # refused handshake, reset, ...
            self._close(conn)
            return
        except Exception:           # a bug: this connection ends, the loop goes on
            log.exception("dispatcher front: connection failed")
            self._close(conn)
            return
        self._flush(conn)

    def _flush(self, conn: _Conn):
        """Write what is queued; then wait for the socket to take more, or
        for the next request."""
        try:
            while conn.out:
                n = conn.sock.send(conn.out)
                conn.out = conn.out[n:]
        except ssl.SSLWantWriteError:
            self._want(conn, selectors.EVENT_WRITE)
            return
        except ssl.SSLWantReadError:
            self._want(conn, selectors.EVENT_READ)
            return
        except OSError:
            self._close(conn)
            return
        if conn.closing:
            self._close(conn)
            return
        self._want(conn, selectors.EVENT_READ)

    def _identify(self, sock):
        """(node id, certificate serial in hex, refusal or None)."""
        ident = certs.identity_from_peercert(sock.getpeercert())
        if ident is None:
            return None, None, (401, "unauthenticated",
                                "a node certificate from this cluster is required")
        if ident.cluster_id != self._cluster_id:
            return None, None, (401, "unauthenticated", "certificate is from another cluster")
        if ident.role == certs.ROLE_ADMIN:
            return None, None, (403, "forbidden",
                                "an admin certificate cannot use agent endpoints")
        return ident.node_id, format(ident.serial, "x"), None

    def _read(self, conn: _Conn):
        """Read what is there and handle every complete request in it. While
        the dispatcher answers, what arrives stays buffered (agents send
        one request at a time; a client that sends much more is closed)."""
        while True:
            data = conn.sock.recv(READ_CHUNK)       # SSLWantReadError once drained
            if not data:
                if conn.eof:        # still registered, still at the end: give up
                    conn.closing = True
                    return
                conn.eof = True
            conn.pending += data
            self._process(conn)
            if conn.waiting is not None and len(conn.pending) > MAX_BODY + MAX_HEAD:
                conn.closing = True
            if not data or conn.closing:
                return

    def _process(self, conn: _Conn):
        """Answer the complete requests, one at a time, parsing what is
        buffered as the previous one is answered."""
        while conn.waiting is None and not conn.closing:
            if conn.ready:
                target, body, too_large, keep_alive = conn.ready.popleft()
                if too_large:
                    self._too_large(conn)
                    return
                self._complete(conn, target, body, keep_alive)
            elif conn.pending:
                data = bytes(conn.pending)
                conn.pending.clear()
                if conn.in_head:
                    conn.raw_head += len(data)
                try:
                    conn.parser.feed_data(data)
                except httptools.HttpParserCallbackError as exc:
                    cause = exc.__context__
                    if isinstance(cause, _Refuse):
                        self._refuse(conn, cause.status, cause.code, cause.message)
                    else:
                        self._refuse(conn, 400, "bad_request", "malformed request")
                    return
                except httptools.HttpParserUpgrade:
                    self._refuse(conn, 400, "bad_request", "protocol upgrades are not served")
                    return
                except httptools.HttpParserError as exc:
                    self._refuse(conn, 400, "bad_request", f"malformed request: {exc}"[:200])
                    return
                # The parser keeps a header it has not seen the end of: a head
                # still incomplete after this many bytes is refused too.
                if conn.in_head and conn.raw_head > 2 * MAX_HEAD:
                    self._refuse(conn, 431, "bad_request", "request head too large")
                    return
            else:
                if conn.eof:
                    conn.closing = True
                return

    def _refuse(self, conn: _Conn, status: int, code: str, message: str):
        conn.ready.clear()
        conn.pending.clear()
        self._respond(conn, status, error_body(code, message), close=True)

    def _too_large(self, conn: _Conn):
        self._refuse(conn, 413, "too_large", f"request body too large (the limit is {MAX_BODY})")

    def _complete(self, conn: _Conn, target: bytes, raw: bytes, keep_alive: bool):
        close = not keep_alive
        if conn.refusal is not None:
            status, code, message = conn.refusal
            self._respond(conn, status, error_body(code, message), close=close)
            return
        route = PATHS.get(target)
        if route is None:
            self._respond(conn, 404, error_body(
                "not_found", "this port serves only the agents' heartbeats and status reports"),
                close=close)
            return
        kind, model = route
        try:
            body = validate(model, raw).model_dump()
        except ApiError as exc:
            self._respond(conn, exc.status, error_body(exc.code, exc.message, exc.field),
                          close=close)
            return
        conn.close_after = close
        self._next_id += 1
        conn.waiting = self._next_id
        conn.deadline = time.monotonic() + ANSWER_TIMEOUT
        self._waiting[conn.waiting] = conn
        self._forward(conn.waiting, kind, conn.node_id, body, conn.serial)

    def _deliver(self):
        with self._lock:
            answers, self._answers = self._answers, []
            self._woken = False
        for request_id, status, body in answers:
            conn = self._waiting.pop(request_id, None)
            if conn is None or conn.waiting != request_id:
                continue        # the client went away, or timed out
            conn.waiting = None
            try:
                self._respond(conn, status, body, close=conn.close_after)
                self._process(conn)     # a request read meanwhile
            except Exception:           # a bug: this connection ends, the loop goes on
                log.exception("dispatcher front: answer failed")
                self._close(conn)
                continue
            self._flush(conn)

    def _respond(self, conn: _Conn, status: int, body, close: bool = False):
        data = dumps_line(body)
        conn.out += b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\n" \
                    b"Content-Length: %d\r\n%s\r\n%s" % (
                        status, REASONS.get(status, b"Error"), len(data),
                        b"Connection: close\r\n" if close else b"", data)
        # Idle until the next request; a request already begun keeps its limit.
        conn.deadline = time.monotonic() + (REQUEST_TIMEOUT if conn.in_request else IDLE_TIMEOUT)
        if close:
            conn.closing = True

    def _want(self, conn: _Conn, events: int):
        if conn.events != events and conn.sock.fileno() >= 0:
            assert self._sel is not None    # connections exist only once open() ran
            conn.events = events
            self._sel.modify(conn.sock, events, conn.handler)

    def _sweep(self, now: float):
        for conn in list(self._conns.values()):
            if conn.deadline > now:
                continue
            if conn.waiting is not None:
                self._waiting.pop(conn.waiting, None)
                conn.waiting = None
                self._respond(conn, 503, error_body("no_answer", "the dispatcher did not answer"),
                              close=True)
                self._flush(conn)
            else:
                self._close(conn)

    def _close(self, conn: _Conn):
        if conn.waiting is not None:
            self._waiting.pop(conn.waiting, None)
            conn.waiting = None
        fd = conn.sock.fileno()
        if fd >= 0:
            assert self._sel is not None    # connections exist only once open() ran
            try:
                self._sel.unregister(conn.sock)
            except (KeyError, ValueError):
                pass
            self._conns.pop(fd, None)
        conn.handler = None         # the partial refers back to the connection
        try:
            conn.sock.close()
        except OSError:
            pass
