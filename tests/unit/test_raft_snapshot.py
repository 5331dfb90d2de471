"""Writing a snapshot of the replicated state (raft/snapshot.py): the state
as it was when the compaction began, private on disk, written by a forked
child so that this process's interpreter lock stays free."""

import io
import os
import resource
import signal
import stat
import time

import msgpack
import pytest
from pysyncobj.config import SERIALIZER_STATE
from pysyncobj.node import TCPNode

from flotilla.manager.raft import codec
from flotilla.manager.raft.snapshot import MAGIC, SnapshotSerializer
from flotilla.manager.store.state import StateMachine
from flotilla.manager.store.store import Op

MEMBERS = ["127.0.0.1:4001", "127.0.0.1:4002", "127.0.0.1:4003"]


def apply(sm, *ops):
    return sm.apply(codec.pack({"txns": [{"rid": None, "ts": 1.0, "ops": list(ops)}]}))


def configs(sm, first, count):
    for i in range(first, first + count):
        apply(sm, Op.create("config", {"id": f"c{i}", "name": f"n{i}", "data": "x" * 200}))


def write(ser, index, timeout=30.0):
    """Ask for a snapshot covering ``index``; returns the serializer's final
    state (SUCCESS or FAILED), polled as pysyncobj polls it."""
    ser.serialize((None, (b"", index, 1), (b"", index - 1, 1),
                   [TCPNode(m) for m in MEMBERS]), index)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state, _ = ser.checkSerializing()
        if state in (SERIALIZER_STATE.SUCCESS, SERIALIZER_STATE.FAILED):
            return state
        time.sleep(0.01)
    raise AssertionError("the snapshot was not written in time")


def load(path):
    sm = StateMachine()
    _, last, prev, members = SnapshotSerializer(str(path), 1 << 16, sm).deserialize()
    return sm, last, members


def leftovers(tmp_path):
    return sorted(p.name for p in tmp_path.iterdir() if ".writing" in p.name)


def test_the_snapshot_is_the_state_when_the_compaction_began(tmp_path):
    sm = StateMachine()
    configs(sm, 0, 3000)
    ser = SnapshotSerializer(str(tmp_path / "snapshot"), 1 << 16, sm)
    ser.serialize((None, (b"", 3000, 1), (b"", 2999, 1), [TCPNode(m) for m in MEMBERS]), 3000)
    # Changes applied while it is being written are not in it.
    configs(sm, 3000, 50)
    apply(sm, Op.delete("config", "c0"))
    deadline = time.monotonic() + 30
    while ser.checkSerializing()[0] != SERIALIZER_STATE.SUCCESS:
        assert time.monotonic() < deadline, "the snapshot was not written in time"
        time.sleep(0.01)
    restored, last, members = load(tmp_path / "snapshot")
    assert restored.index == 3000 and last[1] == 3000
    assert len(restored.list("config")) == 3000
    assert restored.get("config", "c0")["name"] == "n0"
    assert restored.get("config", "c3000") is None
    assert sorted(m.address for m in members) == MEMBERS
    assert stat.S_IMODE(os.stat(tmp_path / "snapshot").st_mode) == 0o600
    assert leftovers(tmp_path) == []
    assert ser.snapshots_written == 1


def test_the_encoding_is_done_by_a_child_process(tmp_path):
    sm = StateMachine()
    configs(sm, 0, 20000)
    ser = SnapshotSerializer(str(tmp_path / "snapshot"), 1 << 16, sm)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    assert write(ser, 20000) == SERIALIZER_STATE.SUCCESS
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    child_cpu = (after.ru_utime + after.ru_stime) - (children.ru_utime + children.ru_stime)
    assert child_cpu > 0.005, f"no child did the work ({child_cpu:.4f} CPU-s)"
    assert len(load(tmp_path / "snapshot")[0].list("config")) == 20000


def test_written_in_this_process_when_fork_is_off(tmp_path):
    sm = StateMachine()
    configs(sm, 0, 100)
    ser = SnapshotSerializer(str(tmp_path / "snapshot"), 1 << 16, sm)
    ser.fork = False
    assert write(ser, 100) == SERIALIZER_STATE.SUCCESS
    assert len(load(tmp_path / "snapshot")[0].list("config")) == 100
    assert leftovers(tmp_path) == []


