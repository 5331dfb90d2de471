"""Creating a cluster (``--init``) and joining one (``--join``).

Init creates the root CA, this node's manager certificate, the admin client
bundle (``<data-dir>/admin/``) and the objects the first leader writes to the
store (``bootstrap.json``, removed once written).

Join downloads the root CA from the given manager without trusting it, and
refuses it unless its SHA-256 digest matches the one in the token (so a
man in the middle cannot substitute its own CA). It then sends a CSR with
the token over TLS verified against that CA and receives its certificate.
"""

from __future__ import annotations

import logging
import os
import socket
import time

import requests
from pydantic import ValidationError

from ..agent.describe import local_platform
from ..ca import certs, tokens
from ..common import fsutil, tls
from ..common.config import NodeConfig
from ..common.httpclient import ApiError, Client, _TLSAdapter
from ..manager.store.store import new_id
from ..model import objects

log = logging.getLogger(__name__)

ADMIN_CERT_EXPIRY = 365 * 86400


class BootstrapError(Exception):
    pass


def write_admin_bundle(directory: str, root: certs.RootCA, cluster_id: str,
                       lifetime: int = ADMIN_CERT_EXPIRY, name: str = "init") -> dict:
    """Issue an admin bundle into ``directory``; its record for the cluster
    object's ``admins`` (see ``manager/api/admins.py``)."""
    fsutil.ensure_private_dir(directory)
    admin_id = "admin-" + new_id()[:12]
    key_pem, cert_pem = root.issue(certs.ROLE_ADMIN, admin_id, cluster_id, lifetime)
    fsutil.atomic_write(os.path.join(directory, "ca.pem"), root.cert_pem, 0o644)
    fsutil.atomic_write(os.path.join(directory, "cert.pem"), cert_pem, 0o644)
    fsutil.atomic_write(os.path.join(directory, "key.pem"), key_pem, 0o600)
    return objects.admin_record(name, certs.identity_from_pem(cert_pem), cert_pem.decode(),
                                certs.cert_key_id(cert_pem), time.time())


def init_cluster(cfg: NodeConfig, *, cert_expiry: float | None = None,
                 heartbeat: float | None = None, network: dict | None = None) -> NodeConfig:
    """``network``: the cluster's address pool (``model.network.AddressPool``'s
    fields: ``default_addr_pool``, ``subnet_size``), the defaults where left out."""
    try:
        spec = objects.default_cluster_spec(cert_expiry, heartbeat, network)
    except ValidationError as exc:
        raise BootstrapError(f"invalid address pool: {exc.errors()[0]['msg']}") from None
    fsutil.ensure_private_dir(cfg.data_dir)
    fsutil.ensure_private_dir(cfg.certs_dir)
    cfg.cluster_id = new_id()
    cfg.node_id = new_id()
    cfg.hostname = cfg.hostname or socket.gethostname()
    cfg.role = "manager"
    root = certs.RootCA.create(cfg.cluster_id)
    root_key_pem = root.key_pem
    assert root_key_pem is not None     # a root just created holds its key
    key_pem, cert_pem = root.issue(certs.ROLE_MANAGER, cfg.node_id, cfg.cluster_id,
                                   spec["ca"]["node_cert_expiry"])
    fsutil.atomic_write(cfg.ca_path, root.cert_pem, 0o644)
    certs.write_node_bundle(cfg.bundle_path, key_pem, cert_pem)
    admin = write_admin_bundle(cfg.admin_dir, root, cfg.cluster_id)
    node = objects.new_node(cfg.node_id, hostname=cfg.hostname, addr=cfg.advertise,
                            role="manager", platform=local_platform())
    node["role"] = "manager"
    node["manager"] = {"raft_addr": cfg.raft_advertise, "api_addr": cfg.advertise}
    node = objects.with_cert(node, certs.identity_from_pem(cert_pem), certs.cert_key_id(cert_pem))
    cluster = {
        "id": cfg.cluster_id,
        "name": "default",
        "spec": spec,
        "root_ca": {"cert": root.cert_pem.decode(), "key": root_key_pem.decode(),
                    "digest": root.digest},
        "tokens": {"worker": tokens.generate_token(root.cert_pem),
                   "manager": tokens.generate_token(root.cert_pem)},
        "revoked": {},
        "admins": {admin["serial"]: admin},
    }
    fsutil.atomic_write_json(cfg.bootstrap_path, {"cluster": cluster, "node": node})
    cfg.managers = [cfg.advertise]
    cfg.save()
    log.info("initialised cluster %s; this node is %s", cfg.cluster_id, cfg.node_id)
    return cfg


def fetch_root_ca(address: str, token: str, timeout: float = 10.0, attempts: int = 5) -> bytes:
    """Download the CA without trusting the connection, then pin it to the token."""
    try:
        parsed = tokens.parse_token(token)
    except tokens.InvalidToken as exc:
        raise BootstrapError(f"invalid join token: {exc}") from None
    session = requests.Session()
    session.mount("https://", _TLSAdapter(tls.client_context(None, None)))
    last = None
    for _ in range(attempts):
        try:
            resp = session.get(f"https://{address}/v1/join/ca", timeout=timeout, verify=False)
            if resp.status_code == 200:
                pem = resp.content
                break
            last = f"HTTP {resp.status_code}"
        except requests.RequestException as exc:
            last = str(exc)
        time.sleep(2)
    else:
        raise BootstrapError(f"cannot download the root CA from {address}: {last}")
    if tokens.ca_digest(pem) != parsed.digest:
        raise BootstrapError(
            f"the CA served by {address} does not match the join token "
            "(wrong cluster, or someone is intercepting the connection): refusing to join")
    return pem


def join_cluster(cfg: NodeConfig, join_addr: str, token: str) -> NodeConfig:
    fsutil.ensure_private_dir(cfg.data_dir)
    fsutil.ensure_private_dir(cfg.certs_dir)
    ca_pem = fetch_root_ca(join_addr, token)
    fsutil.atomic_write(cfg.ca_path, ca_pem, 0o644)
    key = certs.new_key()
    csr = certs.make_csr(key).decode()
    cfg.hostname = cfg.hostname or socket.gethostname()
    client = Client([join_addr], None, cfg.ca_path, timeout=30, retry_for=20)
    try:
        result = client.post("/v1/join", {
            "token": token.strip(),
            "csr": csr,
            "hostname": cfg.hostname,
            "addr": cfg.advertise,
            "raft_addr": cfg.raft_advertise,
            "platform": local_platform(),
        })
    except ApiError as exc:
        raise BootstrapError(f"join refused by {join_addr}: {exc}") from None
    cert_pem = result["cert"].encode()
    certs.verify_chain(cert_pem, ca_pem)
    certs.write_node_bundle(cfg.bundle_path, certs.key_to_pem(key), cert_pem)
    cfg.node_id = result["node_id"]
    cfg.cluster_id = result["cluster_id"]
    cfg.role = result["role"]
    cfg.managers = sorted(set(result.get("managers") or []) | {join_addr})
    cfg.save()
    log.info("joined cluster %s as %s %s", cfg.cluster_id, cfg.role, cfg.node_id)
    return cfg
