"""`meshctl up FILE` / `meshctl down FILE`: run a meshed compose project, on one host or across several.

On one host this is `docker compose up -d` / `down`. In a cluster, pods run on the nodes their placement
names (Pod.node, from `mesh.host` or `inject --place`):
- the project's networks are attachable swarm overlays, created on the manager (a worker cannot create one);
- each pod's files are delivered into its volume on its node (runtime.delivery) before its sidecar starts;
- the meshed file is split per node (a pod's sidecar and app stay together; a `depends_on` that crosses
  hosts is dropped: compose can only wait for services it runs), written to <home>/cluster/<project>/, and
  `docker compose` runs on each node through its Docker context, with the same project name everywhere
  (after the node's anchor: runtime.deployments, which also brings a returning node's part back).
"""

from __future__ import annotations

import copy
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker.errors
import yaml

from meshctl import const
from meshctl.context import Context
from meshctl.errors import InvalidInput, MeshError
from meshctl.fsutil import atomic_write, ensure_dir, read_text
from meshctl.inject import placement, rewrite
from meshctl.inject.load import SERVICE_NAME_RE, depends_on_names
from meshctl.mesh import MeshedPods
from meshctl.runtime import delivery, deployments
from meshctl.runtime.compose import compose_down, require_compose, run_compose
from meshctl.runtime.engine import engine_errors
from meshctl.runtime.nodes import MANAGER, compose_env, shown

PROJECT_LABEL = "com.docker.compose.project"
# compose's own rule for a project name (inject writes it so): it names <home>/cluster/<project>/, which
# `meshctl down` empties, and the pods' directories, so a hand-edited `../ca` must never get that far
PROJECT_RE = re.compile(r"^[a-z0-9][a-z0-9_-]*$")


@dataclass
class Deployed:
    project: str
    nodes: dict[str, list[str]] = field(default_factory=dict)  # shown node -> services started there
    warnings: list[str] = field(default_factory=list)


def load_meshed(file: Path) -> tuple[dict[str, Any], str]:
    """The meshed document and its project; one line naming the file when it is not one."""
    try:
        data = yaml.safe_load(read_text(file))
    except yaml.YAMLError as exc:
        raise InvalidInput(f"{file} is not valid YAML: {exc}".splitlines()[0], "give the file `meshctl inject` "
                           "wrote") from None
    marker = data.get(rewrite.MARKER) if isinstance(data, dict) else None
    if not isinstance(marker, dict) or not marker.get("project"):
        raise InvalidInput(f"{file} is not a meshed compose file", f"mesh it first: meshctl inject {file} -o "
                           "meshed.yaml")
    project, services = str(marker["project"]), data.get("services")
    again = "mesh the original again with `meshctl inject` (a meshed file is not edited by hand)"
    if not PROJECT_RE.fullmatch(project):
        raise InvalidInput(f"{file}: `{rewrite.MARKER}.project` {project!r} is not a compose project name "
                           "(lower-case letters, digits, - and _)", again)
    if not isinstance(services, dict) or not services:
        raise InvalidInput(f"{file} has no `services` mapping", again)
    for name in services:
        if not SERVICE_NAME_RE.fullmatch(str(name)) or not isinstance(services[name], dict):
            raise InvalidInput(f"{file}: service {str(name)!r} is not a valid compose service", again)
    return data, project


def check_mode(data: dict[str, Any], file: Path, cluster: bool, joined: list[str]) -> None:
    """The file was meshed for this mesh: for one host or for a cluster as it is now, each pod on a joined node."""
    meshed_for_cluster = "overlays" in data[rewrite.MARKER]
    if meshed_for_cluster and not cluster:
        raise InvalidInput(f"{file} was meshed for a cluster, but this mesh runs on one host",
                           f"mesh the original again (meshctl inject SOURCE -o {file}), or run `meshctl cluster "
                           "init` first")
    if cluster and not meshed_for_cluster:
        raise InvalidInput(f"{file} was meshed for one host, but this mesh is a cluster (`meshctl cluster init`)",
                           f"mesh the original again: meshctl inject SOURCE -o {file}")
    services: dict[str, Any] = data["services"]
    known = [MANAGER, *joined]
    nodes = {name: node_of(name, svc, services, _placed(data)) for name, svc in services.items()}
    for name, node in nodes.items():
        if node not in known:
            raise InvalidInput(f"{file}: service {name!r} is placed on {node!r}, which is not a node of this mesh "
                               f"(nodes: {', '.join(shown(n) for n in known)})",
                               "join it with `meshctl cluster join CONTEXT`, or mesh the original again with "
                               "another placement")
    for name, svc in services.items():
        for key, other in _same_host_refs(svc):
            if other in nodes and nodes[other] != nodes[name]:
                raise InvalidInput(f"{file}: service {name!r} (on {shown(nodes[name])}) has `{key}: {other}`, "
                                   f"which runs on {shown(nodes[other])}: compose can only do that on one host",
                                   f"place {name!r} and {other!r} on the same node (mesh.host or inject --place)")


