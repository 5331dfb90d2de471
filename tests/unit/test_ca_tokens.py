import hashlib
import re

import pytest

from flotilla.ca import tokens
from flotilla.ca.certs import RootCA
from flotilla.ca.tokens import (
    InvalidToken,
    JoinToken,
    ca_digest,
    generate_token,
    parse_token,
    token_matches,
)

TOKEN_RE = re.compile(r"^FLTKN-1-[0-9a-z]{50}-[0-9a-z]{25}$")


@pytest.fixture(scope="module")
def ca_pem():
    return RootCA.create("cluster-a").cert_pem


def test_digest_is_sha256_in_base36(ca_pem):
    d = ca_digest(ca_pem)
    assert len(d) == 50
    assert re.fullmatch(r"[0-9a-z]{50}", d)
    assert int(d, 36) == int.from_bytes(hashlib.sha256(ca_pem).digest(), "big")


def test_digest_zero_padded():
    # A digest value with leading zeros must still be 50 characters long.
    assert tokens._base36(0, 50) == "0" * 50
    assert tokens._base36(35, 5) == "0000z"
    with pytest.raises(ValueError):
        tokens._base36(36 ** 5, 5)


def test_token_format(ca_pem):
    tok = generate_token(ca_pem)
    assert TOKEN_RE.match(tok), tok
    prefix, version, digest, secret = tok.split("-")
    assert digest == ca_digest(ca_pem)
    assert int(secret, 36) < 2 ** 128


def test_tokens_differ_only_in_secret(ca_pem):
    a, b = generate_token(ca_pem), generate_token(ca_pem)
    assert a != b
    assert parse_token(a).digest == parse_token(b).digest
    assert parse_token(a).secret != parse_token(b).secret


def test_parse_round_trip(ca_pem):
    tok = generate_token(ca_pem)
    parsed = parse_token("  \n" + tok + "\n")
    assert parsed == JoinToken(version=1, digest=ca_digest(ca_pem),
                               secret=tok.rsplit("-", 1)[1])
    assert str(parsed) == tok


def test_repr_hides_secret(ca_pem):
    parsed = parse_token(generate_token(ca_pem))
    assert parsed.secret not in repr(parsed)
    assert parsed.digest in repr(parsed)


def test_digest_changes_with_ca(ca_pem):
    other = RootCA.create("cluster-a").cert_pem
    assert ca_digest(other) != ca_digest(ca_pem)
    assert parse_token(generate_token(other)).digest != ca_digest(ca_pem)
    # Any byte change in the PEM changes the digest.
    assert ca_digest(ca_pem + b"\n") != ca_digest(ca_pem)


def _valid(ca_pem):
    return generate_token(ca_pem)


@pytest.mark.parametrize("mutate, fragment", [
    (lambda t: "", "empty"),
    (lambda t: "   ", "empty"),
    (lambda t: t.replace("FLTKN", "SWMTKN", 1), "must start with"),
    (lambda t: t.replace("FLTKN", "fltkn", 1), "must start with"),
    (lambda t: t.replace("FLTKN-1", "FLTKN-2", 1), "unsupported version 2"),
    (lambda t: t.replace("FLTKN-1", "FLTKN-x", 1), "version"),
    (lambda t: t.replace("FLTKN-1", "FLTKN-01", 1), "unsupported version 01"),
    (lambda t: t.replace("FLTKN-1", "FLTKN-\u00b9", 1), "missing version"),
    (lambda t: t.replace("FLTKN-1-", "FLTKN-", 1), "version"),
    (lambda t: "FLTKN-1", "expected FLTKN-1-<digest>-<secret>"),
    (lambda t: t + "-extra", "expected"),
    (lambda t: t[:-1], "secret must be 25 characters"),
    (lambda t: t + "0", "secret must be 25 characters"),
    (lambda t: t[:8] + t[9:], "CA digest must be 50 characters"),
    (lambda t: t[:8] + "A" + t[9:], "CA digest may only contain"),
    (lambda t: t[:-1] + "!", "secret may only contain"),
    (lambda t: t[:-1] + "é", "secret may only contain"),
    (lambda t: t.rsplit("-", 1)[0] + "-" + "z" * 25, "secret is out of range"),
    (lambda t: "FLTKN-1-" + "z" * 50 + "-" + t.rsplit("-", 1)[1],
     "CA digest is out of range"),
])
def test_malformed_rejected(ca_pem, mutate, fragment):
    bad = mutate(_valid(ca_pem))
    with pytest.raises(InvalidToken) as info:
        parse_token(bad)
    msg = str(info.value)
    assert fragment in msg
    assert "\n" not in msg
    assert isinstance(info.value, ValueError)


def test_non_string_rejected():
    with pytest.raises(InvalidToken):
        parse_token(None)  # type: ignore[arg-type]


def test_token_matches(ca_pem):
    a, b = generate_token(ca_pem), generate_token(ca_pem)
    assert token_matches(a, a)
    assert token_matches(a + "\n", a)
    assert not token_matches(a, b)
    assert not token_matches(a[:-1], a)
    assert not token_matches("", "")
    assert not token_matches(a, "")
    assert not token_matches(None, a)  # type: ignore[arg-type]
    assert not token_matches(a, 12)  # type: ignore[arg-type]
    assert not token_matches("\ud800", a)
