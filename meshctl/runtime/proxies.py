"""The running sidecars, found by label: the control plane's view of its data plane."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

from docker import DockerClient
from docker.models.containers import Container

from meshctl import const
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

    @property
    def ready(self) -> bool:
        return self.state == "running" and self.health == "healthy"

    @property
    def service_account(self) -> str:
        return self.account or self.app

    def address_on(self, network: str) -> str | None:
        return self.addresses.get(network) or next(iter(self.addresses.values()), None)


def _proxy(c: Container) -> Proxy:
    labels = c.labels
    net = (c.attrs.get("NetworkSettings") or {}).get("Networks") or {}
    health = ((c.attrs.get("State") or {}).get("Health") or {}).get("Status", "")
    return Proxy(name=f"{labels.get(f'{L}.project')}.{labels.get(f'{L}.service')}", container=c.name,
                 project=labels.get(f"{L}.project", ""), service=labels.get(f"{L}.service", ""),
                 app=labels.get(f"{L}.app", ""), version=labels.get(f"{L}.subset", ""),
                 state=(c.attrs.get("State") or {}).get("Status", c.status), health=health,
                 addresses={n: v["IPAddress"] for n, v in net.items() if v.get("IPAddress")},
                 account=labels.get(f"{L}.service-account", ""))


def list_proxies(client: DockerClient, project: str | None = None) -> list[Proxy]:
    filters = [f"{const.LABEL_COMPONENT}=sidecar"] + ([f"{L}.project={project}"] if project else [])
    with engine_errors("list sidecars"):
        containers = client.containers.list(all=True, filters={"label": filters})
    return sorted((_proxy(c) for c in containers), key=lambda p: p.name)


def read_each(proxies: Sequence[Proxy], read: Callable[[Proxy], T], workers: int = READERS) -> list[T]:
    """read(proxy) for every proxy, in parallel threads; the results in the proxies' order. The one fan-out that
    metrics, spans, sync status and a canary's counters are all read through."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(read, proxies))
