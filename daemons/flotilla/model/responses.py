"""Response models of the API: what each view returns, for the OpenAPI
document (request models live next to the views that validate them)."""

from __future__ import annotations

from typing import Any, Optional

from pydantic import BaseModel

from . import specs


class Removed(BaseModel):
    id: str
    removed: bool


class Replicas(BaseModel):
    desired: int
    running: int


class PublishedPort(BaseModel):
    target: int
    published: int
    protocol: str
    mode: Optional[str] = None


class UpdateStatus(BaseModel):
    state: str
    message: str = ""
    reason: Optional[str] = None
    started_at: Optional[float] = None
    completed_at: Optional[float] = None


class VirtualIP(BaseModel):
    network_id: str
    network: Optional[str] = None
    addr: str


class NetworkService(BaseModel):
    id: str
    name: str
    virtual_ip: Optional[str] = None


class Network(BaseModel):
    id: str
    name: str
    driver: str
    subnet: str
    gateway: str
    vni: int
    attachable: bool
    internal: bool
    encrypted: bool
    labels: dict[str, str]
    services: Optional[list[NetworkService]] = None
    version: Optional[int] = None
    created_at: Optional[float] = None
    updated_at: Optional[float] = None


class Service(BaseModel):
    id: str
    name: str
    mode: str
    replicas: Replicas
    image: str
    ports: list[PublishedPort]
    virtual_ips: list[VirtualIP] = []
    spec: specs.ServiceSpec
    spec_version: int
    update_status: Optional[UpdateStatus] = None
    previous_spec: Optional[specs.ServiceSpec] = None
    version: Optional[int] = None
    created_at: Optional[float] = None
    updated_at: Optional[float] = None


class CpuMemory(BaseModel):
    cpus: float
    memory: int


class NodeResources(BaseModel):
    total: CpuMemory
    reserved: CpuMemory
    free: CpuMemory
    tasks: int


class ManagerStatus(BaseModel):
    raft_addr: Optional[str] = None
    api_addr: Optional[str] = None
    reachability: str


class Node(BaseModel):
    id: str
    hostname: Optional[str] = None
    addr: Optional[str] = None
    ip: Optional[str] = None        # where its agent connected from (node.ip)
    role: Optional[str] = None
    desired_role: str
    availability: str
    labels: dict[str, str]
    state: str
    message: str
    leader: bool
    platform: dict[str, Any]
    engine: dict[str, Any]
    resources: NodeResources
    agent_addr: Optional[str] = None
    flotilla_version: Optional[str] = None
    # its WireGuard public key and port (encrypted networks), if it published them
    wireguard: Optional[dict[str, Any]] = None
    # that key's record: generation, rotated_at, due (a rotation asked and
    # not answered yet), requested_at
    network_key: Optional[dict[str, Any]] = None
    cert: Optional[dict[str, Any]] = None
    version: Optional[int] = None
    created_at: Optional[float] = None
    updated_at: Optional[float] = None
    manager: Optional[ManagerStatus] = None


class RootCA(BaseModel):
    cert: str
    digest: str


class Cluster(BaseModel):
    id: str
    name: str
    spec: dict[str, dict[str, Any]]
    root_ca: RootCA
    revoked: list[str]
    version: Optional[int] = None
    created_at: Optional[float] = None
    updated_at: Optional[float] = None


class Admin(BaseModel):
    name: str
    id: str
    serial: str
    not_after: float
    created_at: float
    revoked_at: Optional[float] = None
    state: str
    current: bool = False


class AdminIssued(Admin):
    cert: str
    ca: str


class JoinTokens(BaseModel):
    worker: str
    manager: str


class JoinToken(BaseModel):
    role: str
    token: str


class Config(BaseModel):
    id: str
    name: str
    labels: dict[str, str]
    size: int
    data: Optional[str] = None
    version: Optional[int] = None
    created_at: Optional[float] = None
    updated_at: Optional[float] = None


class Health(BaseModel):
    status: str
    version: str
    node_id: str
    cluster_id: str
    role: str
    addr: str
    is_leader: bool
    leader_ready: bool
    leader: Optional[dict[str, Any]] = None
    raft: dict[str, Any]
    store_index: int
    refused: dict[str, int]


class Accepted(BaseModel):
    accepted: int


class RaftMembers(BaseModel):
    members: dict[str, Any]
    api: dict[str, str] = {}
