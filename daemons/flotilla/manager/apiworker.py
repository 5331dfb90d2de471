"""The manager API's gunicorn worker: gthread, where no thread waits for a
client.

gunicorn's gthread worker hands a connection to a thread as soon as its
first byte arrives; the thread then does the TLS handshake and reads the
request, blocking. Clients that connect and then send slowly would hold
the threads, and those whose body the application reads, the admission
slots (``common/admission.py``): six slow uploads froze the API.

Here a request reaches a thread only once all of it is in memory. On
gunicorn's event loop, without a thread:

1. The TLS handshake and the request head. A client that has not sent its
   complete head ``HEAD_TIMEOUT`` seconds after its first byte (on a
   kept-alive connection: after its next request began) is disconnected
   and counted; a head of ``MAX_HEAD`` bytes or more is refused (431).
2. The head is parsed, by gunicorn's own parser so that both agree on
   where the body ends, and decided on before any of the body is read: a
   request without a client certificate gets 413 if it announces a body
   over the limit and 401 unless it is for a join endpoint (whose bodies
   may be at most ``MAX_PUBLIC_BODY``); a request with a certificate
   announcing a body over the limit gets 413 after the body was read and
   thrown away (up to ``DRAIN_LIMIT``), so that the client, still sending,
   sees the answer rather than a reset.
3. The body, which must be complete ``BODY_TIMEOUT`` seconds after the
   head (else 400). A chunked body is followed as it arrives
   (``ChunkScanner``) to know when it is complete and how large.

The thread then finds the whole request in memory, and its socket's read
deadline has already passed: should it read past the request, it fails at
once instead of waiting. So slow and idle clients cost a file descriptor
and at most the bytes they sent, never a thread or an admission slot;
there are at most ``worker_connections`` of them.

Every answer given on the event loop closes the connection as RFC 9112
(9.6) says: half-close, then read and drop what the client still sends for
at most ``LINGER`` seconds or ``LINGER_BYTES``, so that a client still
sending sees the answer. Connections a thread closes after its answer
linger the same way here: gunicorn lingers blocking, on its event loop, so
one client that never closed stopped every other connection for 2 s.

Requests from agents (sessions, status reports, joins) are many; every
other request (operators, other managers) runs on a small pool of its own
(``CONTROL_THREADS``), so that it never waits in line behind a backlog of
agent traffic.

gunicorn's own refusals of requests it cannot parse are answered in the
API's error shape too (``handle_error``).
"""

from __future__ import annotations

import concurrent.futures
import errno
import heapq
import itertools
import selectors
import socket
import ssl
import time
from functools import partial
from http import HTTPStatus

from gunicorn import sock as gsock
from gunicorn import util
from gunicorn.http.body import ChunkedReader
from gunicorn.http.errors import NoMoreData
from gunicorn.http.message import Request
from gunicorn.http.parser import RequestParser
from gunicorn.http.unreader import IterUnreader
from gunicorn.workers.gthread import TConn, ThreadWorker

from ..ca import certs
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
# A head this long without its end is refused: gunicorn would take up to
# 100 fields of 8 KB, but no client of this API sends more than a few KB.
MAX_HEAD = 64 * 1024
# A body over the limit but under this size is read and thrown away before
# the 413 (client with a certificate only); anything larger is not read.
DRAIN_LIMIT = 64 * 1024 * 1024
# How much one connection may read in one turn of the event loop before the
# others get theirs.
ROUND_BYTES = 1024 * 1024
# Closing after an answer given here: read what the client still sends (so
# that it sees the answer, not a reset) for this long, at most this much.
LINGER = 2.0
LINGER_BYTES = 64 * 1024
CONTROL_THREADS = 8

# Where a connection is on the event loop.
HEAD, BODY, DRAIN, WRITE, LINGERING = "head", "body", "drain", "write", "linger"


