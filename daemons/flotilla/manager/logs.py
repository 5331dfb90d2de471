"""Service logs: the leader asks the agents that ran a service's tasks.

For every task that has a node and a container (finished ones too, while
their container exists), the manager calls the agent listener of that node
(``GET /v1/containers/<id>/logs``) with its own node certificate, the same
mutual TLS the dispatcher pushes assignments with. Nodes are asked
concurrently; a node that cannot be reached is reported, never an error for
the whole request. Containers that no longer exist are skipped.

Whatever an agent sends, a logs request costs the leader a bounded amount:

- Time: every node is asked within :data:`DEADLINE` for the whole request.
  When it passes, the connections still open are shut down, so an agent
  that keeps sending (or trickles its handshake or its headers) loses its
  connection; it does not keep a thread of the leader reading.
- Memory: at most :data:`MAX_NODE_BYTES` of answers are read from one node,
  and :data:`MAX_TOTAL_BYTES` and :data:`MAX_LINES` lines for the whole
  request. A node over a limit is reported as ``truncated``; the lines of
  its tasks whose answers were read completely before are kept.
- At most :data:`MAX_COLLECTIONS` requests read logs at once; another waits
  for its turn within the deadline, then is refused (:class:`Busy`).
"""

from __future__ import annotations

import concurrent.futures
import http.client
import json
import logging
import socket
import threading
import time
import urllib.parse

from ..common import admission, tls

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 2.0
DEADLINE = 5.0                        # for a whole request, every node included
MAX_WORKERS = 16
MAX_NODE_BYTES = 8 * 1024 * 1024      # of answers read from one node, per request
MAX_TOTAL_BYTES = 16 * 1024 * 1024    # of answers read from all nodes, per request
MAX_LINES = 100_000                   # lines in one answer (10 tasks at the longest tail)
MAX_TASK_LINES = 10_000               # what an agent returns at most per task
MAX_COLLECTIONS = 4                   # requests reading logs at once
READ_CHUNK = 64 * 1024

STREAMS = {"stdout": "stdout", "stderr": "stderr"}


class NodeUnreachable(Exception):
    pass


class Busy(Exception):
    """Too many logs requests at once."""


class _Cut(Exception):
    """The collector stopped reading this node (the deadline passed)."""


class _TooLarge(Exception):
    pass


def _mib(n: int) -> str:
    return f"{n // (1024 * 1024)} MiB"


class _Budget:
    """What the whole request may still read, shared by its nodes."""

    def __init__(self):
        self._lock = threading.Lock()
        self._bytes = MAX_TOTAL_BYTES
        self._lines = MAX_LINES

    def take_bytes(self, n: int) -> bool:
        with self._lock:
            if n > self._bytes:
                self._bytes = 0
                return False
            self._bytes -= n
            return True

    def take_lines(self, n: int) -> bool:
        with self._lock:
            if n > self._lines:
                self._lines = 0
                return False
            self._lines -= n
            return True


class _Fetch:
    """One node's answers. The worker adds the lines of each task answered
    completely; the collector may cut it off at any moment (from another
    thread), after which nothing changes any more."""

    def __init__(self, node_id: str, hostname: str | None, tasks: list[dict]):
        self.node_id = node_id
        self.hostname = hostname
        self.tasks = tasks
        self.entries: list[dict] = []
        self.done_tasks = 0
        self.error: str | None = None
        self.truncated = False
        self.closed = False
        self._lock = threading.Lock()
        self._sock = None

    def attach(self, sock) -> None:
        with self._lock:
            if self.closed:
                raise _Cut()
            self._sock = sock

    def add(self, entries: list[dict]) -> None:
        with self._lock:
            if self.closed:
                raise _Cut()
            self.entries.extend(entries)
            self.done_tasks += 1

    def fail(self, error: str, truncated: bool = False) -> None:
        with self._lock:
            if not self.closed and self.error is None:
                self.error, self.truncated = error, truncated

    def cut(self, error: str) -> None:
        """Stop reading this node now; ``error`` if it had not finished."""
        with self._lock:
            if self.closed:
                return
            self.closed = True
            sock, self._sock = self._sock, None
            finished = self.done_tasks == len(self.tasks)
            if self.error is None and not finished:
                self.error = error
        if sock is not None:
            try:
                # The plain socket's shutdown: wakes a read blocked in the
                # worker thread (even mid-handshake) without touching the
                # TLS object that thread is using.
                socket.socket.shutdown(sock, socket.SHUT_RDWR)
            except OSError:
                pass


