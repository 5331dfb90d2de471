"""Service logs: the leader asks the agents that ran a service's tasks.

For every task that has a node and a container (finished ones too, while
their container exists), the manager calls the agent listener of that node
(``GET /v1/containers/<id>/logs``) with its own node certificate, the same
mutual TLS the dispatcher pushes assignments with. Nodes are asked
concurrently, each with a short deadline; a node that cannot be reached is
reported, never an error for the whole request. Containers that no longer
exist are skipped.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import threading
import time
import urllib.parse

import urllib3

from ..common import admission, tls

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 2.0
DEADLINE = 5.0          # for a whole request, every node included
MAX_WORKERS = 16


class NodeUnreachable(Exception):
    pass


class LogCollector:
    def __init__(self, bundle_path: str, ca_path: str):
        self._ctx = tls.ReloadingContext(
            lambda: tls.client_context(bundle_path, ca_path, server_name_check=True),
            [bundle_path, ca_path], check_interval=1.0)
        self._generation = -1
        self._lock = threading.Lock()
        self._pools: dict[str, urllib3.HTTPSConnectionPool] = {}

    def _pool(self, node_id: str, addr: str) -> urllib3.HTTPSConnectionPool:
        ctx = self._ctx.get()
        key = f"{node_id}@{addr}"
        with self._lock:
            if self._ctx.generation != self._generation:
                self._pools.clear()
                self._generation = self._ctx.generation
            pool = self._pools.get(key)
            if pool is None:
                host, port = addr.rsplit(":", 1)
                # The agent's certificate names its node id: the address
                # alone is not trusted.
                pool = urllib3.HTTPSConnectionPool(
                    host.strip("[]"), int(port), maxsize=4, ssl_context=ctx,
                    server_hostname=node_id, assert_hostname=node_id,
                    timeout=urllib3.Timeout(connect=CONNECT_TIMEOUT, read=DEADLINE),
                    retries=False)
                self._pools[key] = pool
            return pool

    def _fetch_node(self, node_id: str, addr: str, tasks: list[dict], query: dict,
                    deadline: float) -> list[tuple[dict, dict]]:
        """(task, agent answer) for each task whose container still exists."""
        pool = self._pool(node_id, addr)
        out = []
        qs = urllib.parse.urlencode({k: v for k, v in query.items() if v is not None})
        for task in tasks:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise NodeUnreachable("timed out")
            cid = urllib.parse.quote(task["status"]["container_id"], safe="")
            try:
                resp = pool.request(
                    "GET", f"/v1/containers/{cid}/logs" + (f"?{qs}" if qs else ""),
                    timeout=urllib3.Timeout(connect=min(CONNECT_TIMEOUT, remaining), read=remaining))
            except Exception as exc:
                raise NodeUnreachable(_reason(exc)) from None
            if resp.status == 404:
                continue
            try:
                body = json.loads(resp.data)
            except ValueError:
                body = None
            if resp.status != 200 or not isinstance(body, dict):
                message = ((body or {}).get("error") or {}).get("message") \
                    if isinstance(body, dict) else None
                raise NodeUnreachable(f"agent answered HTTP {resp.status}"
                                      + (f": {message}" if message else ""))
            out.append((task, body))
        return out

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
        nodes = {nid: store.get("node", nid) for nid in by_node}
        query = {"tail": tail, "since": repr(float(since)) if since else None}
        deadline = time.monotonic() + DEADLINE
        pool = concurrent.futures.ThreadPoolExecutor(min(MAX_WORKERS, len(by_node)), "service-logs")
        futures = {}
        try:
            for nid, node_tasks in sorted(by_node.items()):
                node = nodes[nid]
                if node is None:
                    unreachable.append({"node_id": nid, "node": None,
                                        "error": "the node is no longer in the cluster"})
                    continue
                if not node.get("agent_addr"):
                    unreachable.append({"node_id": nid, "node": node.get("hostname"),
                                        "error": "the node's agent has not registered an address"})
                    continue
                futures[pool.submit(self._fetch_node, nid, node["agent_addr"], node_tasks,
                                    query, deadline)] = nid
            with admission.blocking():
                done, pending = concurrent.futures.wait(
                    futures, timeout=max(0.0, deadline - time.monotonic()) + 0.5)
            for fut, nid in futures.items():
                hostname = nodes[nid].get("hostname")
                if fut in pending:
                    unreachable.append({"node_id": nid, "node": hostname, "error": "timed out"})
                    continue
                try:
                    answers = fut.result()
                except NodeUnreachable as exc:
                    unreachable.append({"node_id": nid, "node": hostname, "error": str(exc)})
                    continue
                except Exception as exc:  # a bug must not cost the other nodes' logs
                    log.warning("reading logs from %s failed", nid, exc_info=True)
                    unreachable.append({"node_id": nid, "node": hostname,
                                        "error": f"internal error ({exc.__class__.__name__})"})
                    continue
                for task, body in answers:
                    for e in body.get("entries") or ():
                        entries.append({
                            "task_id": task["id"],
                            "service": task.get("service_name"),
                            "slot": task.get("slot"),
                            "node_id": nid,
                            "node": hostname,
                            "time": e.get("time"),
                            "timestamp": e.get("timestamp"),
                            "stream": e.get("stream"),
                            "line": e.get("line"),
                        })
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
        # Stable: the lines of one container keep their order.
        entries.sort(key=lambda e: e["timestamp"] or "")
        unreachable.sort(key=lambda u: (u["node"] or "", u["node_id"]))
        return {"entries": entries, "unreachable": unreachable}


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
