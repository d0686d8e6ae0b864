"""Docker Swarm, as far as a mesh across hosts uses it: membership and the overlay's data path, nothing else.

Pods never run as swarm services (services cannot share a network namespace); the swarm only makes the
attachable overlay network span the nodes. An engine's own view comes from `info()["Swarm"]`; the list of
nodes and the join tokens only a manager can give.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from docker import DockerClient

from meshctl.runtime.engine import engine_errors, patient

SWARM_PORT: Final = 2377  # managers' cluster-management port (`docker swarm init`'s default listen port)
MEMBERSHIP_TIMEOUT_S: Final = 120  # init, join and leave answer once the raft membership settled
INACTIVE: Final = "inactive"
ACTIVE: Final = "active"


@dataclass(frozen=True)
class Membership:
    """An engine's own view of its swarm (`docker info`'s Swarm section)."""
    state: str  # inactive | pending | active | error | locked
    node_id: str
    node_addr: str
    manager: bool  # ControlAvailable: this engine is a manager
    cluster_id: str  # only managers know it; "" on workers
    remote_managers: tuple[str, ...]  # managers' addresses, host:port

    @property
    def active(self) -> bool:
        return self.state == ACTIVE

    def manager_addr(self) -> str:
        """Where other engines join: this manager's own address, else one it knows."""
        if self.manager and self.node_addr:
            return f"{self.node_addr}:{SWARM_PORT}"
        if self.remote_managers:
            return self.remote_managers[0]
        return f"{self.node_addr}:{SWARM_PORT}"


@dataclass(frozen=True)
class SwarmNode:
    """One node as a manager lists it (`docker node ls`)."""
    id: str
    hostname: str
    role: str  # manager | worker
    state: str  # ready | down | unknown | disconnected
    availability: str  # active | pause | drain
    addr: str
    engine: str  # the engine's version
    leader: bool


def membership(client: DockerClient, doing: str = "read the swarm state") -> Membership:
    with engine_errors(doing):
        info: dict[str, Any] = client.info().get("Swarm") or {}
    return Membership(
        state=str(info.get("LocalNodeState") or INACTIVE), node_id=str(info.get("NodeID") or ""),
        node_addr=str(info.get("NodeAddr") or ""), manager=bool(info.get("ControlAvailable")),
        cluster_id=str((info.get("Cluster") or {}).get("ID") or ""),
        remote_managers=tuple(str(m.get("Addr")) for m in info.get("RemoteManagers") or [] if m.get("Addr")))


def init(client: DockerClient, advertise_addr: str | None) -> None:
    with engine_errors("create a swarm (`docker swarm init`)"), patient(client, MEMBERSHIP_TIMEOUT_S):
        client.swarm.init(advertise_addr=advertise_addr)


def worker_token(manager: DockerClient) -> str:
    with engine_errors("read the swarm's join token"):
        manager.swarm.reload()
        return str(manager.swarm.attrs["JoinTokens"]["Worker"])


def join(client: DockerClient, manager_addr: str, token: str, doing: str) -> None:
    with engine_errors(doing), patient(client, MEMBERSHIP_TIMEOUT_S):
        client.swarm.join(remote_addrs=[manager_addr], join_token=token)


def leave(client: DockerClient, doing: str) -> None:
    with engine_errors(doing), patient(client, MEMBERSHIP_TIMEOUT_S):
        client.swarm.leave(force=False)


def nodes(manager: DockerClient) -> list[SwarmNode]:
    with engine_errors("list the swarm's nodes"):
        found = manager.nodes.list()
    return [_node(n.attrs) for n in found]


def remove_node(manager: DockerClient, node_id: str) -> None:
    """Forget a node that has left (a node that left still shows as Down until it is removed)."""
    with engine_errors(f"remove node {node_id[:12]} from the swarm"):
        manager.nodes.get(node_id).remove(force=True)


def _node(attrs: dict[str, Any]) -> SwarmNode:
    spec, status = attrs.get("Spec") or {}, attrs.get("Status") or {}
    description = attrs.get("Description") or {}
    manager_status = attrs.get("ManagerStatus") or {}
    # A manager's Status.Addr can be 0.0.0.0 or 127.0.0.1 (moby#35437, moby#30119); its raft address is right
    addr = str(manager_status.get("Addr") or "").rpartition(":")[0] or str(status.get("Addr") or "")
    return SwarmNode(id=str(attrs.get("ID") or ""), hostname=str(description.get("Hostname") or ""),
                     role=str(spec.get("Role") or ""), state=str(status.get("State") or "unknown"),
                     availability=str(spec.get("Availability") or ""), addr=addr,
                     engine=str((description.get("Engine") or {}).get("EngineVersion") or ""),
                     leader=bool(manager_status.get("Leader")))