class _AgentConnection(http.client.HTTPConnection):
    """HTTP/1.1 over mutual TLS to one agent, verified by its node id (the
    address alone is not trusted); every socket it opens is handed to the
    fetch, so the collector can shut it down."""

    def __init__(self, host: str, port: int, node_id: str, ctx, fetch: _Fetch, deadline: float):
        super().__init__(host, port)
        self._node_id = node_id
        self._ctx = ctx
        self._fetch = fetch
        self._deadline = deadline

    def connect(self):
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("timed out")
        sock = socket.create_connection((self.host, self.port), min(CONNECT_TIMEOUT, remaining))
        try:
            sock.settimeout(max(0.01, self._deadline - time.monotonic()))
            self.sock = self._ctx.wrap_socket(sock, server_hostname=self._node_id,
                                              do_handshake_on_connect=False)
        except BaseException:
            sock.close()
            raise
        # Handed over before the handshake, which the collector may cut short.
        self._fetch.attach(self.sock)
        self.sock.do_handshake()


class LogCollector:
    def __init__(self, bundle_path: str, ca_path: str):
        self._ctx = tls.ReloadingContext(
            lambda: tls.client_context(bundle_path, ca_path, server_name_check=True),
            [bundle_path, ca_path], check_interval=1.0)
        self._slots = threading.BoundedSemaphore(MAX_COLLECTIONS)

    # -- one node ----------------------------------------------------------------------
    def _fetch_node(self, fetch: _Fetch, addr: str, query: dict, limit: int,
                    deadline: float, budget: _Budget) -> None:
        host, port = addr.rsplit(":", 1)
        conn = _AgentConnection(host.strip("[]"), int(port), fetch.node_id, self._ctx.get(),
                                fetch, deadline)
        qs = urllib.parse.urlencode({k: v for k, v in query.items() if v is not None})
        left = MAX_NODE_BYTES
        try:
            for task in fetch.tasks:
                if time.monotonic() >= deadline:
                    raise TimeoutError("timed out")
                cid = urllib.parse.quote(task["status"]["container_id"], safe="")
                conn.request("GET", f"/v1/containers/{cid}/logs" + (f"?{qs}" if qs else ""),
                             headers={"Accept": "application/json"})
                resp = conn.getresponse()
                data = self._read(conn, resp, left, deadline, budget)
                left -= len(data)
                if resp.status == 404:
                    fetch.add([])
                    continue
                try:
                    body = json.loads(data)
                except ValueError:
                    body = None
                if resp.status != 200 or not isinstance(body, dict):
                    message = ((body or {}).get("error") or {}).get("message") \
                        if isinstance(body, dict) else None
                    raise NodeUnreachable(f"agent answered HTTP {resp.status}"
                                          + (f": {str(message)[:200]}" if message else ""))
                entries = _entries(task, body, fetch, limit)
                del body, data
                if not budget.take_lines(len(entries)):
                    raise _TooLarge(f"more than {MAX_LINES:,} lines in one answer")
                fetch.add(entries)
        except _Cut:
            pass
        except _TooLarge as exc:
            missing = len(fetch.tasks) - fetch.done_tasks
            fetch.fail(f"answer over the limit ({exc}): the lines of {missing} of its "
                       f"{len(fetch.tasks)} tasks are left out", truncated=True)
        except NodeUnreachable as exc:
            fetch.fail(str(exc))
        except Exception as exc:
            fetch.fail(_reason(exc))
        finally:
            conn.close()

    @staticmethod
    def _read(conn, resp, left: int, deadline: float, budget: _Budget) -> bytes:
        """The body of ``resp``: at most ``left`` bytes (and what the whole
        request may still read), by ``deadline``."""
        if resp.length is not None and resp.length > left:
            raise _TooLarge(f"{_mib(MAX_NODE_BYTES)} per node")
        chunks: list[bytes] = []
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("timed out")
            if conn.sock is not None:
                conn.sock.settimeout(remaining)
            chunk = resp.read1(READ_CHUNK)
            if not chunk:
                return b"".join(chunks)
            if len(chunk) > left:
                raise _TooLarge(f"{_mib(MAX_NODE_BYTES)} per node")
            if not budget.take_bytes(len(chunk)):
                raise _TooLarge(f"{_mib(MAX_TOTAL_BYTES)} for the whole request")
            left -= len(chunk)
            chunks.append(chunk)

    # -- the request -------------------------------------------------------------------
    def collect(self, store, tasks: list[dict], tail: int | None = None,
                since: float | None = None) -> dict:
        """``{"entries": [...], "unreachable": [...]}`` for ``tasks``."""
        by_node: dict[str, list[dict]] = {}
        for t in tasks:
            if t.get("node_id") and (t.get("status") or {}).get("container_id"):
                by_node.setdefault(t["node_id"], []).append(t)
        entries: list[dict] = []
        unreachable: list[dict] = []
        if not by_node:
            return {"entries": entries, "unreachable": unreachable}
        with admission.blocking():
            if not self._slots.acquire(timeout=DEADLINE):
                raise Busy(f"{MAX_COLLECTIONS} logs requests are being answered; retry shortly")
        try:
            return self._collect(store, by_node, tail, since)
        finally:
            self._slots.release()

    def _collect(self, store, by_node, tail, since) -> dict:
        entries: list[dict] = []
        unreachable: list[dict] = []
        query = {"tail": tail, "since": repr(float(since)) if since else None}
        limit = MAX_TASK_LINES if tail is None else min(int(tail), MAX_TASK_LINES)
        budget = _Budget()
        deadline = time.monotonic() + DEADLINE
        fetches: list[_Fetch] = []
        pool = concurrent.futures.ThreadPoolExecutor(min(MAX_WORKERS, len(by_node)), "service-logs")
        try:
            futures = []
            for nid, node_tasks in sorted(by_node.items()):
                node = store.get("node", nid)
                if node is None:
                    unreachable.append({"node_id": nid, "node": None, "truncated": False,
                                        "error": "the node is no longer in the cluster"})
                    continue
                if not node.get("agent_addr"):
                    unreachable.append({"node_id": nid, "node": node.get("hostname"),
                                        "truncated": False,
                                        "error": "the node's agent has not registered an address"})
                    continue
                fetch = _Fetch(nid, node.get("hostname"), node_tasks)
                fetches.append(fetch)
                futures.append(pool.submit(self._fetch_node, fetch, node["agent_addr"], query,
                                           limit, deadline, budget))
            with admission.blocking():
                concurrent.futures.wait(futures, timeout=max(0.0, deadline - time.monotonic()))
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
            # Whatever is still being read is cut off here: nothing more
            # is added, and the agents' connections are shut down.
            for fetch in fetches:
                fetch.cut(f"timed out: no complete answer within {DEADLINE:g} s "
                          "(the limit for a logs request)")
        for fetch in fetches:
            entries.extend(fetch.entries)
            if fetch.error is not None:
                unreachable.append({"node_id": fetch.node_id, "node": fetch.hostname,
                                    "truncated": fetch.truncated, "error": fetch.error})
        # Stable: the lines of one container keep their order.
        entries.sort(key=lambda e: e["timestamp"])
        unreachable.sort(key=lambda u: (u["node"] or "", u["node_id"]))
        return {"entries": entries, "unreachable": unreachable}


