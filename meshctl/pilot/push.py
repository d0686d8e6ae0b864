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
from meshctl.mesh import SNAPSHOT_JSON, MeshedPods
from meshctl.pilot.snapshot import compile_snapshot, verified
from meshctl.runtime import delivery


@dataclass(frozen=True)
class Pushed:
    revision: int
    proxies: int
    written: int
    warnings: tuple[str, ...] = ()  # nodes the new snapshots could not reach yet (a mesh across hosts)


def desired(directory: Path) -> dict[str, Any] | None:
    try:
        return dict(json.loads(read_text(directory / SNAPSHOT_JSON)))
    except (ValueError, MeshError):
        return None


def write_snapshot(directory: Path, snapshot: dict[str, Any]) -> None:
    atomic_write(directory / SNAPSHOT_JSON, json.dumps(snapshot, indent=1), mode=0o644, durable=False)
    own_by_proxy(directory / SNAPSHOT_JSON)


def push(home: MeshHome) -> Pushed:
    revision = Store(home.config_dir).read()
    settings = home.settings()
    pods = MeshedPods.of(home)
    dirs = pods.directories()
    # Every snapshot is compiled and read by the sidecar's own parser before any is written: one proxy's
    # refusal leaves every proxy on the snapshot it has.
    compiled = []
    for directory in dirs:
        info = pods.read(directory)
        compiled.append((directory, verified(info, compile_snapshot(info, revision.resources, revision.revision,
                                                                    settings))))
    written = []
    for directory, snapshot in compiled:
        current = desired(directory)
        if current is None or current.get("hash") != snapshot["hash"]:
            write_snapshot(directory, snapshot)
            written.append(directory)
    report = delivery.deliver(home, written)  # across hosts: into each pod's volume (here: a no-op)
    return Pushed(revision.revision, len(dirs), len(written), tuple(report.warnings()))
