"""`meshctl uninstall`: find by label everything meshctl created on the engine, then remove it."""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from docker.models.containers import Container
from docker.models.images import Image
from docker.models.networks import Network

from meshctl import const
from meshctl.context import Context
from meshctl.errors import EngineError
from meshctl.fsutil import os_error
from meshctl.runtime.engine import engine_errors

MANAGED = {"label": f"{const.LABEL_MANAGED}=true"}


@dataclass
class Removal:
    containers: list[Container] = field(default_factory=list)
    networks: list[Network] = field(default_factory=list)
    images: list[Image] = field(default_factory=list)
    home: Path | None = None

    def is_empty(self) -> bool:
        return not (self.containers or self.networks or self.images or self.home)

    def describe(self) -> list[tuple[str, str]]:
        rows = [("container", c.name) for c in self.containers]
        rows += [("network", n.name) for n in self.networks]
        rows += [("image", ", ".join(i.tags) or i.short_id) for i in self.images]
        if self.home:
            rows.append(("mesh home", str(self.home)))
        return rows


def find_removal(ctx: Context, purge: bool) -> Removal:
    client = ctx.docker()
    with engine_errors("list meshctl's containers, networks and images"):
        found = Removal(
            containers=client.containers.list(all=True, filters=MANAGED),
            networks=client.networks.list(filters=MANAGED),
            # children before parents: the sidecar image is built on the base image
            images=sorted(client.images.list(filters=MANAGED), key=lambda i: i.attrs.get("Created", ""),
                          reverse=True),
        )
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


def _joined_first(container: Container) -> int:
    """Apps that joined a sidecar's network namespace go before their sidecar: removing the namespace's
    owner first makes Docker 20.10 leak a network endpoint, and the network then cannot be removed."""
    mode = str((container.attrs.get("HostConfig") or {}).get("NetworkMode", ""))
    return 0 if mode.startswith("container:") else 1


def remove(ctx: Context, removal: Removal) -> None:
    for container in sorted(removal.containers, key=_joined_first):
        with engine_errors(f"remove container {container.name}"):
            container.remove(force=True, v=True)
    for net in removal.networks:
        _remove_network(net)
    for image in removal.images:
        with engine_errors(f"remove image {', '.join(image.tags) or image.short_id}"):
            ctx.docker().images.remove(image.id, force=True)
    if removal.home:
        try:
            shutil.rmtree(removal.home)
        except OSError as exc:
            raise os_error(exc, removal.home, "remove") from exc
