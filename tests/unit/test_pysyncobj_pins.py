"""What Flotilla relies on inside pysyncobj is where the installed release has it.

``manager/raft/pysyncobj_compat.py`` is the only module that reaches into
pysyncobj's private state and methods; the transport subclasses its
``TCPTransport``; the journal and the snapshot serializer stand in for its
own. A pysyncobj upgrade that moves any of it fails here, each assertion
naming what moved, instead of in a cluster that no longer elects a leader.

The private names are read from the adapter's own source, so a reach added
there is pinned without editing this file.
"""

from __future__ import annotations

import ast
import inspect
import os
import socket
import subprocess
import sys

import pysyncobj.journal
import pysyncobj.monotonic
import pysyncobj.syncobj
import pysyncobj.transport
import pytest
from pysyncobj import SyncObj, SyncObjConf
from pysyncobj.config import FAIL_REASON, SERIALIZER_STATE
from pysyncobj.tcp_connection import TcpConnection
from pysyncobj.transport import TCPTransport
from pysyncobj.version import VERSION

from flotilla.manager.raft import pysyncobj_compat as compat
from flotilla.manager.raft import transport as flotilla_transport
from flotilla.manager.raft.journal import DurableJournal
from flotilla.manager.raft.snapshot import SnapshotSerializer
from flotilla.manager.raft.transport import TlsConnection, TlsServer, TlsTransport

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MANGLED = "_SyncObj__"


def _class_node(module, name: str) -> ast.ClassDef:
    tree = ast.parse(inspect.getsource(module))
    return next(n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name == name)


def _method_node(cls: ast.ClassDef, name: str) -> ast.FunctionDef:
    return next(n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == name)


def _mangle(attr: str) -> str:
    """``__x`` as written inside class SyncObj is ``_SyncObj__x`` outside."""
    if attr.startswith("__") and not attr.endswith("__"):
        return MANGLED + attr[2:]
    return attr


def _self_attrs(node: ast.AST, *, stores: bool) -> set[str]:
    """Attributes of ``self`` a piece of code assigns (``stores``) or reads."""
    kind = ast.Store if stores else ast.Load
    return {n.attr for n in ast.walk(node)
            if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name)
            and n.value.id == "self" and isinstance(n.ctx, kind)}


def _attrs_of(node: ast.AST, owner: str) -> set[str]:
    """Attributes read on ``self.<owner>``, e.g. the journal's methods."""
    return {n.attr for n in ast.walk(node)
            if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Attribute)
            and isinstance(n.value.value, ast.Name) and n.value.value.id == "self"
            and n.value.attr == owner}


SYNCOBJ = _class_node(pysyncobj.syncobj, "SyncObj")
# What a SyncObj instance has: its methods, and what its __init__ assigns.
SYNCOBJ_INSTANCE_ATTRS = {_mangle(a) for a in
                          _self_attrs(_method_node(SYNCOBJ, "__init__"), stores=True)}
ADAPTER_TREE = ast.parse(inspect.getsource(compat))
ADAPTER = next(n for n in ast.walk(ADAPTER_TREE)
               if isinstance(n, ast.ClassDef) and n.name == "SyncObjAdapter")
ADAPTER_DEFINES = {n.name for n in ADAPTER.body if isinstance(n, ast.FunctionDef)}


def _adapter_reaches() -> tuple[set[str], set[str], set[str]]:
    """(attributes read or set on the instance, methods called on the class,
    methods overridden): every private name of SyncObj the adapter spells."""
    on_instance, on_class = set(), set()
    for n in ast.walk(ADAPTER_TREE):
        if not isinstance(n, ast.Attribute) or not isinstance(n.value, ast.Name):
            continue
        name = n.attr
        if not name.startswith("_") or name.startswith("__") or name in ADAPTER_DEFINES:
            continue
        if n.value.id in ("self", "sync_obj"):
            on_instance.add(name)
        elif n.value.id == "SyncObj":
            on_class.add(name)
    overridden = {name for name in ADAPTER_DEFINES if name.startswith(MANGLED)}
    return on_instance, on_class, overridden


# -- the release ---------------------------------------------------------------------
def test_installed_pysyncobj_is_the_release_the_adapter_was_written_against():
    assert VERSION == compat.PYSYNCOBJ_VERSION, (
        f"pysyncobj {VERSION} is installed, pysyncobj_compat was written against "
        f"{compat.PYSYNCOBJ_VERSION}: check the other pins in this file, then update "
        "PYSYNCOBJ_VERSION and requirements.txt together")
    for name in ("requirements.txt", "pyproject.toml"):
        with open(os.path.join(ROOT, name), encoding="utf-8") as f:
            assert f"pysyncobj=={compat.PYSYNCOBJ_VERSION}" in f.read(), \
                f"{name} does not pin pysyncobj=={compat.PYSYNCOBJ_VERSION}"


