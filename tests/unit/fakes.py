"""The unit tests' fakes, one of each: a Docker engine (images and containers, as docker-py's client answers), a
sidecar's live snapshot, and typed request contexts (calls) on it, without sockets.

A test that needs a fake takes it from here; a fake that grows a feature grows it here for every test.
"""

from __future__ import annotations

import copy
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
    """The attributes meshctl reads from a docker-py Image: its id and its labels (the build hash among them)."""

    def __init__(self, ref: str, labels: Mapping[str, str] | None = None) -> None:
        self.id = f"sha256:{ref}"
        self.attrs: dict[str, Any] = {"Config": {"Labels": dict(labels or {})}}


class FakeContainer:
    """The attributes meshctl reads from a docker-py Container; `remove` marks it gone from later lists.

    `logs` is its output; followed, the stream gives it, then runs `follow` (e.g. to wait, as a quiet container's
    stream does) and ends when that returns. `exec_run` answers every command with `exec_output` (a sidecar's
    admin endpoint read with curl inside it, say), exit code 0, or with what `on_exec(cmd)` returns; the
    commands are kept in `execs`."""

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

    def remove(self, force: bool = False, v: bool = False) -> None:
        self.removed = True

    def exec_run(self, cmd: list[str] | str, **_: Any) -> tuple[int, bytes]:
        self.execs.append(cmd)
        if self.on_exec is not None:
            return self.on_exec(list(cmd) if isinstance(cmd, list) else cmd.split())
        return 0, self.exec_output

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
    """`client.containers.list` as Docker answers it: running ones unless `all`, filtered by name and labels.

    `found` is a list, or a function called per list (to change the answer call by call or raise)."""

    def __init__(self, found: list[FakeContainer] | Callable[[], list[FakeContainer]]) -> None:
        self.found = found

    def list(self, all: bool = False, filters: Mapping[str, Any] | None = None) -> list[FakeContainer]:
        filters = filters or {}
        found = self.found() if callable(self.found) else self.found
        return [c for c in found if not c.removed and (all or c.status == "running")
                and filters.get("name", "") in c.name and _labelled(c, filters.get("label", []))]

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
        if ref not in self.found:
            raise docker.errors.ImageNotFound(ref)
        return self.found[ref]


class FakeEngine:
    """docker-py's DockerClient, as far as meshctl uses it without starting anything: pass it to a Context as
    `docker_factory=lambda: engine`, or to tests/unit/cli.py's `meshctl(..., engine=...)`."""

    def __init__(self, images: Mapping[str, FakeImage] | None = None,
                 containers: list[FakeContainer] | Callable[[], list[FakeContainer]] | None = None) -> None:
        self.images = FakeImages(images or {})
        self.containers = FakeContainers(containers if containers is not None else [])

    def version(self) -> dict[str, str]:
        return {"Arch": "amd64", "ApiVersion": "1.41"}


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
