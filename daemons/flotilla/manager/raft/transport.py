"""Mutual-TLS transport for pysyncobj.

Every Raft connection is TLS with client certificates from the cluster CA.
Right after the handshake, and before a single frame is read, the peer's
certificate must name a current manager of this cluster (OU=manager, O=cluster
id, CN in the manager set). The first frame is the peer's Raft address, which
must belong to that same node id, so a manager cannot speak for another one.
pysyncobj's admin commands (status/add/remove/transfer sent to the Raft port)
are not served at all. Frames are msgpack (see ``codec``), never pickle.

pysyncobj's own ``TcpConnection``/``TcpServer`` cannot be wrapped, so this
module provides classes with the same public surface, driven by pysyncobj's
poller on its tick thread.

Incoming connections never touch the tick thread until they are
established and authorised: accepting them, the TLS handshake and the peer
check run on a thread of their own (:class:`HandshakeWorker`, at a lower
priority), which hands the connections that pass to the tick thread.
Whoever opens connections to the Raft port without a manager's certificate
(a scanner, a flood) costs the tick thread nothing and the process a
handshake's cryptography, run without the GIL. At most ``HANDSHAKE_LIMIT``
handshakes are in progress at once; beyond that the oldest is dropped (a
peer's handshake takes milliseconds, a stalled one is the one to drop), and
one not finished within the connection timeout is dropped too. Outgoing
connections (to members only) do their handshake on the tick thread,
non-blocking.
"""

from __future__ import annotations

import collections
import errno
import functools
import logging
import os
import selectors
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol, cast

from pysyncobj.poller import POLL_EVENT_TYPE
from pysyncobj.tcp_connection import CONNECTION_STATE
from pysyncobj.transport import TCPTransport

from . import codec
from .pysyncobj_compat import address_family, poller_of

log = logging.getLogger(__name__)

READ = POLL_EVENT_TYPE.READ
WRITE = POLL_EVENT_TYPE.WRITE
ERROR = POLL_EVENT_TYPE.ERROR
# Reads go into a buffer kept for the connection: ``recv(n)`` allocates n
# bytes each call (and once more for the call that finds nothing left),
# and an allocation this large is a fresh mapping of memory each time.
RECV_CHUNK = 256 * 1024
SEND_CHUNK = 256 * 1024
SERVER_NAME = "flotilla-manager"
# Incoming handshakes in progress at most; beyond, the oldest is dropped.
HANDSHAKE_LIMIT = 128
# How much the handshake thread's nice value is raised: when the machine is
# busy, the kernel runs the manager's other threads first.
HANDSHAKE_NICENESS = 10


class PeerSecurity(Protocol):
    """What the transport asks of the Raft port's security (``security.py``)."""

    def context(self, server_side: bool) -> ssl.SSLContext: ...

    def verify_peer(self, peercert: dict | None, expected_address: str | None) -> str | None: ...

    def claim_ok(self, node_id: str | None, address: str) -> bool: ...

    def refused(self, reason: str, detail: str = "") -> None: ...

    def flush_refusals(self) -> None: ...

    def before_send(self) -> None: ...

    def members_changed(self, addresses: Iterable[str], member: dict | None = None) -> None: ...


# pysyncobj's poller (``pysyncobj.poller``): untyped; subscribe(fd, callback,
# mask), unsubscribe(fd).
Poller = Any
Callback = Callable[[], None]


