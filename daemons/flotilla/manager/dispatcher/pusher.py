"""Assignment pushes to agents: one thread, one kept-alive connection per agent.

It runs in the leader's push process (``pushproc.py``), away from the GIL
the manager's other threads share.

The dispatcher hands over a node's next assignment message as bytes; the
pusher POSTs it to the agent's listener (``/v1/assignments``, mutual TLS
with this manager's certificate, the agent's node id as server name) and
calls back with the HTTP status. Each agent has one connection, reused for
all its pushes, so an agent costs one TLS handshake per session rather than
one per push, and a thousand pushes in flight cost one thread and a
thousand non-blocking sockets driven by one selector, not a thread each.
The sockets are plain ``ssl.SSLSocket``s (encryption and reads happen in C;
an answer is a few hundred bytes). A connection can be opened ahead of the
first push (``warm``), which the dispatcher does when an agent registers.

A push on a reused connection that fails before any answer arrived is sent
once more on a new connection (the agent may have closed it while idle):
the agent acknowledges a message it has already applied (same sequence
number) without applying it again, and a complete set is idempotent.

Jobs for one node run one after the other (the dispatcher also keeps at
most one push per node in flight).
"""

from __future__ import annotations

import collections
import errno
import logging
import selectors
import socket
import ssl
import threading
import time
from typing import Callable

from ...common.component import Component
from ...common.config import address_family, split_addr

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 5.0
RESPONSE_TIMEOUT = 10.0
MAX_ACTIVE = 2048
MAX_RESPONSE = 1 << 20
READ_CHUNK = 64 * 1024
DEADLINE_CHECK = 0.1
SERVER_TICK = 0.02      # longest wait of an attached server's work during a pass


class PushError(Exception):
    pass


def call_done(done, status, error) -> None:
    """Call a push's ``done(status, error)``; a failing callback is logged."""
    try:
        done(status, error)
    except Exception:  # pragma: no cover - defensive
        log.exception("assignment push callback failed")


class _Job:
    __slots__ = ("body", "done", "attempt")

    def __init__(self, body, done):
        self.body = body            # None: only connect
        self.done = done
        self.attempt = 0


class _Peer:
    __slots__ = ("node_id", "addr", "sock", "generation", "state", "jobs", "job", "out",
                 "inbuf", "deadline", "reused", "registered")

    def __init__(self, node_id: str, addr: str) -> None:
        self.node_id = node_id
        self.addr = addr
        self.sock = None
        self.generation = -1
        self.state = "idle"         # idle | connecting | handshake | sending | reading
        self.jobs: collections.deque[_Job] = collections.deque()
        self.job: _Job | None = None
        self.out = b""
        self.inbuf = bytearray()
        self.deadline = 0.0
        self.reused = False
        self.registered = 0         # selector events registered for