class ChunkScanner:
    """Follows a chunked body (RFC 9112 7.1) as its bytes arrive, to tell
    when it is complete and how large it is once decoded, without keeping
    it. gunicorn decodes it afterwards; anything it would refuse that this
    lets through is refused there."""

    MAX_LINE = 8 * 1024
    MAX_TRAILERS = 64 * 1024

    def __init__(self, limit: int):
        self.limit = limit
        self.size = 0           # decoded bytes announced so far
        self.done = False
        self.error: str | None = None
        self._state = "size"
        self._line = bytearray()
        self._left = 0
        self._trailers = 0

    @property
    def too_large(self) -> bool:
        return self.size > self.limit

    def feed(self, data) -> None:
        i, n = 0, len(data)
        while i < n and not self.done and self.error is None:
            if self._state == "data":
                take = min(self._left, n - i)
                i += take
                self._left -= take
                if self._left == 0:
                    self._state = "crlf"
            elif self._state == "crlf":
                take = min(2 - len(self._line), n - i)
                self._line += data[i:i + take]
                i += take
                if len(self._line) == 2:
                    if self._line != b"\r\n":
                        self.error = "chunk data not followed by CRLF"
                    self._line = bytearray()
                    self._state = "size"
            else:                       # a chunk-size line, or a trailer line
                j = data.find(b"\n", i)
                end = n if j < 0 else j + 1
                self._line += data[i:end]
                i = end
                if j >= 0:
                    self._end_of_line(bytes(self._line))
                    self._line = bytearray()
                elif len(self._line) > self.MAX_LINE:
                    self.error = "chunk line too long"

    def _end_of_line(self, line: bytes) -> None:
        if not line.endswith(b"\r\n"):
            self.error = "bare LF in chunked framing"
            return
        if self._state == "size":
            digits = line[:-2].split(b";", 1)[0].rstrip(b" \t")
            if not digits or any(c not in b"0123456789abcdefABCDEF" for c in digits):
                self.error = "invalid chunk size"
                return
            size = int(digits, 16)
            if size == 0:
                self._state = "trailers"
                return
            self.size += size
            self._left = size
            self._state = "data"
            return
        # A trailer field, or the empty line that ends the body.
        if line == b"\r\n":
            self.done = True
            return
        self._trailers += len(line)
        if self._trailers > self.MAX_TRAILERS:
            self.error = "trailer section too long"


class ApiRequestParser(RequestParser):
    """gunicorn's parser, to which the event loop hands the request it has
    parsed already (``ready``), head consumed and body in the buffer."""

    ready: Request | None = None

    def __next__(self):
        if self.ready is None:
            return super().__next__()
        if self.mesg and self.mesg.should_close():
            raise StopIteration()
        if not self.finish_body():
            raise StopIteration()
        self.req_count += 1
        self.mesg, self.ready = self.ready, None
        return self.mesg

    # As gunicorn's Parser does; its stub types ``next`` as an attribute holding a function.
    next = __next__  # type: ignore[assignment]


class ApiConn(TConn):
    """A connection of this worker. A graceful close (gunicorn's, after an
    answer that ends the connection) lingers on the event loop, not
    blocking it."""

    def __init__(self, worker, *args):
        super().__init__(*args)
        self.worker = worker
        self.phase = None
        self.events = None      # what the poller watches for, None if unregistered
        self.timer = None       # the id of this connection's live deadline
        self.counted = True     # counted in the worker's nr_conns
        self.head_ready = False
        self.control = False
        self.handshaken = False
        self.head = None
        self.req = None         # the request parsed on the event loop
        self.request_line = None    # its method and path, until it is answered
        self.started = None
        self.buf = None         # its body (and what follows), as it arrives
        self.scanner = None
        self.out = b""

    def close(self, graceful=False):
        if graceful:
            self.counted = False    # gunicorn has already stopped counting it
            self.worker.linger(self)
        else:
            super().close()


