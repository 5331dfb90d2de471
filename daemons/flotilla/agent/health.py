"""HTTP and TCP healthchecks, probed by the agent.

A spec healthcheck of the ``http`` or ``tcp`` form is not handed to the
engine: the container is created with the engine's healthcheck disabled
(so an image ``HEALTHCHECK`` does not run either), and the agent probes the
container's own address on its network at the port inside the container
(not a published port). The node can reach its bridge network.

- http: ``GET http://<address>:<port><path>``; healthy when the status code
  is one of ``status`` (default 200-399); redirects are not followed.
- tcp: a connection to ``<address>:<port>`` is accepted.

Results follow Docker's rules, so a probed check gates a task exactly like
an engine one: the first probe runs one ``interval`` after the container
started and then ``interval`` after each probe ends; a probe that takes longer than
``timeout`` fails; failures during ``start_period`` do not count until the
first success; the first success makes the container ``healthy``;
``retries`` consecutive failures (0 means 3, as for the engine) make it
``unhealthy``, and a later success healthy again.

One thread runs the probes of every task of the node (an asyncio loop, so a
hanging probe never delays another); the worker starts and stops it with
itself. Controllers ``watch`` a task while its container runs and
``unwatch`` it when the container stops or the task ends; a change of
status calls ``on_change(task_id)``, which has the worker sync that task as
it does for the engine's own ``health_status`` events.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
import time
import urllib.parse
from typing import Callable

from ..common.component import Component

log = logging.getLogger(__name__)

DEFAULT_RETRIES = 3
MAX_STATUS_LINE = 8192
_PATH_SAFE = "/%?&=+:@!$'()*,;~-._[]"


@dataclasses.dataclass(frozen=True)
class Health:
    status: str                  # starting, healthy or unhealthy
    detail: str | None = None    # the last failure, e.g. "HTTP 503 from :80/health"


def accepts(ranges: list, code: int) -> bool:
    """``code`` is within one of the canonical status ranges ("200", "200-299")."""
    for item in ranges:
        lo, _, hi = str(item).partition("-")
        if int(lo) <= code <= int(hi or lo):
            return True
    return False


class _Check:
    """One task's probed healthcheck and its results so far."""

    def __init__(self, task_id: str, container_id: str, address: str | None, spec: dict,
                 started_at: float):
        self.task_id = task_id
        self.container_id = container_id
        self.address = address
        self.spec = spec
        self.started_at = started_at
        self.interval = float(spec.get("interval") or 30.0)
        self.timeout = float(spec.get("timeout") or 30.0)
        self.retries = int(spec.get("retries") or DEFAULT_RETRIES)
        self.start_period = float(spec.get("start_period") or 0.0)
        self.status = "starting"
        self.detail: str | None = None
        self.streak = 0
        self.job: asyncio.Task | None = None     # owned by the loop thread

    def same(self, container_id: str, address: str | None, spec: dict) -> bool:
        return (self.container_id, self.address, self.spec) == (container_id, address, spec)

    def record(self, ok: bool, detail: str | None, now: float) -> bool:
        """Count one probe result; True if the status changed."""
        before = self.status
        if ok:
            self.streak = 0
            self.status = "healthy"
        else:
            self.detail = detail
            if not (self.status == "starting" and now - self.started_at < self.start_period):
                self.streak += 1
                if self.streak >= self.retries:
                    self.status = "unhealthy"
        return self.status != before


async def probe_tcp(host: str, port: int, timeout: float) -> tuple[bool, str | None]:
    where = f"TCP :{port}"
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except asyncio.TimeoutError:
        return False, f"{where} timed out after {timeout:g}s"
    except ConnectionRefusedError:
        return False, f"{where} refused"
    except OSError as exc:
        return False, f"{where} failed: {exc.strerror or exc}"
    writer.close()
    return True, None