def parse_response(buf: bytearray) -> tuple[int, bool] | None:
    """(status, keep the connection) once ``buf`` holds a complete HTTP/1.1
    response, else None. Raises PushError on garbage."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        if len(buf) > MAX_RESPONSE:
            raise PushError("response head too large")
        return None
    lines = bytes(buf[:end]).split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
        raise PushError(f"bad status line {lines[0][:80]!r}")
    status = int(parts[1])
    keep = parts[0] == b"HTTP/1.1"
    length, chunked = 0, False
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name, value = name.strip().lower(), value.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding":
            chunked = value == b"chunked"
        elif name == b"connection":
            keep = value != b"close" if keep else value == b"keep-alive"
    body = end + 4
    if chunked:
        pos = body
        while True:
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                return None
            size = int(bytes(buf[pos:eol]).split(b";")[0], 16)
            if size == 0:
                if buf.find(b"\r\n", eol + 2) < 0:
                    return None
                return status, keep
            pos = eol + 2 + size + 2
            if pos > len(buf):
                return None
    if length > MAX_RESPONSE:
        raise PushError("response too large")
    if len(buf) - body < length:
        return None
    return status, keep


class Pusher(Component):
    name = "assignment-pusher"

    def __init__(self, context: Callable[[], tuple[ssl.SSLContext, int]]):
        """``context()`` returns (client SSL context, generation); a new
        generation (the certificate was renewed) retires open connections."""
        super().__init__()
        self._context = context
        self._commands: collections.deque = collections.deque()
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._wake_pending = False
        self._peers: dict[str, _Peer] = {}
        self._waiting: collections.deque[_Peer] = collections.deque()  # over MAX_ACTIVE
        self._active: set[_Peer] = set()
        self._sel: selectors.BaseSelector | None = None
        self._running = threading.Event()
        self._checked_at = 0.0
        self._servers: list = []
        self.connects = 0

    # -- called from other threads ---------------------------------------------------
    def push(self, node_id: str, addr: str, body: bytes,
             done: Callable[[int | None, Exception | None], None]) -> bool:
        """Send ``body`` to the node; ``done(status, error)`` is called on
        the pusher's thread. False if the pusher is not running."""
        return self._command(("job", node_id, addr, _Job(body, done)))

    def warm(self, node_id: str, addr: str) -> None:
        """Open the node's connection now, ahead of its first push."""
        self._command(("job", node_id, addr, _Job(None, None)))

    def forget(self, node_id: str) -> None:
        self._command(("forget", node_id))

    def _command(self, cmd) -> bool:
        if not self._running.is_set() or self.stopping.is_set():
            return False
        self._commands.append(cmd)
        self._signal()
        return True

    def _signal(self):
        if not self._wake_pending and self._wake_w is not None:
            self._wake_pending = True
            try:
                self._wake_w.send(b"x")
            except OSError:         # full or closed: the loop is awake or gone
                pass

    def wake(self):
        self._signal()

    # -- lifecycle -------------------------------------------------------------------
    def attach(self, server) -> None:
        """Serve ``server`` (``front.FrontServer``) from this loop too;
        before :meth:`start`."""
        self._servers.append(server)

    def start(self) -> None:
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._sel = selectors.DefaultSelector()
        self._sel.register(self._wake_r, selectors.EVENT_READ, None)
        self._running.set()
        super().start()

    def run(self):
        try:
            for server in self._servers:
                server.open(self._sel, self.wake)
            while not self.stopping.is_set():
                timeout = self._next_deadline()
                tick_at = time.monotonic() + SERVER_TICK
                for key, _mask in self._sel.select(timeout):
                    self._on_ready(key)
                    if self._servers and time.monotonic() >= tick_at:
                        # A pass over a thousand busy sockets takes a while:
                        # the attached servers' answers and requests go on
                        # their way during it, not only after it.
                        self._tick_servers()
                        tick_at = time.monotonic() + SERVER_TICK
                self._run_commands()
                self._tick_servers()
                self._check_deadlines()
        finally:
            self._running.clear()
            for server in self._servers:
                server.close()
            self._shutdown()

    def _on_ready(self, key):
        if key.data is None:
            self._drain_wake()
        elif callable(key.data):        # a socket of an attached server
            key.data()
        else:
            try:
                self._on_io(key.data)
            except Exception as exc:    # a bug: fail this push, keep the others
                log.exception("assignment push to %s failed", key.data.node_id)
                self._failed(key.data, PushError(f"internal error: {exc!r}"))

    def _tick_servers(self):
        for server in self._servers:
            server.tick()

    def _shutdown(self):
        for peer in list(self._peers.values()):
            self._close(peer)
        self._peers.clear()
        try:
            self._sel.close()
        except Exception:
            pass
        for s in (self._wake_r, self._wake_w):
            try:
                s.close()
            except Exception:
                pass

    def _drain_wake(self):
        self._wake_pending = False
        try:
            while self._wake_r.recv(4096):
                pass
        except OSError:
            pass

    def _run_commands(self):
        while self._commands:
            cmd = self._commands.popleft()
            if cmd[0] == "job":
                _, node_id, addr, job = cmd
                peer = self._peers.get(node_id)
                if peer is None or peer.addr != addr:
                    if peer is not None:
                        self._close(peer)
                        self._fail_jobs(peer, PushError("agent address changed"))
                    peer = self._peers[node_id] = _Peer(node_id, addr)
                peer.jobs.append(job)
                if peer.job is None and peer not in self._waiting:
                    self._next_job(peer)
            elif cmd[0] == "forget":
                peer = self._peers.pop(cmd[1], None)
                if peer is not None:
                    self._close(peer)
                    self._fail_jobs(peer, PushError("session ended"))

    # -- jobs --------------------------------------------------------------------------
    def _next_job(self, peer):
        if peer.job is not None:
            return
        if not peer.jobs:
            self._active.discard(peer)
            self._admit()
            return
        if peer not in self._active and len(self._active) >= MAX_ACTIVE:
            if peer not in self._waiting:
                self._waiting.append(peer)
            return
        self._active.add(peer)
        job = peer.job = peer.jobs.popleft()
        _ctx, generation = self._context()
        if peer.sock is not None and peer.generation != generation:
            self._close(peer)
        if peer.sock is None:
            self._connect(peer)
        elif job.body is None:
            self._finish(peer, None, None)
        else:
            peer.reused = True
            self._send(peer)

    def _admit(self):
        while self._waiting and len(self._active) < MAX_ACTIVE:
            peer = self._waiting.popleft()
            if self._peers.get(peer.node_id) is peer and peer.job is None:
                self._next_job(peer)

    def _finish(self, peer, status, error):
        job, peer.job = peer.job, None
        if job is not None and job.done is not None:
            call_done(job.done, status, error)
        if self._peers.get(peer.node_id) is peer:
            self._next_job(peer)
        else:
            self._active.discard(peer)
            self._admit()

    def _fail_jobs(self, peer, error):
        jobs = list(peer.jobs)
        peer.jobs.clear()
        if peer.job is not None:
            jobs.insert(0, peer.job)
            peer.job = None
        self._active.discard(peer)
        for job in jobs:
            if job.done is not None:
                call_done(job.done, None, error)
        self._admit()

    def _failed(self, peer, error):
        """The connection broke while serving the current job."""
        retry = peer.reused and not peer.inbuf and peer.job is not None and \
            peer.job.body is not None and peer.job.attempt == 0
        self._close(peer)
        if retry:
            peer.job.attempt += 1
            self._connect(peer)
            return
        if not isinstance(error, PushError):
            error = PushError(str(error) or type(error).__name__)
        self._finish(peer, None, error)

    # -- the connection ------------------------------------------------------------------
    def _watch(self, peer, events):
        if peer.registered == events:
            return
        if peer.registered:
            self._sel.modify(peer.sock, events, peer)
        else:
            self._sel.register(peer.sock, events, peer)
        peer.registered = events

    def _unwatch(self, peer):
        if peer.registered and peer.sock is not None:
            try:
                self._sel.unregister(peer.sock)
            except (KeyError, ValueError, OSError):
                pass
        peer.registered = 0

    def _close(self, peer):
        self._unwatch(peer)
        if peer.sock is not None:
            try:
                peer.sock.close()
            except OSError:
                pass
        peer.sock = None
        peer.state = "idle"
        peer.inbuf = bytearray()

    def _connect(self, peer):
        peer.reused = False
        peer.inbuf = bytearray()
        try:
            host, port = split_addr(peer.addr, default_port=None)
            sock = socket.socket(address_family(host), socket.SOCK_STREAM)
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            err = sock.connect_ex((host, port))
        except (OSError, ValueError) as exc:
            self._finish(peer, None, PushError(f"connect: {exc}"))
            return
        if err not in (0, errno.EINPROGRESS, errno.EWOULDBLOCK):
            sock.close()
            self._finish(peer, None, PushError(f"connect: {errno.errorcode.get(err, err)}"))
            return
        peer.sock = sock
        peer.state = "connecting"
        peer.deadline = time.monotonic() + CONNECT_TIMEOUT
        self._watch(peer, selectors.EVENT_WRITE)

    def _on_io(self, peer):
        try:
            if peer.state == "connecting":
                err = peer.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    raise PushError(f"connect: {errno.errorcode.get(err, err)}")
                ctx, generation = self._context()
                self._unwatch(peer)
                peer.sock = ctx.wrap_socket(peer.sock, server_hostname=peer.node_id,
                                            do_handshake_on_connect=False)
                peer.generation = generation
                peer.state = "handshake"
                self.connects += 1
                self._handshake(peer)
            elif peer.state == "handshake":
                self._handshake(peer)
            elif peer.state == "sending":
                self._send_more(peer)
            elif peer.state == "reading":
                self._read(peer)
            else:
                self._idle_readable(peer)
        except (OSError, ssl.SSLError, PushError, ValueError) as exc:
            self._failed(peer, exc)

    def _handshake(self, peer):
        try:
            peer.sock.do_handshake()
        except ssl.SSLWantReadError:
            self._watch(peer, selectors.EVENT_READ)
            return
        except ssl.SSLWantWriteError:
            self._watch(peer, selectors.EVENT_WRITE)
            return
        peer.state = "idle"
        self._watch(peer, selectors.EVENT_READ)
        if peer.job is not None and peer.job.body is not None:
            self._send(peer)
        else:
            self._finish(peer, None, None)

    def _send(self, peer):
        body = peer.job.body
        peer.out = (f"POST /v1/assignments HTTP/1.1\r\nHost: {peer.node_id}\r\n"
                    f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
                    ).encode() + body
        peer.inbuf = bytearray()
        peer.state = "sending"
        peer.deadline = time.monotonic() + RESPONSE_TIMEOUT
        try:
            self._send_more(peer)
        except (OSError, ssl.SSLError, PushError, ValueError) as exc:
            self._failed(peer, exc)

    def _send_more(self, peer):
        while peer.out:
            try:
                n = peer.sock.send(peer.out)
            except ssl.SSLWantWriteError:
                self._watch(peer, selectors.EVENT_WRITE)
                return
            except ssl.SSLWantReadError:
                self._watch(peer, selectors.EVENT_READ)
                return
            peer.out = peer.out[n:]
        # The answer cannot be there yet: wait for the socket to be readable.
        peer.state = "reading"
        self._watch(peer, selectors.EVENT_READ)

    def _read(self, peer):
        # Read until the answer is complete or the socket has nothing more
        # (an answer is a few hundred bytes: one read). Not SSL pending():
        # like every SSL call it gives up the GIL, and under contention
        # each of those costs a wait.
        while True:
            try:
                data = peer.sock.recv(READ_CHUNK)
            except ssl.SSLWantReadError:
                return
            except ssl.SSLWantWriteError:
                self._watch(peer, selectors.EVENT_WRITE)
                return
            if not data:
                raise ConnectionError("connection closed by the agent")
            peer.inbuf += data
            done = parse_response(peer.inbuf)
            if done is not None:
                break
        if peer.registered != selectors.EVENT_READ:
            self._watch(peer, selectors.EVENT_READ)
        status, keep = done
        peer.state = "idle"
        peer.inbuf = bytearray()
        if not keep:
            self._close(peer)
        self._finish(peer, status, None)

    def _idle_readable(self, peer):
        """An idle connection stays registered for reading (changing what a
        socket is registered for is a system call, and every system call
        gives up the GIL): readable while idle means the agent closed it,
        or TLS housekeeping (a session ticket) arrived."""
        try:
            data = peer.sock.recv(READ_CHUNK)
        except ssl.SSLWantReadError:
            return
        except ssl.SSLWantWriteError:
            data = b""
        if data:
            log.info("assignment connection to %s: unexpected data while idle", peer.node_id)
        self._close(peer)

    # -- time limits ---------------------------------------------------------------------
    def _next_deadline(self) -> float:
        return DEADLINE_CHECK if self._active else 1.0

    def _check_deadlines(self):
        now = time.monotonic()
        if now < self._checked_at + DEADLINE_CHECK:
            return
        self._checked_at = now
        late = [p for p in self._active if p.state != "idle" and p.deadline <= now]
        for peer in late:
            self._failed(peer, PushError(f"timed out ({peer.state})"))
