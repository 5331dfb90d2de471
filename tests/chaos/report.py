"""The chaos report: faults injected by kind, writes acknowledged, violations;
printed and written as JSON."""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import asdict, dataclass, field


@dataclass
class Report:
    seed: int
    faults_planned: int
    converge_timeout: float
    base: str
    setup_seconds: float = 0.0
    duration_seconds: float = 0.0
    aborted: str = ""
    faults: list[dict] = field(default_factory=list)
    writes: dict = field(default_factory=dict)
    tracebacks: dict = field(default_factory=dict)
    excerpts: list[dict] = field(default_factory=list)

    def add_fault(self, fault, write_counts: dict) -> None:
        item = asdict(fault)
        item.pop("injected_at")
        item.pop("healed_at")
        item["writes_so_far"] = dict(write_counts)
        self.faults.append(item)

    def set_writes(self, writes) -> None:
        counts = Counter(w.outcome for w in writes)
        by_kind = Counter(f"{w.kind}_{w.outcome}" for w in writes)
        self.writes = {"attempted": len(writes), "acknowledged": counts["acknowledged"],
                       "unknown": counts["unknown"], "refused": counts["refused"],
                       "by_kind": dict(sorted(by_kind.items())),
                       "refusals": sorted({w.error for w in writes if w.outcome == "refused"})[:20]}

    def add_excerpt(self, node: str, text: str) -> None:
        if len(self.excerpts) < 20:
            self.excerpts.append({"node": node, "text": text})

    # -- summary ---------------------------------------------------------------------
    @property
    def violations(self) -> list[str]:
        return [f"fault #{f['number']} ({f['kind']}): {v}" for f in self.faults
                for v in f["violations"]]

    def summary(self) -> dict:
        times = [f["converged_after"] for f in self.faults if f["converged_after"] is not None]
        return {
            "seed": self.seed,
            "faults_planned": self.faults_planned,
            "faults_injected": len(self.faults),
            "faults_by_kind": dict(sorted(Counter(f["kind"] for f in self.faults).items())),
            "writes_acknowledged": self.writes.get("acknowledged", 0),
            "writes_unknown": self.writes.get("unknown", 0),
            "writes_refused": self.writes.get("refused", 0),
            "violations": len(self.violations),
            "convergence_seconds": {"max": max(times, default=None),
                                    "mean": round(sum(times) / len(times), 2) if times else None},
            "workload_settle_seconds_max": max(
                (f["write_settled_after"] for f in self.faults), default=None),
            "setup_seconds": self.setup_seconds,
            "duration_seconds": self.duration_seconds,
            "aborted": self.aborted,
            "node_tracebacks": self.tracebacks,
        }

    def text(self) -> str:
        s = self.summary()
        lines = ["", "==== chaos report ====",
                 f"seed {s['seed']}: {s['faults_injected']}/{s['faults_planned']} faults injected "
                 f"in {s['duration_seconds']}s (setup {s['setup_seconds']}s)",
                 "faults by kind: " + ", ".join(f"{k} {v}" for k, v in s["faults_by_kind"].items()),
                 f"writes: {s['writes_acknowledged']} acknowledged, {s['writes_unknown']} unknown,"
                 f" {s['writes_refused']} refused",
                 f"convergence after heal: max {s['convergence_seconds']['max']}s, "
                 f"mean {s['convergence_seconds']['mean']}s (workload idle at most "
                 f"{s['workload_settle_seconds_max']}s after a heal)",
                 f"violations: {s['violations']}"]
        lines += [f"  {v}" for v in self.violations]
        if s["node_tracebacks"]:
            lines.append(f"tracebacks in node logs: {s['node_tracebacks']}")
        if s["aborted"]:
            lines.append(f"ABORTED: {s['aborted']}")
        return "\n".join(lines)

    def write(self, path: str) -> None:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        data = {"summary": self.summary(), "violations": self.violations,
                "faults": self.faults, "writes": self.writes, "excerpts": self.excerpts}
        with open(path + ".tmp", "w") as f:
            json.dump(data, f, indent=2)
        os.replace(path + ".tmp", path)