class TlsConnection:
    """One TLS connection between two managers (either direction)."""

    def __init__(self, poller: Poller, security: PeerSecurity, *, timeout: float,
                 ping_interval: float,
                 established: tuple[ssl.SSLSocket, str] | None = None,
                 expected_address: str | None = None) -> None:
        # Attributes pysyncobj's transport touches.
        self.sendRandKey: bytes | None = None
        self.recvRandKey: bytes | None = None
        self.recvLastTimestamp = 0.0
        self.encryptor: object | None = None

        self.peer_id: str | None = None
        self.expected_address = expected_address
        self._poller = poller
        self._security = security
        self._timeout = timeout
        self._ping_interval = ping_interval
        self._sock: ssl.SSLSocket | None = None
        self._raw: socket.socket | None = None
        self._fileno: int | None = None
        self._mask = 0
        self._phase: str | None = None
        self._state = CONNECTION_STATE.DISCONNECTED
        self._rbuf = bytearray()
        self._chunk = memoryview(bytearray(RECV_CHUNK))
        self._wbuf = bytearray()
        self._retry_len = 0
        self._last_read = self._last_write = time.monotonic()
        self._on_message: Callable[[Any], None] | None = None
        self._on_connected: Callback | None = None
        self._on_disconnected: Callback | None = None
        if established is not None:
            self._open(*established)

    # -- pysyncobj surface --------------------------------------------------
    def setOnConnectedCallback(self, cb: Callback | None) -> None:
        self._on_connected = cb

    def setOnMessageReceivedCallback(self, cb: Callable[[Any], None] | None) -> None:
        self._on_message = cb

    def setOnDisconnectedCallback(self, cb: Callback | None) -> None:
        self._on_disconnected = cb

    @property
    def state(self) -> int:
        return self._state

    def fileno(self) -> int | None:
        return self._fileno

    def getSendBufferSize(self) -> int:
        return len(self._wbuf)

    def connect(self, host: str | None, port: int) -> bool:
        if host is None:
            return False
        self._reset()
        try:
            raw = socket.socket(address_family(host), socket.SOCK_STREAM)
        except Exception:
            return False
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        raw.setblocking(False)
        try:
            raw.connect((host, port))
        except BlockingIOError:
            pass
        except OSError as exc:
            if exc.errno not in (errno.EINPROGRESS, errno.EWOULDBLOCK):
                raw.close()
                return False
        self._raw = raw
        self._fileno = raw.fileno()
        self._phase = "tcp"
        self._state = CONNECTION_STATE.CONNECTING
        self._last_read = self._last_write = time.monotonic()
        self._subscribe(READ | WRITE | ERROR)
        return True

    def send(self, message: Any) -> None:
        if self._state == CONNECTION_STATE.DISCONNECTED:
            return
        self._wbuf += codec.encode_message(message)
        if self._state == CONNECTION_STATE.CONNECTED:
            self._flush()
            self._update_subscription()

    def disconnect(self) -> None:
        callback = self._on_disconnected
        was_open = self._state != CONNECTION_STATE.DISCONNECTED
        self._reset()
        if callback is not None and was_open:
            callback()

    # -- internals ----------------------------------------------------------
    def _reset(self) -> None:
        if self._fileno is not None:
            self._poller.unsubscribe(self._fileno)
            self._fileno = None
        for s in (self._sock, self._raw):
            if s is not None:
                try:
                    s.close()
                except OSError:
                    pass
        self._sock = self._raw = None
        self._mask = 0
        self._phase = None
        self._rbuf = bytearray()
        self._wbuf = bytearray()
        self._retry_len = 0
        self._state = CONNECTION_STATE.DISCONNECTED

    def _open(self, sock: ssl.SSLSocket, peer_id: str) -> None:
        """Take over an incoming connection whose handshake and peer check
        are done (by the handshake thread)."""
        self._sock = sock
        self._fileno = sock.fileno()
        self.peer_id = peer_id
        self._phase = "open"
        self._state = CONNECTION_STATE.CONNECTED
        self._last_read = self._last_write = time.monotonic()
        self._subscribe(READ | ERROR)

    def start_reading(self) -> None:
        """Read what the peer sent while the connection changed hands: it
        may sit in the TLS layer's buffer, where the poller cannot see it."""
        if self._state != CONNECTION_STATE.CONNECTED:
            return
        self._flush()
        self._read()
        if self._state == CONNECTION_STATE.CONNECTED:
            self._update_subscription(want_write=bool(self._retry_len))

    def _subscribe(self, mask: int) -> None:
        if self._fileno is not None and mask != self._mask:
            self._poller.subscribe(self._fileno, self._process, mask)
            self._mask = mask

    def _update_subscription(self, want_write: bool = False) -> None:
        mask = READ | ERROR
        if self._wbuf or want_write:
            mask |= WRITE
        self._subscribe(mask)

    def _process(self, descr: int, event: int) -> None:
        if descr != self._fileno:
            self._poller.unsubscribe(descr)
            return
        if event & ERROR:
            self.disconnect()
            return
        if self._phase == "tcp":
            raw = self._raw
            if raw is None or raw.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                self.disconnect()
                return
            if not event & WRITE:
                return
            try:
                self._sock = self._security.context(server_side=False).wrap_socket(
                    raw, server_side=False, do_handshake_on_connect=False,
                    server_hostname=SERVER_NAME)
            except Exception as exc:
                self._security.refused("tls_setup", str(exc))
                self.disconnect()
                return
            self._raw = None
            self._phase = "handshake"
        if self._phase == "handshake":
            self._handshake()
            return
        self._flush()
        if self._state == CONNECTION_STATE.CONNECTED:
            self._read()
        if self._state == CONNECTION_STATE.CONNECTED:
            self._update_subscription(want_write=bool(self._retry_len))

    def _handshake(self) -> None:
        sock = self._sock
        if sock is None:
            return
        try:
            sock.do_handshake()
        except ssl.SSLWantReadError:
            self._subscribe(READ | ERROR)
            return
        except ssl.SSLWantWriteError:
            self._subscribe(READ | WRITE | ERROR)
            return
        except (ssl.SSLError, OSError) as exc:
            self._security.refused(_handshake_reason(exc), str(exc))
            self.disconnect()
            return
        peer = self._security.verify_peer(sock.getpeercert(), self.expected_address)
        if peer is None:
            self.disconnect()
            return
        self.peer_id = peer
        self._phase = "open"
        self._state = CONNECTION_STATE.CONNECTED
        self._last_read = time.monotonic()
        if self._on_connected is not None:
            self._on_connected()
        if self._state != CONNECTION_STATE.CONNECTED:
            return
        self._flush()
        self._read()
        if self._state == CONNECTION_STATE.CONNECTED:
            self._update_subscription()

    def _flush(self) -> None:
        sock = self._sock
        while sock is not None and self._wbuf and self._state == CONNECTION_STATE.CONNECTED:
            n = self._retry_len or min(len(self._wbuf), SEND_CHUNK)
            try:
                sent = sock.send(self._wbuf[:n])
            except (ssl.SSLWantWriteError, ssl.SSLWantReadError):
                # OpenSSL wants the very same bytes again later.
                self._retry_len = n
                return
            except (ssl.SSLError, OSError):
                self.disconnect()
                return
            self._retry_len = 0
            if sent <= 0:
                return
            del self._wbuf[:sent]
            self._last_write = time.monotonic()

    def _read(self) -> None:
        got = False
        sock = self._sock
        while sock is not None and self._state == CONNECTION_STATE.CONNECTED:
            try:
                got_now = sock.recv_into(self._chunk)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLWantWriteError:
                self._update_subscription(want_write=True)
                break
            except (ssl.SSLError, OSError):
                self.disconnect()
                return
            if not got_now:
                self.disconnect()
                return
            self._rbuf += self._chunk[:got_now]
            got = True
        if got:
            self._last_read = time.monotonic()
            self._parse()

    def _parse(self) -> None:
        buf = self._rbuf
        pos = 0
        header = codec.FRAME_HEADER
        try:
            while self._state == CONNECTION_STATE.CONNECTED and len(buf) - pos >= header.size:
                length, kind = header.unpack_from(buf, pos)
                if length > codec.MAX_FRAME:
                    self._security.refused("frame_too_large", f"{length} bytes")
                    self.disconnect()
                    return
                end = pos + header.size + length
                if len(buf) < end:
                    break
                payload = bytes(buf[pos + header.size:end])
                pos = end
                if kind == codec.FRAME_PING:
                    continue
                if kind != codec.FRAME_MESSAGE:
                    self._security.refused("bad_frame", f"kind {kind}")
                    self.disconnect()
                    return
                try:
                    message = codec.decode_message(payload)
                except codec.CodecError as exc:
                    self._security.refused("bad_message", str(exc))
                    self.disconnect()
                    return
                if self._on_message is not None:
                    self._on_message(message)
        finally:
            if self._state == CONNECTION_STATE.CONNECTED and pos:
                del buf[:pos]

    def maintain(self, now: float) -> None:
        """Called every tick: drop dead or stuck connections, keep idle ones alive."""
        if self._state == CONNECTION_STATE.DISCONNECTED:
            return
        if now - self._last_read > self._timeout:
            self.disconnect()
            return
        if (self._state == CONNECTION_STATE.CONNECTED
                and now - self._last_write > self._ping_interval):
            self._wbuf += codec.encode_frame(codec.FRAME_PING)
            self._flush()
            if self._state == CONNECTION_STATE.CONNECTED:
                self._update_subscription(want_write=bool(self._retry_len))


