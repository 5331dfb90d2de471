"""The node's resolver in a process of its own.

In the agent's process the resolver shares the interpreter lock with the
agent's other threads: every system call of a lookup gives the lock up,
and taking it back waits up to the switch interval (5 ms) whenever another
thread is running Python. With one busy thread beside it, cluster lookups
took a p99 of 50 ms instead of 3.5 (``bench/dns.py --busy-threads 1``, with
and without ``--child``, on a shared 2-core machine under load).
So, as the dispatcher's pushes do, the resolver can run in a child process
with an interpreter of its own: :class:`ResolverProcess` has the
resolver's interface (``update``, ``listen``, ``listening``, ``counters``,
``upstreams``) and the component's.

The child gets the table and the addresses over a socket pair, as
length-prefixed JSON frames: ``["update", networks]``, ``["listen",
[[address, port], ...]]``; it sends back ``["state", {"listening",
"counters", "upstreams"}]`` whenever that changes (looked at every 0.1 s).
Nothing but plain data crosses, and only between the agent and the child
it started. The child serves once it has its first table. It dies with
the thread that started it
(``PR_SET_PDEATHSIG``) and exits when the socket closes. A child that
exits by itself is started again (the component's restart, after 1 s,
doubling while it keeps failing) with the last table and addresses.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import socket
import struct
import subprocess
import sys
import threading
from typing import Any, Iterable, Iterator, Mapping

import orjson

from ...common import logs
from ...common.component import Component
from ...common.procutil import die_with_parent
from .resolver import NetworkEntry, Pair, Resolver

log = logging.getLogger(__name__)

FRAME = struct.Struct(">I")
MAX_FRAME = 64 * 1024 * 1024
STATE_EVERY = 0.1
OPTIONS = ("upstreams", "search", "resolv_conf", "ttl", "attempt_timeout", "forward_timeout",
           "max_forwards", "max_tcp", "tcp_idle", "reuse_port")


def _send(sock: socket.socket, value: object) -> None:
    data = orjson.dumps(value)
    sock.sendall(FRAME.pack(len(data)) + data)


def _frames(sock: socket.socket) -> Iterator[Any]:
    """The frames read from ``sock``, decoded, until it closes."""
    buf = bytearray()
    while True:
        chunk = sock.recv(1 << 16)
        if not chunk:
            return
        buf += chunk
        while len(buf) >= FRAME.size:
            (length,) = FRAME.unpack_from(buf)
            if length > MAX_FRAME:
                raise ValueError("frame too large")
            if len(buf) < FRAME.size + length:
                break
            yield orjson.loads(bytes(buf[FRAME.size:FRAME.size + length]))
            del buf[:FRAME.size + length]


class ResolverProcess(Component):
    """The resolver, run in a child process; see the module's description.
    Takes the options of :class:`Resolver`."""

    name = "agent-resolver"

    def __init__(self, listen: Iterable[Pair] = (), **options: Any) -> None:
        super().__init__()
        unknown = set(options) - set(OPTIONS)
        if unknown:
            raise TypeError(f"unknown resolver options: {', '.join(sorted(unknown))}")
        self._options = options
        self._send_lock = threading.Lock()      # frames in order; held while one is written
        self._sock: socket.socket | None = None
        self._networks: Mapping[str, NetworkEntry] = {}
        self._wanted: list[Pair] = []
        self._state: dict[str, Any] = {}
        self.listen(listen)

    # -- the resolver's interface (any thread) -------------------------------------------
    def update(self, networks: Mapping[str, NetworkEntry]) -> None:
        with self._send_lock:
            self._networks = networks
            self._put(["update", networks])

    def listen(self, addresses: Iterable[Pair]) -> None:
        wanted = [(str(ipaddress.ip_address(host)), int(port)) for host, port in addresses]
        with self._send_lock:
            self._wanted = wanted
            self._put(["listen", wanted])

    def listening(self) -> list[Pair]:
        return [(str(h), int(p)) for h, p in self._state.get("listening", [])]

    def counters(self) -> dict[str, int]:
        return dict(self._state.get("counters", {}))

    def upstreams(self) -> list[Pair]:
        return [(str(h), int(p)) for h, p in self._state.get("upstreams", [])]

    def _put(self, frame: list[object]) -> None:
        """Send ``frame`` to the child, if there is one (with the send lock held)."""
        if self._sock is None:
            return
        try:
            _send(self._sock, frame)
        except OSError as exc:      # the child is gone: the next one gets the whole state
            log.warning("resolver process: cannot reach the child: %s", exc)

    # -- the child -----------------------------------------------------------------------
    def run(self) -> None:
        ours, theirs = socket.socketpair()
        level = logging.getLevelName(logging.getLogger().level).lower()
        cmd = [sys.executable, "-m", "flotilla.agent.network.resolverproc",
               "--fd", str(theirs.fileno()), "--options", orjson.dumps(self._options).decode(),
               "--log-level", level]
        try:
            proc = subprocess.Popen(cmd, pass_fds=[theirs.fileno()], preexec_fn=die_with_parent)
        finally:
            theirs.close()
        try:
            with self._send_lock:
                _send(ours, ["listen", self._wanted])
                _send(ours, ["update", self._networks])
                self._sock = ours
            if self.stopping.is_set():
                return
            for frame in _frames(ours):
                if isinstance(frame, list) and len(frame) == 2 and frame[0] == "state":
                    self._state = frame[1]
            if not self.stopping.is_set():
                raise RuntimeError(f"the resolver process exited (status {proc.poll()})")
        finally:
            with self._send_lock:
                self._sock = None
            self._state = {}
            ours.close()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def wake(self) -> None:
        sock = self._sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)     # the child exits; run() reads the end
            except OSError:
                pass


def child(fd: int, options: dict[str, Any]) -> None:
    sock = socket.socket(fileno=fd)
    if options.get("upstreams") is not None:
        options["upstreams"] = [(str(h), int(p)) for h, p in options["upstreams"]]
    resolver = Resolver(**options)
    done = threading.Event()

    def report() -> None:
        last = None
        while not done.wait(STATE_EVERY):
            state = {"listening": resolver.listening(), "counters": resolver.counters(),
                     "upstreams": resolver.upstreams()}
            if state != last:
                try:
                    _send(sock, ["state", state])
                except OSError:
                    return
                last = state

    threading.Thread(target=report, name="resolver-state", daemon=True).start()
    try:
        for frame in _frames(sock):
            if not isinstance(frame, list) or len(frame) != 2:
                continue
            if frame[0] == "update" and isinstance(frame[1], dict):
                resolver.update(frame[1])
                resolver.start()        # (once it has a table: no answer from an empty one)
            elif frame[0] == "listen" and isinstance(frame[1], list):
                resolver.listen([(str(h), int(p)) for h, p in frame[1]])
    except (OSError, ValueError) as exc:
        log.warning("resolver process: %s", exc)
    finally:
        done.set()
        resolver.stop()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="flotilla.agent.network.resolverproc")
    ap.add_argument("--fd", type=int, required=True)
    ap.add_argument("--options", default="{}")
    ap.add_argument("--log-level", default="info")
    args = ap.parse_args(argv)
    logs.setup(args.log_level, "resolver")
    child(args.fd, orjson.loads(args.options))
    os._exit(0)


if __name__ == "__main__":
    main()
