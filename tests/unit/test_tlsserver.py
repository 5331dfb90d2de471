"""The agent listener's server binds without asking the resolver anything."""

import socket
import ssl

from flotilla.common.tlsserver import TLSWSGIServer


def test_binding_looks_up_no_names(monkeypatch):
    asked = []

    def refuse(*args):
        asked.append(args)
        raise AssertionError("name lookup while binding")

    monkeypatch.setattr(socket, "getfqdn", refuse)
    monkeypatch.setattr(socket, "gethostbyaddr", refuse)
    server = TLSWSGIServer("127.0.0.1", 0, lambda env, start: [],
                           lambda: ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
    try:
        host, port = server.server_address[:2]
        assert (server.server_name, server.server_port) == (host, port)
        with socket.create_connection((host, port), timeout=2):
            pass
    finally:
        server.server_close()
    assert asked == []

