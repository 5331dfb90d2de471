"""How long the Raft thread spends on cutting the journal after a snapshot.

Appends entries the way a busy leader does (a sync every 20 entries), cuts
all but the newest ones as pysyncobj does once a snapshot is on disk, and
times, on the calling thread (the Raft thread's part): the cut itself, and
the next sync, which is where a finished copy is put in place of the log.
The copy itself runs on the journal's helper thread and is not counted.

    python bench/journal_cut.py                 # 8 cuts of 5,000 entries of 300 bytes
    python bench/journal_cut.py --rounds 20 --dir /var/tmp
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time

from benchlib import pct, write_result

from flotilla.manager.raft.journal import DurableJournal


def run(args) -> dict:
    base = tempfile.mkdtemp(prefix="flotilla-journal-", dir=args.dir)
    j = DurableJournal(base)
    payload = os.urandom(args.entry_bytes)
    index = 0
    cuts, syncs, sizes = [], [], []
    try:
        for _ in range(args.rounds):
            for _ in range(args.entries):
                index += 1
                j.add(payload, index, 1)
                if index % 20 == 0:
                    j.sync()
            j.sync()
            started = time.perf_counter()
            j.deleteEntriesTo(len(j) - args.keep)
            cuts.append(time.perf_counter() - started)
            # Wait for the helper's copy (if this journal has one), then the
            # Raft thread's next sync puts it in place.
            deadline = time.monotonic() + 30
            while getattr(j, "_job", None) is not None and not getattr(j, "_ready", True):
                if time.monotonic() > deadline:
                    raise RuntimeError("the journal's copy did not finish in 30 s")
                time.sleep(0.001)
            for _ in range(20):
                index += 1
                j.add(payload, index, 1)
            started = time.perf_counter()
            j.sync()
            syncs.append(time.perf_counter() - started)
            sizes.append(os.path.getsize(os.path.join(base, "log")))
    finally:
        j._destroy()
        shutil.rmtree(base, ignore_errors=True)
    ms = lambda values: [round(v * 1000, 2) for v in values]  # noqa: E731
    return {
        "benchmark": "journal_cut", "rounds": args.rounds, "entries": args.entries,
        "entry_bytes": args.entry_bytes, "kept": args.keep,
        "cut_ms": ms(cuts), "next_sync_ms": ms(syncs),
        "cut_p50_ms": round(pct(cuts, 50) * 1000, 2),
        "next_sync_p50_ms": round(pct(syncs, 50) * 1000, 2),
        "log_bytes_after_sync": sizes,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--entries", type=int, default=5000, help="entries appended per round")
    ap.add_argument("--entry-bytes", type=int, default=300)
    ap.add_argument("--keep", type=int, default=2500, help="entries left after each cut")
    ap.add_argument("--dir", default=None, help="where the journal is written")
    args = ap.parse_args()
    r = run(args)
    print(f"cut on the Raft thread (ms)          {r['cut_ms']}")
    print(f"next sync, copy put in place (ms)    {r['next_sync_ms']}")
    print(f"log bytes after that sync            {r['log_bytes_after_sync']}")
    print("wrote", write_result("journal-cut", r))


if __name__ == "__main__":
    main()
