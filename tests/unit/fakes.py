"""The unit tests' fakes, one of each: a Docker engine (images, containers, networks and swarm membership, as
docker-py's client answers), a sidecar's live snapshot, and typed request contexts (calls) on it, without sockets.

A test that needs a fake takes it from here; a fake that grows a feature grows it here for every test.
"""

from __future__ import annotations

import copy
import itertools
import json
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import docker.errors

from meshctl.errors import EngineError
from sidecar import snapshot
from sidecar.endpoints import Endpoint, Endpoints
from sidecar.engine.call import Call
from sidecar.engine.http1 import RequestHead
from sidecar.engine.plan import INBOUND_PORT, OUTBOUND_PORT, ConnectionInfo

# --- the Docker engine -------------------------------------------------------------------------------------------


class FakeImage:
    """The attributes meshctl reads from a docker-py Image: its id and its labels (the build hash among them).

    `save` streams a tarball of `size` bytes that FakeAPI.load_image turns back into the same image (same id and
    labels), as `docker save` / `docker load` do."""

    def __init__(self, ref: str, labels: Mapping[str, str] | None = None, iid: str | None = None,
                 size: int = 0) -> None:
        self.id = iid or f"sha256:{ref}"
        self.tags = [ref if ":" in ref.rpartition("/")[2] else f"{ref}:latest"]
        self.attrs: dict[str, Any] = {"Config": {"Labels": dict(labels or {})}}
        self.size = size
        self.saved = 0  # how many times it was saved

    def save(self, chunk_size: int = 2 << 20, named: str | bool = False) -> Iterator[bytes]:
        if isinstance(named, str) and named not in self.tags:
            raise docker.errors.InvalidArgument(f"{named} is not a valid tag for this image")
        self.saved += 1
        tag = named if isinstance(named, str) else self.tags[0] if named else None
        header = json.dumps({"ref": tag, "id": self.id, "labels": self.attrs["Config"]["Labels"]}).encode()
        blob = header + b"\n" + b"\0" * self.size
        for start in range(0, len(blob), chunk_size):
            yield blob[start:start + chunk_size]


class FakeContainer:
    """The attributes meshctl reads from a docker-py Container; `remove` marks it gone from later lists.

    `logs` is its output; followed, the stream gives it, then runs `follow` (e.g. to wait, as a quiet container's
    stream does) and ends when that returns. `exec_run` answers every command with `exec_output` (a sidecar's
    admin endpoint read with curl inside it, say), exit code 0, or with what `on_exec(cmd)` returns; the
    commands are kept in `execs`, their keyword arguments (user=...) in `exec_kwargs`."""

    def __init__(self, name: str, labels: Mapping[str, str] | None = None, status: str = "running",
                 attrs: Mapping[str, Any] | None = None, cid: str | None = None, logs: bytes = b"",
                 follow: Callable[[], None] | None = None, exec_output: bytes = b"",
                 on_exec: Callable[[list[str]], tuple[int, bytes]] | None = None) -> None:
        self.id, self.name, self.status = cid or f"id-{name}", name, status
        self.labels = dict(labels or {})
        self.attrs: dict[str, Any] = dict(attrs or {})
        self.removed = False
        self.output, self.on_follow = logs, follow
        self.exec_output = exec_output
        self.on_exec = on_exec
        self.execs: list[list[str] | str] = []
        self.exec_kwargs: list[dict[str, Any]] = []

    def remove(self, force: bool = False, v: bool = False) -> None:
        self.removed = True

    def exec_run(self, cmd: list[str] | str, **kwargs: Any) -> tuple[int, bytes]:
        self.execs.append(cmd)
        self.exec_kwargs.append(kwargs)
        if self.on_exec is not None:
            return self.on_exec(list(cmd) if isinstance(cmd, list) else cmd.split())
        return 0, self.exec_output

    def networks(self) -> list[str]:
        return list((self.attrs.get("NetworkSettings") or {}).get("Networks") or {})

    def logs(self, stream: bool = False, follow: bool = False, **_: Any) -> bytes | Iterator[bytes]:
        return self._stream() if follow else self.output

    def _stream(self) -> Iterator[bytes]:
        yield self.output
        if self.on_follow is not None:
            self.on_follow()


