"""Read a compose file the way docker-compose's config pipeline does: safe YAML, wrapped errors,
a structural check that collects every problem at once, each naming the service and field."""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from meshctl.errors import InvalidInput
from meshctl.fsutil import read_text

SERVICE_NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")


@dataclass(frozen=True)
class ComposeFile:
    source: str  # the path as the user gave it, or "<stdin>"
    directory: Path  # compose resolves relative paths and the default project name from here
    text: str
    data: dict[str, Any]


def load(path: str) -> ComposeFile:
    if path == "-":
        text, source, directory = sys.stdin.read(), "<stdin>", Path.cwd()
    else:
        file = Path(path)
        if not file.is_file():
            raise InvalidInput(f"{path}: no such file", "give the path of a compose file, or - for stdin")
        text, source, directory = read_text(file), path, file.resolve().parent
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise InvalidInput(f"{source}: invalid YAML{where}: {problem}", "fix the YAML syntax") from exc
    if not isinstance(data, dict) or not isinstance(data.get("services"), dict) or not data["services"]:
        raise InvalidInput(f"{source} is not a compose file: it has no top-level `services` mapping",
                           "give a docker compose file (services: {name: {image: …}})")
    return ComposeFile(source, directory, text, data)


def project_name(compose: ComposeFile, explicit: str | None) -> str:
    """Compose's own rule: -p, then the file's `name:`, then COMPOSE_PROJECT_NAME, then the directory."""
    raw = explicit or compose.data.get("name") or os.environ.get("COMPOSE_PROJECT_NAME") or compose.directory.name
    name = re.sub(r"[^a-z0-9_-]", "", str(raw).lower())
    if not name:
        raise InvalidInput(f"cannot derive a project name from {raw!r}", "pass --project-name")
    return name


def labels_of(service: dict[str, Any]) -> dict[str, str]:
    labels = service.get("labels") or {}
    if isinstance(labels, list):
        pairs = (str(item).split("=", 1) for item in labels)
        return {k: (v[0] if v else "") for k, *v in pairs}
    return {str(k): "" if v is None else str(v) for k, v in labels.items()}


def depends_on_names(service: dict[str, Any]) -> list[str]:
    deps = service.get("depends_on") or []
    return [str(d) for d in (deps if isinstance(deps, list) else deps.keys())]


def network_names(service: dict[str, Any]) -> list[str]:
    nets = service.get("networks")
    if nets is None:
        return ["default"]
    return [str(n) for n in (nets if isinstance(nets, list) else nets.keys())]


def check(compose: ComposeFile) -> list[str]:
    """Every structural problem that would stop injection, each naming the service and the field."""
    services: dict[str, Any] = compose.data["services"]
    declared_nets = set((compose.data.get("networks") or {}).keys()) | {"default"}
    problems = []
    for name, svc in services.items():
        where = f"service {name!r}"
        if not SERVICE_NAME_RE.match(str(name)):
            problems.append(f"{where}: invalid service name")
            continue
        if not isinstance(svc, dict):
            problems.append(f"{where}: must be a mapping, not {type(svc).__name__}")
            continue
        if "image" not in svc and "build" not in svc and "extends" not in svc:
            problems.append(f"{where}: needs `image` or `build`")
        labels = svc.get("labels")
        if labels is not None and not isinstance(labels, (list, dict)):
            problems.append(f"{where}: `labels` must be a list or a mapping")
        deps = svc.get("depends_on")
        if deps is not None and not isinstance(deps, (list, dict)):
            problems.append(f"{where}: `depends_on` must be a list or a mapping")
        else:
            problems += [f"{where}: `depends_on` names unknown service {d!r}" for d in depends_on_names(svc)
                         if d not in services]
        nets = svc.get("networks")
        if nets is not None and not isinstance(nets, (list, dict)):
            problems.append(f"{where}: `networks` must be a list or a mapping")
        elif "network_mode" not in svc:
            problems += [f"{where}: `networks` names undeclared network {n!r}" for n in network_names(svc)
                         if n not in declared_nets]
    return problems
