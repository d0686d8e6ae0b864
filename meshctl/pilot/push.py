"""Deliver config: compile every proxy's snapshot from the store and write the ones that changed.

Sidecars watch their snapshot file and apply a new one within a fraction of a second, without a
restart; each write is atomic, so a sidecar never reads half a snapshot.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meshctl.config.store import Store
from meshctl.errors import MeshError
from meshctl.fsutil import atomic_write, own_by_proxy, read_text
from meshctl.home import MeshHome
from meshctl.pilot.snapshot import compile_snapshot


@dataclass(frozen=True)
class Pushed:
    revision: int
    proxies: int
    written: int


def proxy_dirs(home: MeshHome) -> list[Path]:
    return sorted(p.parent for p in home.proxies_dir.glob("*/*/proxy.json"))


def proxy_info(directory: Path) -> dict[str, Any]:
    """A proxy's static description, written by inject (project, trust domain, its pod, the project's pods)."""
    return dict(json.loads(read_text(directory / "proxy.json")))


def meshed_versions(home: MeshHome) -> dict[str, set[str]]:
    """app -> the versions injected for it, from the proxies' static descriptions (no engine needed)."""
    versions: dict[str, set[str]] = {}
    for directory in proxy_dirs(home):
        pod = proxy_info(directory)["pod"]
        versions.setdefault(pod["app"], set()).add(pod["version"])
    return versions


def desired(directory: Path) -> dict[str, Any] | None:
    try:
        return dict(json.loads(read_text(directory / "snapshot.json")))
    except (ValueError, MeshError):
        return None


def write_snapshot(directory: Path, snapshot: dict[str, Any]) -> None:
    atomic_write(directory / "snapshot.json", json.dumps(snapshot, indent=1), mode=0o644, durable=False)
    own_by_proxy(directory / "snapshot.json")


def push(home: MeshHome) -> Pushed:
    revision = Store(home.config_dir).read()
    settings = home.settings()
    dirs = proxy_dirs(home)
    written = 0
    for directory in dirs:
        info = proxy_info(directory)
        snapshot = compile_snapshot(info, revision.resources, revision.revision, settings)
        current = desired(directory)
        if current is None or current.get("hash") != snapshot["hash"]:
            write_snapshot(directory, snapshot)
            written += 1
    return Pushed(revision.revision, len(dirs), written)