def _labelled(container: FakeContainer, wanted: str | list[str]) -> bool:
    """Docker's label filter: every "key" present, every "key=value" equal."""
    for item in [wanted] if isinstance(wanted, str) else wanted:
        name, has_value, value = item.partition("=")
        if name not in container.labels or (has_value and container.labels[name] != value):
            return False
    return True


class FakeContainers:
    """`client.containers.list` as Docker answers it: running ones unless `all`, filtered by name, labels and
    network (its name, as NetworkSettings.Networks holds it).

    `found` is a list, or a function called per list (to change the answer call by call or raise)."""

    def __init__(self, found: list[FakeContainer] | Callable[[], list[FakeContainer]]) -> None:
        self.found = found

    def list(self, all: bool = False, filters: Mapping[str, Any] | None = None) -> list[FakeContainer]:
        filters = filters or {}
        found = self.found() if callable(self.found) else self.found
        return [c for c in found if not c.removed and (all or c.status == "running")
                and filters.get("name", "") in c.name and _labelled(c, filters.get("label", []))
                and ("network" not in filters or filters["network"] in c.networks())]

    def get(self, name: str) -> FakeContainer:
        found = self.found() if callable(self.found) else self.found
        for c in found:
            if name in (c.name, c.id) and not c.removed:
                return c
        raise docker.errors.NotFound(name)


class FakeImages:
    def __init__(self, found: Mapping[str, FakeImage]) -> None:
        self.found = dict(found)

    def get(self, ref: str) -> FakeImage:
        for name in (ref, f"{ref}:latest"):  # Docker reads a name without a tag as :latest
            if name in self.found:
                return self.found[name]
        raise docker.errors.ImageNotFound(ref)


def _api_error(message: str, status: int = 503) -> docker.errors.APIError:
    class Response:  # what APIError reads from requests' response
        status_code = status
        reason = "error"
    return docker.errors.APIError(message, Response(), explanation=message)


class FakeNetwork:
    """A docker-py Network: its name and attrs (Driver, Attachable, Labels, IPAM); `remove` as Docker refuses it
    while a running container is attached."""

    def __init__(self, engine: FakeEngine, name: str, driver: str = "bridge", subnet: str = "172.30.0.0/24",
                 labels: Mapping[str, str] | None = None, attachable: bool = False) -> None:
        self.engine, self.name, self.id = engine, name, f"net-{name}-{driver}"
        self.attrs: dict[str, Any] = {"Name": name, "Driver": driver, "Attachable": attachable,
                                      "Labels": dict(labels or {}), "IPAM": {"Config": [{"Subnet": subnet}]}}

    def reload(self) -> None:
        pass

    def remove(self) -> None:
        if self.engine.containers.list(filters={"network": self.name}):
            raise _api_error(f"error while removing network: network {self.name} id {self.id} has active endpoints",
                             403)
        self.engine.networks.found.remove(self)


class FakeNetworks:
    def __init__(self, engine: FakeEngine) -> None:
        self.engine, self.found = engine, list[FakeNetwork]()

    def list(self, names: list[str] | None = None, **_: Any) -> list[FakeNetwork]:
        return [n for n in self.found if not names or any(want in n.name for want in names)]  # substring, as Docker

    def create(self, name: str, driver: str = "bridge", ipam: Any = None, check_duplicate: bool = False,
               labels: Mapping[str, str] | None = None, attachable: bool = False, **_: Any) -> FakeNetwork:
        if driver == "overlay" and not (self.engine.cluster and self.engine.is_manager):
            raise _api_error("This node is not a swarm manager. Use \"docker swarm init\" or \"docker swarm "
                             "join\" to connect this node to swarm and try again.")
        if check_duplicate and any(n.name == name for n in self.found):
            raise _api_error(f"network with name {name} already exists", 409)
        pools = (ipam or {}).get("Config") or []
        subnet = pools[0]["Subnet"] if pools else ("10.0.1.0/24" if driver == "overlay" else "172.18.0.0/16")
        net = FakeNetwork(self.engine, name, driver, subnet, labels, attachable)
        self.found.append(net)
        return net


