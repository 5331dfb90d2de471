"""Simulated agents that speak the real agent protocol over mutual TLS.

Benchmark code. Each simulated agent

- joins with the worker token: downloads the root CA without trusting the
  connection, pins it to the token's digest, sends a real CSR and receives
  a real node certificate (``POST /v1/join``);
- registers a session (``POST /v1/dispatcher/register``) with a description
  (hostname, 8 CPUs, 32 GB, linux/amd64) and the address of its own
  listener, and heartbeats at the period each answer hands out;
- runs its own mutual-TLS listener on loopback, which only a manager
  certificate of the cluster may call, and accepts assignment pushes with
  the checks of ``agent/assignments.py`` (session id, sequence numbers, a
  gap or an unknown session answered 409 so the dispatcher sends a
  complete set, a repeated message acknowledged once);
- "runs" every new task at once: it walks the task through accepted,
  preparing, ready, starting and running, and the reporter sends the latest
  state per task in batches of at most 200 (``POST /v1/dispatcher/status``)
  like ``agent/reporter.py``; a task whose desired state becomes shutdown or
  remove is reported shut down.

Agents send everything to the manager that led when they joined; after a
leader change that manager forwards to the new leader (as it does for a
real agent whose preferred manager is a follower).

Many agents share one process: an asyncio loop (uvloop's, which costs
about a sixth less CPU than the standard loop here) drives all of their
connections (HTTP/1.1 with keep-alive, written by hand to keep the
simulator's own CPU cost low), and ``run_group`` spreads agents over
several processes. The main process talks to each group over a pipe.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import socket
import ssl
import time

import orjson
import uvloop
from benchlib import ROOT  # noqa: F401  (puts daemons/ on sys.path)

from flotilla.ca import certs, tokens
from flotilla.common import tls

GATHER = 0.005
BATCH = 200
JOIN_CONCURRENCY = 16
TERMINAL = {"complete", "shutdown", "failed", "rejected", "orphaned", "remove"}


class HttpError(Exception):
    def __init__(self, status, body):
        super().__init__(f"HTTP {status}: {body[:200]!r}")
        self.status = status
        self.body = body

    @property
    def code(self):
        try:
            return json.loads(self.body)["error"]["code"]
        except Exception:
            return ""


# -- a minimal HTTP/1.1 client and server over asyncio streams ---------------------

async def _read_message(reader):
    """(first line, headers, body) of one HTTP message; None at EOF."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            return None
        raise
    line, _, rest = head[:-4].decode("latin-1").partition("\r\n")
    headers = {}
    for h in rest.split("\r\n") if rest else ():
        k, _, v = h.partition(":")
        headers[k.strip().lower()] = v.strip()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        chunks = []
        while True:
            size = int((await reader.readline()).split(b";")[0], 16)
            if size == 0:
                await reader.readline()
                break
            chunks.append(await reader.readexactly(size))
            await reader.readline()
        body = b"".join(chunks)
    else:
        body = await reader.readexactly(int(headers.get("content-length", "0")))
    return line, headers, body


class Conn:
    def __init__(self, reader, writer):
        self.reader, self.writer = reader, writer

    def close(self):
        try:
            self.writer.close()
        except Exception:
            pass


class HttpClient:
    """Keep-alive HTTPS connections to one address, one request per connection
    at a time (a second concurrent request opens a second connection)."""

    def __init__(self, addr: str, ctx: ssl.SSLContext, server_name: str):
        self.addr = addr
        self.host, port = addr.rsplit(":", 1)
        self.port = int(port)
        self.ctx = ctx
        self.server_name = server_name
        self.idle: list[Conn] = []
        self.connects = 0

    async def _connect(self):
        r, w = await asyncio.wait_for(asyncio.open_connection(
            self.host, self.port, ssl=self.ctx, server_hostname=self.server_name,
            limit=1 << 22), 30)
        self.connects += 1
        return Conn(r, w)

    async def prepare(self, count):
        """Hold ``count`` idle connections, as a client that has been
        running for a while does (its heartbeats and its reports have each
        kept one open)."""
        while len(self.idle) < count:
            self.idle.append(await self._connect())

    async def request(self, method, path, payload=None, timeout=30.0):
        body = b"" if payload is None else orjson.dumps(payload)
        head = (f"{method} {path} HTTP/1.1\r\nHost: {self.server_name}\r\n"
                f"Accept: application/json\r\nContent-Length: {len(body)}\r\n")
        if payload is not None:
            head += "Content-Type: application/json\r\n"
        data = (head + "\r\n").encode() + body
        for attempt in (0, 1):
            reused = bool(self.idle)
            conn = self.idle.pop() if reused else await self._connect()
            try:
                conn.writer.write(data)
                async with asyncio.timeout(timeout):
                    msg = await _read_message(conn.reader)
                if msg is None:
                    raise ConnectionError("closed")
            except (ConnectionError, OSError, asyncio.IncompleteReadError, ssl.SSLError):
                conn.close()
                if reused and attempt == 0:
                    continue      # the server closed an idle connection: once more
                raise
            except BaseException:
                conn.close()
                raise
            line, headers, resp = msg
            if headers.get("connection", "").lower() == "close":
                conn.close()
            else:
                self.idle.append(conn)
            status = int(line.split(" ", 2)[1])
            if not 200 <= status < 300:
                raise HttpError(status, resp)
            return orjson.loads(resp) if resp else None
        raise ConnectionError("unreachable")

    def close(self):
        for c in self.idle:
            c.close()
        self.idle.clear()


