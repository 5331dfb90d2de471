import os
import random
import stat
from datetime import datetime, timedelta, timezone

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from flotilla.ca import certs
from flotilla.ca.certs import (
    ROLE_ADMIN,
    ROLE_MANAGER,
    ROLE_WORKER,
    CertificateError,
    CertIdentity,
    RootCA,
)
from flotilla.ca.tokens import ca_digest

CLUSTER = "c0ffee"


@pytest.fixture(scope="module")
def ca():
    return RootCA.create(CLUSTER)


def _cert(pem):
    return x509.load_pem_x509_certificate(pem)


def _ext(cert, cls):
    return cert.extensions.get_extension_for_class(cls)


def _attr(name, oid):
    return [a.value for a in name.get_attributes_for_oid(oid)]


def test_root_fields(ca):
    c = ca.cert
    assert _attr(c.subject, NameOID.COMMON_NAME) == ["flotilla-ca"]
    assert _attr(c.subject, NameOID.ORGANIZATION_NAME) == [CLUSTER]
    assert c.issuer == c.subject
    bc = _ext(c, x509.BasicConstraints)
    assert bc.critical and bc.value.ca and bc.value.path_length == 0
    ku = _ext(c, x509.KeyUsage)
    assert ku.critical and ku.value.key_cert_sign and ku.value.crl_sign
    assert not ku.value.digital_signature
    ski = _ext(c, x509.SubjectKeyIdentifier).value
    assert ski == x509.SubjectKeyIdentifier.from_public_key(c.public_key())
    assert isinstance(c.public_key(), ec.EllipticCurvePublicKey)
    assert isinstance(c.public_key().curve, ec.SECP256R1)
    life = c.not_valid_after_utc - datetime.now(timezone.utc)
    assert timedelta(days=20 * 365 - 1) < life <= timedelta(days=20 * 365)
    c.verify_directly_issued_by(c)  # self-signed
    assert ca.cluster_id == CLUSTER
    assert ca.digest == ca_digest(ca.cert_pem)
    assert ca.key_pem.startswith(b"-----BEGIN PRIVATE KEY-----")


def test_root_from_pem_round_trip(ca):
    loaded = RootCA.from_pem(ca.cert_pem, ca.key_pem)
    assert loaded.cert_pem == ca.cert_pem
    assert loaded.digest == ca.digest
    key_pem, cert_pem = loaded.issue(ROLE_WORKER, "w1", CLUSTER, 3600)
    certs.verify_chain(cert_pem, ca.cert_pem)

    public_only = RootCA.from_pem(ca.cert_pem, None)
    assert public_only.key_pem is None
    with pytest.raises(CertificateError, match="no private key"):
        public_only.issue(ROLE_WORKER, "w1", CLUSTER, 3600)


def test_root_from_pem_rejects_wrong_key_and_leaf(ca):
    other = RootCA.create(CLUSTER)
    with pytest.raises(CertificateError, match="does not match"):
        RootCA.from_pem(ca.cert_pem, other.key_pem)
    _, leaf = ca.issue(ROLE_MANAGER, "m1", CLUSTER, 3600)
    with pytest.raises(CertificateError, match="not a CA"):
        RootCA.from_pem(leaf)


