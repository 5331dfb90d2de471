"""Local control socket (``<data-dir>/control.sock``).

Plain HTTP on a unix socket, as the Docker engine offers to local users. The
socket file is 0600 in a 0700 directory, and each connection's peer
credentials are checked: only root (or the user running the manager) is
served, with admin rights. Everything else about the API is the same.
"""

from __future__ import annotations

import io
import logging
import os
import socket
import struct

from werkzeug.serving import make_server

from ..common.component import Component
from .api.app import MAX_BODY
from .api.common import Identity
from .apiworker import DRAIN_LIMIT

log = logging.getLogger(__name__)


def _read_body(environ) -> None:
    """Read the whole body before the application runs, as the API's worker
    does, so that no admission slot waits for it. A body over the limit is
    read and thrown away (up to DRAIN_LIMIT) and the application refuses it."""
    stream = environ.get("wsgi.input")
    length = environ.get("CONTENT_LENGTH") or ""
    data = b""
    try:
        if environ.get("wsgi.input_terminated"):        # chunked
            data = stream.read(MAX_BODY + 1)
        elif not length.isdigit() or int(length) == 0:
            return
        elif int(length) <= MAX_BODY:
            data = stream.read(int(length))
        elif int(length) <= DRAIN_LIMIT:
            left = int(length)
            while left > 0:
                chunk = stream.read(min(left, 256 * 1024))
                if not chunk:
                    break
                left -= len(chunk)
    except OSError:     # the client went away
        pass
    environ["wsgi.input"] = io.BytesIO(data)


def _peer_uid(sock) -> int | None:
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return None
    _pid, uid, _gid = struct.unpack("3i", creds)
    return uid


class ControlServer(Component):
    name = "control-socket"

    def __init__(self, path: str, app, cluster_id: str):
        super().__init__()
        self._path = path
        self._app = app
        self._cluster_id = cluster_id
        self._server = None

    def _wsgi(self, environ, start_response):
        uid = _peer_uid(environ.get("werkzeug.socket"))
        if uid not in (0, os.getuid()):
            start_response("403 Forbidden", [("Content-Type", "application/json")])
            return [b'{"error": {"code": "forbidden", "message": "root only"}}\n']
        environ["flotilla.identity"] = Identity("local-root", "admin", self._cluster_id, via="unix")
        _read_body(environ)
        return self._app(environ, start_response)

    def run(self):
        try:
            os.unlink(self._path)
        except FileNotFoundError:
            pass
        old = os.umask(0o177)
        try:
            self._server = make_server("unix://" + self._path, 0, self._wsgi, threaded=True)
        finally:
            os.umask(old)
        os.chmod(self._path, 0o600)
        log.info("control socket at %s", self._path)
        self._server.serve_forever(poll_interval=0.5)

    def wake(self):
        if self._server is not None:
            self._server.shutdown()