def _handshake_reason(exc: BaseException) -> str:
    text = str(exc).upper()
    if "CERTIFICATE_REQUIRED" in text or "PEER_DID_NOT_RETURN" in text:
        return "no_client_cert"
    if "UNKNOWN_CA" in text or "CERTIFICATE_VERIFY_FAILED" in text:
        return "unknown_ca" if "EXPIRED" not in text else "expired"
    if "EXPIRED" in text:
        return "expired"
    if any(word in text for word in ("WRONG_VERSION", "HTTP_REQUEST", "UNEXPECTED", "PACKET")):
        return "protocol"
    return "handshake"


class HandshakeWorker:
    """The Raft port's listening socket, TLS handshakes and peer checks, on
    a thread of its own.

    The thread accepts connections and runs every pending handshake at
    once, non-blocking, with a selector of its own; the cryptography runs
    without the GIL. A connection whose peer passes
    ``security.verify_peer`` is queued for the tick thread, which a byte on
    a socket pair watched by pysyncobj's poller wakes: it makes the
    connection a :class:`TlsConnection` and passes it to
    ``on_established``. Nothing else of an incoming connection ever runs on
    the tick thread.
    """

    def __init__(self, poller: Poller, security: PeerSecurity,
                 on_established: Callable[[ssl.SSLSocket, str], None], *, timeout: float,
                 limit: int = HANDSHAKE_LIMIT) -> None:
        self._poller = poller
        self._security = security
        self._on_established = on_established
        self._timeout = timeout
        self._limit = limit
        self._listen_ops: collections.deque[tuple[str, socket.socket]] = collections.deque()
        self._done: collections.deque[tuple[ssl.SSLSocket, str]] = collections.deque()
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._listeners: list[socket.socket] = []      # handed over, not yet closed
        # Wakes the handshake thread (listening socket changes, stop) ...
        self._wake_r, self._wake_w = socket.socketpair()
        # ... and the tick thread (established connections).
        self._ready_r, self._ready_w = socket.socketpair()
        for s in (self._wake_r, self._wake_w, self._ready_r, self._ready_w):
            s.setblocking(False)
        self._ready_fd = self._ready_r.fileno()
        self._poller.subscribe(self._ready_fd, self._on_ready, READ | ERROR)
        self.pending = 0            # handshakes in progress

    # -- any thread ---------------------------------------------------------------------
    def listen(self, sock: socket.socket) -> None:
        """Accept on ``sock`` (listening, non-blocking), which the handshake
        thread now owns."""
        with self._lock:
            if self._stopping.is_set():
                _close(sock)
                return
            self._listeners.append(sock)
            self._listen_ops.append(("add", sock))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="raft-handshakes",
                                                daemon=True)
                self._thread.start()
        _poke(self._wake_w)

    def unlisten(self, sock: socket.socket) -> None:
        """Stop accepting on ``sock``; the handshake thread closes it."""
        with self._lock:
            if self._thread is None or self._stopping.is_set():
                self._forget_listener(sock)
                return
            self._listen_ops.append(("remove", sock))
        _poke(self._wake_w)

    def stop(self) -> None:
        with self._lock:
            if self._stopping.is_set():
                return
            self._stopping.set()
        self._poller.unsubscribe(self._ready_fd)
        _poke(self._wake_w)
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(2.0)
        with self._lock:
            for sock in list(self._listeners):
                self._forget_listener(sock)
        while self._done:
            _close(self._done.popleft()[0])
        for s in (self._wake_r, self._wake_w, self._ready_r, self._ready_w):
            _close(s)

    def _forget_listener(self, sock: socket.socket) -> None:
        if sock in self._listeners:
            self._listeners.remove(sock)
        _close(sock)

    # -- tick thread ----------------------------------------------------------------------
    def _on_ready(self, descr: int, event: int) -> None:
        if descr != self._ready_fd:
            self._poller.unsubscribe(descr)
            return
        _drain(self._ready_r)
        while self._done:
            sock, peer_id = self._done.popleft()
            if self._stopping.is_set():
                _close(sock)
                continue
            self._on_established(sock, peer_id)

    # -- handshake thread -------------------------------------------------------------
    def _run(self) -> None:
        _lower_priority(HANDSHAKE_NICENESS)
        sel = selectors.DefaultSelector()
        sel.register(self._wake_r, selectors.EVENT_READ, _WAKE)
        pending: _Pending = {}
        try:
            while not self._stopping.is_set():
                self._apply_listen_ops(sel)
                for key, _mask in sel.select(timeout=0.25):
                    if key.data is _WAKE:
                        _drain(self._wake_r)
                    elif key.data is _LISTENER:
                        self._accept(sel, pending, cast(socket.socket, key.fileobj))
                    else:
                        self._step(sel, pending, key.fd)
                self._expire(sel, pending)
                self.pending = len(pending)
        except Exception:
            log.exception("raft handshake thread failed")
        finally:
            for tls_sock, _deadline in pending.values():
                _close(tls_sock)
            pending.clear()
            self.pending = 0
            sel.close()
            with self._lock:
                for sock in list(self._listeners):
                    self._forget_listener(sock)

    def _apply_listen_ops(self, sel: selectors.BaseSelector) -> None:
        while self._listen_ops:
            op, sock = self._listen_ops.popleft()
            if op == "add":
                sel.register(sock, selectors.EVENT_READ, _LISTENER)
            else:
                try:
                    sel.unregister(sock)
                except (KeyError, ValueError):
                    pass
                with self._lock:
                    self._forget_listener(sock)

    def _accept(self, sel: selectors.BaseSelector, pending: _Pending,
                listener: socket.socket) -> None:
        context = None
        for _ in range(64):
            try:
                raw, _addr = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ECONNABORTED, errno.ENOBUFS,
                                 errno.ENOMEM):
                    return
                log.warning("raft listener failed: %s", exc)
                self._listen_ops.append(("remove", listener))
                return
            try:
                if context is None:
                    context = self._security.context(server_side=True)
                raw.setblocking(False)
                raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock = context.wrap_socket(raw, server_side=True, do_handshake_on_connect=False)
            except Exception as exc:
                self._security.refused("tls_setup", str(exc))
                _close(raw)
                continue
            if len(pending) >= self._limit:
                oldest = min(pending, key=lambda fd: pending[fd][1])
                self._drop(sel, pending, oldest, "busy", "too many handshakes in progress")
            fd = sock.fileno()
            pending[fd] = (sock, time.monotonic() + self._timeout)
            sel.register(fd, selectors.EVENT_READ, sock)
            self._step(sel, pending, fd)

    def _step(self, sel: selectors.BaseSelector, pending: _Pending, fd: int) -> None:
        entry = pending.get(fd)
        if entry is None:
            return
        sock = entry[0]
        try:
            sock.do_handshake()
        except ssl.SSLWantReadError:
            sel.modify(fd, selectors.EVENT_READ, sock)
            return
        except ssl.SSLWantWriteError:
            sel.modify(fd, selectors.EVENT_WRITE, sock)
            return
        except (ssl.SSLError, OSError) as exc:
            self._drop(sel, pending, fd, _handshake_reason(exc), str(exc))
            return
        sel.unregister(fd)
        del pending[fd]
        try:
            peer = self._security.verify_peer(sock.getpeercert(), None)
        except Exception as exc:        # never let one connection stop the thread
            log.exception("raft peer check failed")
            self._security.refused("peer_check", str(exc))
            peer = None
        if peer is None:
            _close(sock)
            return
        self._done.append((sock, peer))
        _poke(self._ready_w)

    def _expire(self, sel: selectors.BaseSelector, pending: _Pending) -> None:
        now = time.monotonic()
        for fd in [fd for fd, (_s, deadline) in pending.items() if deadline < now]:
            self._drop(sel, pending, fd, "handshake_timeout",
                       f"no complete handshake within {self._timeout:.0f}s")

    def _drop(self, sel: selectors.BaseSelector, pending: _Pending, fd: int, reason: str,
              detail: str) -> None:
        sock, _deadline = pending.pop(fd)
        try:
            sel.unregister(fd)
        except (KeyError, ValueError):
            pass
        self._security.refused(reason, detail)
        _close(sock)


