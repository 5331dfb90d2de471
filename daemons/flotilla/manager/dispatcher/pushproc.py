"""Assignment pushes, and the dispatcher's front, from a process of their own.

The pusher (``pusher.py``) makes two or three system calls per push (a TLS
write, a TLS read), and each gives up the GIL. In the manager process the
GIL is busy (Raft, the API's threads, the leader's components), and taking
it back after a system call waited up to the interpreter's switch interval
(5 ms): with a thousand agents, a round of pushes took seconds, most of it
waiting for the GIL. Here the pusher runs in a child process with a GIL of
its own, on the other core.

The dispatcher's side (:class:`PushProcess`) has the pusher's interface,
except that a push is given its message, which the child encodes as JSON.
Jobs go to the child over a socket pair as length-prefixed msgpack frames
(``["job", id, node id, address, message]``, ``["warm", node id,
address]``, ``["forget", node id]``), and answers come back as ``["done",
[[id, status, error], ...]]``. Frames queued while a write is under way go
together in the next one, and everything one read brings is handled
together: one write and one read carry many pushes.

The same process serves the dispatcher's front (``front.py``): agents'
heartbeats and status reports, read and checked there, cross as
``["reqs", [[id, kind, node id, body, certificate serial], ...]]`` and
their answers come back as ``["answers", [[id, status, body], ...]]``. The pusher's loop drives
the front's sockets too, and what it has for the manager leaves once per
pass of that loop. The listening socket is opened
here, by the manager, and handed to the child.

Nothing but plain data crosses, and only between this manager and the
child it started. The child builds its own client TLS context from
the node's certificate files (reloaded when they change, like the
manager's), dies with the thread that started it, and exits when the
socket closes.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import socket
import struct
import subprocess
import sys
import threading
import time

from ...common import config, logs, tls
from ...common.jsonbody import dumps_line
from ...common.procutil import die_with_parent
from ..raft import codec
from .pusher import PushError, Pusher, call_done

log = logging.getLogger(__name__)

FRAME = struct.Struct(">I")
MAX_FRAME = 64 * 1024 * 1024
READ_CHUNK = 1 << 20
GC_YOUNG = 50_000
GC_FULL_EVERY = 30.0


def _batches(sock):
    """Lists of the frames each read from ``sock`` completed, decoded,
    until it closes."""
    buf = bytearray()
    # recv_into a buffer kept for the connection: recv(READ_CHUNK) would
    # allocate (and map) a megabyte on every call.
    chunk = memoryview(bytearray(READ_CHUNK))
    while True:
        got = sock.recv_into(chunk)
        if not got:
            return
        buf += chunk[:got]
        batch = []
        while len(buf) >= FRAME.size:
            (length,) = FRAME.unpack_from(buf)
            if length > MAX_FRAME:
                raise codec.CodecError("frame too large")
            if len(buf) < FRAME.size + length:
                break
            payload = bytes(buf[FRAME.size:FRAME.size + length])
            del buf[:FRAME.size + length]
            batch.append(codec.unpack_lists(payload))
        if batch:
            yield batch


class _Outbox:
    """Frames to send, written by one thread in batches."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._cond = threading.Condition()
        self._items: list[bytes] = []
        self._closed = False

    def put(self, value) -> None:
        data = codec.pack(value)
        with self._cond:
            self._items.append(FRAME.pack(len(data)) + data)
            self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()

    def run(self) -> None:
        while True:
            with self._cond:
                while not self._items and not self._closed:
                    self._cond.wait()
                if not self._items:
                    return
                batch, self._items = self._items, []
            try:
                self._sock.sendall(b"".join(batch))
            except OSError:
                return


