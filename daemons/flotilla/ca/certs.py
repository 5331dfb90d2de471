"""Cluster certificate authority: root creation, CSR signing, identities.

Every node and admin client holds an ECDSA P-256 key and a certificate
issued by the cluster root.  The certificate subject carries the identity:

* CN = node id (or admin id)
* OU = role (``manager``, ``worker`` or ``admin``)
* O  = cluster id

Only the public key is taken from a certificate signing request; subject,
SANs and extensions are always decided by the CA.
"""

from __future__ import annotations

import hashlib
import random
import re
import ssl
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from flotilla.ca import tokens
from flotilla.common import fsutil

ROLE_MANAGER = "manager"
ROLE_WORKER = "worker"
ROLE_ADMIN = "admin"
ROLES = (ROLE_MANAGER, ROLE_WORKER, ROLE_ADMIN)

ROOT_CN = "flotilla-ca"
ROOT_LIFETIME = 20 * 365 * 86400
MIN_LIFETIME = 60
MAX_BACKDATE = 3600

# DNS SAN carried by every certificate of a role; clients check the
# manager name when they connect to a manager.
ROLE_SAN = {
    ROLE_MANAGER: "flotilla-manager",
    ROLE_WORKER: "flotilla-worker",
    ROLE_ADMIN: "flotilla-admin",
}

# Identifiers end up in the subject (64 characters at most for CN and O)
# and, for nodes, in a DNS SAN.
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class CertificateError(ValueError):
    """A certificate, key or CSR is unusable or was refused."""


