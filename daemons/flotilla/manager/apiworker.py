"""The manager API's gunicorn worker: gthread, where no thread waits for a
slow client.

gunicorn's gthread worker hands a connection to a thread as soon as its
first byte arrives; the thread then does the TLS handshake and reads the
request line and headers, blocking, with no time limit. A few dozen clients
that connect and then send slowly, or nothing after the handshake, would
hold every thread and the API would stop answering.

Here the handshake and the request head are read on gunicorn's event loop,
without a thread. A connection goes to the thread pool only once its head
is complete (or 64 KB long), so slow and idle clients cost a file
descriptor, not a thread, and there are at most ``worker_connections`` of
them; a client that has not sent its complete head ``HEAD_TIMEOUT`` seconds
after its first byte (on a kept-alive connection: after its next request
began) is disconnected and counted. In the thread, the body must be
complete ``BODY_TIMEOUT`` seconds after the head, and every read or write
must make progress within ``tls.BoundedSSLSocket.io_timeout``.

Requests from agents (sessions, status reports, joins) are many; every
other request (operators, other managers) runs on a small pool of its own
(``CONTROL_THREADS``), so that it never waits in line behind a backlog of
agent traffic (the request path is read from the head, which is here
before any thread is involved).

gunicorn's own refusals of requests it cannot parse are answered in the
API's error shape too (``handle_error``).
"""

from __future__ import annotations

import concurrent.futures
import selectors
import ssl
import time
from functools import partial

from gunicorn import http
from gunicorn import sock as gsock
from gunicorn import util
from gunicorn.workers.gthread import ThreadWorker

from ..common import tls
from ..common.jsonbody import dumps_line

# Error codes for what gunicorn refuses before the application sees a request.
PROTOCOL_ERRORS = {400: "bad_request", 403: "forbidden", 414: "uri_too_long",
                   417: "expectation_failed", 431: "headers_too_large",
                   501: "not_implemented"}

HEAD_TIMEOUT = 10.0
BODY_TIMEOUT = 30.0
READ_CHUNK = 16 * 1024
HEAD_END = b"\r\n\r\n"
# A head this long goes to a thread as it is: gunicorn's parser refuses it
# or reads the rest (within BODY_TIMEOUT). This bounds what each waiting
# connection holds in memory.
MAX_HEAD = 64 * 1024
CONTROL_THREADS = 8


