"""Compose resolves relative paths against the file's directory. When the meshed file is written to
another directory, make them absolute so `build`, `env_file` and bind mounts still find their sources."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def _abs(value: str, base: Path) -> str:
    if value.startswith(("/", "~", "$")) or "://" in value or value.startswith("git@"):
        return value
    return os.path.normpath(base / value)


def _volume(entry: Any, base: Path) -> Any:
    if isinstance(entry, dict):
        if entry.get("type", "bind") == "bind" and isinstance(entry.get("source"), str):
            return {**entry, "source": _abs(entry["source"], base)}
        return entry
    source, sep, rest = str(entry).partition(":")
    if sep and source.startswith("."):  # "./data:/data"; a bare name is a named volume
        return f"{_abs(source, base)}:{rest}"
    return entry


def relocate(data: dict[str, Any], base: Path) -> dict[str, Any]:
    for svc in data.get("services", {}).values():
        if not isinstance(svc, dict):
            continue
        build = svc.get("build")
        if isinstance(build, str):
            svc["build"] = _abs(build, base)
        elif isinstance(build, dict) and isinstance(build.get("context", "."), str):
            svc["build"] = {**build, "context": _abs(build.get("context", "."), base)}
        env_file = svc.get("env_file")
        if isinstance(env_file, str):
            svc["env_file"] = _abs(env_file, base)
        elif isinstance(env_file, list):
            svc["env_file"] = [_abs(e, base) if isinstance(e, str) else e for e in env_file]
        if isinstance(svc.get("volumes"), list):
            svc["volumes"] = [_volume(v, base) for v in svc["volumes"]]
    return data
