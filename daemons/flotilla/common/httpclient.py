"""HTTP client for the manager API (used by agents, managers and the CLI).

- mTLS with a node or admin bundle; the bundle is re-read when the file
  changes, so a renewed certificate is used from the next connection on;
- the server must present a manager certificate from the cluster CA
  (server name ``flotilla-manager``), whatever address is dialled;
- ``unix:///path`` addresses talk to a manager's local control socket;
- a list of addresses is tried in turn; while the cluster elects a leader,
  requests are retried for up to ``retry_for`` seconds (writes only when
  they carry an idempotency key).
"""

from __future__ import annotations

import http.client
import json as jsonlib
import socket
import threading
import time
import urllib.parse
import uuid

import requests
from requests.adapters import HTTPAdapter

from . import tls

# Answers that are about the manager we reached, not about the request:
# another manager may well serve it.
NEXT_MANAGER_CODES = {"no_leader", "not_leader", "leader_unreachable", "forward_refused"}
# 503 answers worth the same request again after a pause: the outcome is
# unknown (same idempotency key), or the manager was too busy to start it.
RETRY_CODES = {"outcome_unknown", "busy"}


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, field: str | None = None, body=None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.body = body

    def __str__(self):
        where = f" (field {self.field})" if self.field else ""
        return f"{self.message}{where}"


class Unreachable(ApiError):
    def __init__(self, message):
        super().__init__(0, "unreachable", message)


class _TLSAdapter(HTTPAdapter):
    def __init__(self, context, **kw):
        self._context = context
        super().__init__(**kw)

    def init_poolmanager(self, *args, **kwargs):
        kwargs["ssl_context"] = self._context
        kwargs["server_hostname"] = tls.MANAGER_SERVER_NAME
        kwargs["assert_hostname"] = tls.MANAGER_SERVER_NAME
        super().init_poolmanager(*args, **kwargs)


def tls_session(tls_dir: str) -> requests.Session:
    """A requests session that presents the client bundle in ``tls_dir`` and
    verifies managers against its ca.pem (by the managers' certificate name,
    whatever address is used)."""
    session = requests.Session()
    session.trust_env = False
    session.mount("https://", _TLSAdapter(tls.client_context_from_dir(tls_dir)))
    return session


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path, timeout):
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._path)
        self.sock = sock


class _Response:
    def __init__(self, status, body, content_type):
        self.status_code = status
        self.content = body
        self.headers = {"Content-Type": content_type or ""}