class PushProcess:
    """The dispatcher's handle on the push child (see the module doc).

    With ``front`` (the address to listen on, the cluster id, and the
    handler of a list of requests that returns their answers), the child
    serves the dispatcher's front too; :attr:`front_listening` tells
    whether it could listen."""

    def __init__(self, bundle_path: str, ca_path: str, front=None):
        self._bundle = bundle_path
        self._ca = ca_path
        self._front = front
        self.front_listening = False
        self._lock = threading.Lock()
        self._jobs: dict[int, object] = {}
        self._next = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._sock: socket.socket | None = None
        self._outbox: _Outbox | None = None
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        with self._lock:
            if self._proc is not None:
                return
            ours, theirs = socket.socketpair()
            cmd = [sys.executable, "-m", "flotilla.manager.dispatcher.pushproc",
                   "--fd", str(theirs.fileno()), "--bundle", self._bundle, "--ca", self._ca,
                   "--log-level", logging.getLevelName(logging.getLogger().level).lower()]
            fds = [theirs.fileno()]
            listener = self._listen()
            if listener is not None:
                cmd += ["--front-fd", str(listener.fileno()), "--cluster-id", self._front[1]]
                fds.append(listener.fileno())
            self._proc = subprocess.Popen(cmd, pass_fds=fds, preexec_fn=die_with_parent)
            theirs.close()
            if listener is not None:
                listener.close()
                self.front_listening = True
            self._sock = ours
            self._outbox = _Outbox(ours)
            self._threads = [
                threading.Thread(target=self._outbox.run, name="push-out", daemon=True),
                threading.Thread(target=self._read, name="push-in", daemon=True),
            ]
        for t in self._threads:
            t.start()

    def _listen(self):
        if self._front is None:
            return None
        host, port = config.split_addr(self._front[0], default_port=None)
        try:
            return socket.create_server((host, port), family=config.address_family(host),
                                        backlog=1024)
        except OSError as exc:
            log.warning("dispatcher front: cannot listen on %s (%s); agents use the API",
                        self._front[0], exc)
            return None

    def stop(self, timeout: float = 5.0) -> None:
        with self._lock:
            self.front_listening = False
            proc, sock, outbox = self._proc, self._sock, self._outbox
            self._proc = self._sock = self._outbox = None
            jobs, self._jobs = self._jobs, {}
        if proc is None or sock is None or outbox is None:     # not started (all three, or none)
            return
        outbox.close()
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        sock.close()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        for done in jobs.values():
            call_done(done, None, PushError("the pusher stopped"))

    # -- the pusher's interface ------------------------------------------------------
    def push(self, node_id: str, addr: str, message: dict, done) -> bool:
        """Send ``message`` to the node's listener, as JSON (encoded in the
        child); ``done(status, error)`` is called with the outcome."""
        with self._lock:
            if self._outbox is None:
                return False
            self._next += 1
            job_id = self._next
            self._jobs[job_id] = done
            self._outbox.put(["job", job_id, node_id, addr, message])
        return True

    def warm(self, node_id: str, addr: str) -> None:
        self._put(["warm", node_id, addr])

    def forget(self, node_id: str) -> None:
        self._put(["forget", node_id])

    def _put(self, value) -> None:
        with self._lock:
            if self._outbox is not None:
                self._outbox.put(value)

    def _read(self) -> None:
        sock = self._sock
        try:
            for batch in _batches(sock):
                answers = [a for frame in batch
                           if isinstance(frame, list) and frame and frame[0] == "done"
                           for a in frame[1]]
                requests = [r for frame in batch if isinstance(frame, list)
                            and len(frame) == 2 and frame[0] == "reqs" for r in frame[1]]
                if requests and self._front is not None:
                    self._put(["answers", self._front[2](requests)])
                with self._lock:
                    answered = [(self._jobs.pop(job_id, None), status, error)
                                for job_id, status, error in answers]
                for done, status, error in answered:
                    if done is not None:
                        call_done(done, status, PushError(error) if error else None)
        except (OSError, codec.CodecError, ValueError) as exc:
            if self._sock is sock:
                log.warning("assignment pusher connection failed: %s", exc)


# -- the child ---------------------------------------------------------------------------

