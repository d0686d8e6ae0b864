"""Read a compose file the way docker compose's config pipeline does: YAML 1.2 (round trip, so the file can
be written back unchanged), wrapped errors, then a check that collects every problem at once, each naming
the service and field: keys compose does not know first (with a "did you mean"), then the structure."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meshctl.config.safeyaml import YAMLProblem
from meshctl.config.schema import is_port
from meshctl.errors import InvalidInput, UsageError
from meshctl.fsutil import read_stdin, read_text
from meshctl.inject import yamlrt
from meshctl.inject.keys import unknown_keys

SERVICE_NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")
MAX_REPLICAS = 100  # each replica becomes a pod of two compose services


@dataclass(frozen=True)
class ComposeFile:
    source: str  # the path as the user gave it, or "<stdin>"
    directory: Path  # compose resolves relative paths and the default project name from here
    text: str
    data: dict[str, Any]  # ruamel's round-trip tree: scalars keep their text, comments their place
    # Read by compose (project.py): the files merged, `data` its resolved model, `text` that model as YAML
    # that compose reads back as the same values (each `$` a literal `$$`).
    files: tuple[str, ...] = ()


def read_source(path: str, hint: str = "give the path of a compose file, or - for stdin") -> tuple[str, str, Path]:
    """(text, source, directory) of a file named on the command line, or of stdin for `-`."""
    if path == "-":
        return read_stdin(), "<stdin>", Path.cwd()
    file = Path(path)
    if not file.is_file():
        raise UsageError(f"{path}: no such file", hint)
    return read_text(file), path, file.resolve().parent


def load_yaml(text: str, source: str) -> Any:
    """ruamel's round-trip tree of `text`; a syntax error is one line naming `source` and the place."""
    try:
        return yamlrt.load(text)
    except YAMLProblem as exc:
        where = f" at line {exc.line}, column {exc.column}" if exc.line else ""
        raise InvalidInput(f"{source}: invalid YAML{where}: {exc.problem}", "fix the YAML syntax") from exc


def load(path: str) -> ComposeFile:
    return parse(*read_source(path))


def parse(text: str, source: str, directory: Path) -> ComposeFile:
    data = load_yaml(text, source)
    if not isinstance(data, dict) or not isinstance(data.get("services"), dict) or not data["services"]:
        raise InvalidInput(f"{source} is not a compose file: it has no top-level `services` mapping",
                           "give a docker compose file (services: {name: {image: …}})")
    return ComposeFile(source, directory, text, data)


def project_name(compose: ComposeFile, explicit: str | None) -> str:
    """Compose's own rule: -p, then COMPOSE_PROJECT_NAME, then the file's `name:`, then the directory."""
    raw = explicit or os.environ.get("COMPOSE_PROJECT_NAME") or compose.data.get("name") or compose.directory.name
    name = re.sub(r"[^a-z0-9_-]", "", str(raw).lower())
    if not name:
        raise InvalidInput(f"{compose.source}: cannot derive a project name from {raw!r}", "pass --project-name")
    return name


def replicas_of(svc: dict[str, Any]) -> int:
    deploy = svc.get("deploy")
    value = (deploy if isinstance(deploy, dict) else {}).get("replicas", svc.get("scale", 1))
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 1


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


def _port_problems(ports: Any, where: str) -> list[str]:
    if not isinstance(ports, list):
        return [f"{where}: `ports` must be a list"]
    problems = []
    for i, entry in enumerate(ports):
        if isinstance(entry, dict):
            if not is_port(entry.get("target")):
                problems.append(f"{where}: `ports[{i}].target` must be a port number (1-65535)")
        elif isinstance(entry, bool) or not isinstance(entry, str | int):
            problems.append(f"{where}: `ports[{i}]` must be a string such as '8080:80' or a mapping with `target`")
    return problems


def _network_problems(nets: Any, where: str) -> list[str]:
    if isinstance(nets, list):
        return [f"{where}: `networks[{i}]` must be a network name" for i, n in enumerate(nets)
                if not isinstance(n, str)]
    if not isinstance(nets, dict):
        return [f"{where}: `networks` must be a list or a mapping"]
    problems = []
    for net, conf in nets.items():
        if conf is not None and not isinstance(conf, dict):
            problems.append(f"{where}: `networks.{net}` must be a mapping or empty")
        elif conf and conf.get("aliases") is not None and not (
                isinstance(conf["aliases"], list) and all(isinstance(a, str) for a in conf["aliases"])):
            problems.append(f"{where}: `networks.{net}.aliases` must be a list of names")
    return problems


def check(compose: ComposeFile) -> list[str]:
    """Every structural problem that would stop injection, each naming the service and the field."""
    services: dict[str, Any] = compose.data["services"]
    problems = unknown_keys(compose.data)
    top_nets = compose.data.get("networks")
    if top_nets is not None and not isinstance(top_nets, dict):
        problems.append("`networks` must be a mapping of network names")
    declared_nets = {str(n) for n in (top_nets if isinstance(top_nets, dict) else {})} | {"default"}
    for name, svc in services.items():
        where = f"service {name!r}"
        if not isinstance(name, str) or not SERVICE_NAME_RE.fullmatch(name):
            problems.append(f"{where}: invalid service name")
            continue
        if not isinstance(svc, dict):
            problems.append(f"{where}: must be a mapping, not {type(svc).__name__}")
            continue
        if svc.get("deploy") is not None and not isinstance(svc["deploy"], dict):
            problems.append(f"{where}: `deploy` must be a mapping")
        elif replicas_of(svc) > MAX_REPLICAS:
            problems.append(f"{where}: {replicas_of(svc)} replicas; meshctl meshes at most {MAX_REPLICAS} per service")
        if svc.get("ports") is not None:
            problems += _port_problems(svc["ports"], where)
        if svc.get("network_mode") is not None and not isinstance(svc["network_mode"], str):
            problems.append(f"{where}: `network_mode` must be a string")
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
        net_problems = _network_problems(nets, where) if nets is not None else []
        if net_problems:
            problems += net_problems
        elif "network_mode" not in svc:
            problems += [f"{where}: `networks` names undeclared network {n!r}" for n in network_names(svc)
                         if n not in declared_nets]
    return problems