class FakeSwarmCluster:
    """A swarm: its id, worker token and members (engines), some of which the test can mark down."""

    ids = itertools.count(1)

    def __init__(self) -> None:
        number = next(self.ids)
        self.id, self.token = f"cluster{number}", f"SWMTKN-1-worker{number}"
        self.members: list[FakeEngine] = []
        self.managers: list[FakeEngine] = []
        self.down: set[str] = set()  # node ids the managers see as down


class FakeSwarm:
    """`client.swarm` (init, join, leave, reload/attrs), as an engine in or out of a swarm answers it."""

    def __init__(self, engine: FakeEngine) -> None:
        self.engine = engine
        self.attrs: dict[str, Any] = {}

    def init(self, advertise_addr: str | None = None, **_: Any) -> str:
        if self.engine.cluster is not None:
            raise _api_error("This node is already part of a swarm. Use \"docker swarm leave\" to leave this "
                             "swarm and join another one.")
        cluster = FakeSwarmCluster()
        cluster.members.append(self.engine)
        cluster.managers.append(self.engine)
        if advertise_addr:
            self.engine.addr = advertise_addr
        self.engine.cluster = cluster
        self.engine.lan[f"{self.engine.addr}:2377"] = cluster
        return self.engine.node_id

    def reload(self) -> None:
        if not self.engine.is_manager:
            raise _api_error("This node is not a swarm manager.")
        cluster = self.engine.cluster
        assert cluster is not None
        self.attrs = {"ID": cluster.id, "JoinTokens": {"Worker": cluster.token, "Manager": cluster.token + "m"}}

    def join(self, remote_addrs: list[str], join_token: str, **_: Any) -> bool:
        if self.engine.cluster is not None:
            raise _api_error("This node is already part of a swarm.")
        cluster = next((self.engine.lan[a] for a in remote_addrs if a in self.engine.lan), None)
        if cluster is None:
            raise _api_error(f"could not connect to {', '.join(remote_addrs)}: connection refused")
        if join_token != cluster.token:
            raise _api_error("invalid join token", 400)
        cluster.members.append(self.engine)
        self.engine.cluster = cluster
        return True

    def leave(self, force: bool = False) -> bool:
        cluster = self.engine.cluster
        if cluster is None:
            raise _api_error("This node is not part of a swarm", 406)
        if self.engine.is_manager and not force:
            raise _api_error("You are attempting to leave the swarm on a node that is participating as a manager.")
        self.engine.cluster = None
        cluster.down.add(self.engine.node_id)  # a node that left shows as down until it is removed
        return True


class FakeNode:
    def __init__(self, cluster: FakeSwarmCluster, engine: FakeEngine) -> None:
        self.cluster, self.engine = cluster, engine
        manager = engine in cluster.managers
        self.id = engine.node_id
        self.attrs: dict[str, Any] = {
            "ID": engine.node_id, "Description": {"Hostname": engine.hostname,
                                                  "Engine": {"EngineVersion": engine.engine_version}},
            "Spec": {"Role": "manager" if manager else "worker", "Availability": "active"},
            "Status": {"State": "down" if engine.node_id in cluster.down else "ready", "Addr": engine.addr}}
        if manager:
            self.attrs["ManagerStatus"] = {"Leader": True, "Reachability": "reachable", "Addr": f"{engine.addr}:2377"}

    def remove(self, force: bool = False) -> bool:
        if self.id not in self.cluster.down and not force:
            raise _api_error(f"node {self.id} is not down and can't be removed", 400)
        self.cluster.members.remove(self.engine)
        return True


class FakeNodes:
    """`client.nodes` (`docker node ls`): a manager's list of its swarm's members."""

    def __init__(self, engine: FakeEngine) -> None:
        self.engine = engine

    def list(self, **_: Any) -> list[FakeNode]:
        if not self.engine.is_manager:
            raise _api_error("This node is not a swarm manager. Worker nodes can't be used to view or modify "
                             "cluster state.")
        cluster = self.engine.cluster
        assert cluster is not None
        return [FakeNode(cluster, e) for e in cluster.members]

    def get(self, node_id: str) -> FakeNode:
        for node in self.list():
            if node.id == node_id:
                return node
        raise docker.errors.NotFound(f"node {node_id} not found")


