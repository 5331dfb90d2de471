"""The store's proposer: which transactions go into which Raft entry.

The Raft member is replaced by a recorder that holds every proposed entry
until the test answers it, so the order of entries is observable."""

import gc
import threading
import time

from pysyncobj.config import FAIL_REASON

from flotilla.manager.raft import codec
from flotilla.manager.store import store as store_mod
from flotilla.manager.store.store import Op, Store


class _Journal:
    def sync(self):
        pass


class RecordingRaft:
    is_leader = True

    def __init__(self):
        self.journal = _Journal()
        self.entries = []           # [(request ids, callback)]
        self.cond = threading.Condition()

    def propose(self, payload, callback):
        # each transaction by its request id, or the id of its first object
        rids = [t["rid"] or t["ops"][0]["obj"]["id"] for t in codec.unpack_lists(payload)["txns"]]
        with self.cond:
            self.entries.append((rids, callback))
            self.cond.notify_all()

    def wait_entries(self, n, timeout=5.0):
        deadline = time.monotonic() + timeout
        with self.cond:
            while len(self.entries) < n:
                left = deadline - time.monotonic()
                assert left > 0, f"{len(self.entries)} entries proposed, expected {n}"
                self.cond.wait(left)
            return list(self.entries)

    def answer(self, i):
        rids, callback = self.entries[i]
        callback([{"ok": True, "index": i + 1, "refs": []} for _ in rids], FAIL_REASON.SUCCESS)


def _store():
    s = Store()
    raft = RecordingRaft()
    s.attach(raft)
    s.start()
    return s, raft


def _config(i):
    return [Op.create("config", {"id": f"c{i}", "name": f"c{i}"})]


def test_a_single_write_goes_ahead_of_queued_bulk_writes():
    s, raft = _store()
    try:
        # Fill every place in flight with bulk entries nobody answers yet.
        for i in range(store_mod.MAX_IN_FLIGHT):
            s.submit_many([_config(f"fill{i}")], lambda results: None)
            raft.wait_entries(i + 1)
        # Bulk work queues behind them: more than one entry's worth.
        bulk = [_config(f"bulk{i}") for i in range(store_mod.MAX_TXNS_PER_ENTRY + 10)]
        s.submit_many(bulk, lambda results: None)
        single = {}
        t = threading.Thread(target=lambda: single.update(
            result=s.commit(_config("single"), rid="the-single-write")))
        t.start()
        deadline = time.monotonic() + 5
        while not s._single and time.monotonic() < deadline:   # queued, not proposed
            time.sleep(0.005)
        assert s._single, "the single write was not queued"

        raft.answer(0)              # one place frees: the next entry
        entries = raft.wait_entries(store_mod.MAX_IN_FLIGHT + 1)
        rids, _ = entries[store_mod.MAX_IN_FLIGHT]
        assert rids[0] == "the-single-write"
        assert len(rids) == store_mod.MAX_TXNS_PER_ENTRY    # then bulk, up to the limit
        raft.answer(store_mod.MAX_IN_FLIGHT)
        t.join(5)
        assert single["result"]["ok"]
    finally:
        s.stop()


def test_bulk_writes_keep_their_order():
    s, raft = _store()
    try:
        s.submit_many([_config(i) for i in range(5)], lambda results: None)
        s.submit_many([_config(i) for i in range(5, 9)], lambda results: None)
        proposed = []
        n = 0
        deadline = time.monotonic() + 5
        while len(proposed) < 9 and time.monotonic() < deadline:
            entries = raft.wait_entries(n + 1)
            for i in range(n, len(entries)):
                proposed += entries[i][0]
                raft.answer(i)
            n = len(entries)
        assert proposed == [f"c{i}" for i in range(9)]
    finally:
        s.stop()


def test_an_answered_group_is_freed_without_the_cycle_collector():
    # A group's transactions and results are freed as soon as the group is
    # answered: left in a reference cycle they stayed until a full
    # collection, which then had thousands of them to walk on the leader.
    s, raft = _store()
    got = []
    gc.collect()
    gc.disable()
    try:
        s.submit_many([_config(f"freed{i}") for i in range(50)], got.append)
        n = 0
        while not got:
            entries = raft.wait_entries(n + 1)
            for i in range(n, len(entries)):
                raft.answer(i)
            n = len(entries)
        s.stop()                    # its thread holds the last batch it proposed
        s._thread.join(5)
        raft.entries.clear()
        del entries
        got.clear()
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        # (other tests' stores may leave garbage behind: only this group counts)
        left = [o for o in gc.garbage
                if isinstance(o, store_mod._Pending) and b"cfreed" in o.data]
        assert left == []
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
        s.stop()


def test_an_entry_refused_whole_fails_each_of_its_writes_at_once():
    # Every member refused the entry (it did not decode as a batch): its
    # writers get a definite error, not "outcome unknown" after a timeout.
    s, raft = _store()
    try:
        out = {}

        def write(i):
            try:
                s.commit(_config(i), timeout=10)
            except store_mod.StoreError as exc:
                out[i] = exc

        writer = threading.Thread(target=write, args=(0,))
        writer.start()
        [(_, callback)] = raft.wait_entries(1)
        started = time.monotonic()
        callback({"ok": False, "error": {"code": "refused", "message": "malformed raft entry "
                                         "refused: undecodable payload"}}, FAIL_REASON.SUCCESS)
        writer.join(5)
        assert time.monotonic() - started < 2
        assert isinstance(out[0], store_mod.TxnFailed)
        assert out[0].status == 500 and out[0].code == "refused"
        assert "malformed raft entry refused" in str(out[0])
    finally:
        s.stop()
