"""`meshctl uninstall`: find by label everything meshctl created on the engine, then remove it.

In a mesh across hosts, every joined node's engine too (pods' file volumes, anchors, couriers, the images
shipped there); a node that does not answer is named, and the rest is removed. The swarm itself stays: it is
Docker's, and other services may use it (`docker swarm leave` ends it)."""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from docker import DockerClient
from docker.models.containers import Container
from docker.models.images import Image
from docker.models.networks import Network
from docker.models.volumes import Volume

from meshctl import const
from meshctl.context import Context
from meshctl.errors import EngineError, MeshError
from meshctl.fsutil import os_error
from meshctl.runtime.engine import engine_errors

MANAGED = {"label": f"{const.LABEL_MANAGED}=true"}


@dataclass
class Removal:
    containers: list[Container] = field(default_factory=list)
    networks: list[Network] = field(default_factory=list)
    images: list[Image] = field(default_factory=list)
    volumes: list[Volume] = field(default_factory=list)
    home: Path | None = None
    nodes: dict[str, Removal] = field(default_factory=dict)  # a cluster's other nodes: what is theirs
    unreachable: dict[str, str] = field(default_factory=dict)  # node -> why it was not asked

    def is_empty(self) -> bool:
        return not (self.containers or self.networks or self.images or self.volumes or self.home
                    or any(not r.is_empty() for r in self.nodes.values()))

    def describe(self) -> list[tuple[str, str]]:
        rows = [("container", c.name) for c in self.containers]
        rows += [("network", n.name) for n in self.networks]
        rows += [("volume", v.name) for v in self.volumes]
        rows += [("image", ", ".join(i.tags) or i.short_id) for i in self.images]
        for node, removal in sorted(self.nodes.items()):
            rows += [(f"{kind} on {node}", name) for kind, name in removal.describe()]
        if self.home:
            rows.append(("mesh home", str(self.home)))
        return rows


def _find(client: DockerClient, where: str) -> Removal:
    with engine_errors(f"list meshctl's containers, networks, volumes and images{where}"):
        return Removal(
            containers=client.containers.list(all=True, filters=MANAGED),
            networks=client.networks.list(filters=MANAGED),
            # children before parents: the sidecar image is built on the base image
            images=sorted(client.images.list(filters=MANAGED), key=lambda i: i.attrs.get("Created", ""),
                          reverse=True),
            volumes=client.volumes.list(filters=MANAGED),
        )


def find_removal(ctx: Context, purge: bool) -> Removal:
    found = _find(ctx.docker(), "")
    nodes = ctx.home.settings().nodes if ctx.home.is_installed() and ctx.home.settings().cluster else []
    for node in nodes:
        try:
            found.nodes[node] = _find(ctx.engine(node), f" on {node}")
        except MeshError as exc:
            found.unreachable[node] = exc.one_line()
    if purge and ctx.home.root.exists():
        found.home = ctx.home.root
    return found


def _remove_network(net: Network, attempts: int = 6) -> None:
    """Retried: Docker 20.10 frees the endpoints of just-removed containers asynchronously, so removing
    their network at once can fail with "has active endpoints"."""
    for attempt in range(attempts):
        try:
            with engine_errors(f"remove network {net.name}"):
                net.remove()
            return
        except EngineError as exc:
            if "active endpoints" not in exc.message or attempt == attempts - 1:
                raise
            time.sleep(0.5 * (attempt + 1))


def _remove_from(client: DockerClient, removal: Removal) -> None:
    for container in sorted(removal.containers, key=_joined_first):
        with engine_errors(f"remove container {container.name}"):
            container.remove(force=True, v=True)
    for volume in removal.volumes:
        with engine_errors(f"remove volume {volume.name}"):
            volume.remove(force=True)
    for net in removal.networks:
        _remove_network(net)
    for image in removal.images:
        with engine_errors(f"remove image {', '.join(image.tags) or image.short_id}"):
            client.images.remove(image.id, force=True)


def _joined_first(container: Container) -> int:
    """Apps that joined a sidecar's network namespace go before their sidecar: removing the namespace's
    owner first makes Docker 20.10 leak a network endpoint, and the network then cannot be removed."""
    mode = str((container.attrs.get("HostConfig") or {}).get("NetworkMode", ""))
    return 0 if mode.startswith("container:") else 1


def remove(ctx: Context, removal: Removal) -> None:
    for node, theirs in removal.nodes.items():  # workers first: the overlay goes last, from the manager
        _remove_from(ctx.engine(node), theirs)
    _remove_from(ctx.docker(), removal)
    if removal.home:
        try:
            shutil.rmtree(removal.home)
        except OSError as exc:
            raise os_error(exc, removal.home, "remove") from exc
