"""Join tokens.

A join token has the form ``FLTKN-1-<digest>-<secret>``:

* ``<digest>`` is the SHA-256 of the cluster's root CA certificate PEM bytes,
  written in base 36 and zero-padded to 50 characters.  A joining node
  downloads the root CA over an unverified connection and accepts it only
  if its digest matches the token, which pins the CA without a prior trust
  relationship.
* ``<secret>`` is 16 random bytes in base 36, zero-padded to 25 characters.
  The worker and manager tokens share the digest and differ in the secret;
  the CA picks the role of a joining node by comparing the whole token with
  both stored tokens.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass, field

TOKEN_PREFIX = "FLTKN"
TOKEN_VERSION = 1
DIGEST_LEN = 50
SECRET_LEN = 25
SECRET_BYTES = 16

_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"
_ALPHABET_SET = frozenset(_ALPHABET)


class InvalidToken(ValueError):
    """A join token is malformed (the message is one human-readable line)."""


@dataclass(frozen=True)
class JoinToken:
    version: int
    digest: str
    # Kept out of repr() so that logging a parsed token does not leak it.
    secret: str = field(repr=False)

    def __str__(self) -> str:
        return f"{TOKEN_PREFIX}-{self.version}-{self.digest}-{self.secret}"


def _base36(value: int, width: int) -> str:
    if value < 0:
        raise ValueError("negative value")
    digits = []
    while value:
        value, rem = divmod(value, 36)
        digits.append(_ALPHABET[rem])
    text = "".join(reversed(digits)) or "0"
    if len(text) > width:
        raise ValueError(f"value does not fit in {width} base-36 digits")
    return text.rjust(width, "0")


def ca_digest(ca_cert_pem: bytes) -> str:
    """SHA-256 of the exact root CA PEM bytes, in base 36, 50 characters."""
    raw = hashlib.sha256(ca_cert_pem).digest()
    return _base36(int.from_bytes(raw, "big"), DIGEST_LEN)


def generate_token(ca_cert_pem: bytes) -> str:
    """A fresh join token for the cluster whose root CA is ``ca_cert_pem``."""
    secret = int.from_bytes(secrets.token_bytes(SECRET_BYTES), "big")
    return (f"{TOKEN_PREFIX}-{TOKEN_VERSION}-{ca_digest(ca_cert_pem)}-"
            f"{_base36(secret, SECRET_LEN)}")


def _check_field(name: str, value: str, length: int, bits: int) -> None:
    if len(value) != length:
        raise InvalidToken(
            f"invalid join token: {name} must be {length} characters, "
            f"got {len(value)}")
    if not set(value) <= _ALPHABET_SET:
        raise InvalidToken(
            f"invalid join token: {name} may only contain 0-9 and a-z")
    if int(value, 36) >> bits:
        raise InvalidToken(f"invalid join token: {name} is out of range")


def parse_token(token: str) -> JoinToken:
    """Parse and validate the syntax of a join token.

    Surrounding whitespace is ignored.  Raises :class:`InvalidToken` for
    anything malformed; does not check the secret against anything.
    """
    if not isinstance(token, str):
        raise InvalidToken("invalid join token: not a string")
    token = token.strip()
    if not token:
        raise InvalidToken("invalid join token: empty")
    parts = token.split("-")
    if parts[0] != TOKEN_PREFIX:
        raise InvalidToken(
            f"invalid join token: must start with {TOKEN_PREFIX}-")
    if len(parts) < 2 or not re.fullmatch(r"[0-9]{1,9}", parts[1]):
        raise InvalidToken("invalid join token: missing version number")
    if parts[1] != str(TOKEN_VERSION):
        raise InvalidToken(
            f"invalid join token: unsupported version {parts[1]} "
            f"(expected {TOKEN_VERSION})")
    if len(parts) != 4:
        raise InvalidToken(
            f"invalid join token: expected "
            f"{TOKEN_PREFIX}-{TOKEN_VERSION}-<digest>-<secret>")
    _, _, digest, secret = parts
    _check_field("CA digest", digest, DIGEST_LEN, 256)
    _check_field("secret", secret, SECRET_LEN, SECRET_BYTES * 8)
    return JoinToken(version=TOKEN_VERSION, digest=digest, secret=secret)


def token_matches(presented: str, stored: str) -> bool:
    """Compare a presented token with a stored one in constant time.

    Surrounding whitespace is ignored.  An empty or non-string value on
    either side never matches (so an unset stored token admits nobody).
    Never raises.
    """
    try:
        if not isinstance(presented, str) or not isinstance(stored, str):
            return False
        a = presented.strip().encode("utf-8", "surrogatepass")
        b = stored.strip().encode("utf-8", "surrogatepass")
        if not a or not b:
            return False
        return hmac.compare_digest(a, b)
    except Exception:
        return False