class _Replies:
    """What the pusher's loop has for the manager (answers to jobs, the
    front's requests), gathered during a pass and handed to the outbox
    after it: one frame of each per pass, and no other thread woken in
    between."""

    def __init__(self, outbox: _Outbox):
        self._outbox = outbox
        self.done: list = []
        self.requests: list = []

    def open(self, _sel, _wake) -> None:
        pass

    def tick(self) -> None:
        if self.done:
            done, self.done = self.done, []
            self._outbox.put(["done", done])
        if self.requests:
            requests, self.requests = self.requests, []
            self._outbox.put(["reqs", requests])

    def close(self) -> None:
        self.tick()


def _collect_garbage_seldom() -> None:
    """Everything this process allocates per push or request (decoded
    jobs, JSON, parsed bodies) is freed by reference counting within
    moments, yet at the default threshold the cyclic collector ran every
    700 such allocations and took about 7% of the process's CPU under load.
    It now runs after ``GC_YOUNG`` of them, and a full collection every
    ``GC_FULL_EVERY`` seconds frees what only it can (a closed connection's
    reference cycles) however few allocations survive. The heap here is
    small (connections, not cluster state), so a full collection is short;
    no Raft member lives in this process to be delayed by it."""
    gc.set_threshold(GC_YOUNG, 10, 10)

    def collect():
        while True:
            time.sleep(GC_FULL_EVERY)
            gc.collect()

    threading.Thread(target=collect, name="gc", daemon=True).start()


def child(fd: int, bundle: str, ca: str, front_fd: int | None = None,
          cluster_id: str = "") -> None:
    sock = socket.socket(fileno=fd)
    _collect_garbage_seldom()
    ctx = tls.ReloadingContext(lambda: tls.client_context(bundle, ca, server_name_check=True),
                               [bundle, ca], check_interval=1.0)
    pusher = Pusher(lambda: (ctx.get(), ctx.generation))
    outbox = _Outbox(sock)
    replies = _Replies(outbox)
    front = None
    if front_fd is not None:
        from .front import FrontServer

        server_ctx = tls.ReloadingContext(
            lambda: tls.server_context(bundle, ca, client_cert="required"), [bundle, ca],
            check_interval=1.0)
        front = FrontServer(socket.socket(fileno=front_fd), server_ctx.get, cluster_id,
                            lambda *req: replies.requests.append(list(req)))
        pusher.attach(front)
    pusher.attach(replies)          # after the front: its requests go in the same pass
    pusher.start()

    def answered(job_id):
        return lambda status, error: replies.done.append(
            [job_id, status, str(error) if error is not None else None])

    threading.Thread(target=outbox.run, name="out", daemon=True).start()
    try:
        for batch in _batches(sock):
            for frame in batch:
                if not isinstance(frame, list) or not frame:
                    continue
                if frame[0] == "job" and len(frame) == 5:
                    _, job_id, node_id, addr, message = frame
                    pusher.push(node_id, addr, dumps_line(message), answered(job_id))
                elif frame[0] == "warm" and len(frame) == 3:
                    pusher.warm(frame[1], frame[2])
                elif frame[0] == "forget" and len(frame) == 2:
                    pusher.forget(frame[1])
                elif frame[0] == "answers" and len(frame) == 2 and front is not None:
                    front.answer(frame[1])
    except (OSError, codec.CodecError, ValueError) as exc:
        log.warning("push process: %s", exc)
    finally:
        pusher.stop()
        outbox.close()


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="flotilla.manager.dispatcher.pushproc")
    ap.add_argument("--fd", type=int, required=True)
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--ca", required=True)
    ap.add_argument("--front-fd", type=int)
    ap.add_argument("--cluster-id", default="")
    ap.add_argument("--log-level", default="info")
    args = ap.parse_args(argv)
    logs.setup(args.log_level, "pusher")
    child(args.fd, args.bundle, args.ca, args.front_fd, args.cluster_id)
    os._exit(0)


if __name__ == "__main__":
    main()
