"""A threaded WSGI server with mutual TLS, for the agent's listener.

Unlike wrapping the listening socket (where the TLS handshake runs inside
``accept`` and one slow client stalls everyone), each accepted connection is
wrapped and handshaken in its own thread with a deadline. The TLS context is
asked for on every connection, so a renewed certificate is served from the
next connection on.

No client keeps a thread for long: the handshake must be done within
``HANDSHAKE_TIMEOUT``, every read or write must make progress within
``IDLE_TIMEOUT`` (so an idle kept-alive connection is closed after that
long), and each request, body included, must be in within
``REQUEST_TIMEOUT`` (contexts should make ``tls.BoundedSSLSocket``
sockets, see ``tls.install_bounded``). At most ``MAX_CONNECTIONS`` are
served at once; more are closed at once and counted as ``busy``.

Binding looks up no names: the standard library's HTTP server asks the
resolver for the fully qualified name of the listening address, which on a
host whose DNS server does not answer holds the listener back for the
resolver's whole timeout (10 s with the default two tries of 5 s).
"""

from __future__ import annotations

import logging
import socketserver
import ssl
import threading
import time

from werkzeug.serving import ThreadedWSGIServer, WSGIRequestHandler

from . import tls

log = logging.getLogger(__name__)

HANDSHAKE_TIMEOUT = 10.0
IDLE_TIMEOUT = 10.0
REQUEST_TIMEOUT = 15.0
MAX_CONNECTIONS = 1024


class _QuietHandler(WSGIRequestHandler):
    def handle_one_request(self):
        # Read by tls.BoundedSSLSocket: the request line, headers and body
        # must all be in by then.
        self.connection.read_deadline = time.monotonic() + REQUEST_TIMEOUT
        return super().handle_one_request()

    def log_request(self, *args, **kwargs):
        pass

    def log(self, type, message, *args):  # noqa: A002 - werkzeug's signature
        log.debug("%s - %s", self.address_string(), message % args)


class TLSWSGIServer(ThreadedWSGIServer):
    def __init__(self, host: str, port: int, app, context_provider, on_refused=None,
                 max_connections: int = MAX_CONNECTIONS):
        self._context_provider = context_provider
        self._on_refused = on_refused
        self._slots = threading.BoundedSemaphore(max_connections)
        super().__init__(host, port, app, handler=_QuietHandler)
        # Tells werkzeug the scheme is https; wrapping happens per connection.
        self.ssl_context = context_provider()

    def server_bind(self):
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def _refused(self, reason: str) -> None:
        if self._on_refused is not None:
            self._on_refused(reason)

    def process_request(self, request, client_address):
        if not self._slots.acquire(blocking=False):
            self._refused("busy")
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request, client_address):
        try:
            try:
                request.settimeout(HANDSHAKE_TIMEOUT)
                tls_sock = self._context_provider().wrap_socket(request, server_side=True)
                tls_sock.settimeout(IDLE_TIMEOUT)
            except (ssl.SSLError, OSError) as exc:
                self._refused(f"tls.{tls.failure_reason(exc)}")
                try:
                    request.close()
                except OSError:
                    pass
                return
            super().process_request_thread(tls_sock, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request, client_address):
        log.debug("error serving %s", client_address, exc_info=True)


def bind_address(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return host.strip("[]") or "0.0.0.0", int(port)