def _entries(task: dict, body: dict, fetch: _Fetch, limit: int) -> list[dict]:
    """The agent's answer for ``task`` as the API's entries; an answer that
    is not what an agent sends fails the node."""
    items = body.get("entries")
    if not isinstance(items, list) or len(items) > limit:
        raise NodeUnreachable("the agent's answer is malformed")
    out = []
    for e in items:
        if not isinstance(e, dict):
            raise NodeUnreachable("the agent's answer is malformed")
        stamp, when = e.get("timestamp"), e.get("time")
        stream, line = e.get("stream"), e.get("line")
        if not (isinstance(stamp, str) and isinstance(when, (int, float))
                and not isinstance(when, bool) and isinstance(line, str)
                and isinstance(stream, str) and stream in STREAMS):
            raise NodeUnreachable("the agent's answer is malformed")
        out.append({
            "task_id": task["id"],
            "service": task.get("service_name"),
            "slot": task.get("slot"),
            "node_id": fetch.node_id,
            "node": fetch.hostname,
            "time": float(when),
            "timestamp": stamp,
            "stream": STREAMS[stream],
            "line": line,
        })
    return out


def _reason(exc) -> str:
    text = str(exc)
    for marker, short in (("Connection refused", "connection refused"),
                          ("timed out", "timed out"),
                          ("CERTIFICATE_VERIFY_FAILED", "certificate verification failed"),
                          ("No route to host", "no route to host"),
                          ("Name or service not known", "unknown host")):
        if marker in text:
            return short
    return f"{exc.__class__.__name__}: {text[:160]}"
