"""TLS contexts for mutual authentication inside a cluster.

* Every node presents a bundle file holding its private key followed by its
  certificate.  The bundle is replaced with one atomic rename on renewal and
  is always read in one go, so a key and a certificate from different
  generations are never paired.
* Servers require (or, for the join endpoint, accept without requiring) a
  client certificate issued by the cluster root.
* Clients verify managers against the cluster root only, and check the
  server name :data:`MANAGER_SERVER_NAME`, which every manager certificate
  carries; pass it as ``server_hostname`` whatever address is dialled.
* A joining node that has no root yet uses an unverified context to fetch
  the root certificate, then checks it against the digest in its join
  token before trusting it.
"""

from __future__ import annotations

import logging
import os
import socket
import ssl
import tempfile
import threading
import time
from typing import Callable

log = logging.getLogger(__name__)

MANAGER_SERVER_NAME = "flotilla-manager"
MIN_VERSION = ssl.TLSVersion.TLSv1_2


# --------------------------------------------------------------------------
# loading a bundle from one snapshot


def _load_chain_from_bytes(ctx: ssl.SSLContext, data: bytes,
                           scratch_dir: str) -> None:
    # OpenSSL only loads chains from files, so give it a file whose content
    # cannot change: an anonymous memory file where available.  The empty
    # password makes an encrypted key fail instead of prompting on a tty.
    memfd_create = getattr(os, "memfd_create", None)
    if memfd_create is not None and os.path.isdir("/proc/self/fd"):
        fd = memfd_create("flotilla-tls-bundle", getattr(os, "MFD_CLOEXEC", 0))
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            ctx.load_cert_chain(f"/proc/self/fd/{fd}", password=b"")
        finally:
            os.close(fd)
        return
    # Otherwise a private (0600) copy next to the bundle, removed at once.
    fd, tmp = tempfile.mkstemp(prefix=".flotilla-tls-", dir=scratch_dir)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        ctx.load_cert_chain(tmp, password=b"")
    finally:
        os.unlink(tmp)


def load_cert_chain_atomic(ctx: ssl.SSLContext, bundle_path: str) -> None:
    """Load key and certificate chain from ``bundle_path``, reading the file
    exactly once so that a concurrent replacement of the file cannot pair
    the key of one version with the certificate of another.

    Raises OSError if the file cannot be read and ssl.SSLError if it does
    not hold a matching key and certificate.
    """
    with open(bundle_path, "rb") as f:
        data = f.read()
    _load_chain_from_bytes(ctx, data,
                           os.path.dirname(os.path.abspath(bundle_path)))


# --------------------------------------------------------------------------
# contexts


def server_context(bundle_path: str, ca_path: str,
                   client_cert: str = "required") -> ssl.SSLContext:
    """Server context presenting ``bundle_path`` and verifying client
    certificates against ``ca_path``.

    ``client_cert`` is ``"required"`` (handshake fails without a valid
    client certificate) or ``"optional"`` (a client may connect without
    one; one that is presented must still verify).
    """
    if client_cert == "required":
        verify_mode = ssl.CERT_REQUIRED
    elif client_cert == "optional":
        verify_mode = ssl.CERT_OPTIONAL
    else:
        raise ValueError(
            f"client_cert must be 'required' or 'optional', not {client_cert!r}")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = MIN_VERSION
    ctx.load_verify_locations(cafile=ca_path)
    ctx.verify_mode = verify_mode
    load_cert_chain_atomic(ctx, bundle_path)
    return ctx