class Client:
    def __init__(self, addresses, bundle_path: str | None = None, ca_path: str | None = None,
                 timeout: float = 15.0, retry_for: float = 10.0, tls_dir: str | None = None):
        if isinstance(addresses, str):
            addresses = [addresses]
        self.addresses = [a for a in addresses if a]
        if not self.addresses:
            raise ValueError("no manager address given")
        self.bundle_path = bundle_path
        self.ca_path = ca_path
        self.timeout = timeout
        self.retry_for = retry_for
        self._lock = threading.Lock()
        self._session = None
        self._generation = -1
        self._preferred: str | None = None
        self._ctx = None
        if tls_dir is not None:
            self._ctx = tls.ReloadingContext(lambda: tls.client_context_from_dir(tls_dir),
                                             tls.tls_dir_paths(tls_dir))
        elif ca_path is not None:
            self._ctx = tls.ReloadingContext(lambda: tls.client_context(bundle_path, ca_path),
                                             [p for p in (bundle_path, ca_path) if p])

    def _requests_session(self):
        ctx = self._ctx.get()
        with self._lock:
            if self._session is None or self._generation != self._ctx.generation:
                # New connections use the new certificate. The old session is
                # not closed here: another thread may be using it right now;
                # its connections close when it is garbage-collected.
                session = requests.Session()
                session.mount("https://", _TLSAdapter(ctx, pool_connections=4, pool_maxsize=32))
                self._session = session
                self._generation = self._ctx.generation
            return self._session

    def _send(self, address, method, path, body, headers, timeout):
        if address.startswith("unix://"):
            conn = _UnixConnection(address[len("unix://"):], timeout)
            try:
                conn.request(method, path, body=body, headers=headers)
                resp = conn.getresponse()
                return _Response(resp.status, resp.read(), resp.getheader("Content-Type"))
            finally:
                conn.close()
        if self._ctx is None:
            raise Unreachable("no CA configured for TLS connections")
        session = self._requests_session()
        return session.request(method, f"https://{address}{path}", data=body, headers=headers,
                               timeout=timeout)

    def request(self, method: str, path: str, json=None, params=None, *, idempotent=None,
                timeout: float | None = None, retry_for: float | None = None, raw=False):
        if params:
            query = "&".join(f"{k}={urllib.parse.quote(str(v))}" for k, v in params.items()
                             if v is not None)
            if query:
                path = f"{path}?{query}"
        headers = {"Accept": "application/json"}
        body = None
        if json is not None:
            body = jsonlib.dumps(json).encode()
            headers["Content-Type"] = "application/json"
        if idempotent is None:
            idempotent = method in ("GET", "HEAD")
        if method not in ("GET", "HEAD"):
            headers["Idempotency-Key"] = uuid.uuid4().hex
            idempotent = True
        timeout = timeout or self.timeout
        retry_for = self.retry_for if retry_for is None else retry_for
        deadline = time.monotonic() + retry_for
        delay = 0.05
        last_error: ApiError | None = None
        while True:
            addresses = list(self.addresses)
            if self._preferred in addresses:
                k = addresses.index(self._preferred)
                addresses = addresses[k:] + addresses[:k]
            for address in addresses:
                try:
                    resp = self._send(address, method, path, body, headers, timeout)
                except (requests.ConnectionError, requests.Timeout, OSError) as exc:
                    last_error = Unreachable(f"cannot reach manager at {address}: {_short(exc)}")
                    if not idempotent and not isinstance(exc, requests.ConnectionError):
                        raise last_error from exc
                    continue
                result = _decode(resp, raw)
                if isinstance(result, ApiError):
                    last_error = result
                    if result.code in NEXT_MANAGER_CODES and idempotent:
                        continue  # try another manager, then wait and retry
                    if result.status == 503 and result.code in RETRY_CODES and idempotent:
                        break  # same request id again after a pause
                    self._preferred = address
                    raise result
                self._preferred = address
                return result
            if time.monotonic() + delay > deadline:
                raise last_error or Unreachable("no manager reachable")
            time.sleep(delay)
            delay = min(delay * 2, 1.0)

    def get(self, path, **kw):
        return self.request("GET", path, **kw)

    def post(self, path, json=None, **kw):
        return self.request("POST", path, json=json if json is not None else {}, **kw)

    def patch(self, path, json=None, **kw):
        return self.request("PATCH", path, json=json, **kw)

    def delete(self, path, **kw):
        return self.request("DELETE", path, **kw)

    def close(self):
        with self._lock:
            if self._session is not None:
                self._session.close()
                self._session = None


def _short(exc) -> str:
    text = str(exc)
    for marker in ("Connection refused", "timed out", "CERTIFICATE_VERIFY_FAILED",
                   "certificate", "No route", "Name or service not known"):
        if marker in text:
            return marker
    return text[:200]


def _decode(resp, raw):
    ctype = resp.headers.get("Content-Type", "")
    if 200 <= resp.status_code < 300:
        if raw:
            return resp.content
        if "json" in ctype:
            return jsonlib.loads(resp.content or b"null")
        return resp.content.decode(errors="replace")
    try:
        payload = jsonlib.loads(resp.content)
        err = payload.get("error", {}) if isinstance(payload, dict) else {}
    except ValueError:
        err = {}
    return ApiError(resp.status_code, err.get("code", f"http_{resp.status_code}"),
                    err.get("message") or resp.content[:200].decode(errors="replace"),
                    err.get("field"), body=resp.content)
