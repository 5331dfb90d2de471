"""One chaos run: build the cluster on namespaces, run the workload, inject
faults one after another, check the invariants after every heal, write the
report."""

from __future__ import annotations

import os
import re
import time

from flotilla.common.httpclient import Client
from tests.helpers.netns import Fabric
from tests.helpers.nscluster import NsCluster, clean_leftovers

from .checker import Checker, bad_answers, duplicate_slots, lost_writes
from .nemesis import Nemesis
from .report import Report
from .workload import IMAGE, Workload

MANAGERS = {"m1": 11, "m2": 12, "m3": 13}
AGENTS = {"a1": 21, "a2": 22, "a3": 23}
CRASH_MARK = re.compile(r"manager exited with status|Traceback \(most recent call last\)")


def log(msg: str) -> None:
    print(f"[chaos {time.strftime('%H:%M:%S')}] {msg}", flush=True)


class ChaosRun:
    def __init__(self, base: str, seed: int, faults: int, results_path: str,
                 converge_timeout: float = 30.0, kinds: tuple[str, ...] | None = None):
        self.base = base
        self.kinds = kinds
        self.seed = seed
        self.faults = faults
        self.results_path = results_path
        self.converge_timeout = converge_timeout
        self.fabric = Fabric()
        self.cluster: NsCluster | None = None
        self.report = Report(seed=seed, faults_planned=faults,
                             converge_timeout=converge_timeout, base=base)
        self._log_offsets: dict[str, int] = {}
        self._answers_checked = 0

    # -- building ------------------------------------------------------------------
    def build(self) -> None:
        clean_leftovers(self.base, self.fabric)
        os.makedirs(self.base, exist_ok=True)
        self.cluster = NsCluster(self.base, self.fabric)
        self.fabric.create()
        for name, octet in {**MANAGERS, **AGENTS}.items():
            self.cluster.add_host(name, octet, images=(IMAGE,))
        log(f"hosts up: {self.fabric.hosts}")
        self.cluster.init("m1")
        for name in list(MANAGERS)[1:]:
            self.cluster.join(name, "manager")
        for name in AGENTS:
            self.cluster.join(name, "worker")
        log("cluster up: 3 managers, 3 agents")

    def admin(self) -> Client:
        addrs = [self.cluster.nodes[m].addr for m in MANAGERS]
        return Client(addrs, tls_dir=self.cluster.admin_dir, timeout=5, retry_for=15)

    # -- the run ---------------------------------------------------------------------
    def run(self) -> Report:
        started = time.monotonic()
        try:
            self.build()
            self.report.setup_seconds = round(time.monotonic() - started, 1)
            self._run_faults()
        except BaseException as exc:
            self.report.aborted = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            self.report.duration_seconds = round(time.monotonic() - started, 1)
            try:
                self._collect_log_marks()
            finally:
                self.report.write(self.results_path)
                if self.cluster is not None:
                    self.cluster.teardown()
                else:
                    self.fabric.destroy()
        return self.report

    def _run_faults(self) -> None:
        admin = self.admin()
        workload = Workload(admin, self.seed)
        checker = Checker(self.cluster, self.admin(), self.converge_timeout)
        nemesis = Nemesis(self.cluster, self.seed, list(MANAGERS), list(AGENTS))
        workload.start()
        try:
            plan = nemesis.plan(self.faults, *([self.kinds] if self.kinds else []))
            for number, kind in enumerate(plan, 1):
                time.sleep(nemesis.quiet_time())      # the schedule, not a synchronisation
                leader = self.cluster.leader()
                fault, heal = nemesis.inject(kind, leader.name if leader else None)
                log(f"inject {fault.describe()} for {fault.hold}s")
                time.sleep(fault.hold)                 # the fault's duration
                heal()
                fault.healed_at = time.monotonic()
                workload.pause()
                self._check(fault, checker, workload)
                self.report.add_fault(fault, workload.counts())
                log(f"healed #{fault.number}: converged in "
                    f"{fault.converged_after if fault.converged_after is not None else 'NEVER'}"
                    f"s, violations {len(fault.violations)}")
                for v in fault.violations:
                    log(f"  VIOLATION {v}")
                if number < len(plan):      # after the last check, no unchecked writes
                    workload.resume()
        finally:
            workload.stop()
            self.report.set_writes(workload.snapshot())

    # -- invariants ----------------------------------------------------------------
    def _check(self, fault, checker: Checker, workload: Workload) -> None:
        # The desired state is fixed from the moment the workload is idle (it
        # is by now); a write in flight at the heal may have landed after it.
        since = time.monotonic()
        fault.write_settled_after = round(since - fault.healed_at, 2)
        elapsed, divergence, view = checker.wait_converged(since)
        if elapsed is None:
            fault.violations.append(
                f"not converged {self.converge_timeout}s after the heal: " + "; ".join(divergence))
        else:
            fault.converged_after = round(elapsed + fault.write_settled_after, 2)
        containers = view[2]
        fault.violations += duplicate_slots(containers)
        try:
            stored = checker.admin.get("/v1/services")
        except Exception as exc:
            fault.violations.append(f"cannot read services to check writes: {exc}")
        else:
            fault.violations += lost_writes(workload.snapshot(), stored)
        writes = workload.snapshot()
        fault.violations += bad_answers(writes[self._answers_checked:])
        self._answers_checked = len(writes)
        fault.violations += self._crashes()

    def _crashes(self) -> list[str]:
        out = []
        for name, node in self.cluster.nodes.items():
            if not node.running:
                out.append(f"node {name} is not running (exit {node.proc.returncode})")
        for name, lines in self._new_log_marks().items():
            crashes = [l for l in lines if "manager exited" in l]
            if crashes:
                out.append(f"{name}: {crashes[0].strip()}")
            tracebacks = [l for l in lines if "Traceback" in l]
            if tracebacks:
                self.report.tracebacks[name] = self.report.tracebacks.get(name, 0) + len(tracebacks)
        return out

    def _new_log_marks(self) -> dict[str, list[str]]:
        marks = {}
        for name, node in self.cluster.nodes.items():
            try:
                with open(node.log_path, errors="replace") as f:
                    f.seek(self._log_offsets.get(name, 0))
                    text = f.read()
                    self._log_offsets[name] = f.tell()
            except OSError:
                continue
            lines = text.splitlines()
            found = []
            for i, line in enumerate(lines):
                if CRASH_MARK.search(line):
                    found.append(line)
                    if "Traceback" in line:
                        excerpt = "\n".join(lines[i:i + 40])
                        self.report.add_excerpt(name, excerpt)
            if found:
                marks[name] = found
        return marks

    def _collect_log_marks(self) -> None:
        if self.cluster is not None:
            self._new_log_marks()