async def probe_http(host: str, port: int, path: str, timeout: float,
                     status: list) -> tuple[bool, str | None]:
    where = f":{port}{path}"
    target = urllib.parse.quote(path, safe=_PATH_SAFE)
    netloc = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    async def fetch() -> bytes:
        reader, writer = await asyncio.open_connection(host, port, limit=MAX_STATUS_LINE)
        try:
            writer.write(f"GET {target} HTTP/1.0\r\nHost: {netloc}\r\n"
                         "User-Agent: flotilla-healthcheck\r\nAccept: */*\r\n"
                         "Connection: close\r\n\r\n".encode("ascii"))
            await writer.drain()
            return await reader.readline()
        finally:
            writer.close()

    try:
        line = await asyncio.wait_for(fetch(), timeout)
    except asyncio.TimeoutError:
        return False, f"HTTP {where} timed out after {timeout:g}s"
    except ConnectionRefusedError:
        return False, f"HTTP {where} refused"
    except (OSError, ValueError, asyncio.IncompleteReadError) as exc:
        return False, f"HTTP {where} failed: {getattr(exc, 'strerror', None) or exc}"
    parts = line.split(None, 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
        return False, f"HTTP {where}: no HTTP answer"
    code = int(parts[1])
    if accepts(status, code):
        return True, None
    return False, f"HTTP {code} from {where}"


async def probe(check: _Check) -> tuple[bool, str | None]:
    """One probe of ``check``: (success, what failed)."""
    if not check.address:
        return False, "the container has no IP address"
    if check.spec.get("http"):
        http = check.spec["http"]
        return await probe_http(check.address, int(http["port"]), http.get("path") or "/",
                                check.timeout, http.get("status") or ["200-399"])
    return await probe_tcp(check.address, int(check.spec["tcp"]["port"]), check.timeout)


class Prober(Component):
    """Runs the probed healthchecks of one node's tasks."""

    name = "agent-prober"

    def __init__(self, on_change: Callable[[str], None]):
        super().__init__()
        self._on_change = on_change
        self._checks_lock = threading.Lock()
        self._checks: dict[str, _Check] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wakeup: asyncio.Event | None = None

    # -- controllers (any thread) ------------------------------------------------------
    def watch(self, task_id: str, container_id: str, address: str | None, spec: dict,
              started_at: float | None = None) -> Health:
        """Probe this task's container (kept as is if already probed) and
        return its health so far."""
        with self._checks_lock:
            check = self._checks.get(task_id)
            if check is not None and check.same(container_id, address, spec):
                return Health(check.status, check.detail)
            old = check
            check = _Check(task_id, container_id, address, spec,
                           time.time() if started_at is None else started_at)
            self._checks[task_id] = check
            loop = self._loop
        if loop is not None:
            self._call(loop, self._replace, old, check)
        return Health(check.status, check.detail)

    def unwatch(self, task_id: str) -> None:
        with self._checks_lock:
            check = self._checks.pop(task_id, None)
            loop = self._loop
        if check is not None and loop is not None:
            self._call(loop, self._replace, check, None)

    def health(self, task_id: str) -> Health | None:
        with self._checks_lock:
            check = self._checks.get(task_id)
            return Health(check.status, check.detail) if check is not None else None

    def watched(self) -> list[str]:
        with self._checks_lock:
            return list(self._checks)

    # -- the loop --------------------------------------------------------------------
    def run(self) -> None:
        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(self._serve(loop))
        finally:
            with self._checks_lock:
                self._loop = None
                self._checks.clear()
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _serve(self, loop: asyncio.AbstractEventLoop) -> None:
        self._wakeup = asyncio.Event()
        with self._checks_lock:
            self._loop = loop
            checks = list(self._checks.values())
        for check in checks:
            self._replace(None, check)
        if not self.stopping.is_set():
            await self._wakeup.wait()
        jobs = [t for t in asyncio.all_tasks(loop) if t is not asyncio.current_task()]
        for job in jobs:
            job.cancel()
        await asyncio.gather(*jobs, return_exceptions=True)

    def wake(self) -> None:
        with self._checks_lock:
            loop = self._loop
        if loop is not None and self._wakeup is not None:
            self._call(loop, self._wakeup.set)

    @staticmethod
    def _call(loop: asyncio.AbstractEventLoop, fn: Callable[..., object], *args: object) -> None:
        try:
            loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:        # the loop has been closed: the prober stopped
            pass

    def _replace(self, old: _Check | None, new: _Check | None) -> None:
        """On the loop thread: stop probing ``old``, start probing ``new``."""
        if old is not None and old.job is not None:
            old.job.cancel()
        if new is not None and new.job is None:
            with self._checks_lock:
                current = self._checks.get(new.task_id) is new
            if current:
                new.job = asyncio.get_running_loop().create_task(self._probe_loop(new))

    async def _probe_loop(self, check: _Check) -> None:
        # the first probe one interval after the container started, as the
        # engine does (an adopted container is probed one interval from now)
        first = check.started_at + check.interval - time.time()
        delay = first if 0 < first <= check.interval else check.interval
        while True:
            await asyncio.sleep(delay)
            try:
                ok, detail = await probe(check)
            except Exception as exc:     # a bug must not stop the probes
                log.warning("task %s: healthcheck probe failed: %s", check.task_id, exc)
                ok, detail = False, f"probe error: {exc}"
            with self._checks_lock:
                if self._checks.get(check.task_id) is not check:
                    return
                changed = check.record(ok, detail, time.time())
                status = check.status
            if changed:
                log.info("task %s: container %s%s", check.task_id, status,
                         f" ({detail})" if detail and status != "healthy" else "")
                try:
                    self._on_change(check.task_id)
                except Exception:
                    log.exception("task %s: reporting a health change failed", check.task_id)
            delay = check.interval      # from the end of a probe, as the engine does
