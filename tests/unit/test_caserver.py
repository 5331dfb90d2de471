"""Renewal on the CA: a demoted node's worker certificate revokes its
manager certificates, and a renewal asked again with the same key is
still answered. A real store, whose Raft member applies each entry at once."""

import types

import pytest
from pysyncobj.config import FAIL_REASON

from flotilla.ca import certs, revocation
from flotilla.model import objects
from flotilla.manager.caserver import CAServer, JoinRefused
from flotilla.manager.raft.security import SecurityCounters
from flotilla.manager.store.store import Op, Store

CLUSTER = "cluster1"


class _Journal:
    def sync(self):
        pass


class ApplyingRaft:
    """Applies every proposed entry at once, as a one-member cluster would."""
    is_leader = True

    def __init__(self, store):
        self.journal = _Journal()
        self._store = store

    def propose(self, payload, callback):
        callback(self._store.sm.apply(payload), FAIL_REASON.SUCCESS)


@pytest.fixture
def ca():
    store = Store()
    store.attach(ApplyingRaft(store))
    store.start()
    root = certs.RootCA.create(CLUSTER)
    key_pem, cert_pem = root.issue(certs.ROLE_MANAGER, "node1", CLUSTER, 3600)
    node = objects.new_node("node1", hostname="n1", addr="127.0.0.1:1", role="manager")
    node = objects.with_cert(dict(node, role="manager"), certs.identity_from_pem(cert_pem),
                             certs.cert_key_id(cert_pem))
    cluster = {"id": CLUSTER, "spec": objects.default_cluster_spec(3600),
               "root_ca": {"cert": root.cert_pem.decode(), "key": root.key_pem.decode(),
                           "digest": root.digest},
               "tokens": {}, "revoked": {}}
    store.commit([Op.create("cluster", cluster), Op.create("node", node)])
    yield CAServer(store, SecurityCounters()), store, certs.identity_from_pem(cert_pem)
    store.stop()


def presented(ident):
    return types.SimpleNamespace(role=ident.role, serial=ident.serial,
                                 not_after=ident.not_after.timestamp())


def csr(key):
    return certs.make_csr(key).decode()


def test_a_demoted_nodes_worker_certificate_revokes_its_manager_certificates(ca):
    server, store, manager_cert = ca
    # A second manager certificate, from an earlier renewal, still valid.
    earlier = certs.identity_from_pem(server.renew("node1", csr(certs.new_key()),
                                                   presented(manager_cert))["cert"].encode())
    assert earlier.role == "manager" and not store.first("cluster")["revoked"]
    store.update("node", "node1", lambda n: dict(n, role="worker",
                                                 spec=dict(n["spec"], role="worker")))
    key = certs.new_key()
    answer = server.renew("node1", csr(key), presented(manager_cert))
    assert answer["role"] == "worker"
    revoked = store.first("cluster")["revoked"]
    for old in (manager_cert, earlier):
        assert revocation.serial_revoked(revoked, old.serial)
        assert server.revoked("node1", old.serial) and not server.revoked("node1")
    assert store.get("node", "node1")["manager_certs"] == {}
    # Its answer lost, the node asks again with the same key: answered.
    again = server.renew("node1", csr(key), presented(manager_cert))
    assert again["role"] == "worker"
    # Anyone else holding the revoked certificate is refused.
    with pytest.raises(JoinRefused) as e:
        server.renew("node1", csr(certs.new_key()), presented(manager_cert))
    assert e.value.code == "certificate_revoked"
    # The worker certificate renews as usual and revokes nothing more.
    worker = certs.identity_from_pem(again["cert"].encode())
    before = dict(store.first("cluster")["revoked"])
    assert server.renew("node1", csr(certs.new_key()), presented(worker))["role"] == "worker"
    assert store.first("cluster")["revoked"] == before


def test_a_promoted_nodes_manager_certificates_are_recorded(ca):
    server, store, manager_cert = ca
    answer = server.renew("node1", csr(certs.new_key()), presented(manager_cert))
    serial = format(certs.identity_from_pem(answer["cert"].encode()).serial, "x")
    held = store.get("node", "node1")["manager_certs"]
    assert serial in held and format(manager_cert.serial, "x") in held
