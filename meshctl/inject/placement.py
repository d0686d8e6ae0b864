"""Where each pod runs in a mesh across hosts: a service's `mesh.host` label, or `inject --place SERVICE=CONTEXT`.

The value names Docker contexts joined with `meshctl cluster join` ("manager" or "default" is the CLI's own
engine). Several, comma-separated, spread a service's replicas over them in turn: `mesh.host: node2,node3`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from meshctl.inject.load import labels_of
from meshctl.mesh import Pod
from meshctl.runtime.nodes import DEFAULT_CONTEXT, MANAGER

LABEL_HOST = "mesh.host"
MARKER_KEY = "place"  # in the meshed file's marker: --place flags of services left without a sidecar
MANAGER_NAMES = ("manager", DEFAULT_CONTEXT)


def parse_flags(values: list[str] | tuple[str, ...]) -> tuple[dict[str, str], list[str]]:
    """--place SERVICE=CONTEXT[,CONTEXT…] flags -> service -> value, and the problems with them."""
    out, problems = {}, []
    for value in values:
        service, sep, where = value.partition("=")
        if not sep or not service.strip() or not where.strip():
            problems.append(f"--place {value!r}: give SERVICE=CONTEXT, e.g. --place reviews=node2")
            continue
        out[service.strip()] = where.strip()
    return out, problems


def _nodes(value: str, where: str, joined: list[str], problems: list[str]) -> tuple[str, ...]:
    nodes = []
    for name in (n.strip() for n in value.split(",")):
        if name in MANAGER_NAMES:
            nodes.append(MANAGER)
        elif name in joined:
            nodes.append(name)
        else:
            known = ", ".join(["manager", *joined])
            problems.append(f"{where}: {name!r} is not a node of this mesh (nodes: {known}); join it with "
                            f"`meshctl cluster join {name}`" if name else f"{where}: an empty node name")
    return tuple(nodes)


def place(pods: list[Pod], services: Mapping[str, Any], flags: Mapping[str, str], cluster: bool,
          joined: list[str]) -> tuple[list[Pod], list[str]]:
    """The pods with their node set, and the problems (a placement on one host, an unknown node or service)."""
    problems: list[str] = []
    for service in sorted(set(flags) - set(services)):
        problems.append(f"--place {service}=…: there is no service {service!r} in this file")
    wanted: dict[str, tuple[str, str]] = {}  # compose service -> (value, where it came from)
    for name, svc in services.items():
        if name in flags:
            wanted[name] = (flags[name], f"--place {name}")
        elif LABEL_HOST in labels_of(svc):
            wanted[name] = (labels_of(svc)[LABEL_HOST], f"service {name!r}: label `{LABEL_HOST}`")
    if wanted and not cluster:
        name, (value, where) = next(iter(sorted(wanted.items())))
        return pods, [f"{where} places it on {value!r}, but this mesh runs on one host: run `meshctl cluster "
                      "init`, then `meshctl cluster join CONTEXT`"]
    nodes = {name: _nodes(value, where, joined, problems) for name, (value, where) in wanted.items()}
    placed = []
    for pod in pods:
        choice = nodes.get(pod.host) or (MANAGER,)
        placed.append(dataclasses.replace(pod, node=choice[(pod.instance - 1) % len(choice)]))
    return placed, problems


def unmeshed_node(svc: Any, flags: Mapping[str, str], name: str) -> str:
    """Where a service without a sidecar runs (the manager unless placed)."""
    value = flags.get(name) or labels_of(svc).get(LABEL_HOST, "")
    first = value.split(",")[0].strip()
    return MANAGER if first in ("", *MANAGER_NAMES) else first


def unmeshed_flags(flags: Mapping[str, str], pods: list[Pod]) -> dict[str, str]:
    """The --place flags of services without a sidecar: nothing else in the meshed file says where they run."""
    meshed = {pod.host for pod in pods}
    return {name: value for name, value in sorted(flags.items()) if name not in meshed}
