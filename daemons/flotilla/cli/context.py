"""How the CLI finds the cluster, first match wins:

1. ``--host``/``FLOTILLA_HOST`` (with ``--tls-dir``/``FLOTILLA_TLS_DIR``);
2. ``--context``/``FLOTILLA_CONTEXT``, else the current saved context
   (``flotilla context use``);
3. the local manager's control socket (root on a manager host).
"""

from __future__ import annotations

import os
import ssl

import click

from ..common.httpclient import ApiError, Client

DEFAULT_SOCKETS = ("/var/lib/flotilla/control.sock",)


class Context:
    def __init__(self, host, tls_dir, fmt, context_name=None):
        self.host = host
        self.tls_dir = tls_dir
        self.format = fmt
        self.context_name = context_name
        self._client = None

    @property
    def json(self) -> bool:
        return self.format == "json"

    def client(self) -> Client:
        if self._client is not None:
            return self._client
        if not self.host:
            from . import contexts
            name = self.context_name or contexts.current_name()
            if name != contexts.DEFAULT:
                saved = contexts.load(name)
                self.host, self.tls_dir = saved["host"], saved["tls_dir"]
        hosts = [h.strip() for h in (self.host or "").split(",") if h.strip()]
        if not hosts:
            hosts = [f"unix://{p}" for p in DEFAULT_SOCKETS if os.path.exists(p)]
        if not hosts:
            raise click.UsageError("no cluster given: use --host ADDR (or FLOTILLA_HOST), "
                                   "or save one with 'flotilla context create'")
        if any(not h.startswith("unix://") for h in hosts) and not self.tls_dir:
            raise click.UsageError("--tls-dir DIR (or FLOTILLA_TLS_DIR) is needed for TLS hosts")
        if self.tls_dir and not os.path.isfile(os.path.join(self.tls_dir, "cert.pem")):
            raise click.UsageError(
                f"{self.tls_dir} has no cert.pem (expected ca.pem, cert.pem, key.pem)")
        self._client = Client(hosts, tls_dir=self.tls_dir, timeout=30, retry_for=10)
        return self._client


def call(ctx: Context, method: str, path: str, **kw):
    try:
        return ctx.client().request(method, path, **kw)
    except ApiError as exc:
        raise click.ClickException(str(exc)) from None
    except (ssl.SSLError, OSError) as exc:
        raise click.ClickException(f"TLS setup failed ({exc.__class__.__name__}: "
                                   f"{str(exc)[:160]})") from None