def test_a_failed_write_keeps_the_previous_snapshot(tmp_path):
    sm = StateMachine()
    configs(sm, 0, 10)
    ser = SnapshotSerializer(str(tmp_path / "snapshot"), 1 << 16, sm)
    assert write(ser, 10) == SERIALIZER_STATE.SUCCESS
    before = (tmp_path / "snapshot").read_bytes()
    # A value the encoder refuses makes the writer fail half-way.
    sm.objects["config"]["bad"] = {"id": "bad", "name": "bad", "data": object()}
    for fork in (True, False):
        ser.fork = fork
        assert write(ser, 11) == SERIALIZER_STATE.FAILED
        assert (tmp_path / "snapshot").read_bytes() == before
        assert leftovers(tmp_path) == []
    assert ser.snapshots_written == 1


def test_a_temporary_file_left_by_a_crash_is_removed_at_start(tmp_path):
    (tmp_path / "snapshot.writing-4242").write_bytes(b"half a snapshot")
    (tmp_path / "snapshot.writing").write_bytes(b"from an older release")
    SnapshotSerializer(str(tmp_path / "snapshot"), 1 << 16, StateMachine())
    assert leftovers(tmp_path) == []


class _Stub:
    """A state machine with nothing in it; subclasses write the snapshot."""

    def snapshot_view(self):
        return None

    def snapshot_capture(self):
        return None


class _Probe(_Stub):
    """Its snapshot records who wrote it."""

    @staticmethod
    def snapshot_write(_captured, f):
        f.write(codec.pack({"pid": os.getpid(),
                            "nice": os.getpriority(os.PRIO_PROCESS, 0)}))


def test_the_writer_is_another_process_at_a_low_priority(tmp_path):
    ser = SnapshotSerializer(str(tmp_path / "snapshot"), 1 << 16, _Probe())
    assert write(ser, 5) == SERIALIZER_STATE.SUCCESS
    data = (tmp_path / "snapshot").read_bytes()
    records = list(msgpack.Unpacker(io.BytesIO(data[len(MAGIC):]), raw=False))
    writer = records[1]
    assert writer["pid"] != os.getpid()
    assert writer["nice"] >= 10


class _Slow(_Stub):
    """Its snapshot takes a while to write."""

    @staticmethod
    def snapshot_write(_captured, f):
        f.write(b"x" * 1000)
        f.flush()
        time.sleep(30)


def test_a_writer_killed_half_way_leaves_nothing_behind(tmp_path, caplog):
    ser = SnapshotSerializer(str(tmp_path / "snapshot"), 1 << 16, _Slow())
    ser.serialize((None, (b"", 5, 1), (b"", 4, 1), [TCPNode(m) for m in MEMBERS]), 5)
    deadline = time.monotonic() + 10
    while not leftovers(tmp_path):
        assert time.monotonic() < deadline, "no writer started"
        time.sleep(0.01)
    [name] = leftovers(tmp_path)
    os.kill(int(name.rsplit("-", 1)[1]), signal.SIGKILL)
    while ser.checkSerializing()[0] == SERIALIZER_STATE.SERIALIZING:
        assert time.monotonic() < deadline + 10, "the writer's end was not noticed"
        time.sleep(0.01)
    assert leftovers(tmp_path) == [] and not (tmp_path / "snapshot").exists()
    assert "got signal 9" in caplog.text


class _Gated(_Stub):
    """Its snapshot is finished only once a file exists (a child process
    cannot wait on this process's events)."""

    def __init__(self, gate):
        self.gate = str(gate)

    def snapshot_write(self, _captured, f):
        f.write(b"our own, older")
        while not os.path.exists(self.gate):
            time.sleep(0.005)


@pytest.mark.parametrize("fork", [True, False])
def test_a_snapshot_from_the_leader_wins_over_ours_begun_before_it(tmp_path, fork):
    ser = SnapshotSerializer(str(tmp_path / "snapshot"), 1 << 16, _Gated(tmp_path / "gate"))
    ser.fork = fork
    ser.serialize((None, (b"", 5, 1), (b"", 4, 1), [TCPNode(m) for m in MEMBERS]), 5)
    installed = MAGIC + b"from the leader, newer"
    assert ser.setTransmissionData((installed, True, True))
    (tmp_path / "gate").touch()
    deadline = time.monotonic() + 10
    while (state := ser.checkSerializing()[0]) == SERIALIZER_STATE.SERIALIZING:
        assert time.monotonic() < deadline, "the writer's end was not noticed"
        time.sleep(0.01)
    # Ours is dropped: pysyncobj keeps its journal, the leader's stays in place.
    assert state == SERIALIZER_STATE.FAILED
    assert (tmp_path / "snapshot").read_bytes() == installed
    assert leftovers(tmp_path) == []