# --------------------------------------------------------------------------
# keys and CSRs


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_to_pem(key) -> bytes:
    """PKCS#8 PEM, unencrypted."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def load_key(pem: bytes):
    """Load an unencrypted PEM private key (the first key block in ``pem``)."""
    try:
        return serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise CertificateError(f"cannot load private key: {exc}") from exc


def make_csr(key) -> bytes:
    """A PEM CSR for ``key``.  The subject is empty: the CA sets it."""
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([]))
           .sign(key, hashes.SHA256()))
    return csr.public_bytes(serialization.Encoding.PEM)


def public_key_id(public_key) -> str:
    """SHA-256 (hex) of a public key's SubjectPublicKeyInfo."""
    der = public_key.public_bytes(serialization.Encoding.DER,
                                  serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


def csr_key_id(csr_pem: bytes) -> str | None:
    """:func:`public_key_id` of the key in a PEM CSR, or None if unreadable."""
    try:
        return public_key_id(x509.load_pem_x509_csr(csr_pem).public_key())
    except (ValueError, TypeError):
        return None


def cert_key_id(cert_pem: bytes) -> str:
    """:func:`public_key_id` of the first certificate in ``cert_pem``."""
    return public_key_id(_load_first_cert(cert_pem).public_key())


def _is_p256(public_key) -> bool:
    return (isinstance(public_key, ec.EllipticCurvePublicKey)
            and isinstance(public_key.curve, ec.SECP256R1))


def _check_id(kind: str, value: str) -> None:
    if not isinstance(value, str) or not _ID_RE.match(value):
        raise CertificateError(
            f"invalid {kind} {value!r}: use 1-64 characters from "
            f"A-Z a-z 0-9 . _ - (starting with a letter or digit)")


def _utc(now: datetime | None) -> datetime:
    if now is None:
        return datetime.now(timezone.utc)
    if now.tzinfo is None:
        return now.replace(tzinfo=timezone.utc)
    return now.astimezone(timezone.utc)


def _name_attr(name: x509.Name, oid) -> str | None:
    attrs = name.get_attributes_for_oid(oid)
    if not attrs:
        return None
    value = attrs[0].value
    return value if isinstance(value, str) else None


def _load_first_cert(pem: bytes) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(pem)
    except (ValueError, TypeError) as exc:
        raise CertificateError(f"no usable PEM certificate: {exc}") from exc


def _load_certs(pem: bytes) -> list[x509.Certificate]:
    try:
        return x509.load_pem_x509_certificates(pem)
    except (ValueError, TypeError) as exc:
        raise CertificateError(f"no usable PEM certificate: {exc}") from exc


# --------------------------------------------------------------------------
# root CA


class RootCA:
    """The cluster root certificate, with its key when this node can sign."""

    def __init__(self, cert_pem: bytes, cert: x509.Certificate, key=None):
        self._cert_pem = cert_pem
        self._cert = cert
        self._key = key

    @classmethod
    def create(cls, cluster_id: str, lifetime: int = ROOT_LIFETIME) -> "RootCA":
        """A new self-signed root for ``cluster_id``.

        NotBefore is one hour in the past so that nodes whose clocks lag a
        little still accept the root.
        """
        _check_id("cluster id", cluster_id)
        if not isinstance(lifetime, int) or lifetime < MIN_LIFETIME:
            raise CertificateError(
                f"root lifetime must be at least {MIN_LIFETIME} seconds")
        key = new_key()
        now = _utc(None)
        name = x509.Name([
            x509.NameAttribute(NameOID.COMMON_NAME, ROOT_CN),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, cluster_id),
        ])
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(seconds=MAX_BACKDATE))
            .not_valid_after(now + timedelta(seconds=lifetime))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0),
                           critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=False, content_commitment=False,
                key_encipherment=False, data_encipherment=False,
                key_agreement=False, key_cert_sign=True, crl_sign=True,
                encipher_only=False, decipher_only=False), critical=True)
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(cert.public_bytes(serialization.Encoding.PEM), cert, key)

    @classmethod
    def from_pem(cls, cert_pem: bytes, key_pem: bytes | None = None) -> "RootCA":
        """Load a root from its certificate and, optionally, its key.

        ``cert_pem`` is kept byte for byte: the join token digest is
        computed over exactly these bytes.
        """
        cert = _load_first_cert(cert_pem)
        try:
            bc = cert.extensions.get_extension_for_class(
                x509.BasicConstraints).value
        except x509.ExtensionNotFound:
            bc = None
        if bc is None or not bc.ca:
            raise CertificateError("certificate is not a CA certificate")
        key = None
        if key_pem is not None:
            key = load_key(key_pem)
            if key.public_key() != cert.public_key():
                raise CertificateError(
                    "root CA key does not match the root CA certificate")
        return cls(bytes(cert_pem), cert, key)

    @property
    def cert_pem(self) -> bytes:
        return self._cert_pem

    @property
    def key_pem(self) -> bytes | None:
        return key_to_pem(self._key) if self._key is not None else None

    @property
    def cert(self) -> x509.Certificate:
        return self._cert

    @property
    def digest(self) -> str:
        return tokens.ca_digest(self._cert_pem)

    @property
    def cluster_id(self) -> str | None:
        return _name_attr(self._cert.subject, NameOID.ORGANIZATION_NAME)

    @property
    def can_sign(self) -> bool:
        return self._key is not None

    def sign_csr(self, csr_pem: bytes, *, node_id: str, role: str,
                 cluster_id: str, lifetime: int,
                 now: datetime | None = None) -> bytes:
        """Issue a leaf certificate for the public key in ``csr_pem``.

        Returns the PEM of the leaf only.  NotBefore is backdated by
        ``min(3600, lifetime // 10)`` seconds to tolerate clock skew.
        """
        if self._key is None:
            raise CertificateError("this root CA has no private key")
        if role not in ROLES:
            raise CertificateError(
                f"unknown role {role!r} (expected one of {', '.join(ROLES)})")
        _check_id("node id", node_id)
        _check_id("cluster id", cluster_id)
        if (not isinstance(lifetime, int) or isinstance(lifetime, bool)
                or lifetime < MIN_LIFETIME):
            raise CertificateError(
                f"certificate lifetime must be at least {MIN_LIFETIME} "
                f"seconds, got {lifetime!r}")
        try:
            csr = x509.load_pem_x509_csr(csr_pem)
        except (ValueError, TypeError) as exc:
            raise CertificateError(
                f"not a PEM certificate signing request: {exc}") from exc
        try:
            public_key = csr.public_key()
        except (ValueError, TypeError) as exc:
            raise CertificateError(
                f"unsupported key in signing request: {exc}") from exc
        if not _is_p256(public_key):
            raise CertificateError(
                "signing request key must be ECDSA P-256")
        try:
            signature_ok = csr.is_signature_valid
        except (ValueError, TypeError, InvalidSignature):
            signature_ok = False
        if not signature_ok:
            raise CertificateError("signing request signature is invalid")

        now = _utc(now)
        backdate = min(MAX_BACKDATE, lifetime // 10)
        subject = x509.Name([
            x509.NameAttribute(NameOID.COMMON_NAME, node_id),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, cluster_id),
        ])
        dns_names = [ROLE_SAN[role]]
        if role != ROLE_ADMIN:
            dns_names.append(node_id)
        ca_public = self._key.public_key()
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self._cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(seconds=backdate))
            .not_valid_after(now + timedelta(seconds=lifetime))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None),
                           critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, content_commitment=False,
                key_encipherment=True, data_encipherment=False,
                key_agreement=False, key_cert_sign=False, crl_sign=False,
                encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([
                ExtendedKeyUsageOID.SERVER_AUTH,
                ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .add_extension(x509.SubjectAlternativeName(
                [x509.DNSName(n) for n in dns_names]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_public),
                critical=False)
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(public_key),
                critical=False)
            .sign(self._key, hashes.SHA256())
        )
        return cert.public_bytes(serialization.Encoding.PEM)

    def issue(self, role: str, node_id: str, cluster_id: str,
              lifetime: int) -> tuple[bytes, bytes]:
        """Generate a key and sign a certificate for it: (key_pem, cert_pem)."""
        key = new_key()
        cert_pem = self.sign_csr(make_csr(key), node_id=node_id, role=role,
                                 cluster_id=cluster_id, lifetime=lifetime)
        return key_to_pem(key), cert_pem


# --------------------------------------------------------------------------
# identities


@dataclass(frozen=True)
class CertIdentity:
    node_id: str
    role: str
    cluster_id: str
    not_before: datetime
    not_after: datetime
    serial: int


