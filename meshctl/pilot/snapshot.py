"""Compile what one proxy needs into its snapshot (format 1, read by addons/snapshot.py).

Inputs: the pod's static description written by inject (proxy.json) and the store's current revision.
A proxy gets only the routes and destination policies of the services in its own project, the
services it can call. Each snapshot carries the revision it was compiled from and a hash of its content,
so a proxy's ack says exactly which config it runs.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from typing import Any

from meshctl.inject.rewrite import Pod
from meshctl.pilot import observability, security
from meshctl.pki.workload import spiffe_id

FORMAT = 1


def proxy_name(project: str, service: str) -> str:
    return f"{project}.{service}"


def describe(pod: Pod, pods: list[Pod], project: str, trust_domain: str) -> dict[str, Any]:
    """The static part, written once at inject time as proxy.json."""
    return {"project": project, "trust_domain": trust_domain, "pod": asdict(pod), "pods": [asdict(p) for p in pods]}


def compile_snapshot(info: dict[str, Any], resources: list[dict[str, Any]], revision: int) -> dict[str, Any]:
    project, trust_domain = info["project"], info["trust_domain"]
    pod = Pod(**info["pod"])
    apps: dict[str, list[dict[str, Any]]] = {}
    for other in info["pods"]:
        apps.setdefault(other["app"], []).append(other)

    def relevant(r: dict[str, Any]) -> bool:
        hosts = r["spec"].get("hosts", []) if r["kind"] == "VirtualService" else [r["spec"].get("host")]
        return any(h in apps for h in hosts)

    mine = [r for r in resources if r["kind"] in ("VirtualService", "DestinationRule") and relevant(r)]
    mode, port_modes = security.peer_modes(resources, project, pod)
    body: dict[str, Any] = {
        "format": FORMAT,
        "revision": revision,
        "trust_domain": trust_domain,
        "proxy": {"name": proxy_name(project, pod.service), "project": project, "service": pod.service,
                  "app": pod.app, "version": pod.version, "identity": spiffe_id(trust_domain, project, pod.app)},
        "inbound": {"mode": mode, "port_modes": port_modes, "exclude_ports": list(pod.exclude_inbound),
                    "published_ports": list(pod.published)},
        "outbound": {"exclude_ports": list(pod.exclude_outbound)},
        "services": [{"name": app, "identity": spiffe_id(trust_domain, project, app),
                      # replicas of one workload share its DNS name: one entry resolves them all
                      "workloads": [workload_entry(resources, project, m) for m in
                                    {(m.get("workload") or m["service"], m["version"]): m for m in members}.values()]}
                     for app, members in sorted(apps.items())],
        "routes": [{"name": r["metadata"]["name"], **r["spec"]} for r in mine if r["kind"] == "VirtualService"],
        "destinations": [{"name": r["metadata"]["name"], **r["spec"]} for r in mine
                         if r["kind"] == "DestinationRule"],
        "authorization": security.authorization(resources, project, pod),
        "jwt": security.request_authentication(resources, project, pod),
        "tracing": observability.tracing(resources, project, pod),
    }
    body["hash"] = content_hash(body)
    return body


def workload_entry(resources: list[dict[str, Any]], project: str, member: dict[str, Any]) -> dict[str, Any]:
    """How to call one workload: its DNS name, subset, and its mTLS modes (a DISABLE port takes plaintext)."""
    mode, ports = security.peer_modes(resources, project, Pod(**member))
    return {"host": member.get("workload") or member["service"], "version": member["version"], "mode": mode,
            "port_modes": ports}


def content_hash(body: dict[str, Any]) -> str:
    content = {k: v for k, v in body.items() if k != "hash"}
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:16]
