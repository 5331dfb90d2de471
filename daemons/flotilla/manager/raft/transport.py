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
"""

from __future__ import annotations

import errno
import functools
import logging
import socket
import ssl
import time

from pysyncobj.poller import POLL_EVENT_TYPE
from pysyncobj.tcp_connection import CONNECTION_STATE, _getAddrType
from pysyncobj.transport import TCPTransport

from . import codec

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


class TlsConnection:
    """One TLS connection between two managers (either direction)."""

    def __init__(self, poller, security, *, timeout: float, ping_interval: float,
                 sock: socket.socket | None = None, expected_address: str | None = None):
        # Attributes pysyncobj's transport touches.
        self.sendRandKey = None
        self.recvRandKey = None
        self.recvLastTimestamp = 0
        self.encryptor = None

        self.peer_id: str | None = None
        self.expected_address = expected_address
        self._poller = poller
        self._security = security
        self._timeout = timeout
        self._ping_interval = ping_interval
        self._sock = None
        self._raw = None
        self._fileno = None
        self._mask = 0
        self._phase = None
        self._state = CONNECTION_STATE.DISCONNECTED
        self._rbuf = bytearray()
        self._chunk = memoryview(bytearray(RECV_CHUNK))
        self._wbuf = bytearray()
        self._retry_len = 0
        self._last_read = self._last_write = time.monotonic()
        self._on_message = None
        self._on_connected = None
        self._on_disconnected = None
        if sock is not None:
            self._accept(sock)

    # -- pysyncobj surface --------------------------------------------------
    def setOnConnectedCallback(self, cb):
        self._on_connected = cb

    def setOnMessageReceivedCallback(self, cb):
        self._on_message = cb

    def setOnDisconnectedCallback(self, cb):
        self._on_disconnected = cb

    @property
    def state(self):
        return self._state

    def fileno(self):
        return self._fileno

    def getSendBufferSize(self):
        return len(self._wbuf)

    def connect(self, host, port):
        if host is None:
            return False
        self._reset()
        try:
            raw = socket.socket(_getAddrType(host), socket.SOCK_STREAM)
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

    def send(self, message):
        if self._state == CONNECTION_STATE.DISCONNECTED:
            return
        self._wbuf += codec.encode_message(message)
        if self._state == CONNECTION_STATE.CONNECTED:
            self._flush()
            self._update_subscription()

    def disconnect(self):
        notify = self._on_disconnected is not None and self._state != CONNECTION_STATE.DISCONNECTED
        self._reset()
        if notify:
            self._on_disconnected()

    # -- internals ----------------------------------------------------------
    def _reset(self):
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

    def _accept(self, raw):
        try:
            raw.setblocking(False)
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._sock = self._security.context(server_side=True).wrap_socket(
                raw, server_side=True, do_handshake_on_connect=False)
        except Exception as exc:
            self._security.refused("tls_setup", str(exc))
            raw.close()
            return
        self._fileno = self._sock.fileno()
        self._phase = "handshake"
        self._state = CONNECTION_STATE.CONNECTING
        self._last_read = self._last_write = time.monotonic()
        self._subscribe(READ | ERROR)

    def _subscribe(self, mask):
        if self._fileno is not None and mask != self._mask:
            self._poller.subscribe(self._fileno, self._process, mask)
            self._mask = mask

    def _update_subscription(self, want_write=False):
        mask = READ | ERROR
        if self._wbuf or want_write:
            mask |= WRITE
        self._subscribe(mask)

    def _process(self, descr, event):
        if descr != self._fileno:
            self._poller.unsubscribe(descr)
            return
        if event & ERROR:
            self.disconnect()
            return
        if self._phase == "tcp":
            if self._raw.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                self.disconnect()
                return
            if not event & WRITE:
                return
            try:
                self._sock = self._security.context(server_side=False).wrap_socket(
                    self._raw, server_side=False, do_handshake_on_connect=False,
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

    def _handshake(self):
        try:
            self._sock.do_handshake()
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
        peer = self._security.verify_peer(self._sock.getpeercert(), self.expected_address)
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

    def _flush(self):
        while self._wbuf and self._state == CONNECTION_STATE.CONNECTED:
            n = self._retry_len or min(len(self._wbuf), SEND_CHUNK)
            try:
                sent = self._sock.send(self._wbuf[:n])
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

    def _read(self):
        got = False
        while self._state == CONNECTION_STATE.CONNECTED:
            try:
                got_now = self._sock.recv_into(self._chunk)
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

    def _parse(self):
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

    def maintain(self, now: float):
        """Called every tick: drop dead or stuck connections, keep idle ones alive."""
        if self._state == CONNECTION_STATE.DISCONNECTED:
            return
        if now - self._last_read > self._timeout:
            self.disconnect()
            return
        if self._state == CONNECTION_STATE.CONNECTED and now - self._last_write > self._ping_interval:
            self._wbuf += codec.encode_frame(codec.FRAME_PING)
            self._flush()
            if self._state == CONNECTION_STATE.CONNECTED:
                self._update_subscription(want_write=bool(self._retry_len))


def _handshake_reason(exc) -> str:
    text = str(exc).upper()
    if "CERTIFICATE_REQUIRED" in text or "PEER_DID_NOT_RETURN" in text:
        return "no_client_cert"
    if "UNKNOWN_CA" in text or "CERTIFICATE_VERIFY_FAILED" in text:
        return "unknown_ca" if "EXPIRED" not in text else "expired"
    if "EXPIRED" in text:
        return "expired"
    if "WRONG_VERSION" in text or "HTTP_REQUEST" in text or "UNEXPECTED" in text or "PACKET" in text:
        return "protocol"
    return "handshake"


class TlsServer:
    """Listening socket; wraps every accepted socket in a TlsConnection."""

    def __init__(self, poller, host, port, on_new_connection, make_connection):
        self._poller = poller
        self._host = host
        self._port = int(port)
        self._on_new = on_new_connection
        self._make = make_connection
        self._sock = None
        self._fileno = None

    def bind(self):
        sock = socket.socket(_getAddrType(self._host), socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setblocking(False)
            sock.bind((self._host, self._port))
            sock.listen(64)
        except Exception:
            sock.close()
            raise
        self._sock = sock
        self._fileno = sock.fileno()
        self._poller.subscribe(self._fileno, self._on_event, READ | ERROR)

    def unbind(self):
        if self._fileno is not None:
            self._poller.unsubscribe(self._fileno)
            self._fileno = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _on_event(self, descr, event):
        if descr != self._fileno:
            self._poller.unsubscribe(descr)
            return
        if event & READ:
            for _ in range(64):
                try:
                    raw, _addr = self._sock.accept()
                except (BlockingIOError, InterruptedError):
                    break
                except OSError as exc:
                    if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ECONNABORTED):
                        break
                    log.warning("raft listener failed: %s", exc)
                    self.unbind()
                    return
                conn = self._make(raw)
                if conn.state != CONNECTION_STATE.DISCONNECTED:
                    self._on_new(conn)
        if event & ERROR:
            self.unbind()


class TlsTransport(TCPTransport):
    """pysyncobj transport over mutual TLS, bound to certificate identities.

    ``security`` provides: ``context(server_side)``, ``verify_peer(peercert,
    expected_address) -> node id | None``, ``claim_ok(node_id, address)``,
    ``refused(reason, detail)``, ``before_send()`` and
    ``members_changed(addresses)``.
    """

    def __init__(self, syncObj, selfNode, otherNodes, *, security, ping_interval=0.5):
        self._security = security
        self._ping_interval = ping_interval
        self._destroying = False
        self._started = False
        super().__init__(syncObj, selfNode, otherNodes)
        self._started = True

    # -- connection objects -------------------------------------------------
    def _new_connection(self, sock=None, expected_address=None):
        return TlsConnection(
            self._syncObj._poller, self._security,
            timeout=self._syncObj.conf.connectionTimeout,
            ping_interval=self._ping_interval,
            sock=sock, expected_address=expected_address)

    def _createServer(self):
        conf = self._syncObj.conf
        host, port = (conf.bindAddress or self._selfNode.address).rsplit(":", 1)
        self._server = TlsServer(self._syncObj._poller, host, port,
                                 self._onNewIncomingConnection, self._new_connection)

    def addNode(self, node):
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

    def dropNode(self, node):
        super().dropNode(node)
        if self._started and not self._destroying:
            self._security.members_changed(self._member_addresses())

    def _member_addresses(self):
        addresses = {n.address for n in self._nodes}
        if self._selfNode is not None:
            addresses.add(self._selfNode.address)
        return sorted(addresses)

    # -- handshake of the Raft protocol ---------------------------------------
    def _onNewIncomingConnection(self, conn):
        self._unknownConnections.add(conn)
        conn.setOnMessageReceivedCallback(functools.partial(self._onIncomingMessageReceived, conn))
        conn.setOnDisconnectedCallback(functools.partial(self._onDisconnected, conn))

    def _onIncomingMessageReceived(self, conn, message):
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

    def _onUtilityMessage(self, conn, message):
        return False

    def _onOutgoingConnected(self, conn):
        self._sendSelfAddress(conn)
        node = self._connToNode(conn)
        if node is not None:
            self._onNodeConnected(node)

    def _sendSelfAddress(self, conn):
        conn.send(self._selfNode.address)

    # -- sending and housekeeping -------------------------------------------
    def send(self, node, message):
        # Nothing leaves this member before its journal is on disk: this is
        # what makes a majority of acknowledgements mean a majority of fsyncs.
        self._security.before_send()
        return super().send(node, message)

    def _onTick(self):
        super()._onTick()
        now = time.monotonic()
        for conn in list(self._connections.values()) + list(self._unknownConnections):
            conn.maintain(now)

    def destroy(self):
        self._destroying = True
        super().destroy()

    def connected_addresses(self) -> set[str]:
        return {node.address for node, conn in self._connections.items()
                if conn.state == CONNECTION_STATE.CONNECTED and node in self._nodes}
