"""A threaded WSGI server with mutual TLS, for the agent's listener.

Unlike wrapping the listening socket (where the TLS handshake runs inside
``accept`` and one slow client stalls everyone), each accepted connection is
wrapped and handshaken in its own thread with a deadline. The TLS context is
asked for on every connection, so a renewed certificate is served from the
next connection on.
"""

from __future__ import annotations

import logging
import ssl

from werkzeug.serving import ThreadedWSGIServer, WSGIRequestHandler

log = logging.getLogger(__name__)

HANDSHAKE_TIMEOUT = 10.0


class _QuietHandler(WSGIRequestHandler):
    def log_request(self, *args, **kwargs):
        pass

    def log(self, type, message, *args):  # noqa: A002 - werkzeug's signature
        log.debug("%s - %s", self.address_string(), message % args)


class TLSWSGIServer(ThreadedWSGIServer):
    def __init__(self, host: str, port: int, app, context_provider, on_refused=None):
        self._context_provider = context_provider
        self._on_refused = on_refused
        super().__init__(host, port, app, handler=_QuietHandler)
        # Tells werkzeug the scheme is https; wrapping happens per connection.
        self.ssl_context = context_provider()

    def process_request_thread(self, request, client_address):
        try:
            request.settimeout(HANDSHAKE_TIMEOUT)
            tls_sock = self._context_provider().wrap_socket(request, server_side=True)
            tls_sock.settimeout(None)
        except (ssl.SSLError, OSError) as exc:
            if self._on_refused is not None:
                self._on_refused(exc)
            try:
                request.close()
            except OSError:
                pass
            return
        super().process_request_thread(tls_sock, client_address)

    def handle_error(self, request, client_address):
        log.debug("error serving %s", client_address, exc_info=True)


def bind_address(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return host.strip("[]") or "0.0.0.0", int(port)