def identity_from_pem(cert_pem: bytes) -> CertIdentity:
    """Identity of the first certificate in ``cert_pem``.

    Other PEM blocks (a private key in a node bundle, further certs) are
    ignored.  Raises :class:`CertificateError` if the subject lacks the
    CN, OU or O.
    """
    cert = _load_first_cert(cert_pem)
    cn = _name_attr(cert.subject, NameOID.COMMON_NAME)
    ou = _name_attr(cert.subject, NameOID.ORGANIZATIONAL_UNIT_NAME)
    org = _name_attr(cert.subject, NameOID.ORGANIZATION_NAME)
    if not cn or not ou or not org:
        raise CertificateError(
            "certificate subject lacks the node id (CN), role (OU) or "
            "cluster id (O)")
    return CertIdentity(
        node_id=cn, role=ou, cluster_id=org,
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        serial=cert.serial_number,
    )


def _peercert_time(value: str) -> datetime:
    return datetime.fromtimestamp(ssl.cert_time_to_seconds(value),
                                  tz=timezone.utc)


def identity_from_peercert(d: dict | None) -> CertIdentity | None:
    """Identity from ``ssl.SSLSocket.getpeercert()`` output, or None.

    Returns None for an empty dict (no or unverified client certificate),
    a subject without CN, OU or O, or fields that cannot be parsed.
    """
    if not d:
        return None
    fields: dict[str, str] = {}
    try:
        for rdn in d.get("subject", ()):
            for key, value in rdn:
                fields.setdefault(key, value)
        cn = fields.get("commonName")
        ou = fields.get("organizationalUnitName")
        org = fields.get("organizationName")
        if not cn or not ou or not org:
            return None
        return CertIdentity(
            node_id=cn, role=ou, cluster_id=org,
            not_before=_peercert_time(d["notBefore"]),
            not_after=_peercert_time(d["notAfter"]),
            serial=int(d["serialNumber"], 16),
        )
    except (KeyError, TypeError, ValueError):
        return None


def peer_identity(sock) -> CertIdentity | None:
    """Verified identity of the peer of a TLS socket, or None when the peer
    presented no (verified) certificate."""
    try:
        peer = sock.getpeercert()
    except (ValueError, OSError, AttributeError):
        return None
    return identity_from_peercert(peer)


# --------------------------------------------------------------------------
# verification and renewal


def verify_chain(cert_pem: bytes, ca_cert_pem: bytes) -> None:
    """Check that the first certificate in ``cert_pem`` was issued by a
    certificate in ``ca_cert_pem`` (issuer name and signature).

    ``ca_cert_pem`` may hold several roots (during a root rotation).
    Validity dates are not checked here.  Raises :class:`CertificateError`.
    """
    cert = _load_first_cert(cert_pem)
    roots = _load_certs(ca_cert_pem)
    for root in roots:
        try:
            cert.verify_directly_issued_by(root)
        except (ValueError, TypeError, InvalidSignature):
            continue
        return
    raise CertificateError(
        "certificate was not issued by the cluster root CA")


def renewal_time(not_before: datetime, not_after: datetime,
                 rng=random) -> datetime:
    """When to renew: a random point between 50 % and 80 % of the
    certificate's lifetime, measured from ``not_before``."""
    lifetime = not_after - not_before
    return not_before + lifetime * rng.uniform(0.5, 0.8)


# --------------------------------------------------------------------------
# node bundle (key and certificate in one file)


def _ensure_newline(data: bytes) -> bytes:
    return data if data.endswith(b"\n") else data + b"\n"


def node_bundle_pem(key_pem: bytes, cert_pem: bytes) -> bytes:
    """Key PEM followed by certificate PEM, for one file.

    Keeping both in one file means a single rename swaps them together.
    Raises :class:`CertificateError` if the key does not belong to the
    certificate.
    """
    key = load_key(key_pem)
    cert = _load_first_cert(cert_pem)
    if key.public_key() != cert.public_key():
        raise CertificateError("private key does not match the certificate")
    return _ensure_newline(key_pem) + _ensure_newline(cert_pem)


def split_node_bundle(bundle_pem: bytes) -> tuple[bytes, bytes]:
    """Inverse of :func:`node_bundle_pem`: (key_pem, cert_pem)."""
    key = load_key(bundle_pem)
    certs = _load_certs(bundle_pem)
    return (key_to_pem(key),
            b"".join(c.public_bytes(serialization.Encoding.PEM)
                     for c in certs))


def write_node_bundle(path: str, key_pem: bytes, cert_pem: bytes) -> None:
    """Atomically replace ``path`` with the key+certificate bundle (0600)."""
    fsutil.atomic_write(path, node_bundle_pem(key_pem, cert_pem), mode=0o600)


def seconds_until_expiry(bundle_path: str) -> float | None:
    """Seconds until the certificate in ``bundle_path`` expires (negative
    once expired), or None if it cannot be read."""
    try:
        with open(bundle_path, "rb") as f:
            ident = identity_from_pem(f.read())
    except (OSError, CertificateError):
        return None
    return ident.not_after.timestamp() - time.time()