def test_sign_csr_manager_fields(ca):
    key = certs.new_key()
    now = datetime(2030, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    pem = ca.sign_csr(certs.make_csr(key), node_id="node-1",
                      role=ROLE_MANAGER, cluster_id=CLUSTER,
                      lifetime=90 * 86400, now=now)
    assert pem.count(b"BEGIN CERTIFICATE") == 1
    c = _cert(pem)
    assert _attr(c.subject, NameOID.COMMON_NAME) == ["node-1"]
    assert _attr(c.subject, NameOID.ORGANIZATIONAL_UNIT_NAME) == ["manager"]
    assert _attr(c.subject, NameOID.ORGANIZATION_NAME) == [CLUSTER]
    assert c.issuer == ca.cert.subject
    assert c.public_key() == key.public_key()
    assert c.not_valid_after_utc == now + timedelta(days=90)
    assert c.not_valid_before_utc == now - timedelta(hours=1)
    assert 0 < c.serial_number < 2 ** 159
    assert isinstance(c.signature_hash_algorithm, hashes.SHA256)

    san = _ext(c, x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["flotilla-manager",
                                                     "node-1"]
    eku = _ext(c, x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH,
                        ExtendedKeyUsageOID.CLIENT_AUTH}
    bc = _ext(c, x509.BasicConstraints)
    assert bc.critical and not bc.value.ca
    ku = _ext(c, x509.KeyUsage)
    assert ku.critical and ku.value.digital_signature
    assert ku.value.key_encipherment and not ku.value.key_cert_sign
    aki = _ext(c, x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == _ext(
        ca.cert, x509.SubjectKeyIdentifier).value.digest
    ski = _ext(c, x509.SubjectKeyIdentifier).value
    assert ski == x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    certs.verify_chain(pem, ca.cert_pem)


@pytest.mark.parametrize("role, sans", [
    (ROLE_WORKER, ["flotilla-worker", "node-2"]),
    (ROLE_ADMIN, ["flotilla-admin"]),
])
def test_sign_csr_sans_by_role(ca, role, sans):
    _, pem = ca.issue(role, "node-2", CLUSTER, 3600)
    c = _cert(pem)
    assert _ext(c, x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName) == sans
    assert _attr(c.subject, NameOID.ORGANIZATIONAL_UNIT_NAME) == [role]


def test_subject_and_sans_of_csr_are_ignored(ca):
    key = certs.new_key()
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([
               x509.NameAttribute(NameOID.COMMON_NAME, "evil"),
               x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "manager"),
           ]))
           .add_extension(x509.SubjectAlternativeName(
               [x509.DNSName("flotilla-manager")]), critical=False)
           .add_extension(x509.BasicConstraints(ca=True, path_length=None),
                          critical=True)
           .sign(key, hashes.SHA256()))
    pem = ca.sign_csr(csr.public_bytes(serialization.Encoding.PEM),
                      node_id="w9", role=ROLE_WORKER, cluster_id=CLUSTER,
                      lifetime=3600)
    c = _cert(pem)
    assert _attr(c.subject, NameOID.COMMON_NAME) == ["w9"]
    assert _attr(c.subject, NameOID.ORGANIZATIONAL_UNIT_NAME) == ["worker"]
    assert "flotilla-manager" not in _ext(
        c, x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    assert not _ext(c, x509.BasicConstraints).value.ca


@pytest.mark.parametrize("lifetime, backdate", [
    (60, 6), (600, 60), (36000, 3600), (90 * 86400, 3600)])
def test_backdate(ca, lifetime, backdate):
    now = datetime(2031, 5, 6, 7, 8, 9, tzinfo=timezone.utc)
    pem = ca.sign_csr(certs.make_csr(certs.new_key()), node_id="n",
                      role=ROLE_WORKER, cluster_id=CLUSTER, lifetime=lifetime,
                      now=now)
    c = _cert(pem)
    assert c.not_valid_before_utc == now - timedelta(seconds=backdate)
    assert c.not_valid_after_utc == now + timedelta(seconds=lifetime)


def test_serials_are_random(ca):
    serials = {_cert(ca.issue(ROLE_WORKER, "n", CLUSTER, 3600)[1]).serial_number
               for _ in range(5)}
    assert len(serials) == 5


def test_rejects_tampered_csr(ca):
    key = certs.new_key()
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([
               x509.NameAttribute(NameOID.COMMON_NAME, "aaaaaaaa")]))
           .sign(key, hashes.SHA256()))
    der = csr.public_bytes(serialization.Encoding.DER)
    assert der.count(b"aaaaaaaa") == 1
    tampered = x509.load_der_x509_csr(der.replace(b"aaaaaaaa", b"bbbbbbbb"))
    with pytest.raises(CertificateError, match="signature is invalid"):
        ca.sign_csr(tampered.public_bytes(serialization.Encoding.PEM),
                    node_id="n", role=ROLE_WORKER, cluster_id=CLUSTER,
                    lifetime=3600)


@pytest.mark.parametrize("make_key", [
    lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048),
    lambda: ec.generate_private_key(ec.SECP384R1()),
], ids=["rsa", "p384"])
def test_rejects_non_p256_key(ca, make_key):
    csr = certs.make_csr(make_key())
    with pytest.raises(CertificateError, match="P-256"):
        ca.sign_csr(csr, node_id="n", role=ROLE_WORKER, cluster_id=CLUSTER,
                    lifetime=3600)


def test_rejects_garbage_csr(ca):
    with pytest.raises(CertificateError, match="signing request"):
        ca.sign_csr(b"not a csr", node_id="n", role=ROLE_WORKER,
                    cluster_id=CLUSTER, lifetime=3600)


@pytest.mark.parametrize("kwargs, fragment", [
    (dict(role="root"), "unknown role"),
    (dict(lifetime=59), "at least 60"),
    (dict(lifetime=0), "at least 60"),
    (dict(lifetime=-3600), "at least 60"),
    (dict(node_id=""), "invalid node id"),
    (dict(node_id="a/b"), "invalid node id"),
    (dict(node_id="x" * 65), "invalid node id"),
    (dict(cluster_id="bad id"), "invalid cluster id"),
])
def test_rejects_bad_arguments(ca, kwargs, fragment):
    args = dict(node_id="n", role=ROLE_WORKER, cluster_id=CLUSTER,
                lifetime=3600)
    args.update(kwargs)
    with pytest.raises(CertificateError, match=fragment):
        ca.sign_csr(certs.make_csr(certs.new_key()), **args)


def test_minimum_lifetime_is_accepted(ca):
    _, pem = ca.issue(ROLE_WORKER, "n", CLUSTER, 60)
    c = _cert(pem)
    assert c.not_valid_after_utc - c.not_valid_before_utc == timedelta(
        seconds=66)