def _same_host_refs(svc: dict[str, Any]) -> list[tuple[str, str]]:
    """The services `svc` needs on its own host: a namespace, volumes, links or a base it extends (a
    `depends_on` across hosts is only dropped, by `split`)."""
    refs = []
    mode = str(svc.get("network_mode") or "")
    if mode.startswith("service:"):
        refs.append(("network_mode", mode[len("service:"):]))
    for entry in svc.get("volumes_from") or []:
        if not str(entry).startswith("container:"):
            refs.append(("volumes_from", str(entry).split(":", 1)[0]))
    for entry in svc.get("links") or []:
        refs.append(("links", str(entry).split(":", 1)[0]))
    extends = svc.get("extends")
    if isinstance(extends, dict) and not extends.get("file") and extends.get("service"):
        refs.append(("extends", str(extends["service"])))
    elif isinstance(extends, str):
        refs.append(("extends", extends))
    return refs


def node_of(name: str, svc: dict[str, Any], services: dict[str, Any], placed: dict[str, str] | None = None) -> str:
    """A pod's node from its sidecar's label; a service without a sidecar's from `inject --place` (kept in the
    marker's `place`) or its own `mesh.host` label."""
    labels: dict[str, Any] = svc["labels"] if isinstance(svc.get("labels"), dict) else {}
    if labels.get(const.LABEL_COMPONENT) == "sidecar":
        return str(labels.get(rewrite.LABEL_NODE, MANAGER))
    mode = str(svc.get("network_mode") or "")
    if mode.startswith("service:") and mode[len("service:"):] in services:
        sidecar = mode[len("service:"):]
        return node_of(sidecar, services[sidecar], services)
    return placement.unmeshed_node(svc, placed or {}, name)


def _placed(data: dict[str, Any]) -> dict[str, str]:
    place = data[rewrite.MARKER].get(placement.MARKER_KEY)
    return {str(k): str(v) for k, v in place.items()} if isinstance(place, dict) else {}