class FakeAPI:
    """`client.api`: `load_image` reads the whole stream (as requests sends it) and adds the image it holds."""

    def __init__(self, engine: FakeEngine) -> None:
        self.engine = engine
        self.timeout: int | None = 10  # docker-py's read timeout, seconds
        self.loaded: list[tuple[str, int, int | None]] = []  # (ref, bytes received, timeout then) per load

    def load_image(self, data: Iterable[bytes], quiet: bool | None = None) -> Iterator[dict[str, Any]]:
        blob = b"".join(data)
        header = json.loads(blob.split(b"\n", 1)[0])
        self.loaded.append((header["ref"], len(blob), self.timeout))
        ref = header["ref"] or header["id"]  # saved without a tag: loaded untagged, found by its id
        self.engine.images.found[ref] = FakeImage(ref, header["labels"], iid=header["id"])
        return iter([{"stream": f"Loaded image: {header['ref']}\n"}])


class FakeEngine:
    """docker-py's DockerClient, as far as meshctl uses it without starting anything: pass it to a Context as
    `docker_factory=lambda: engine`, or to tests/unit/cli.py's `meshctl(..., engine=...)`.

    Engines that share a `lan` (a dict of swarm managers' addresses) can join each other's swarm."""

    def __init__(self, images: Mapping[str, FakeImage] | None = None,
                 containers: list[FakeContainer] | Callable[[], list[FakeContainer]] | None = None,
                 hostname: str = "node1", addr: str = "10.0.0.1", lan: dict[str, FakeSwarmCluster] | None = None,
                 engine_version: str = "26.1.5") -> None:
        self.images = FakeImages(images or {})
        self.containers = FakeContainers(containers if containers is not None else [])
        self.hostname, self.addr, self.engine_version = hostname, addr, engine_version
        self.node_id = f"id-{hostname}"
        self.lan = lan if lan is not None else {}
        self.cluster: FakeSwarmCluster | None = None
        self.networks = FakeNetworks(self)
        self.swarm = FakeSwarm(self)
        self.nodes = FakeNodes(self)
        self.api = FakeAPI(self)

    @property
    def is_manager(self) -> bool:
        return self.cluster is not None and self in self.cluster.managers

    def version(self) -> dict[str, str]:
        return {"Arch": "amd64", "ApiVersion": "1.41"}

    def ping(self) -> bool:
        return True

    def info(self) -> dict[str, Any]:
        cluster = self.cluster
        if cluster is None:
            return {"Name": self.hostname, "Swarm": {"LocalNodeState": "inactive", "NodeID": "", "NodeAddr": "",
                                                     "ControlAvailable": False, "RemoteManagers": None}}
        swarm: dict[str, Any] = {
            "LocalNodeState": "active", "NodeID": self.node_id, "NodeAddr": self.addr,
            "ControlAvailable": self.is_manager,
            "RemoteManagers": [{"NodeID": m.node_id, "Addr": f"{m.addr}:2377"} for m in cluster.managers]}
        if self.is_manager:
            swarm["Cluster"] = {"ID": cluster.id}
        return {"Name": self.hostname, "Swarm": swarm}


def node_engines(engines: Mapping[str, FakeEngine | str]) -> Callable[[str], FakeEngine]:
    """A Context's `node_factory` for a cluster's other nodes: context name -> its engine, or the reason it does
    not answer (raised as runtime.nodes.context_client raises it, each time it is asked)."""

    def connect(node: str) -> FakeEngine:
        found = engines.get(node, f"there is no Docker context named {node!r}")
        if isinstance(found, str):
            raise EngineError(found, "check that it runs")
        return found

    return connect


# --- a sidecar's snapshot ----------------------------------------------------------------------------------------