class ApiWorker(ThreadWorker):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # (deadline, id, connection): the event loop's deadlines, soonest
        # first; an entry whose id is no longer its connection's is stale.
        self.timers = []
        self._timer_ids = itertools.count()
        self.control_pool = None

    def run(self):
        try:
            super().run()
        finally:
            if self.control_pool is not None:
                self.control_pool.shutdown(wait=False)

    def accept(self, listener):
        try:
            client_sock, client_addr = listener.accept()
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise
            return
        self.nr_conns += 1
        client_sock.setblocking(True)
        self.enqueue_req(ApiConn(self, self.cfg, client_sock, client_addr,
                                 listener.getsockname()))

    # Every path that hands a connection to the thread pool (a new
    # connection, a kept-alive one turning readable, pipelined bytes left
    # over) comes through here.
    def enqueue_req(self, conn):
        if conn.head_ready or not self.cfg.is_ssl:
            conn.head_ready = False
            if self.cfg.is_ssl:
                # The whole request is in memory: a read in the thread fails
                # at once rather than wait for the client.
                conn.sock.read_deadline = time.monotonic()
            if conn.control:
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

    # -- the event loop's part of a connection ----------------------------------------

    def _start_head(self, conn):
        if not conn.initialized:
            try:
                conn.sock = gsock.ssl_context(self.cfg).wrap_socket(
                    conn.sock, server_side=True, do_handshake_on_connect=False,
                    suppress_ragged_eofs=self.cfg.suppress_ragged_eofs)
            except (OSError, ValueError):
                self._close(conn)
                return
            conn.handshaken = False
            conn.head = bytearray()
        else:
            conn.handshaken = True
            conn.head = bytearray(conn.parser.unreader.take_buffered())
        conn.sock.setblocking(False)
        conn.sock.read_deadline = None
        conn.phase = HEAD
        self._set_timer(conn, HEAD_TIMEOUT)
        self._read_head(conn)

    def _on_event(self, conn, _sock):
        if conn.phase == HEAD:
            self._read_head(conn)
        elif conn.phase in (BODY, DRAIN):
            self._read_body(conn)
        elif conn.phase == WRITE:
            self._write(conn)
        elif conn.phase == LINGERING:
            self._linger_read(conn)

    def _read_head(self, conn):
        want = selectors.EVENT_READ
        try:
            if not conn.handshaken:
                conn.sock.do_handshake()
                conn.handshaken = True
            while not self._head_done(conn.head):
                data = conn.sock.recv(READ_CHUNK)
                if not data:            # the client closed the connection
                    self._close(conn)
                    return
                conn.head += data
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLWantWriteError:
            want = selectors.EVENT_WRITE
        except OSError:                 # refused handshake (counted), reset, ...
            self._close(conn)
            return
        if not self._head_done(conn.head):
            self._watch(conn, want)
            return
        self._head_complete(conn)

    @staticmethod
    def _head_done(head: bytearray) -> bool:
        return HEAD_END in head or len(head) >= MAX_HEAD

    def _head_complete(self, conn):
        from .api.app import MAX_BODY, MAX_PUBLIC_BODY, is_agent_path, is_public_path

        data = bytes(conn.head)
        conn.head = None
        if conn.parser is None:
            conn.parser = ApiRequestParser(self.cfg, conn.sock, conn.client)
            conn.initialized = True
        if HEAD_END not in data:
            self._answer(conn, 431, "headers_too_large",
                         f"the request head is over {MAX_HEAD} bytes")
            return
        try:
            # gunicorn's parser, on bytes that are all here: it must not
            # read the socket. The request then reads its body from the
            # connection's buffer (see _to_thread).
            req = Request(self.cfg, IterUnreader([data]), conn.client,
                          conn.parser.req_count + 1)
            body_start = len(data) - len(req.unreader.buf.getvalue())
            req.unreader = conn.parser.unreader
            req.set_body_reader()
        except (NoMoreData, StopIteration):
            self._answer(conn, 400, "bad_request", "incomplete request head")
            return
        except Exception as exc:    # what gunicorn refuses, answered as a thread would
            answer = self._error_bytes(None, conn.client, exc)
            if answer is None:
                self._close(conn)
            else:
                self._send_and_close(conn, answer)
            return
        chunked = isinstance(req.body.reader, ChunkedReader)
        length = None if chunked else req.body.reader.length
        public = is_public_path(req.path)
        certified = certs.peer_identity(conn.sock) is not None
        limit = MAX_BODY if certified or not public else min(MAX_BODY, MAX_PUBLIC_BODY)
        conn.control = not is_agent_path(req.path)
        conn.started = time.monotonic()
        conn.request_line = (req.method, req.path)
        conn.req = req
        conn.buf = bytearray()
        conn.scanner = ChunkScanner(limit) if chunked else None
        conn.need = None if chunked else length
        conn.limit = limit
        conn.certified = certified
        conn.drained = 0

        if not certified and length is not None and length > MAX_BODY:
            self._too_large(conn, length, MAX_BODY)
            return
        if not certified and not public:
            self._count("api.no_client_cert")
            self._answer(conn, 401, "unauthenticated",
                         "a client certificate from this cluster is required")
            return
        if length is not None and length > limit:
            if not certified or length > DRAIN_LIMIT or req._expected_100_continue:
                self._too_large(conn, length, limit)    # nothing of the body is read
                return
            self._count("api.too_large")
            conn.phase = DRAIN
            conn.buf = None
            conn.need = length - (len(data) - body_start)
            conn.refusal = (length, limit)
            conn.req = None
        else:
            conn.phase = BODY
            if len(data) > body_start:
                self._take(conn, data[body_start:])
                if conn.phase != BODY:
                    return
        if req._expected_100_continue and not self._body_complete(conn):
            try:
                conn.sock.send(b"HTTP/1.1 100 Continue\r\n\r\n")
            except OSError:
                self._close(conn)
                return
            req._expected_100_continue = False  # (gunicorn would send it again)
        self._set_timer(conn, BODY_TIMEOUT)
        self._read_body(conn)

    def _read_body(self, conn):
        want = selectors.EVENT_READ
        got = 0
        try:
            while not self._body_complete(conn):
                data = conn.sock.recv(READ_CHUNK)
                if not data:            # the client went away
                    self._close(conn)
                    return
                got += len(data)
                self._take(conn, data)
                if conn.phase not in (BODY, DRAIN):
                    return
                if got >= ROUND_BYTES and not conn.sock.pending():
                    break               # the other connections' turn
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLWantWriteError:
            want = selectors.EVENT_WRITE
        except OSError:
            self._close(conn)
            return
        if not self._body_complete(conn):
            self._watch(conn, want)
            return
        if conn.phase == DRAIN:
            self._too_large(conn, *conn.refusal, counted=True)
            return
        if conn.scanner is not None and conn.scanner.error:
            self._answer(conn, 400, "bad_request",
                         f"malformed chunked body: {conn.scanner.error}")
            return
        self._to_thread(conn)

    def _take(self, conn, data):
        scanner = conn.scanner
        if conn.phase == DRAIN:
            conn.drained += len(data)
            if scanner is None:
                conn.need -= len(data)
            else:
                scanner.feed(data)
            if conn.drained > DRAIN_LIMIT:
                self._too_large(conn, *conn.refusal, counted=True)
            return
        conn.buf += data
        if scanner is None:
            return
        scanner.feed(data)
        if scanner.too_large or len(conn.buf) > 2 * conn.limit + MAX_HEAD:
            # Over the limit once decoded (or the framing alone is).
            if not conn.certified:
                self._too_large(conn, None, conn.limit)
                return
            self._count("api.too_large")
            conn.phase = DRAIN
            conn.drained = len(conn.buf)
            conn.buf = None
            conn.refusal = (None, conn.limit)
            if conn.drained > DRAIN_LIMIT:
                self._too_large(conn, *conn.refusal, counted=True)

    @staticmethod
    def _body_complete(conn) -> bool:
        if conn.scanner is not None:
            return conn.scanner.done or conn.scanner.error is not None
        if conn.phase == DRAIN:
            return conn.need <= 0
        return len(conn.buf) >= conn.need

    def _to_thread(self, conn):
        self._unwatch(conn)
        try:
            # Bytes the TLS layer holds already (a pipelined request) do not
            # make the socket readable to the poller: take them now.
            while conn.sock.pending():
                conn.buf += conn.sock.recv(conn.sock.pending())
        except OSError:
            pass
        conn.parser.unreader.unread(bytes(conn.buf))
        conn.parser.ready, conn.req = conn.req, None
        conn.request_line = None
        conn.buf = None
        conn.scanner = None
        conn.phase = None
        conn.data_ready = True
        conn.head_ready = True
        self.enqueue_req(conn)

    # -- answering on the event loop ----------------------------------------------------

    def _too_large(self, conn, length, limit, counted=False):
        if not counted:
            self._count("api.too_large")
        said = f"{length} bytes; " if length is not None else ""
        self._answer(conn, 413, "too_large",
                     f"request body too large ({said}the limit is {limit})")

    def _answer(self, conn, status: int, code: str, message: str):
        """Answer in the API's error shape and close the connection."""
        from ..model.validation import error_body

        if conn.request_line is not None:
            answered = getattr(self.app, "answered", None)
            if answered is not None:
                answered(*conn.request_line, status, time.monotonic() - conn.started)
            conn.request_line = None
        body = dumps_line(error_body(code, message))
        head = (f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\nConnection: close\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")
        self._send_and_close(conn, head.encode() + body)

    def _send_and_close(self, conn, data: bytes):
        conn.buf = conn.scanner = conn.req = None
        conn.out = data
        conn.phase = WRITE
        self._set_timer(conn, LINGER)
        self._write(conn)

    def _write(self, conn):
        want = None
        try:
            while conn.out:
                n = conn.sock.send(conn.out)
                conn.out = conn.out[n:]
        except ssl.SSLWantWriteError:
            want = selectors.EVENT_WRITE
        except ssl.SSLWantReadError:
            want = selectors.EVENT_READ
        except OSError:
            self._close(conn)
            return
        if want is not None:
            self._watch(conn, want)     # TLS: retried with the same bytes
            return
        self.linger(conn)

    def linger(self, conn):
        """Half-close, then read and drop what the client still sends for at
        most LINGER seconds or LINGER_BYTES, without a thread, and close."""
        self._unwatch(conn)
        conn.phase = LINGERING
        conn.out = b""
        conn.linger_left = LINGER_BYTES
        try:
            conn.sock.setblocking(False)
            # On a TLS socket this also leaves TLS: what is read from now on
            # is raw bytes, dropped without being decrypted.
            conn.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self._close(conn)
            return
        self._set_timer(conn, LINGER)
        self._linger_read(conn)

    def _linger_read(self, conn):
        try:
            while conn.linger_left > 0:
                data = conn.sock.recv(READ_CHUNK)
                if not data:
                    break
                conn.linger_left -= len(data)
        except (BlockingIOError, InterruptedError, ssl.SSLWantReadError):
            self._watch(conn, selectors.EVENT_READ)
            return
        except OSError:
            pass
        self._close(conn)

    # -- bookkeeping ------------------------------------------------------------------

    def _watch(self, conn, events):
        callback = partial(self._on_event, conn)
        if conn.events is None:
            self.poller.register(conn.sock, events, callback)
        elif conn.events != events:
            self.poller.modify(conn.sock, events, callback)
        conn.events = events

    def _unwatch(self, conn):
        if conn.events is not None:
            try:
                self.poller.unregister(conn.sock)
            except (KeyError, ValueError, OSError):
                pass
            conn.events = None
        conn.timer = None

    def _set_timer(self, conn, seconds):
        conn.timer = next(self._timer_ids)
        heapq.heappush(self.timers, (time.monotonic() + seconds, conn.timer, conn))

    def _close(self, conn):
        self._unwatch(conn)
        conn.phase = None
        conn.buf = conn.head = conn.scanner = conn.req = None
        if conn.counted:
            conn.counted = False
            self.nr_conns -= 1
        TConn.close(conn)

    def _count(self, reason):
        refused = getattr(self.app, "refused", None)
        if refused is not None:
            refused(reason)

    def murder_pending(self):
        super().murder_pending()
        now = time.monotonic()
        while self.timers and self.timers[0][0] <= now:
            _, timer, conn = heapq.heappop(self.timers)
            if conn.timer != timer:
                continue                # stale: the connection moved on
            conn.timer = None
            self._expired(conn)

    def _expired(self, conn):
        phase = conn.phase
        if phase == HEAD:
            self._close(conn)
            if not conn.handshaken:
                tls.count_handshake_failure("timeout")
            else:
                self._count("api.slow_request")
        elif phase == BODY:
            self._count("api.slow_request")
            self._unwatch(conn)
            self._answer(conn, 400, "incomplete_body",
                         "the request body did not arrive in time")
        elif phase == DRAIN:
            self._count("api.slow_request")
            self._unwatch(conn)
            self._too_large(conn, *conn.refusal, counted=True)
        else:                           # WRITE, LINGERING
            self._close(conn)

    # -- gunicorn's own refusals ------------------------------------------------------

    def handle_error(self, req, client, addr, exc):
        """gunicorn's answer to a request it cannot parse (bad request line,
        headers too large...), in the API's one error shape. gunicorn still
        decides the status and logs."""
        data = self._error_bytes(req, addr, exc)
        if data is None:
            return
        try:
            util.write_nonblock(client, data)
        except Exception:   # the client is gone: nothing to tell it
            pass

    def _error_bytes(self, req, addr, exc) -> bytes | None:
        from ..model.validation import error_body

        capture = _Capture()
        # gunicorn only calls gettimeout, setblocking and sendall on the client it is
        # given; the stub asks for a real socket.
        super().handle_error(req, capture, addr, exc)  # type: ignore[arg-type]
        status, reason = capture.status_line()
        if not status.isdigit():
            return None
        status_int = int(status)
        if status_int >= 500 and status_int != 501:
            body = error_body("internal", "internal error (see the manager log)")
        else:
            body = error_body(PROTOCOL_ERRORS.get(status_int, "bad_request"), str(exc)[:500])
        data = dumps_line(body)
        head = (f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n")
        return head.encode() + data


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