def test_only_the_adapter_spells_syncobj_private_names():
    offenders = []
    for folder, _dirs, files in (entry for top in ("daemons", "tests", "bench")
                                 for entry in os.walk(os.path.join(ROOT, top))):
        for name in files:
            path = os.path.join(folder, name)
            if (not name.endswith(".py") or os.path.samefile(path, compat.__file__)
                    or os.path.samefile(path, __file__)):
                continue
            with open(path, encoding="utf-8") as f:
                if MANGLED in f.read():
                    offenders.append(os.path.relpath(path, ROOT))
    assert not offenders, f"{MANGLED} spelled outside pysyncobj_compat.py: {offenders}"


# -- SyncObj's private names ---------------------------------------------------------
def test_every_private_name_the_adapter_uses_exists_on_syncobj():
    on_instance, on_class, overridden = _adapter_reaches()
    assert {"_SyncObj__raftState", "_SyncObj__transport", "_applyCommand",
            "_poller"} <= on_instance, "the adapter's source was not read as expected"
    methods = {name for name, value in vars(SyncObj).items() if callable(value)}
    missing = sorted(
        [f"SyncObj().{name} (read or set)" for name in on_instance
         if name not in methods and name not in SYNCOBJ_INSTANCE_ATTRS]
        + [f"SyncObj.{name} (called)" for name in on_class if name not in methods]
        + [f"SyncObj.{name} (replaced)" for name in overridden if name not in methods])
    assert not missing, "no longer in pysyncobj: " + ", ".join(missing)


def test_every_method_the_adapter_replaces_is_still_called_by_syncobj():
    _on_instance, _on_class, overridden = _adapter_reaches()
    called = {_mangle(a) for a in _self_attrs(SYNCOBJ, stores=False)}
    dead = sorted(name for name in overridden if name not in called)
    assert not dead, f"SyncObj no longer calls these, so replacing them does nothing: {dead}"


# Parameters of the private methods the adapter calls or replaces, and of the
# public ones it calls positionally.
SIGNATURES = {
    "__init__": ["self", "selfNode", "otherNodes", "conf", "consumers", "nodeClass",
                 "transport", "transportClass"],
    "_applyCommand": ["self", "command", "callback", "commandType"],
    "_SyncObj__setCurrentTerm": ["self", "term", "votedForNodeId"],
    "_SyncObj__setState": ["self", "newState"],
    "_SyncObj__getEntries": ["self", "fromIDx", "count", "maxSizeBytes"],
    "_SyncObj__getCurrentLogTerm": ["self"],
    "_SyncObj__getCurrentLogIndex": ["self"],
    "_SyncObj__generateRaftTimeout": ["self"],
    "_SyncObj__connectedToAnyone": ["self"],
    "_SyncObj__onMessageReceived": ["self", "node", "message"],
    "_SyncObj__applyLogEntries": ["self"],
    "_SyncObj__doApplyCommand": ["self", "command"],
    "_SyncObj__parseChangeClusterRequest": ["self", "command"],
    "_doDestroy": ["self"],
    "_isLeader": ["self"],
    "_getLeader": ["self"],
    "doTick": ["self", "timeToWait"],
}


@pytest.mark.parametrize("name", sorted(SIGNATURES))
def test_syncobj_method_signature(name):
    method = getattr(SyncObj, name, None)
    assert method is not None, f"SyncObj.{name} is gone"
    params = list(inspect.signature(method).parameters)
    assert params == SIGNATURES[name], f"SyncObj.{name} now takes {params}"


