"""The running sidecars, found by label: the control plane's view of its data plane."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import TypeVar

from docker import DockerClient
from docker.models.containers import Container

from meshctl import const
from meshctl.errors import MeshError
from meshctl.runtime import reach
from meshctl.runtime.engine import engine_errors

L = const.LABEL_PREFIX
READERS = 8  # sidecars read at once: each read mostly waits on one sidecar's HTTP answer
T = TypeVar("T")


@dataclass(frozen=True)
class Proxy:
    name: str  # project.service, as in the proxies/ directory and snapshots
    container: str
    project: str
    service: str
    app: str
    version: str
    state: str  # running, exited, ...
    health: str  # healthy, starting, unhealthy, or "" when there is no healthcheck
    addresses: dict[str, str]  # network name -> IP
    account: str = ""  # the identity's service account (sidecars injected before it was labelled: "")
    node: str = ""  # the Docker context of the host it runs on ("" = the manager), see runtime.nodes
    cid: str = ""  # the container's id: two nodes' compose may give replicas the same container name
    via: str = ""  # in a cluster: the host that reaches it through its node's engine (runtime.reach), not its IP

    @property
    def ready(self) -> bool:
        return self.state == "running" and self.health == "healthy"

    @property
    def service_account(self) -> str:
        return self.account or self.app

    def address_on(self, network: str) -> str | None:
        """Where HTTP reaches it: its IP on `network`, or in a cluster its route through the engine API."""
        return self.via or self.addresses.get(network) or next(iter(self.addresses.values()), None)


def _proxy(c: Container) -> Proxy:
    labels = c.labels
    net = (c.attrs.get("NetworkSettings") or {}).get("Networks") or {}
    health = ((c.attrs.get("State") or {}).get("Health") or {}).get("Status", "")
    return Proxy(name=f"{labels.get(f'{L}.project')}.{labels.get(f'{L}.service')}", container=c.name,
                 project=labels.get(f"{L}.project", ""), service=labels.get(f"{L}.service", ""),
                 app=labels.get(f"{L}.app", ""), version=labels.get(f"{L}.subset", ""),
                 state=(c.attrs.get("State") or {}).get("Status", c.status), health=health,
                 addresses={n: v["IPAddress"] for n, v in net.items() if v.get("IPAddress")},
                 account=labels.get(f"{L}.service-account", ""), node=labels.get(f"{L}.node", ""),
                 cid=c.id)


def _sidecars(client: DockerClient, project: str | None, doing: str) -> list[Container]:
    filters = [f"{const.LABEL_COMPONENT}=sidecar"] + ([f"{L}.project={project}"] if project else [])
    with engine_errors(doing):
        return list(client.containers.list(all=True, filters={"label": filters}))


def list_proxies(client: DockerClient, project: str | None = None) -> list[Proxy]:
    """The sidecars on one engine (a single-host mesh's, or one node's)."""
    return sorted((_proxy(c) for c in _sidecars(client, project, "list sidecars")), key=lambda p: p.name)


@dataclass
class Listing:
    """The sidecars of every node that answered, and why each other node did not."""

    proxies: list[Proxy] = field(default_factory=list)
    unreachable: dict[str, str] = field(default_factory=dict)  # node -> the reason, one line


def _listed(client: DockerClient, node: str, project: str | None, routed: bool) -> list[Proxy]:
    proxies = []
    for c in _sidecars(client, project, f"list sidecars on node {node or 'manager'}"):
        proxy = _proxy(c)
        # a sidecar labelled before nodes were runs where it was listed
        proxies.append(replace(proxy, node=proxy.node or node, via=reach.route(c) if routed else ""))
    return proxies


def list_everywhere(engine: Callable[[str], DockerClient], nodes: Sequence[str], project: str | None = None,
                    routed: bool = False) -> Listing:
    """Every node's sidecars, listed in parallel, as one list sorted by name. Two contexts may name one engine:
    a container is listed once (from the node its label names, when that node listed it). A node whose engine
    cannot be reached or listed is left out and named in `unreachable`. `routed`: each proxy's `via` reaches
    it through the engine that listed it."""

    def one(node: str) -> list[Proxy] | str:
        try:
            return _listed(engine(node), node, project, routed)
        except MeshError as exc:
            return exc.message
        except Exception as exc:  # e.g. an SSH transport's own error: that node is down, the listing goes on
            return f"{type(exc).__name__}: {exc}"

    out = Listing()
    seen: dict[str, tuple[Proxy, str]] = {}  # container id -> (proxy, the node it was listed from)
    with ThreadPoolExecutor(max_workers=max(1, len(nodes))) as pool:
        results = list(pool.map(one, nodes))
    for node, result in zip(nodes, results, strict=True):
        if isinstance(result, str):
            out.unreachable[node] = result
            continue
        for proxy in result:
            kept = seen.get(proxy.cid)
            if kept is None or (kept[1] != proxy.node and node == proxy.node):
                seen[proxy.cid] = (proxy, node)
    out.proxies = sorted((p for p, _ in seen.values()), key=lambda p: (p.name, p.container))
    return out


def read_each(proxies: Sequence[Proxy], read: Callable[[Proxy], T], workers: int = READERS) -> list[T]:
    """read(proxy) for every proxy, in parallel threads; the results in the proxies' order. The one fan-out that
    metrics, spans, sync status and a canary's counters are all read through."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(read, proxies))