def _reply(status: int, payload: dict) -> bytes:
    body = orjson.dumps(payload)
    reason = {200: "OK", 403: "Forbidden", 404: "Not Found", 409: "Conflict"}.get(status, "X")
    return (f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


# -- one simulated agent -----------------------------------------------------------

class SimAgent:
    def __init__(self, group, index: int):
        self.g = group
        self.hostname = f"sim-{group.gid}-{index:04d}"
        self.node_id = None
        self.bundle = None
        self.client = None
        self.front = None           # the leader's dispatcher port, when named
        self.server = None
        self.agent_addr = None
        self.session_id = None
        self.seq = 0
        self.tasks: dict[str, str] = {}            # task id -> desired state
        self.pending: dict[str, dict] = {}         # task id -> latest status to send
        self.kick = asyncio.Event()
        self.period = 1.0
        self.registered = asyncio.Event()

    # joining ---------------------------------------------------------------
    async def join(self):
        g = self.g
        # The root CA from any manager, trusted only once it matches the token.
        anon = HttpClient(random.choice(g.managers), g.anon_ctx, tls.MANAGER_SERVER_NAME)
        conn = await anon._connect()
        r, w = conn.reader, conn.writer
        w.write("GET /v1/join/ca HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        _, _, ca_pem = await _read_message(r)
        w.close()
        if tokens.ca_digest(ca_pem) != g.digest:
            raise RuntimeError("CA does not match the join token")
        key = certs.new_key()
        csr = certs.make_csr(key).decode()
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        self.agent_addr = f"127.0.0.1:{port}"
        joiner = HttpClient(g.leader, g.ca_ctx, tls.MANAGER_SERVER_NAME)
        try:
            result = await joiner.request("POST", "/v1/join", {
                "token": g.token, "csr": csr, "hostname": self.hostname,
                "addr": f"127.0.0.1:{port}", "platform": {"os": "linux", "arch": "amd64"}})
        finally:
            joiner.close()
        cert_pem = result["cert"].encode()
        certs.verify_chain(cert_pem, ca_pem)
        self.node_id = result["node_id"]
        self.bundle = os.path.join(g.dir, f"{self.hostname}.pem")
        certs.write_node_bundle(self.bundle, certs.key_to_pem(key), cert_pem)
        ctx = tls.client_context(self.bundle, g.ca_path)
        self.client = HttpClient(g.leader, ctx, tls.MANAGER_SERVER_NAME)
        sctx = tls.server_context(self.bundle, g.ca_path, client_cert="required")
        self.server = await asyncio.start_server(self.serve, sock=sock, ssl=sctx, backlog=64,
                                                 ssl_handshake_timeout=10)

    # the listener ------------------------------------------------------------
    async def serve(self, reader, writer):
        self.g.push_connections += 1
        try:
            peer = writer.get_extra_info("ssl_object").getpeercert()
            ident = certs.identity_from_peercert(peer)
            allowed = (ident is not None and ident.role == certs.ROLE_MANAGER
                       and ident.cluster_id == self.g.cluster_id)
            while True:
                msg = await _read_message(reader)
                if msg is None:
                    break
                line, _, body = msg
                if not allowed:
                    writer.write(_reply(403, {"error": {"code": "forbidden"}}))
                elif line.startswith("POST /v1/assignments"):
                    writer.write(self.on_push(body))
                else:
                    writer.write(_reply(404, {"error": {"code": "not_found"}}))
        except (ConnectionError, OSError, asyncio.IncompleteReadError, ssl.SSLError,
                asyncio.CancelledError):
            pass
        finally:
            writer.close()

    def on_push(self, body: bytes) -> bytes:
        try:
            msg = orjson.loads(body)
        except orjson.JSONDecodeError:
            return _reply(400, {"error": {"code": "invalid_json"}})
        g = self.g
        g.pushes += 1
        if self.session_id is None or msg.get("session_id") != self.session_id:
            g.refused += 1
            return _reply(409, {"error": {"code": "session", "message": "unknown session"}})
        seq = msg.get("seq")
        if not isinstance(seq, int):
            return _reply(409, {"error": {"code": "invalid"}})
        kind = msg.get("type")
        if kind == "complete":
            self.apply(msg.get("tasks", []), complete=True)
            g.completes += 1
        elif kind == "incremental":
            if seq == self.seq:
                return _reply(200, {"seq": self.seq})
            if msg.get("applies_to") != self.seq:
                g.refused += 1
                return _reply(409, {"error": {"code": "gap", "message": "gap"}})
            self.apply(msg.get("tasks", []), complete=False, removed=msg.get("removed", []))
        else:
            return _reply(409, {"error": {"code": "invalid"}})
        self.seq = seq
        return _reply(200, {"seq": seq})

    def apply(self, tasks, complete, removed=()):
        now = time.time()
        g = self.g
        seen = set()
        for t in tasks:
            tid = t["id"]
            seen.add(tid)
            desired = t.get("desired_state")
            if tid not in g.first_push:
                g.first_push[tid] = now
            before = self.tasks.get(tid)
            self.tasks[tid] = desired
            if desired in ("shutdown", "remove"):
                if before is None or before not in ("shutdown", "remove"):
                    self.report(tid, "shutdown", "stopped")
            elif before is None and desired in ("ready", "running"):
                # accepted -> preparing -> ready -> starting -> running, at once;
                # like the reporter, only the latest state per task is sent.
                for state in ("accepted", "preparing", "ready", "starting"):
                    self.report(tid, state, state)
                if desired == "running":
                    self.report(tid, "running", "started")
        gone = [k for k in self.tasks if k not in seen] if complete else list(removed)
        for tid in gone:
            self.tasks.pop(tid, None)
            self.pending.pop(tid, None)

    def report(self, tid, state, message):
        self.pending[tid] = {"state": state, "message": message, "timestamp": time.time(),
                             "container_id": None if state in ("accepted", "preparing") else tid}
        self.kick.set()

    # session and reporter ---------------------------------------------------------
    def description(self):
        return {"hostname": self.hostname, "platform": {"os": "linux", "arch": "amd64"},
                "resources": {"cpus": 8.0, "memory": 32 << 30}, "version": "sim",
                "addr": self.agent_addr, "agent_addr": self.agent_addr}

    async def register(self):
        reply = await self.client.request("POST", "/v1/dispatcher/register", self.description())
        self.session_id = reply["session_id"]
        self.period = float(reply["heartbeat_period"])
        addr = reply.get("dispatcher_addr")
        if addr is None or self.front is None or self.front.addr != addr:
            if self.front is not None:
                self.front.close()
            self.front = HttpClient(addr, self.client.ctx, tls.MANAGER_SERVER_NAME) \
                if addr else None
        complete = reply.get("assignments") or {}
        self.apply(complete.get("tasks", []), complete=True)
        self.seq = int(complete.get("seq", 1))
        # after a registration every known status is sent again
        for tid in self.tasks:
            self.pending.setdefault(tid, {"state": "running", "message": "started",
                                          "timestamp": time.time(), "container_id": tid})
        self.g.registrations += 1
        self.registered.set()
        if self.pending:
            self.kick.set()

    async def dispatch(self, path, payload):
        """A heartbeat or status report: to the dispatcher port while it
        answers, else to the API (as the real agent does)."""
        front = self.front
        if front is not None:
            try:
                reply = await front.request("POST", path, payload)
                self.g.front_posts += 1
                return reply
            except HttpError as exc:
                if exc.code in ("session_invalid", "revoked"):
                    raise
                if exc.code != "misdirected" and self.front is front:
                    self.front = None
            except (ConnectionError, OSError, asyncio.TimeoutError, ssl.SSLError,
                    asyncio.IncompleteReadError):
                if self.front is front:
                    self.front = None
        return await self.client.request("POST", path, payload)

    async def session_loop(self):
        backoff = 0.1
        while True:
            try:
                if self.session_id is None:
                    await self.register()
                    backoff = 0.1
                await asyncio.sleep(self.period)
                t0 = time.time()
                reply = await self.dispatch("/v1/dispatcher/heartbeat",
                                            {"session_id": self.session_id})
                self.g.heartbeat_s.append(time.time() - t0)
                self.period = float(reply["heartbeat_period"])
                self.g.heartbeats += 1
            except HttpError as exc:
                self.g.errors["heartbeat"] = self.g.errors.get("heartbeat", 0) + 1
                if exc.code in ("session_invalid",):
                    self.session_id = None
                    continue
                await asyncio.sleep(backoff * random.uniform(0.8, 1.2))
                backoff = min(backoff * 2 + 0.1, 2.0)
            except (ConnectionError, OSError, asyncio.TimeoutError, ssl.SSLError,
                    asyncio.IncompleteReadError):
                self.g.errors["session_conn"] = self.g.errors.get("session_conn", 0) + 1
                await asyncio.sleep(backoff * random.uniform(0.8, 1.2))
                backoff = min(backoff * 2 + 0.1, 2.0)

    async def reporter_loop(self):
        while True:
            await self.kick.wait()
            await asyncio.sleep(GATHER)
            self.kick.clear()
            while self.pending and self.session_id is not None:
                batch = dict(list(self.pending.items())[:BATCH])
                session_id = self.session_id
                updates = [{"task_id": k, "status": v} for k, v in batch.items()]
                t0 = time.time()
                try:
                    await self.dispatch("/v1/dispatcher/status",
                                        {"session_id": session_id, "updates": updates})
                except HttpError as exc:
                    self.g.errors["status"] = self.g.errors.get("status", 0) + 1
                    if exc.code == "session_invalid" and self.session_id == session_id:
                        self.session_id = None
                    await asyncio.sleep(1.0)
                    break
                except (ConnectionError, OSError, asyncio.TimeoutError, ssl.SSLError,
                        asyncio.IncompleteReadError):
                    self.g.errors["status_conn"] = self.g.errors.get("status_conn", 0) + 1
                    await asyncio.sleep(1.0)
                    break
                now = time.time()
                self.g.status_posts += 1
                self.g.status_post_s.append(now - t0)
                for tid, st in batch.items():
                    if st["state"] == "running" and tid not in self.g.reported_running:
                        self.g.reported_running[tid] = now
                    if self.pending.get(tid) is st:
                        del self.pending[tid]


# -- a group of agents in one process --------------------------------------------------

class Group:
    def __init__(self, gid, count, token, managers, leader, cluster_id, workdir):
        self.gid = gid
        self.count = count
        self.token = token
        self.digest = tokens.parse_token(token).digest
        self.managers = managers
        self.leader = leader
        self.cluster_id = cluster_id
        self.dir = os.path.join(workdir, f"group{gid}")
        os.makedirs(self.dir, exist_ok=True)
        self.ca_path = None
        self.anon_ctx = tls.client_context(None, None)
        self.ca_ctx = None
        self.agents: list[SimAgent] = []
        self.first_push: dict[str, float] = {}
        self.reported_running: dict[str, float] = {}
        self.join_s: list[float] = []
        self.status_post_s: list[float] = []
        self.heartbeat_s: list[float] = []
        self.errors: dict[str, int] = {}
        self.pushes = self.completes = self.refused = 0
        self.push_connections = 0
        self.heartbeats = self.registrations = self.status_posts = self.front_posts = 0
        self.tasks_bg: list[asyncio.Task] = []

    async def join_all(self, concurrency):
        # The CA file every agent verifies managers against (the same PEM
        # each agent downloads and pins in join()).
        anon = HttpClient(self.managers[0], self.anon_ctx, tls.MANAGER_SERVER_NAME)
        conn = await anon._connect()
        r, w = conn.reader, conn.writer
        w.write(b"GET /v1/join/ca HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        _, _, ca_pem = await _read_message(r)
        w.close()
        self.ca_path = os.path.join(self.dir, "ca.pem")
        with open(self.ca_path, "wb") as f:
            f.write(ca_pem)
        self.ca_ctx = tls.client_context(None, self.ca_path)
        sem = asyncio.Semaphore(concurrency)

        async def one(i):
            a = SimAgent(self, i)
            async with sem:
                t0 = time.monotonic()
                for attempt in range(5):
                    try:
                        await a.join()
                        break
                    except Exception as exc:
                        self.errors["join"] = self.errors.get("join", 0) + 1
                        if attempt == 4:
                            raise RuntimeError(f"join failed: {exc!r}") from exc
                        await asyncio.sleep(0.5)
                self.join_s.append(time.monotonic() - t0)
            return a

        t0 = time.monotonic()
        self.agents = await asyncio.gather(*(one(i) for i in range(self.count)))
        return time.monotonic() - t0

    async def register_all(self, concurrency):
        sem = asyncio.Semaphore(concurrency)

        async def one(a):
            async with sem:
                for _ in range(20):
                    try:
                        await a.register()
                        break
                    except Exception:
                        self.errors["register"] = self.errors.get("register", 0) + 1
                        await asyncio.sleep(0.5)
            # Like the real agent, each one heartbeats a period after its
            # own registration (not after everyone's: the first heartbeats
            # of a thousand agents would all come in the same second).
            self.tasks_bg.append(asyncio.ensure_future(a.session_loop()))
            self.tasks_bg.append(asyncio.ensure_future(a.reporter_loop()))

        t0 = time.monotonic()
        await asyncio.gather(*(one(a) for a in self.agents))
        return time.monotonic() - t0

    async def connect_all(self, concurrency):
        """Open each agent's connections to the dispatcher port: one for its
        heartbeats, one for its reports. A running agent holds both; without
        this the first reports of a run would pay a TLS handshake each at
        the leader."""
        sem = asyncio.Semaphore(concurrency)

        async def one(a):
            async with sem:
                front = a.front
                if front is None:
                    return
                try:
                    await front.prepare(2)
                    # A heartbeat on each, as a running agent's heartbeats and
                    # reports have sent: the dispatcher port closes a
                    # connection that has carried no request within 10 s.
                    await asyncio.gather(*(
                        front.request("POST", "/v1/dispatcher/heartbeat",
                                      {"session_id": a.session_id}) for _ in range(2)))
                except (ConnectionError, OSError, asyncio.TimeoutError, ssl.SSLError,
                        HttpError):
                    self.errors["front_connect"] = self.errors.get("front_connect", 0) + 1

        t0 = time.monotonic()
        await asyncio.gather(*(one(a) for a in self.agents))
        return time.monotonic() - t0

    def front_connects(self):
        return sum(a.front.connects for a in self.agents if a.front)

    def stats(self):
        return {"gid": self.gid, "agents": len(self.agents), "pushes": self.pushes,
                "push_connections": self.push_connections,
                "completes": self.completes, "refused": self.refused,
                "heartbeats": self.heartbeats, "registrations": self.registrations,
                "status_posts": self.status_posts, "front_posts": self.front_posts,
                "errors": dict(self.errors),
                "tasks_known": sum(len(a.tasks) for a in self.agents),
                "running_reported": len(self.reported_running),
                "client_connects": sum(a.client.connects for a in self.agents if a.client),
                "front_connects": self.front_connects()}


def run_group(gid, count, token, managers, leader, cluster_id, workdir, conn,
              join_concurrency=JOIN_CONCURRENCY):
    """Process entry point: obey commands from ``conn`` until "stop"."""
    uvloop.run(_main(gid, count, token, managers, leader, cluster_id, workdir, conn,
                     join_concurrency))


async def _main(gid, count, token, managers, leader, cluster_id, workdir, conn, join_concurrency):
    loop = asyncio.get_running_loop()
    g = Group(gid, count, token, managers, leader, cluster_id, workdir)
    while True:
        cmd = await loop.run_in_executor(None, conn.recv)
        try:
            if cmd == "join":
                conn.send({"join_s": await g.join_all(join_concurrency),
                           "per_join_s": g.join_s})
            elif cmd == "register":
                conn.send({"register_s": await g.register_all(64)})
            elif cmd == "connect":
                conn.send({"connect_s": await g.connect_all(16),
                           "front_connects": g.front_connects()})
            elif cmd == "stats":
                conn.send(g.stats())
            elif cmd == "times":
                conn.send({"first_push": g.first_push, "reported_running": g.reported_running,
                           "status_post_s": g.status_post_s, "heartbeat_s": g.heartbeat_s,
                           "stats": g.stats(),
                           "cpu_s": sum(os.times()[:2])})
            elif cmd == "stop":
                for t in g.tasks_bg:
                    t.cancel()
                conn.send("stopped")
                return
        except Exception as exc:
            conn.send({"error": repr(exc)})
