"""Find the compose implementation on this machine: v2 (`docker compose`) first, else v1 (`docker-compose`)."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass


@dataclass(frozen=True)
class ComposeTool:
    argv: tuple[str, ...]
    version: str

    @property
    def generation(self) -> int:
        return 2 if self.argv[:2] == ("docker", "compose") else 1


def _version(argv: list[str]) -> str | None:
    if shutil.which(argv[0]) is None:
        return None
    try:
        done = subprocess.run([*argv, "version", "--short"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() or None if done.returncode == 0 else None


def find_compose() -> ComposeTool | None:
    for argv in (["docker", "compose"], ["docker-compose"]):
        version = _version(argv)
        if version:
            return ComposeTool(tuple(argv), version)
    return None