def client_context(bundle_path: str | None, ca_path: str | None,
                   server_name_check: bool = True) -> ssl.SSLContext:
    """Client context.

    With ``ca_path`` the server must present a certificate issued by that
    root (the system trust store is not used) and, if
    ``server_name_check``, one valid for the name given as
    ``server_hostname`` (normally :data:`MANAGER_SERVER_NAME`).

    With ``ca_path=None`` nothing about the server is verified: this is
    only for a joining node fetching the root certificate, which it must
    check against its join token digest.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = MIN_VERSION
    if ca_path is None:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    else:
        ctx.load_verify_locations(cafile=ca_path)
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.check_hostname = bool(server_name_check)
    if bundle_path is not None:
        load_cert_chain_atomic(ctx, bundle_path)
    return ctx


# --------------------------------------------------------------------------
# reloading on file change


def _file_signature(path: str):
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


class ReloadingContext:
    """A cached SSL context rebuilt when one of its files changes.

    ``factory`` builds a complete context from the files in ``paths``.
    :meth:`get` stats the files (at most every ``check_interval`` seconds)
    and rebuilds when any (inode, mtime, size) differs from the last
    successful build.  If a rebuild fails, for instance because a file is
    corrupt or missing in the middle of a change, the last good context
    keeps being served and the rebuild is retried on a later call.
    Connections already established keep the certificate they started with.
    """

    def __init__(self, factory: Callable[[], ssl.SSLContext],
                 paths: list[str], check_interval: float = 0.0):
        self._factory = factory
        self._paths = list(paths)
        self._interval = float(check_interval)
        self._lock = threading.Lock()
        self._ctx: ssl.SSLContext | None = None
        self._built_sig = None
        self._next_check = 0.0
        self._generation = 0
        self._failed_sig = None

    @property
    def generation(self) -> int:
        """Number of successful builds so far."""
        return self._generation

    def _signature(self):
        return tuple(_file_signature(p) for p in self._paths)

    def get(self) -> ssl.SSLContext:
        ctx = self._ctx
        if ctx is not None:
            if self._interval > 0 and time.monotonic() < self._next_check:
                return ctx
            if self._signature() == self._built_sig:
                self._next_check = time.monotonic() + self._interval
                return ctx
        with self._lock:
            return self._rebuild_locked()

    def _rebuild_locked(self) -> ssl.SSLContext:
        # Stat before reading: the files read are at least as new as the
        # recorded signature, so a change racing with the build is picked up
        # by the next check instead of being lost.
        sig = self._signature()
        if self._ctx is not None and sig == self._built_sig:
            return self._ctx
        try:
            ctx = self._factory()
        except Exception as exc:
            if self._ctx is None:
                raise
            if sig != self._failed_sig:
                log.warning("TLS files %s could not be loaded (%s); "
                            "still serving the previous certificate",
                            ", ".join(self._paths), exc)
                self._failed_sig = sig
            self._next_check = time.monotonic() + self._interval
            return self._ctx
        self._ctx = ctx
        self._built_sig = sig
        self._failed_sig = None
        self._generation += 1
        self._next_check = time.monotonic() + self._interval
        return ctx


# --------------------------------------------------------------------------
# counting refused handshakes

_counter_lock = threading.Lock()
_failures: dict[str, int] = {}

_NO_CLIENT_CERT = {
    "PEER_DID_NOT_RETURN_A_CERTIFICATE",
    "TLSV13_ALERT_CERTIFICATE_REQUIRED",
}
_UNKNOWN_CA = {"TLSV1_ALERT_UNKNOWN_CA"}
_EXPIRED = {"SSLV3_ALERT_CERTIFICATE_EXPIRED"}
_BAD_CERT = {
    "SSLV3_ALERT_BAD_CERTIFICATE",
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN",
    "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE",
    "SSLV3_ALERT_CERTIFICATE_REVOKED",
    "TLSV1_ALERT_DECRYPT_ERROR",
}
_PROTOCOL = {
    "WRONG_VERSION_NUMBER",
    "HTTP_REQUEST",
    "HTTPS_PROXY_REQUEST",
    "UNKNOWN_PROTOCOL",
    "UNSUPPORTED_PROTOCOL",
    "VERSION_TOO_LOW",
    "TLSV1_ALERT_PROTOCOL_VERSION",
    "NO_SHARED_CIPHER",
    "NO_CIPHERS_AVAILABLE",
    "NO_PROTOCOLS_AVAILABLE",
    "RECORD_LENGTH_MISMATCH",
    "PACKET_LENGTH_TOO_LONG",
    "BAD_PACKET_LENGTH",
    "BAD_RECORD_TYPE",
    "RECORD_LAYER_FAILURE",
    "UNEXPECTED_MESSAGE",
    "UNEXPECTED_RECORD",
    "DECRYPTION_FAILED_OR_BAD_RECORD_MAC",
    "SSLV3_ALERT_HANDSHAKE_FAILURE",
    "SSLV3_ALERT_UNEXPECTED_MESSAGE",
    "TLSV1_ALERT_DECODE_ERROR",
}
_EOF = {"UNEXPECTED_EOF_WHILE_READING"}

# X509_V_ERR_* codes reported by certificate verification.
_VERIFY_UNKNOWN_CA = {2, 18, 19, 20, 21}
_VERIFY_NOT_YET_VALID = 9
_VERIFY_EXPIRED = 10
_VERIFY_HOSTNAME = 62


def failure_reason(exc: BaseException) -> str:
    """Short key describing why a handshake failed.

    ``no_client_cert``, ``unknown_ca``, ``expired``, ``not_yet_valid``,
    ``hostname_mismatch``, ``bad_certificate``, ``protocol`` (not TLS or
    no common version/cipher), ``eof`` (peer closed or reset),
    ``timeout``, else ``other``.
    """
    if isinstance(exc, ssl.SSLCertVerificationError):
        code = getattr(exc, "verify_code", None)
        if code in _VERIFY_UNKNOWN_CA:
            return "unknown_ca"
        if code == _VERIFY_EXPIRED:
            return "expired"
        if code == _VERIFY_NOT_YET_VALID:
            return "not_yet_valid"
        if code == _VERIFY_HOSTNAME:
            return "hostname_mismatch"
        return "bad_certificate"
    if isinstance(exc, (ssl.SSLEOFError, ssl.SSLZeroReturnError,
                        ConnectionError)):
        return "eof"
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return "timeout"
    if isinstance(exc, ssl.SSLError):
        reason = getattr(exc, "reason", None) or ""
        if reason in _NO_CLIENT_CERT:
            return "no_client_cert"
        if reason in _UNKNOWN_CA:
            return "unknown_ca"
        if reason in _EXPIRED:
            return "expired"
        if reason in _BAD_CERT:
            return "bad_certificate"
        if reason in _PROTOCOL:
            return "protocol"
        if reason in _EOF:
            return "eof"
    return "other"


def _count_failure(reason: str) -> None:
    with _counter_lock:
        _failures[reason] = _failures.get(reason, 0) + 1


def count_handshake_failure(reason: str) -> None:
    """Count a handshake refused other than by an exception (a timeout)."""
    _count_failure(reason)


def handshake_failures() -> dict[str, int]:
    """Copy of the refused-handshake counters, by reason."""
    with _counter_lock:
        return dict(_failures)


class CountingSSLSocket(ssl.SSLSocket):
    """SSLSocket that counts failed handshakes by reason.

    "Would block" conditions on non-blocking sockets are not failures and
    are not counted.
    """

    def do_handshake(self, block=False):
        try:
            return super().do_handshake(block)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            raise
        except OSError as exc:
            _count_failure(failure_reason(exc))
            raise


class BoundedSSLSocket(ssl.SSLSocket):
    """Server-side TLS socket on which no blocking call waits forever.

    In blocking mode every call times out after ``io_timeout`` seconds
    without progress (``setblocking(True)`` means that here), and reads also
    fail once ``read_deadline`` (a ``time.monotonic()`` value, set by the
    server per request) has passed, so a client cannot keep a thread by
    sending its request a byte at a time. Non-blocking use is unaffected.
    """

    io_timeout = 10.0
    read_deadline: float | None = None

    def setblocking(self, flag):
        self.settimeout(self.io_timeout if flag else 0.0)

    def _read_timeout(self):
        """The timeout the next read needs, or None to leave it as it is."""
        timeout = self.gettimeout()
        if self.read_deadline is None or timeout == 0.0:
            return None
        remaining = self.read_deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("the request did not arrive in time")
        return remaining if timeout is None or remaining < timeout else None

    def recv(self, buflen=1024, flags=0):
        timeout = self._read_timeout()
        if timeout is None:
            return super().recv(buflen, flags)
        saved = self.gettimeout()
        self.settimeout(timeout)
        try:
            return super().recv(buflen, flags)
        finally:
            self.settimeout(saved)

    def recv_into(self, buffer, nbytes=None, flags=0):
        timeout = self._read_timeout()
        if timeout is None:
            return super().recv_into(buffer, nbytes, flags)
        saved = self.gettimeout()
        self.settimeout(timeout)
        try:
            return super().recv_into(buffer, nbytes, flags)
        finally:
            self.settimeout(saved)


class BoundedCountingSSLSocket(BoundedSSLSocket, CountingSSLSocket):
    """Both of the above."""


def install_bounded(ctx: ssl.SSLContext) -> ssl.SSLContext:
    """Make sockets wrapped by ``ctx`` time out as :class:`BoundedSSLSocket` does."""
    ctx.sslsocket_class = BoundedSSLSocket
    return ctx


def install_counting(ctx: ssl.SSLContext, bounded: bool = False) -> ssl.SSLContext:
    """Make sockets wrapped by ``ctx`` count refused handshakes (and, if
    ``bounded``, time out as :class:`BoundedSSLSocket` does)."""
    ctx.sslsocket_class = BoundedCountingSSLSocket if bounded else CountingSSLSocket
    return ctx


def client_context_from_dir(tls_dir: str) -> ssl.SSLContext:
    """Client context from a directory holding ca.pem, cert.pem and key.pem
    (the layout of the admin bundle written by ``init``)."""
    ca_path = os.path.join(tls_dir, "ca.pem")
    ctx = client_context(None, ca_path)
    with open(os.path.join(tls_dir, "key.pem"), "rb") as f:
        key = f.read()
    with open(os.path.join(tls_dir, "cert.pem"), "rb") as f:
        cert = f.read()
    _load_chain_from_bytes(ctx, key.rstrip(b"\n") + b"\n" + cert, tls_dir)
    return ctx


def tls_dir_paths(tls_dir: str) -> list[str]:
    return [os.path.join(tls_dir, n) for n in ("ca.pem", "cert.pem", "key.pem")]
