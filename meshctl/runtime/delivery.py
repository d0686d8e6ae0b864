"""Deliver a pod's files (certificate, key, trust bundle, snapshot) to its host through the engine API.

On one host, a sidecar reads its directory of the mesh home through a bind mount. Across hosts there is
no shared disk, so each pod has a named volume on its own host, and a courier: a container that is created,
never started, with the volume mounted. `put_archive` into the courier writes into the volume, with the
tar's owner (uid 1337) and modes (the key 0600). The CA key is never in the archive.

Docker extracts a file by removing it and writing it anew, so a reader could see a half-written file.
The archive therefore ends with manifest.json (each file's SHA-256): the sidecar's supervisor copies the
set into the proxy's own directory only when every file matches it (sidecar.supervisor).

Each directory remembers the manifest it last delivered and the node it went to (.delivered), so a file
written while its node was down is delivered by the next `deliver` of that directory, or by the certificate
agent's next round, and a pod placed on another node since gets its files there.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import logging
import tarfile
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import docker.errors
from docker import DockerClient
from docker.models.containers import Container

from meshctl import __version__, const
from meshctl.errors import EngineError, MeshError
from meshctl.fsutil import atomic_write
from meshctl.home import MeshHome
from meshctl.mesh import BUNDLE_PEM, CERT_PEM, KEY_PEM, SNAPSHOT_JSON, MeshedPods, ProxyInfo
from meshctl.runtime.engine import engine_errors
from meshctl.runtime.nodes import context_client, shown
from sidecar.contract import DELIVERY_FILES, MANIFEST_JSON, PROXY_UID

log = logging.getLogger(__name__)

FILES: Final = (CERT_PEM, KEY_PEM, BUNDLE_PEM, SNAPSHOT_JSON)
assert FILES == DELIVERY_FILES, "the sidecar verifies the same files the CLI delivers"
DELIVERED: Final = ".delivered"  # "<digest> <node>" last delivered, in the proxy's directory
MOUNT: Final = "/etc/meshctl"
COMPONENT_VOLUME: Final = "proxy-files"
COMPONENT_COURIER: Final = "courier"
WORKERS = 8


def volume_name(project: str, service: str) -> str:
    return f"meshctl-proxy-{project}-{service}"


def courier_name(project: str, service: str) -> str:
    return f"meshctl-courier-{project}-{service}"


def _labels(component: str, info: ProxyInfo) -> dict[str, str]:
    return {const.LABEL_MANAGED: "true", const.LABEL_COMPONENT: component, const.LABEL_VERSION: __version__,
            f"{const.LABEL_PREFIX}.project": info.project, f"{const.LABEL_PREFIX}.service": info.pod.service}


def manifest(directory: Path) -> dict[str, str]:
    """name -> SHA-256 of each file present. A symlink is never followed: whatever it points to (the CA's
    key is a few directories up) must not leave this host in an archive."""
    out = {}
    for name in FILES:
        path = directory / name
        if path.is_file() and not path.is_symlink():
            out[name] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def _digest(files: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()


def pack(directory: Path, files: dict[str, str]) -> bytes:
    """The archive: the files owned by the proxy's uid (the key 0600), then the manifest that vouches for them."""
    buf = io.BytesIO()
    now = time.time()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        entries = [(name, (directory / name).read_bytes(), 0o600 if name == KEY_PEM else 0o644) for name in files]
        entries.append((MANIFEST_JSON, json.dumps({"files": files}, sort_keys=True).encode(), 0o644))
        for name, data, mode in entries:
            member = tarfile.TarInfo(name)
            member.size, member.mode, member.mtime = len(data), mode, now
            member.uid = member.gid = PROXY_UID
            tar.addfile(member, io.BytesIO(data))
    return buf.getvalue()


def ensure_courier(client: DockerClient, info: ProxyInfo, image: str) -> Container:
    """The pod's volume and its courier on this engine, created if missing."""
    project, service = info.project, info.pod.service
    name = courier_name(project, service)
    with engine_errors(f"create the files volume of {info.name}"):
        try:
            return client.containers.get(name)
        except docker.errors.NotFound:
            pass
        try:
            client.volumes.get(volume_name(project, service))
        except docker.errors.NotFound:
            client.volumes.create(volume_name(project, service), labels=_labels(COMPONENT_VOLUME, info))
        return client.containers.create(image, command=["true"], name=name, network_disabled=True,
                                        labels=_labels(COMPONENT_COURIER, info),
                                        volumes={volume_name(project, service): {"bind": MOUNT, "mode": "rw"}})