def test_key_round_trip():
    key = certs.new_key()
    pem = certs.key_to_pem(key)
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    assert certs.load_key(pem).public_key() == key.public_key()
    with pytest.raises(CertificateError):
        certs.load_key(b"garbage")


def test_identity_from_pem_bundle(ca):
    key_pem, cert_pem = ca.issue(ROLE_MANAGER, "m-7", CLUSTER, 7200)
    bundle = certs.node_bundle_pem(key_pem, cert_pem)
    assert bundle.index(b"PRIVATE KEY") < bundle.index(b"CERTIFICATE")
    ident = certs.identity_from_pem(bundle)
    c = _cert(cert_pem)
    assert ident == CertIdentity(
        node_id="m-7", role="manager", cluster_id=CLUSTER,
        not_before=c.not_valid_before_utc, not_after=c.not_valid_after_utc,
        serial=c.serial_number)
    assert ident.not_after.tzinfo is not None
    assert ident.not_after.utcoffset() == timedelta(0)
    # First certificate wins when more follow.
    assert certs.identity_from_pem(bundle + ca.cert_pem).node_id == "m-7"
    with pytest.raises(CertificateError):
        certs.identity_from_pem(key_pem)
    with pytest.raises(CertificateError, match="lacks"):
        certs.identity_from_pem(ca.cert_pem)


def test_identity_from_peercert():
    d = {
        "subject": ((("organizationName", "cl"),),
                    (("organizationalUnitName", "worker"),),
                    (("commonName", "n1"),)),
        "issuer": ((("commonName", "flotilla-ca"),),),
        "notBefore": "Nov 27 04:51:49 2026 GMT",
        "notAfter": "Feb 25 05:51:49 2027 GMT",
        "serialNumber": "1A2B",
        "version": 3,
    }
    ident = certs.identity_from_peercert(d)
    assert ident == CertIdentity(
        node_id="n1", role="worker", cluster_id="cl",
        not_before=datetime(2026, 11, 27, 4, 51, 49, tzinfo=timezone.utc),
        not_after=datetime(2027, 2, 25, 5, 51, 49, tzinfo=timezone.utc),
        serial=0x1A2B)
    assert certs.identity_from_peercert({}) is None
    assert certs.identity_from_peercert(None) is None
    for drop in range(3):
        partial = dict(d, subject=tuple(
            rdn for i, rdn in enumerate(d["subject"]) if i != drop))
        assert certs.identity_from_peercert(partial) is None
    assert certs.identity_from_peercert(dict(d, notAfter="garbage")) is None


def test_verify_chain(ca):
    _, own = ca.issue(ROLE_WORKER, "w", CLUSTER, 3600)
    certs.verify_chain(own, ca.cert_pem)
    other = RootCA.create(CLUSTER)  # same subject, different key
    _, foreign = other.issue(ROLE_WORKER, "w", CLUSTER, 3600)
    with pytest.raises(CertificateError, match="not issued"):
        certs.verify_chain(foreign, ca.cert_pem)
    # A bundle of roots accepts certificates from either.
    certs.verify_chain(foreign, ca.cert_pem + other.cert_pem)
    # Different issuer name.
    third = RootCA.create("another-cluster")
    _, third_leaf = third.issue(ROLE_WORKER, "w", "another-cluster", 3600)
    with pytest.raises(CertificateError):
        certs.verify_chain(third_leaf, ca.cert_pem)
    with pytest.raises(CertificateError):
        certs.verify_chain(b"junk", ca.cert_pem)


def test_renewal_time_range():
    nb = datetime(2030, 1, 1, tzinfo=timezone.utc)
    na = nb + timedelta(days=90)
    rng = random.Random(1234)
    draws = [certs.renewal_time(nb, na, rng) for _ in range(5000)]
    lo, hi = nb + timedelta(days=45), nb + timedelta(days=72)
    assert all(lo <= t <= hi for t in draws)
    # Spread over the range, not a constant.
    assert min(draws) < nb + timedelta(days=46)
    assert max(draws) > nb + timedelta(days=71)
    # Default rng works too.
    assert lo <= certs.renewal_time(nb, na) <= hi


def test_node_bundle(ca, tmp_path):
    key_pem, cert_pem = ca.issue(ROLE_WORKER, "w", CLUSTER, 3600)
    path = str(tmp_path / "node.pem")
    certs.write_node_bundle(path, key_pem, cert_pem)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    with open(path, "rb") as f:
        data = f.read()
    assert data == certs.node_bundle_pem(key_pem, cert_pem)
    assert certs.split_node_bundle(data) == (key_pem, cert_pem)
    other_key, _ = ca.issue(ROLE_WORKER, "w", CLUSTER, 3600)
    with pytest.raises(CertificateError, match="does not match"):
        certs.write_node_bundle(path, other_key, cert_pem)
    with open(path, "rb") as f:
        assert f.read() == data  # unchanged after the refused write