class ApiWorker(ThreadWorker):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # Connections whose request head is being read, oldest deadline first.
        self.head_conns = []
        self.control_pool = None

    def run(self):
        try:
            super().run()
        finally:
            if self.control_pool is not None:
                self.control_pool.shutdown(wait=False)

    # Every path that hands a connection to the thread pool (a new
    # connection, a kept-alive one turning readable, pipelined bytes left
    # over) comes through here.
    def enqueue_req(self, conn):
        if getattr(conn, "head_ready", False) or not self.cfg.is_ssl:
            conn.head_ready = False
            if self.cfg.is_ssl:
                conn.sock.read_deadline = time.monotonic() + BODY_TIMEOUT
            if getattr(conn, "control", False):
                conn.control = False
                if self.control_pool is None:
                    self.control_pool = concurrent.futures.ThreadPoolExecutor(
                        CONTROL_THREADS, thread_name_prefix="api-control")
                fs = self.control_pool.submit(self.handle, conn)
                fs.add_done_callback(
                    lambda fut: self.method_queue.defer(self.finish_request, conn, fut))
                return
            super().enqueue_req(conn)
            return
        self._start_head(conn)

    def _start_head(self, conn):
        if not conn.initialized:
            try:
                conn.sock = gsock.ssl_context(self.cfg).wrap_socket(
                    conn.sock, server_side=True, do_handshake_on_connect=False,
                    suppress_ragged_eofs=self.cfg.suppress_ragged_eofs)
            except (OSError, ValueError):
                self._drop(conn)
                return
            conn.handshaken = False
            conn.head = bytearray()
        else:
            conn.handshaken = True
            conn.head = bytearray(conn.parser.unreader.take_buffered())
        conn.sock.setblocking(False)
        conn.sock.read_deadline = None
        conn.timeout = time.monotonic() + HEAD_TIMEOUT
        self.head_conns.append(conn)
        conn.events = selectors.EVENT_READ
        self.poller.register(conn.sock, conn.events, partial(self._on_head_event, conn))
        self._on_head_event(conn, conn.sock)

    def _on_head_event(self, conn, _sock):
        want = selectors.EVENT_READ
        try:
            if not conn.handshaken:
                conn.sock.do_handshake()
                conn.handshaken = True
            while not self._head_done(conn.head):
                data = conn.sock.recv(READ_CHUNK)
                if not data:            # the client closed the connection
                    self._forget(conn)
                    self._drop(conn)
                    return
                conn.head += data
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLWantWriteError:
            want = selectors.EVENT_WRITE
        except OSError:                 # refused handshake (counted), reset, ...
            self._forget(conn)
            self._drop(conn)
            return
        if not self._head_done(conn.head):
            if want != conn.events:
                conn.events = want
                self.poller.modify(conn.sock, want, partial(self._on_head_event, conn))
            return
        self._forget(conn)
        if conn.parser is None:
            conn.parser = http.get_parser(self.cfg, conn.sock, conn.client)
            conn.initialized = True
        conn.control = not _is_agent_request(conn.head)
        conn.parser.unreader.unread(bytes(conn.head))
        conn.head = None
        conn.data_ready = True
        conn.head_ready = True
        self.enqueue_req(conn)

    @staticmethod
    def _head_done(head: bytearray) -> bool:
        return HEAD_END in head or len(head) >= MAX_HEAD

    def _forget(self, conn):
        try:
            self.poller.unregister(conn.sock)
        except (KeyError, ValueError, OSError):
            pass
        try:
            self.head_conns.remove(conn)
        except ValueError:
            pass

    def _drop(self, conn):
        self.nr_conns -= 1
        conn.close()

    def murder_pending(self):
        super().murder_pending()
        now = time.monotonic()
        while self.head_conns and self.head_conns[0].timeout <= now:
            conn = self.head_conns[0]
            self._forget(conn)
            self._drop(conn)
            if not conn.handshaken:
                tls.count_handshake_failure("timeout")
            else:
                refused = getattr(self.app, "refused", None)
                if refused is not None:
                    refused("api.slow_request")

    def handle_error(self, req, client, addr, exc):
        """gunicorn's answer to a request it cannot parse (bad request line,
        headers too large...), in the API's one error shape. gunicorn still
        decides the status and logs."""
        from .api.common import error_body

        capture = _Capture()
        super().handle_error(req, capture, addr, exc)
        status, reason = capture.status_line()
        if not status.isdigit():
            return
        status_int = int(status)
        if status_int >= 500 and status_int != 501:
            body = error_body("internal", "internal error (see the manager log)")
        else:
            body = error_body(PROTOCOL_ERRORS.get(status_int, "bad_request"), str(exc)[:500])
        data = dumps_line(body)
        head = (f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n")
        try:
            util.write_nonblock(client, head.encode() + data)
        except Exception:   # the client is gone: nothing to tell it
            pass


def _is_agent_request(head: bytearray) -> bool:
    from .api.app import is_agent_path

    line = bytes(head[:head.find(b"\r\n")]) if b"\r\n" in head else b""
    parts = line.split(b" ")
    return len(parts) >= 2 and is_agent_path(parts[1].decode("latin-1"))


class _Capture:
    """Stands in for the client socket to learn the status gunicorn chose."""

    def __init__(self):
        self.data = b""

    def gettimeout(self):
        return 0.0

    def setblocking(self, _flag):
        pass

    def sendall(self, data):
        self.data += data

    def status_line(self) -> tuple[str, str]:
        """Status code and reason phrase of what gunicorn wrote."""
        line = self.data.split(b"\r\n", 1)[0].decode("latin-1")
        _, status, reason = (line.split(" ", 2) + ["", ""])[:3]
        return status, reason
