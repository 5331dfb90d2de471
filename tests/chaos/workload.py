"""The client workload: creates, scales and updates services through any
manager while faults are injected, and records every write.

A write is *acknowledged* when the API answered it with success; the answer
carries the service as stored (spec and spec version). A write that fails
with a definite refusal (4xx) changed nothing. Any other failure (timeouts,
no manager reachable) leaves the outcome unknown: the write may or may not
have been applied, and the checker accepts either.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field

from flotilla.common.httpclient import ApiError, Unreachable

IMAGE = "flotilla-test/busybox:1"
MAX_SERVICES = 5
MAX_REPLICAS = 3


def service_spec(name: str, replicas: int, generation: int) -> dict:
    return {
        "name": name,
        "replicas": replicas,
        "task": {
            "container": {"image": IMAGE, "command": ["sleep", "86400"],
                          "env": [f"CHAOS_GENERATION={generation}"], "init": True,
                          "stop_grace_period": "2s"},
            "restart": {"condition": "any", "delay": "1s"},
        },
        "update": {"parallelism": 2, "failure_action": "continue", "monitor": "1s"},
    }


def generation_of(spec: dict) -> int | None:
    for item in spec["task"]["container"].get("env") or ():
        key, _, value = item.partition("=")
        if key == "CHAOS_GENERATION":
            return int(value)
    return None


@dataclass
class Write:
    kind: str                 # create | scale | update | bad (must be refused)
    service: str              # name
    replicas: int             # intended replica count
    generation: int           # intended CHAOS_GENERATION
    outcome: str = "pending"  # acknowledged | refused | unknown
    service_id: str | None = None
    spec_version: int | None = None
    error: str = ""
    status: int | None = None                 # HTTP status of a failed write
    request: tuple | None = None              # method, path, body of a bad write
    at: float = field(default_factory=time.time)


class Workload:
    """One client thread; ``pause()`` holds it between writes so that the
    checker sees a fixed desired state."""

    def __init__(self, client, seed: int):
        self.client = client
        self.rng = random.Random(f"workload-{seed}")
        self.writes: list[Write] = []
        self.known: dict[str, dict] = {}    # name -> {"replicas", "generation"} as last sent
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._running = threading.Event()
        self._running.set()
        self._idle = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="chaos-workload", daemon=True)
        self._counter = 0

    # -- control -----------------------------------------------------------------
    def start(self):
        self._thread.start()

    def pause(self, timeout: float = 120.0):
        self._running.clear()
        if not self._idle.wait(timeout):
            raise AssertionError(f"the workload did not finish its write within {timeout}s")

    def resume(self):
        self._idle.clear()
        self._running.set()

    def stop(self):
        self._stop.set()
        self._running.set()
        self._thread.join(120)

    # -- the loop ------------------------------------------------------------------
    def _loop(self):
        while not self._stop.is_set():
            if not self._running.is_set():
                self._idle.set()
                self._running.wait()
                continue
            self._one()
            self._stop.wait(self.rng.uniform(0.2, 0.8))
        self._idle.set()

    def _one(self):
        names = sorted(self.known)
        choice = self.rng.random()
        if names and choice > 0.92:
            self._bad(self.rng.choice(names))
        elif not names or (len(names) < MAX_SERVICES and choice < 0.15):
            self._counter += 1
            name = f"chaos-{self._counter}"
            self._write(Write("create", name, self.rng.randint(1, MAX_REPLICAS), 1))
        elif choice < 0.6:
            name = self.rng.choice(names)
            cur = self.known[name]
            self._write(Write("scale", name, self.rng.randint(0, MAX_REPLICAS), cur["generation"]))
        else:
            name = self.rng.choice(names)
            cur = self.known[name]
            self._write(Write("update", name, cur["replicas"], cur["generation"] + 1))

    def _bad(self, name: str):
        """A write the API must refuse (4xx), never acknowledge or fail on."""
        spec = service_spec(name, 1, self.known[name]["generation"])
        fresh = service_spec(f"chaos-bad-{self._counter}", 1, 1)
        cases = [
            ("POST", "/v1/services", dict(fresh, name="no spaces allowed")),
            ("POST", "/v1/services", dict(fresh, replicas=-1)),
            ("POST", "/v1/services", dict(fresh, bogus=True)),
            ("POST", "/v1/services", spec),                                  # name taken
            ("POST", "/v1/services", {**fresh, "task": {"container": {"image": ""}}}),
            ("POST", "/v1/services", {**fresh, "task": {"container": {
                "image": IMAGE, "env": ["NO_EQUALS_SIGN"]}}}),
            ("PATCH", f"/v1/services/{name}", {"replicas": "many"}),
            ("PATCH", f"/v1/services/{name}", {"spec": dict(spec, mode="global", replicas=None)}),
            ("PATCH", f"/v1/services/{name}", {"spec": dict(spec, name=f"{name}-renamed")}),
            ("PATCH", "/v1/services/chaos-does-not-exist", {"replicas": 1}),
            ("PATCH", f"/v1/services/{name}", [1, 2, 3]),
        ]
        method, path, body = self.rng.choice(cases)
        self._write(Write("bad", name, 0, 0, request=(method, path, body)))

    def _write(self, w: Write):
        with self._lock:
            self.writes.append(w)
        try:
            if w.kind == "bad":
                body = self.client.request(w.request[0], w.request[1], json=w.request[2])
            elif w.kind == "create":
                body = self.client.post("/v1/services", service_spec(w.service, w.replicas, 1))
            elif w.kind == "scale":
                body = self.client.patch(f"/v1/services/{w.service}", {"replicas": w.replicas})
            else:
                spec = service_spec(w.service, w.replicas, w.generation)
                body = self.client.patch(f"/v1/services/{w.service}", {"spec": spec})
        except Unreachable as exc:
            w.outcome, w.error = "unknown", str(exc)
        except ApiError as exc:
            if 400 <= exc.status < 500 and exc.status not in (408, 429):
                w.outcome = "refused"
            else:
                w.outcome = "unknown"
            w.status = exc.status
            w.error = f"{exc.status} {exc.code}: {exc}"
        except Exception as exc:  # a transport error the client did not classify
            w.outcome, w.error = "unknown", repr(exc)
        else:
            w.outcome = "acknowledged"
            if w.kind == "bad":
                return
            w.service_id = body["id"]
            w.spec_version = body["spec_version"]
            # What the store said it now holds, not what we asked for.
            w.replicas = body["spec"]["replicas"]
            w.generation = generation_of(body["spec"])
        if w.kind != "bad" and w.outcome != "refused" \
                and (w.kind != "create" or w.outcome == "acknowledged"):
            self.known[w.service] = {"replicas": w.replicas, "generation": w.generation}

    # -- results -------------------------------------------------------------------
    def snapshot(self) -> list[Write]:
        with self._lock:
            return list(self.writes)

    def counts(self) -> dict:
        out: dict[str, int] = {}
        for w in self.snapshot():
            out[w.outcome] = out.get(w.outcome, 0) + 1
            out[f"{w.kind}_{w.outcome}"] = out.get(f"{w.kind}_{w.outcome}", 0) + 1
        return out