def split(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """One compose document per node: its services, their dependencies on the same node, the rest as is."""
    services: dict[str, Any] = data.get("services") or {}
    by_node: dict[str, list[str]] = {}
    for name, svc in services.items():
        by_node.setdefault(node_of(name, svc, services, _placed(data)), []).append(name)
    out = {}
    for node, names in by_node.items():
        doc = copy.deepcopy(data)
        doc["services"] = {}
        for name in names:
            svc = copy.deepcopy(services[name])
            deps = svc.get("depends_on")
            if isinstance(deps, dict):
                svc["depends_on"] = {k: v for k, v in deps.items() if k in names}
            elif isinstance(deps, list):
                svc["depends_on"] = [d for d in depends_on_names(svc) if d in names]
            if not svc.get("depends_on"):
                svc.pop("depends_on", None)
            doc["services"][name] = svc
        used = {str(v).split(":", 1)[0] for s in doc["services"].values() for v in s.get("volumes") or []
                if isinstance(v, str)}
        volumes = doc.get("volumes")
        if isinstance(volumes, dict):  # another node's pod volumes do not exist here
            doc["volumes"] = {k: v for k, v in volumes.items()
                              if not str(k).startswith("meshctl-proxy-") or k in used}
        out[node] = doc
    return out


def bind_mount_warnings(docs: dict[str, dict[str, Any]]) -> list[str]:
    """A bind mount on another node mounts that node's path: compose sends the path, not the files."""
    out = []
    for node, doc in sorted(docs.items()):
        if node == MANAGER:
            continue
        for name, svc in doc["services"].items():
            for entry in svc.get("volumes") or []:
                if isinstance(entry, dict):
                    source = str(entry.get("source") or "") if entry.get("type") == "bind" else ""
                else:
                    source = str(entry).split(":", 1)[0] if ":" in str(entry) else ""
                if source.startswith(("/", ".", "~")):
                    out.append(f"service {name!r} runs on {node} and bind-mounts {source}: that path is read on "
                               f"{node}'s host, not this one (copy the files there, or use a named volume)")
    return out


def ensure_overlays(ctx: Context, names: list[str], project: str) -> None:
    client = ctx.docker()
    with engine_errors(f"create the networks of project {project}"):
        for name in names:
            if not [n for n in client.networks.list(names=[name]) if n.name == name]:
                client.networks.create(name, driver="overlay", attachable=True, check_duplicate=True,
                                       labels={const.LABEL_MANAGED: "true", const.LABEL_COMPONENT: "project-network",
                                               PROJECT_LABEL: project})


def up(ctx: Context, file: Path) -> Deployed:
    data, project = load_meshed(file)
    done = Deployed(project)
    settings = ctx.home.settings()
    check_mode(data, file, settings.cluster, settings.nodes)
    tool = require_compose()
    if not settings.cluster:
        run_compose(tool, project, file, "up", "-d", "--remove-orphans")
        done.nodes[shown(MANAGER)] = list(data.get("services") or {})
        return done
    overlays = [str(n) for n in data[rewrite.MARKER].get("overlays") or []]
    ensure_overlays(ctx, overlays, project)
    docs = split(data)
    done.warnings += bind_mount_warnings(docs)
    pods = MeshedPods.of(ctx.home)
    deployment = deployments.Deployment(project, str(file.parent.resolve()), tuple(overlays), tuple(docs))
    for node, doc in docs.items():
        dirs = [pods.directory(project, name) for name in doc["services"]
                if (pods.directory(project, name) / "proxy.json").is_file()]
        report = delivery.deliver(ctx.home, dirs, force=True, create=True)
        if report.failed:
            raise MeshError(report.warnings()[0].split(";")[0], "start it (or `meshctl cluster status` to see "
                            "which node is gone), then run `meshctl up` again")
        path = deployments.part_file(ctx.home, project, node)
        ensure_dir(path.parent, 0o700)
        atomic_write(path, yaml.safe_dump(doc, sort_keys=False), mode=0o600)
    deployments.save(ctx.home, deployment)  # from now on the agent brings a returning node's part back

    def start(node: str) -> None:
        deployments.start_part(ctx.home, deployment, node, tool, ctx.engine(node), settings.network)

    with ThreadPoolExecutor(max_workers=len(docs)) as pool:
        list(pool.map(start, docs))
    for node, doc in docs.items():
        done.nodes[shown(node)] = list(doc["services"])
    for node in [MANAGER, *settings.nodes]:
        if node not in docs:  # pods placed elsewhere since the last `up`
            done.warnings += _remove_project(ctx, node, project)
    return done


def _remove_project(ctx: Context, node: str, project: str, services: list[str] | None = None) -> list[str]:
    try:
        client = ctx.engine(node)
        with engine_errors(f"remove project {project} on {shown(node)}"):
            for container in client.containers.list(all=True, filters={"label": f"{PROJECT_LABEL}={project}"}):
                container.remove(force=True)
            for service in services or []:
                delivery.remove_courier(client, project, service)
        deployments.remove_anchor(client, project)
    except MeshError as exc:
        return [f"node {shown(node)}: {exc.one_line()}"]
    return []


def down(ctx: Context, file: Path) -> Deployed:
    data, project = load_meshed(file)
    done = Deployed(project)
    tool = require_compose()
    if not ctx.home.settings().cluster or "overlays" not in data[rewrite.MARKER]:  # meshed for (and run on) one host
        compose_down(tool, project, file)
        return done
    services = list(data.get("services") or {})
    for node in [MANAGER, *ctx.home.settings().nodes]:
        per_node = deployments.part_file(ctx.home, project, node)
        if per_node.is_file():
            try:
                compose_down(tool, project, per_node, env=compose_env(node))
            except MeshError as exc:
                done.warnings.append(f"node {shown(node)}: {exc.one_line()}")
        done.warnings += _remove_project(ctx, node, project, services)
        done.nodes[shown(node)] = []
    for directory in MeshedPods.of(ctx.home).directories():
        if directory.parent.name == project:
            (directory / delivery.DELIVERED).unlink(missing_ok=True)
    _remove_overlays(ctx, list(data[rewrite.MARKER].get("overlays") or []), project)
    deployments.forget(ctx.home, project)
    return done


def _remove_overlays(ctx: Context, names: list[str], project: str, attempts: int = 5) -> None:
    """Endpoints of containers just removed are freed asynchronously, more so across hosts: retry. Only the
    networks `meshctl up` made for this project go (the file's list could name the mesh's own, or the user's)."""
    client = ctx.docker()
    for name in names:
        for attempt in range(attempts):
            try:
                for net in client.networks.list(names=[name]):
                    labels = net.attrs.get("Labels") or {}
                    if net.name == name and labels.get(PROJECT_LABEL) == project and \
                            labels.get(const.LABEL_COMPONENT) == "project-network":
                        net.remove()
                break
            except docker.errors.APIError:
                time.sleep(1 + attempt)