def remove_courier(client: DockerClient, project: str, service: str) -> None:
    with engine_errors(f"remove the files volume of {project}.{service}"):
        for getter, name in ((client.containers.get, courier_name(project, service)),
                             (client.volumes.get, volume_name(project, service))):
            with contextlib.suppress(docker.errors.NotFound):
                getter(name).remove(force=True)


@dataclass
class Report:
    delivered: list[str] = field(default_factory=list)  # proxy names
    unchanged: int = 0
    failed: dict[str, str] = field(default_factory=dict)  # node -> why

    def warnings(self) -> list[str]:
        return [f"node {node} is unreachable ({why}); its pods get the new files when it is back "
                "(the certificate agent retries)" for node, why in sorted(self.failed.items())]


ClientFor = Callable[[str], DockerClient]


def deliver(home: MeshHome, directories: Iterable[Path] | None = None, *, force: bool = False,
            create: bool = False, client_for: ClientFor = context_client) -> Report:
    """Send each directory whose files changed since its last delivery to its pod's host (all pods when
    `directories` is None). A no-op on a single-host mesh, where the sidecars mount the directories.
    Only pods that were started (`meshctl up`, which passes `create`) have a volume to deliver into."""
    settings = home.settings()
    report = Report()
    if not settings.cluster:
        return report
    pods = MeshedPods.of(home)
    by_node: dict[str, list[ProxyInfo]] = {}
    for directory in pods.directories() if directories is None else directories:
        if (directory / "proxy.json").is_file():
            info = pods.read(directory)
            by_node.setdefault(info.pod.node, []).append(info)
    for node, every in sorted(by_node.items()):
        infos = [info for info in every if force or _pending(info)]
        report.unchanged += len(every) - len(infos)
        if not infos:  # nothing new for this node: it is not even asked (a dead one costs its connect timeout)
            continue
        try:
            client = client_for(node)
        except MeshError as exc:
            report.failed[shown(node)] = exc.one_line()
            continue
        with ThreadPoolExecutor(max_workers=WORKERS) as pool:
            one = functools.partial(_deliver_one, client, image=settings.proxy_image, force=force, create=create)
            results = list(pool.map(one, infos))
        for info, result in zip(infos, results, strict=True):
            if isinstance(result, str):
                report.failed[shown(node)] = result
            elif result:
                report.delivered.append(info.name)
            else:
                report.unchanged += 1
    return report


def _stamp(info: ProxyInfo, files: dict[str, str]) -> str:
    return f"{_digest(files)} {shown(info.pod.node)}"  # the node too: the same files, re-placed, go again


def _pending(info: ProxyInfo) -> bool:
    assert info.directory is not None
    return _read_marker(info.directory / DELIVERED) != _stamp(info, manifest(info.directory))


def _deliver_one(client: DockerClient, info: ProxyInfo, image: str, force: bool, create: bool) -> bool | str:
    assert info.directory is not None
    files = manifest(info.directory)
    stamp = _stamp(info, files)
    marker = info.directory / DELIVERED
    if not force and _read_marker(marker) == stamp:
        return False
    try:
        if create:
            courier = ensure_courier(client, info, image)
        else:
            with engine_errors(f"find the files volume of {info.name}"):
                try:
                    courier = client.containers.get(courier_name(info.project, info.pod.service))
                except docker.errors.NotFound:
                    # not started (or taken down): `meshctl up` delivers everything (force). Marked, so the
                    # agent does not ask the node again each round until these files change
                    atomic_write(marker, stamp + "\n", mode=0o600, durable=False)
                    return False
        with engine_errors(f"deliver the files of {info.name}"):
            courier.put_archive(MOUNT, pack(info.directory, files))
    except (EngineError, docker.errors.DockerException, OSError) as exc:
        return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    atomic_write(marker, stamp + "\n", mode=0o600, durable=False)
    return True


def _read_marker(marker: Path) -> str | None:
    try:
        return marker.read_text().strip()
    except (OSError, UnicodeDecodeError):  # missing or unreadable: deliver again
        return None