WEB = "spiffe://cluster.local/ns/p/sa/web"
REVIEWS = "spiffe://cluster.local/ns/p/sa/reviews"
BASE: dict[str, Any] = {
    "format": 1, "revision": 1, "hash": "h1", "trust_domain": "cluster.local",
    "proxy": {"name": "p.web", "project": "p", "service": "web", "app": "web", "version": "v1", "identity": WEB},
    "inbound": {"mode": "PERMISSIVE", "published_ports": [], "port_modes": {}},
    "outbound": {},
    "services": [
        {"name": "web", "identity": WEB, "workloads": [{"host": "web", "version": "v1"}]},
        # DISABLE: the router's upstreams are plaintext local origins in the hook tests
        {"name": "reviews", "identity": REVIEWS, "workloads": [
            {"host": "reviews-v1", "version": "v1", "mode": "DISABLE"},
            {"host": "reviews-v2", "version": "v2", "mode": "DISABLE"}]},
    ],
}


class Live:
    """sidecar.live.LiveSnapshot's interface, without a file: a parsed snapshot, or `raw` (BASE when not given)
    with top-level `changes`, parsed by the sidecar's own parser."""

    def __init__(self, raw: Mapping[str, Any] | snapshot.Snapshot | None = None, **changes: Any) -> None:
        self.current = raw if isinstance(raw, snapshot.Snapshot) else snapshot.parse(
            copy.deepcopy(dict(BASE if raw is None else raw)) | changes)
        self.on_apply: list[Any] = []


def vs(http: list[dict[str, Any]], host: str = "reviews") -> list[dict[str, Any]]:
    """A snapshot's `routes`: one VirtualService for `host` with these HTTP rules."""
    return [{"name": f"{host}-vs", "hosts": [host], "http": http}]


def endpoints_of(live: Live, table: Mapping[str, tuple[str, str]]) -> Endpoints:
    """An endpoint table: ip -> (service, workload host); names are never resolved."""
    endpoints = Endpoints(live.current.services)
    services = {s.name: s for s in live.current.services}
    endpoints.by_ip = {ip: Endpoint(services[svc], next(w for w in services[svc].workloads if w.host == host))
                       for ip, (svc, host) in table.items()}
    endpoints._refreshed_at = float("inf")  # never resolve names in a unit test
    return endpoints


# --- requests on it ----------------------------------------------------------------------------------------------


def request_head(method: bytes = b"GET", target: bytes = b"/", headers: list[tuple[bytes, bytes]] | None = None,
                 framing: str = "none", length: int | None = None, upgrade: bool = False,
                 host: str = "reviews:9080") -> RequestHead:
    """A parsed HTTP/1.1 request head (a Host field of `host` when no `headers` are given)."""
    fields = headers if headers is not None else [(b"host", host.encode())]
    return RequestHead(method, target, b"1.1", fields, True, framing, length, host, upgrade)  # type: ignore[arg-type]


def call_to(port: int, head: RequestHead | None = None, listener: int = OUTBOUND_PORT, tls_peer: str | None = None,
            live: Live | None = None) -> Call:
    """A request from 127.0.0.9 to 127.0.0.1:`port` (a local origin), on the outbound listener by default."""
    info = ConnectionInfo(listener, ("127.0.0.1", port), ("127.0.0.9", 40000), None, (live or Live()).current,
                          tls_peer=tls_peer)
    return Call(info, head or request_head())


def call_on(snap: snapshot.Snapshot, target: str = "/", headers: Iterable[tuple[str, str]] | None = None,
            listener: int = INBOUND_PORT, port: int = 9080, tls_peer: str | None = None,
            peer_ip: str = "10.0.0.9") -> Call:
    """A request as it arrives on `listener`, with str headers (a Host is added when none is given)."""
    fields = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers or []]
    if not any(k.lower() == b"host" for k, _ in fields):
        fields.insert(0, (b"host", b"web"))
    info = ConnectionInfo(listener, ("10.0.0.2", port), (peer_ip, 4000), None, snap, tls_peer=tls_peer)
    return Call(info, request_head(target=target.encode("latin-1"), headers=fields, host="web"))
