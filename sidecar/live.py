"""The snapshot in force, swapped whole when a new one is applied; every addon reads it from here.

A new snapshot is parsed completely before it replaces the old one, so each connection sees one
snapshot or the other. One that cannot be parsed is rejected: the old one stays and the reason is
kept for the ack (`/status`), which the control plane reads for `meshctl proxy-status`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sidecar import snapshot

log = logging.getLogger("meshctl.live")


@dataclass(frozen=True)
class Rejection:
    revision: Any
    hash: Any
    reason: str
    at: float


class LiveSnapshot:
    def __init__(self, path: Path, first: snapshot.Snapshot) -> None:
        self.path = path
        self.current = first
        self.applied_at = time.time()
        self.rejected: Rejection | None = None
        self._stamp = self._mtime()
        self.on_apply: list[Callable[[snapshot.Snapshot], None]] = []

    def _mtime(self) -> float | None:
        try:
            return self.path.stat().st_mtime_ns / 1e9
        except OSError:
            return None

    def poll(self) -> bool:
        """Apply the file if it changed since the last look. Returns True if a new snapshot took effect."""
        stamp = self._mtime()
        if stamp is None or stamp == self._stamp:
            return False
        self._stamp = stamp
        raw: Any = None
        try:
            raw = snapshot.read_raw(self.path)
            new = snapshot.parse(raw)
        except snapshot.SnapshotError as exc:
            revision = raw.get("revision") if isinstance(raw, dict) else None
            digest = raw.get("hash") if isinstance(raw, dict) else None
            self.rejected = Rejection(revision, digest, str(exc), time.time())
            log.error("rejected snapshot revision %s: %s; keeping revision %s", revision, exc, self.current.revision)
            return False
        for callback in self.on_apply:
            callback(new)
        self.current, self.applied_at, self.rejected = new, time.time(), None
        log.info("applied snapshot revision %s (%s)", new.revision, new.hash)
        return True

    def status(self) -> dict[str, Any]:
        snap = self.current
        return {"name": snap.name, "revision": snap.revision, "hash": snap.hash, "applied_at": self.applied_at,
                "rejected": None if self.rejected is None else {
                    "revision": self.rejected.revision, "hash": self.rejected.hash, "reason": self.rejected.reason,
                    "at": self.rejected.at}}
