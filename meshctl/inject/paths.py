"""Compose resolves relative paths against the file's directory. When the meshed file is written to
another directory, make them absolute so `build`, `env_file` and bind mounts still find their sources."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ruamel.yaml.scalarstring import ScalarString


def _abs(value: str, base: Path) -> str:
    if value.startswith(("/", "~", "$")) or "://" in value or value.startswith("git@"):
        return value
    path = os.path.normpath(base / value)
    return type(value)(path) if isinstance(value, ScalarString) else path  # keep the user's quoting


def _volume(entry: Any, base: Path) -> Any:
    if isinstance(entry, dict):
        if entry.get("type", "bind") == "bind" and isinstance(entry.get("source"), str):
            entry["source"] = _abs(entry["source"], base)
        return entry
    if not isinstance(entry, str):
        return entry
    source, sep, rest = entry.partition(":")
    if sep and source.startswith("."):  # "./data:/data"; a bare name is a named volume
        path = f"{_abs(source, base)}:{rest}"
        return type(entry)(path) if isinstance(entry, ScalarString) else path
    return entry


def relocate(data: dict[str, Any], base: Path) -> dict[str, Any]:
    """Edits `data` in place (it is the injector's own copy), so comments and styles around the paths stay."""
    for svc in data.get("services", {}).values():
        if not isinstance(svc, dict):
            continue
        build = svc.get("build")
        if isinstance(build, str):
            svc["build"] = _abs(build, base)
        elif isinstance(build, dict) and isinstance(build.get("context", "."), str):
            build["context"] = _abs(build.get("context", "."), base)
        env_file = svc.get("env_file")
        if isinstance(env_file, str):
            svc["env_file"] = _abs(env_file, base)
        elif isinstance(env_file, list):
            for i, entry in enumerate(env_file):
                if isinstance(entry, str):
                    env_file[i] = _abs(entry, base)
                elif isinstance(entry, dict) and isinstance(entry.get("path"), str):
                    entry["path"] = _abs(entry["path"], base)
        volumes = svc.get("volumes")
        if isinstance(volumes, list):
            for i, entry in enumerate(volumes):
                volumes[i] = _volume(entry, base)
    return data
