"""The API worker follows chunked bodies as they arrive: it must agree with
gunicorn, which decodes them afterwards, on where each ends and how large
it is."""

import random

import pytest
from gunicorn.http.body import Body, ChunkedReader
from gunicorn.http.unreader import IterUnreader

from flotilla.manager.apiworker import ChunkScanner


class _Req:
    limit_request_field_size = 8190
    max_buffer_headers = 8190 * 32

    def __init__(self):
        self.trailers = []

    def parse_headers(self, data, from_trailer=False):
        return []


def chunked(payload: bytes, sizes, trailers=b"", ext=b"") -> bytes:
    out, i = [], 0
    for n in sizes:
        piece = payload[i:i + n]
        i += n
        out.append(b"%x%s\r\n%s\r\n" % (len(piece), ext, piece))
    assert i >= len(payload)
    return b"".join(out) + b"0\r\n" + trailers + b"\r\n"


def gunicorn_decodes(raw: bytes) -> tuple[bytes, bytes]:
    """What gunicorn reads as the body, and what it leaves for the next request."""
    unreader = IterUnreader([raw])
    body = Body(ChunkedReader(_Req(), unreader)).read()
    return body, unreader.read()


def feed_in_pieces(scanner, data, rng):
    i = 0
    while i < len(data):
        n = rng.choice((1, 2, 3, 7, 64, 1000))
        scanner.feed(data[i:i + n])
        i += n


@pytest.mark.parametrize("seed", range(20))
def test_the_end_and_the_size_agree_with_gunicorn(seed):
    rng = random.Random(seed)
    payload = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 5000)))
    sizes, left = [], len(payload)
    while left:
        sizes.append(min(left, rng.randrange(1, 700)))
        left -= sizes[-1]
    trailers = rng.choice((b"", b"X-Sum: 1\r\n", b"A: b\r\nC: d\r\n"))
    ext = rng.choice((b"", b";name=value", b' ; a="q"'))
    raw = chunked(payload, sizes, trailers, ext)
    scanner = ChunkScanner(limit=10_000)
    # Everything but the last byte: not complete yet.
    feed_in_pieces(scanner, raw[:-1], rng)
    assert not scanner.done and scanner.error is None
    scanner.feed(raw[-1:])
    assert scanner.done and scanner.error is None
    assert scanner.size == len(payload)
    # A pipelined request after the body is left alone by both.
    body, rest = gunicorn_decodes(raw + b"GET / HTTP/1.1\r\n\r\n")
    assert body == payload and rest == b"GET / HTTP/1.1\r\n\r\n"


def test_over_the_limit_is_known_from_the_chunk_sizes():
    scanner = ChunkScanner(limit=100)
    scanner.feed(b"64\r\n" + b"x" * 100 + b"\r\n")
    assert not scanner.too_large
    scanner.feed(b"1\r\n")      # announced, not yet sent
    assert scanner.too_large and not scanner.done


@pytest.mark.parametrize("raw,error", [
    (b"zz\r\nab\r\n0\r\n\r\n", "invalid chunk size"),
    (b"\r\n", "invalid chunk size"),
    (b"2\r\nabXY0\r\n\r\n", "chunk data not followed by CRLF"),
    (b"2\nab\r\n0\r\n\r\n", "bare LF in chunked framing"),
    (b"1" * 9000, "chunk line too long"),
    (b"0\r\n" + b"X: y\r\n" * 20000, "trailer section too long"),
])
def test_malformed_framing_is_an_error(raw, error):
    scanner = ChunkScanner(limit=10_000)
    scanner.feed(raw)
    assert scanner.error == error and not scanner.done