def test_the_journal_factory_swapped_at_construction_is_what_syncobj_init_calls():
    assert callable(getattr(pysyncobj.syncobj, compat.JOURNAL_FACTORY, None)), \
        f"pysyncobj.syncobj.{compat.JOURNAL_FACTORY} is gone"
    # Called by its bare name, so that it is looked up in the module when
    # the constructor runs (and the swapped one is found).
    calls = {n.func.id for n in ast.walk(_method_node(SYNCOBJ, "__init__"))
             if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
    assert compat.JOURNAL_FACTORY in calls, \
        f"SyncObj.__init__ no longer builds its journal with {compat.JOURNAL_FACTORY}()"


# -- a member built through the adapter ------------------------------------------------
class _RecordingSerializer:
    def __init__(self):
        self.checks = 0

    def checkSerializing(self):
        self.checks += 1
        return SERIALIZER_STATE.NOT_SERIALIZING, None


class _Member(compat.SyncObjAdapter):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.applied: list[bytes] = []
        self.election_asked = 0

    def apply_entry(self, command):
        self.applied.append(bytes(command))
        return "done"

    def may_start_election(self):
        self.election_asked += 1
        return self.stock_connected_to_anyone()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_member_built_through_the_adapter_elects_itself_and_applies_through_the_hooks():
    """A one-member cluster on loopback with pysyncobj's own transport: every
    accessor reads what pysyncobj holds, and pysyncobj calls the hooks."""
    journal = pysyncobj.journal.createJournal(None)
    factory = pysyncobj.syncobj.createJournal
    states = []
    conf = SyncObjConf(autoTick=False, raftMinTimeout=0.05, raftMaxTimeout=0.1,
                       appendEntriesPeriod=0.01, appendEntriesUseBatch=False,
                       onStateChanged=lambda old, new: states.append((old, new)))
    member = _Member(f"127.0.0.1:{_free_port()}", [], conf, journal=journal,
                     transport_class=TCPTransport)
    try:
        assert pysyncobj.syncobj.createJournal is factory
        # pysyncobj adds a no-op entry at index 1, term 0, to the journal it was given.
        assert len(journal) == 1
        assert member.last_log() == (0, 1)
        assert [(e[1], e[2]) for e in member.log_entries(1, 1)] == [(1, 0)]
        assert member.raft_state == compat.FOLLOWER and member.raft_leader is None
        assert not member.leading and member.leader_node is None
        assert member.voting_nodes == set() and member.next_index == {}
        assert member.commands_waiting_commit() == {}
        assert not member.transfer_in_progress
        assert 0.05 <= member.new_election_timeout() <= 0.1
        assert isinstance(member.raft_transport, TCPTransport)
        assert compat.poller_of(member) is not None
        assert compat.address_family("127.0.0.1") == socket.AF_INET
        assert compat.address_family("::1") == socket.AF_INET6

        member.set_raft_term(4, None)
        assert member.raftCurrentTerm == 4 and journal.getCurrentTerm() == 4
        member.set_raft_state(compat.CANDIDATE)
        assert member.raft_state == compat.CANDIDATE
        assert states == [(compat.FOLLOWER, compat.CANDIDATE)]
        member.set_raft_state(compat.FOLLOWER)

        serializer = _RecordingSerializer()
        member.install_serializer(serializer)
        assert member.serializer is serializer

        # The election timer runs out: pysyncobj asks the hook, and the only
        # member wins.
        member.election_deadline = 0
        assert member.election_deadline == 0
        member.doTick(0.0)
        assert member.election_asked == 1
        assert member.leading and member.raft_state == compat.LEADER
        assert member.leader_node is member.selfNode and member.raftCurrentTerm == 5
        assert serializer.checks >= 1, "pysyncobj did not use the installed serializer"

        results = []
        member.append_command(b"entry", lambda res, err: results.append((res, err)),
                              compat.REGULAR)
        for _ in range(20):
            if results:
                break
            member.doTick(0.01)
        assert results == [("done", FAIL_REASON.SUCCESS)]
        # Every committed entry goes through the hook (the leader's no-op too).
        assert member.applied[-1] == bytes([compat.REGULAR]) + b"entry"
        assert member.raftLastApplied == member.raftCommitIndex == member.last_log()[1]
    finally:
        member.destroy_now()


def test_the_election_timer_is_on_pysyncobjs_clock():
    # node.py compares election_deadline with pysyncobj.monotonic.monotonic.
    calls = {n.func.id for n in ast.walk(_method_node(SYNCOBJ, "__init__"))
             if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
    assert "monotonicTime" in calls
    assert pysyncobj.syncobj.monotonicTime is pysyncobj.monotonic.monotonic


# -- what stands in for pysyncobj's own parts --------------------------------------------
def test_the_journal_provides_everything_syncobj_calls_on_its_journal():
    called = _attrs_of(SYNCOBJ, "__raftLog") | {"__getitem__", "__len__"}
    base = {n for n in vars(pysyncobj.journal.Journal) if not n.startswith("__")
            or n in ("__getitem__", "__len__")}
    missing = sorted(n for n in called | base if not callable(getattr(DurableJournal, n, None)))
    assert not missing, f"DurableJournal lacks what pysyncobj now calls: {missing}"


def test_the_snapshot_serializer_provides_everything_syncobj_calls_on_its_serializer():
    called = _attrs_of(SYNCOBJ, "__serializer")
    assert "checkSerializing" in called
    missing = sorted(n for n in called if not callable(getattr(SnapshotSerializer, n, None)))
    assert not missing, f"SnapshotSerializer lacks what pysyncobj now calls: {missing}"


def _tls_transport_reaches() -> tuple[set[str], set[str]]:
    """(names TlsTransport reads on itself but does not define, the
    pysyncobj-style methods it defines)."""
    cls = _class_node(flotilla_transport, "TlsTransport")
    defined = {n.name for n in cls.body if isinstance(n, ast.FunctionDef)}
    assigned = _self_attrs(cls, stores=True)
    read = {a for a in _self_attrs(cls, stores=False) if a not in defined | assigned}
    # Assigned in TlsTransport but set up by TCPTransport's __init__ first.
    read |= {a for a in assigned if a in ("_server",)}
    ours = {"_new_connection", "_on_established", "_member_addresses",
            "connected_addresses", "__init__"}
    return read, defined - ours


def test_the_transport_relies_only_on_what_tcptransport_has():
    tcp = _class_node(pysyncobj.transport, "TCPTransport")
    has = {n for n in dir(TCPTransport)} | _self_attrs(_method_node(tcp, "__init__"),
                                                         stores=True)
    read, overrides = _tls_transport_reaches()
    assert "_connections" in read and "_createServer" in overrides
    missing = sorted([f"TCPTransport.{n} (used)" for n in read if n not in has]
                     + [f"TCPTransport.{n} (replaced)" for n in overrides if n not in has])
    assert not missing, "no longer in pysyncobj's TCPTransport: " + ", ".join(missing)
    called = _self_attrs(tcp, stores=False) | _self_attrs(
        _class_node(pysyncobj.transport, "Transport"), stores=False)
    dead = sorted(n for n in overrides
                  if n.startswith("_") and n not in called)
    assert not dead, f"TCPTransport no longer calls these, so replacing them does nothing: {dead}"


@pytest.mark.parametrize("name", ["_createServer", "addNode", "dropNode",
                                  "_onNewIncomingConnection", "_onIncomingMessageReceived",
                                  "_onUtilityMessage", "_onOutgoingConnected",
                                  "_sendSelfAddress", "send", "_onTick", "destroy"])
def test_transport_override_signature(name):
    ours = list(inspect.signature(getattr(TlsTransport, name)).parameters)
    theirs = list(inspect.signature(getattr(TCPTransport, name)).parameters)
    assert ours == theirs, f"TCPTransport.{name} now takes {theirs}, TlsTransport's {ours}"


def test_tls_connections_and_server_offer_what_tcptransport_calls_on_them():
    tcp = _class_node(pysyncobj.transport, "TCPTransport")
    # Connections are ``conn`` or ``self._connections[node]``; without a
    # password (Flotilla sets none) the encryption attributes are not used.
    on_conn = {n.attr for n in ast.walk(tcp) if isinstance(n, ast.Attribute) and (
        (isinstance(n.value, ast.Name) and n.value.id == "conn")
        or (isinstance(n.value, ast.Subscript) and isinstance(n.value.value, ast.Attribute)
            and n.value.value.attr == "_connections"))}
    on_conn -= {"encryptor", "sendRandKey", "recvRandKey"}
    assert {"send", "disconnect", "state"} <= on_conn
    missing = sorted(f"TlsConnection.{n}" for n in on_conn if not hasattr(TlsConnection, n))
    on_server = _attrs_of(tcp, "_server")
    missing += sorted(f"TlsServer.{n}" for n in on_server if not hasattr(TlsServer, n))
    assert not missing, f"TCPTransport now uses what the TLS classes lack: {missing}"
    # The connection's own surface, for comparison when it moved.
    assert {"connect", "send", "disconnect"} <= set(dir(TcpConnection))


def test_private_module_names_imported_from_pysyncobj_exist():
    from pysyncobj import tcp_connection
    assert callable(getattr(tcp_connection, "_getAddrType", None)), \
        "pysyncobj.tcp_connection._getAddrType is gone"
    for enum, names in ((pysyncobj.syncobj._RAFT_STATE, ("FOLLOWER", "CANDIDATE", "LEADER")),
                        (pysyncobj.syncobj._COMMAND_TYPE, ("REGULAR", "MEMBERSHIP"))):
        for name in names:
            assert isinstance(getattr(enum, name, None), int), f"{enum.__name__}.{name} is gone"


def test_socket_inet_ntop_works_in_a_process_that_imported_pysyncobj():
    code = ("import socket, flotilla.manager.raft.node, pysyncobj.tcp_connection; "
            "print(socket.inet_ntop(socket.AF_INET, bytes([10, 0, 0, 1])))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, cwd=ROOT,
                         env=dict(os.environ, PYTHONPATH=os.path.join(ROOT, "daemons")))
    assert (res.returncode, res.stdout.strip()) == (0, "10.0.0.1"), res.stderr[-2000:]