_Pending = dict[int, tuple[ssl.SSLSocket, float]]     # fd -> (socket, deadline)
_WAKE = object()
_LISTENER = object()


def _lower_priority(by: int) -> None:
    """Raise this thread's nice value (Linux: per thread) by ``by``."""
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + by))
    except (OSError, AttributeError):
        pass


def _poke(sock: socket.socket) -> None:
    try:
        sock.send(b"\0")
    except (BlockingIOError, InterruptedError):
        pass                # a wake-up is pending already
    except OSError:
        pass


def _drain(sock: socket.socket) -> None:
    try:
        while sock.recv(4096):
            pass
    except (BlockingIOError, InterruptedError, OSError):
        pass


def _close(sock: socket.socket) -> None:
    try:
        sock.close()
    except OSError:
        pass


class TlsServer:
    """The Raft port: binds on the tick thread (pysyncobj retries binding),
    then hands the listening socket to the handshake worker."""

    def __init__(self, poller: Poller, host: str, port: int | str,
                 handshakes: HandshakeWorker) -> None:
        self._poller = poller
        self._host = host
        self._port = int(port)
        self._handshakes = handshakes
        self._sock: socket.socket | None = None

    def bind(self) -> None:
        sock = socket.socket(address_family(self._host), socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setblocking(False)
            sock.bind((self._host, self._port))
            sock.listen(128)
        except Exception:
            sock.close()
            raise
        self._sock = sock
        self._handshakes.listen(sock)

    def unbind(self) -> None:
        if self._sock is not None:
            self._handshakes.unlisten(self._sock)
            self._sock = None


class TlsTransport(TCPTransport):
    """pysyncobj transport over mutual TLS, bound to certificate identities.

    ``security`` provides: ``context(server_side)``, ``verify_peer(peercert,
    expected_address) -> node id | None``, ``claim_ok(node_id, address)``,
    ``refused(reason, detail)``, ``before_send()`` and
    ``members_changed(addresses)``.
    """

    def __init__(self, syncObj: Any, selfNode: Any, otherNodes: Iterable[Any], *,
                 security: PeerSecurity, ping_interval: float = 0.5) -> None:
        self._security = security
        self._ping_interval = ping_interval
        self._destroying = False
        self._started = False
        super().__init__(syncObj, selfNode, otherNodes)
        self._started = True

    # -- connection objects -------------------------------------------------
    def _new_connection(self, established: tuple[ssl.SSLSocket, str] | None = None,
                        expected_address: str | None = None) -> TlsConnection:
        return TlsConnection(
            poller_of(self._syncObj), self._security,
            timeout=self._syncObj.conf.connectionTimeout,
            ping_interval=self._ping_interval,
            established=established, expected_address=expected_address)

    def _createServer(self) -> None:
        conf = self._syncObj.conf
        host, port = (conf.bindAddress or self._selfNode.address).rsplit(":", 1)
        self.handshakes = HandshakeWorker(poller_of(self._syncObj), self._security,
                                          self._on_established,
                                          timeout=conf.connectionTimeout)
        self._server = TlsServer(poller_of(self._syncObj), host, port, self.handshakes)

    def _on_established(self, sock: ssl.SSLSocket, peer_id: str) -> None:
        conn = self._new_connection(established=(sock, peer_id))
        self._onNewIncomingConnection(conn)
        conn.start_reading()

    def addNode(self, node: Any) -> None:
        self._nodes.add(node)
        self._nodeAddrToNode[node.address] = node
        if self._shouldConnect(node):
            conn = self._new_connection(expected_address=node.address)
            conn.setOnConnectedCallback(functools.partial(self._onOutgoingConnected, conn))
            conn.setOnMessageReceivedCallback(functools.partial(self._onMessageReceived, node))
            conn.setOnDisconnectedCallback(functools.partial(self._onDisconnected, conn))
            self._connections[node] = conn
        if self._started:
            self._security.members_changed(self._member_addresses(),
                                           getattr(node, "flotilla_member", None))

    def dropNode(self, node: Any) -> None:
        super().dropNode(node)
        if self._started and not self._destroying:
            self._security.members_changed(self._member_addresses())

    def _member_addresses(self) -> list[str]:
        addresses = {n.address for n in self._nodes}
        if self._selfNode is not None:
            addresses.add(self._selfNode.address)
        return sorted(addresses)

    # -- handshake of the Raft protocol ---------------------------------------
    def _onNewIncomingConnection(self, conn: TlsConnection) -> None:
        self._unknownConnections.add(conn)
        conn.setOnMessageReceivedCallback(functools.partial(self._onIncomingMessageReceived, conn))
        conn.setOnDisconnectedCallback(functools.partial(self._onDisconnected, conn))

    def _onIncomingMessageReceived(self, conn: TlsConnection, message: Any) -> None:
        node = self._nodeAddrToNode.get(message) if isinstance(message, str) else None
        if node is None or not self._security.claim_ok(conn.peer_id, message):
            self._security.refused("bad_claim", f"{conn.peer_id} claimed {message!r}")
            self._unknownConnections.discard(conn)
            conn.disconnect()
            return
        self._unknownConnections.discard(conn)
        old = self._connections.get(node)
        self._connections[node] = conn
        if old is not None and old is not conn:
            old.setOnDisconnectedCallback(None)
            old.disconnect()
        conn.setOnMessageReceivedCallback(functools.partial(self._onMessageReceived, node))
        self._onNodeConnected(node)

    def _onUtilityMessage(self, conn: TlsConnection, message: Any) -> bool:
        return False

    def _onOutgoingConnected(self, conn: TlsConnection) -> None:
        self._sendSelfAddress(conn)
        node = self._connToNode(conn)
        if node is not None:
            self._onNodeConnected(node)

    def _sendSelfAddress(self, conn: TlsConnection) -> None:
        conn.send(self._selfNode.address)

    # -- sending and housekeeping -------------------------------------------
    def send(self, node: Any, message: Any) -> bool:
        # Nothing leaves this member before its journal is on disk: this is
        # what makes a majority of acknowledgements mean a majority of fsyncs.
        self._security.before_send()
        return super().send(node, message)

    def _onTick(self) -> None:
        super()._onTick()
        now = time.monotonic()
        for conn in list(self._connections.values()) + list(self._unknownConnections):
            conn.maintain(now)
        flush = getattr(self._security, "flush_refusals", None)
        if flush is not None:
            flush()

    def destroy(self) -> None:
        self._destroying = True
        try:
            super().destroy()
        finally:
            handshakes = getattr(self, "handshakes", None)
            if handshakes is not None:
                handshakes.stop()

    def connected_addresses(self) -> set[str]:
        return {node.address for node, conn in self._connections.items()
                if conn.state == CONNECTION_STATE.CONNECTED and node in self._nodes}
