"""What `meshctl up` started on each node, how a node's part of a project starts, and how it comes back.

Two facts of Docker 26 on swarm workers shape this (checked on Docker-in-Docker nodes, see the e2e tests):
- a worker lists an attachable overlay only while a running container uses it, so `docker compose up` there
  fails with "network … not found" although the manager has it. Each node running a project therefore keeps
  an anchor: a tiny container of the sidecar image attached to the project's overlays, started first;
- after a node's engine restarts, a pod's app (`network_mode: service:…`) fails to start before its
  sidecar, and a sidecar may fail to re-attach its overlays; Docker does not retry either. The mesh's agent
  (meshctl.pki.agent) therefore brings a deployed project's part back on a node that returns: anchor first,
  then `docker compose up -d` with the node's file.

    <home>/cluster/<project>/deployment.json   the meshed file's directory, the overlays, the nodes used
    <home>/cluster/<project>/<node>.yaml       the part of the meshed file that runs on that node
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Final

import docker.errors
from docker import DockerClient

from meshctl import const
from meshctl.errors import MeshError
from meshctl.fsutil import atomic_write, read_text
from meshctl.home import MeshHome
from meshctl.runtime.compose import ComposeTool, require_compose, run_compose
from meshctl.runtime.engine import engine_errors
from meshctl.runtime.nodes import compose_env, context_client, shown

log = logging.getLogger(__name__)

PROJECT_LABEL: Final = "com.docker.compose.project"
COMPONENT_ANCHOR: Final = "anchor"
RECORD: Final = "deployment.json"
REVIVE_EVERY_S = 10.0  # a node's part is started again at most this often


@dataclass(frozen=True)
class Deployment:
    project: str
    project_directory: str  # where compose resolves the meshed file's relative paths
    overlays: tuple[str, ...]  # the project's networks (the mesh overlay is added to each anchor)
    nodes: tuple[str, ...]  # the nodes with a part of it ("" = the manager)


def deployments_dir(home: MeshHome) -> Path:
    return home.root / "cluster"


def part_file(home: MeshHome, project: str, node: str) -> Path:
    return deployments_dir(home) / project / f"{shown(node)}.yaml"


def save(home: MeshHome, deployment: Deployment) -> None:
    atomic_write(deployments_dir(home) / deployment.project / RECORD, json.dumps(asdict(deployment)), mode=0o600)


def forget(home: MeshHome, project: str) -> None:
    folder = deployments_dir(home) / project
    for path in folder.glob("*") if folder.is_dir() else []:
        path.unlink()
    with contextlib.suppress(OSError):
        folder.rmdir()


def recorded(home: MeshHome) -> list[Deployment]:
    out = []
    for path in sorted(deployments_dir(home).glob(f"*/{RECORD}")):
        try:
            data = json.loads(read_text(path))
            out.append(Deployment(str(data["project"]), str(data["project_directory"]),
                                  tuple(data["overlays"]), tuple(data["nodes"])))
        except (MeshError, ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring %s: %s", path, exc)
    return out


def anchor_name(project: str) -> str:
    return f"meshctl-anchor-{project}"


def ensure_anchor(client: DockerClient, project: str, networks: list[str], image: str, attempts: int = 3) -> None:
    """A running anchor attached to `networks` on this engine (created, started or re-attached as needed)."""
    name = anchor_name(project)
    with engine_errors(f"start {name}"):
        try:
            anchor = client.containers.get(name)
        except docker.errors.NotFound:
            anchor = client.containers.create(
                image, command=["sleep", "infinity"], name=name, entrypoint=[], network=networks[0],
                labels={const.LABEL_MANAGED: "true", const.LABEL_COMPONENT: COMPONENT_ANCHOR,
                        f"{const.LABEL_PREFIX}.project": project}, mem_limit="16m", stop_signal="SIGKILL")
        for attempt in range(attempts):  # re-attaching a swarm network after an engine restart can fail once
            try:
                if anchor.status != "running":
                    anchor.start()
                break
            except docker.errors.APIError:
                if attempt == attempts - 1:
                    raise
                time.sleep(1 + attempt)
            anchor.reload()
        anchor.reload()
        attached = set((anchor.attrs.get("NetworkSettings") or {}).get("Networks") or {})
        for network in networks:
            if network not in attached:  # by name: a worker cannot look up an overlay it does not list yet
                client.api.connect_container_to_network(anchor.id, network)


def remove_anchor(client: DockerClient, project: str) -> None:
    with engine_errors(f"remove {anchor_name(project)}"), contextlib.suppress(docker.errors.NotFound):
        client.containers.get(anchor_name(project)).remove(force=True)


def start_part(home: MeshHome, deployment: Deployment, node: str, tool: ComposeTool | None = None,
               client: DockerClient | None = None, mesh_network: str | None = None) -> None:
    """`docker compose up -d` of the project's part on `node`, its anchor started first."""
    settings = home.settings()
    client = client or context_client(node)
    ensure_anchor(client, deployment.project, [mesh_network or settings.network, *deployment.overlays],
                  settings.proxy_image)
    run_compose(tool or require_compose(), deployment.project, part_file(home, deployment.project, node),
                "--project-directory", deployment.project_directory, "up", "-d", "--remove-orphans",
                env=compose_env(node))


def _stopped(client: DockerClient, project: str) -> list[str]:
    with engine_errors(f"list project {project}"):
        containers = client.containers.list(all=True, filters={"label": f"{PROJECT_LABEL}={project}"})
    return sorted(c.name for c in containers if c.status != "running")


_last_try: dict[tuple[str, str], float] = {}
_missing: set[Path] = set()  # part files already reported missing


def revive(home: MeshHome, client_for: Callable[[str], DockerClient] = context_client) -> list[str]:
    """Start again each deployed part whose containers are not all running on a node that answers (after
    the node came back). Returns what was revived, as `project on node` lines.

    Each part is looked at no more often than REVIVE_EVERY_S, answered or not, and a node that does not
    answer is tried once per round, not once per project: the agent's round (certificate renewal) must not
    wait on a dead node's connect timeout again and again."""
    if not home.settings().cluster:
        return []
    revived = []
    clients: dict[str, DockerClient | None] = {}  # this round's: None = did not answer
    for deployment in recorded(home):
        for node in deployment.nodes:
            key = (deployment.project, node)
            if time.monotonic() - _last_try.get(key, -REVIVE_EVERY_S) < REVIVE_EVERY_S:
                continue
            _last_try[key] = time.monotonic()
            part = part_file(home, deployment.project, node)
            if not part.is_file():
                if part not in _missing:
                    _missing.add(part)
                    log.warning("%s is missing: %s on %s is not started again until `meshctl up` writes it",
                                part, deployment.project, shown(node))
                continue
            _missing.discard(part)
            try:
                if node not in clients:
                    clients[node] = None
                    clients[node] = client_for(node)
                client = clients[node]
                if client is None:
                    continue
                stopped = _stopped(client, deployment.project)
                if not stopped:
                    continue
                start_part(home, deployment, node, client=client)
            except MeshError as exc:
                log.info("%s on %s not revived yet: %s", deployment.project, shown(node), exc.one_line())
                continue
            revived.append(f"{deployment.project} on {shown(node)} ({', '.join(stopped)})")
    return revived
