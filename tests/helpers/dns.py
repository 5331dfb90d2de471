"""DNS on loopback for the resolver's tests and benchmark: a client that asks
from a chosen source address (127.0.0.x stands in for a task's address), and
a small upstream server (dnslib's) that answers every name."""

from __future__ import annotations

import socket
import struct
import threading

from dnslib import EDNS0, QTYPE, RR, A, DNSRecord
from dnslib.server import BaseResolver, DNSLogger, DNSServer

UPSTREAM_ANSWER = "192.0.2.53"      # what the fake upstream answers for every A query


def ask(server: tuple[str, int], name: str, qtype: str = "A", source: str = "127.0.0.21",
        tcp: bool = False, edns: int | None = None, timeout: float = 3.0) -> DNSRecord:
    """Ask ``server`` about ``name`` from ``source``; the parsed answer."""
    return DNSRecord.parse(ask_raw(server, question(name, qtype, edns).pack(), source, tcp,
                                   timeout))


def question(name: str, qtype: str = "A", edns: int | None = None) -> DNSRecord:
    q = DNSRecord.question(name, qtype)
    if edns is not None:
        q.add_ar(EDNS0(udp_len=edns))
    return q


def ask_raw(server: tuple[str, int], packet: bytes, source: str = "127.0.0.21",
            tcp: bool = False, timeout: float = 3.0) -> bytes:
    """Send ``packet`` from ``source``; the answer's bytes."""
    kind = socket.SOCK_STREAM if tcp else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, kind) as s:
        s.settimeout(timeout)
        s.bind((source, 0))
        if tcp:
            s.connect(server)
            s.sendall(struct.pack("!H", len(packet)) + packet)
            size = struct.unpack("!H", recv_exactly(s, 2))[0]
            return recv_exactly(s, size)
        s.sendto(packet, server)
        return s.recvfrom(65535)[0]


def recv_exactly(s: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = s.recv(n - len(data))
        if not chunk:
            raise EOFError(f"connection closed after {len(data)} of {n} bytes")
        data += chunk
    return data


def addresses(reply: DNSRecord) -> list[str]:
    return [str(rr.rdata) for rr in reply.rr if rr.rtype == QTYPE.A]


class _Answers(BaseResolver):
    def __init__(self, upstream: FakeUpstream):
        self.upstream = upstream

    def resolve(self, request, handler):
        q = request.q
        with self.upstream.lock:
            self.upstream.asked.append((str(q.qname).lower(), handler.protocol))
        reply = request.reply(ra=1, aa=0)
        if q.qtype == QTYPE.A:
            reply.add_answer(RR(q.qname, QTYPE.A, ttl=30, rdata=A(self.upstream.answer)))
        return reply


class FakeUpstream:
    """A name server on loopback (UDP and TCP on one port) that answers every
    A query with ``answer`` and remembers what it was asked."""

    def __init__(self, host: str = "127.0.0.1", answer: str = UPSTREAM_ANSWER):
        self.answer = answer
        self.asked: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        quiet = DNSLogger(logf=lambda *_: None)
        for _ in range(50):
            udp = DNSServer(_Answers(self), address=host, port=0, logger=quiet)
            port = udp.server.server_address[1]
            try:
                tcp = DNSServer(_Answers(self), address=host, port=port, tcp=True, logger=quiet)
            except OSError:
                udp.server.server_close()
                continue
            break
        else:
            raise RuntimeError("no port free for both UDP and TCP")
        self.address = (host, port)
        self._servers = (udp, tcp)
        for server in self._servers:
            server.start_thread()

    def names(self) -> list[str]:
        with self.lock:
            return [name for name, _ in self.asked]

    def close(self) -> None:
        for server in self._servers:
            server.stop()
            server.server.server_close()


def closed_port(host: str = "127.0.0.1") -> tuple[str, int]:
    """An address where nothing listens (UDP: the kernel answers port unreachable)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        return host, s.getsockname()[1]
