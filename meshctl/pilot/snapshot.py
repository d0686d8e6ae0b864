"""Compile what one proxy needs into its snapshot (format 1, read by sidecar/snapshot.py).

Inputs: the pod's static description written by inject (proxy.json) and the store's current revision.
A proxy gets only the routes and destination policies of the services in its own project, the
services it can call: a host resolves in its resource's namespace as in Istio (config/hosts.py), and the
snapshot names each service by the short name the sidecar routes on. Each snapshot carries the revision it
was compiled from and a hash of its content, so a proxy's ack says exactly which config it runs.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Collection
from dataclasses import asdict
from typing import Any

from meshctl.config.hosts import qualified, target
from meshctl.config.resources import namespace_of, qualified_name
from meshctl.home import MeshSettings
from meshctl.inject.rewrite import Pod
from meshctl.pilot import egress, observability, security
from meshctl.pki.workload import spiffe_id

FORMAT = 1


def proxy_name(project: str, service: str) -> str:
    return f"{project}.{service}"


def describe(pod: Pod, pods: list[Pod], project: str, trust_domain: str) -> dict[str, Any]:
    """The static part, written once at inject time as proxy.json."""
    return {"project": project, "trust_domain": trust_domain, "pod": asdict(pod), "pods": [asdict(p) for p in pods]}


def mesh_config(settings: MeshSettings | None) -> dict[str, Any]:
    """The mesh-wide settings a sidecar applies (sidecar.snapshot.MeshConfig)."""
    chosen = settings or MeshSettings()
    return {"path_normalization": chosen.path_normalization, "num_trusted_proxies": chosen.num_trusted_proxies,
            "outbound_traffic_policy": chosen.outbound_traffic_policy}


def compile_snapshot(info: dict[str, Any], resources: list[dict[str, Any]], revision: int,
                     settings: MeshSettings | None = None) -> dict[str, Any]:
    project, trust_domain = info["project"], info["trust_domain"]
    pod = Pod(**info["pod"])
    apps: dict[str, list[dict[str, Any]]] = {}
    for other in info["pods"]:
        apps.setdefault(other["app"], []).append(other)

    mine = networking(resources, project, apps)
    mode, port_modes = security.peer_modes(resources, project, pod)
    body: dict[str, Any] = {
        "format": FORMAT,
        "revision": revision,
        "trust_domain": trust_domain,
        "proxy": {"name": proxy_name(project, pod.service), "project": project, "service": pod.service,
                  "app": pod.app, "version": pod.version,
                  "identity": spiffe_id(trust_domain, project, pod.service_account)},
        "inbound": {"mode": mode, "port_modes": port_modes, "exclude_ports": list(pod.exclude_inbound),
                    "published_ports": list(pod.published)},
        "outbound": {"exclude_ports": list(pod.exclude_outbound)},
        "services": [{"name": app, "identity": spiffe_id(trust_domain, project, Pod(**members[0]).service_account),
                      # replicas of one workload share its DNS name: one entry resolves them all
                      "workloads": [workload_entry(resources, project, m) for m in
                                    {(m.get("workload") or m["service"], m["version"]): m for m in members}.values()]}
                     for app, members in sorted(apps.items())],
        "routes": [spec for kind, spec in mine if kind == "VirtualService"],
        "destinations": [spec for kind, spec in mine if kind == "DestinationRule"],
        "authorization": security.authorization(resources, project, pod),
        "jwt": security.request_authentication(resources, project, pod),
        "tracing": observability.tracing(resources, project, pod),
        "mesh": mesh_config(settings),
        "egress": egress.egress(resources, project),
    }
    body["hash"] = content_hash(body)
    return body


def networking(resources: list[dict[str, Any]], project: str, apps: Collection[str]) -> list[tuple[str, Any]]:
    """(kind, compiled spec) of the VirtualServices and DestinationRules for `project`'s services, hosts made
    the short names its sidecars route on. The sidecar takes the first for a host, so the project's own
    resources come first, then other namespaces' naming it fully, then those with no namespace."""
    picked = []
    for r in resources:
        if r["kind"] not in ("VirtualService", "DestinationRule"):
            continue
        ns = namespace_of(r)
        hosts = r["spec"].get("hosts", []) if r["kind"] == "VirtualService" else [r["spec"].get("host")]
        local = list(dict.fromkeys(a for h in hosts if (a := target(str(h), ns, project, apps)) is not None))
        if not local:
            continue
        spec = copy.deepcopy(r["spec"])
        if r["kind"] == "VirtualService":
            spec["hosts"] = local
            for rule in spec.get("http", []):
                for dest in [d["destination"] for d in rule.get("route", [])] + [rule.get("mirror") or {}]:
                    if dest.get("host"):  # another project's service keeps its project, so it matches none here
                        dest["host"] = target(dest["host"], ns, project, apps) or qualified(dest["host"], ns)
        else:
            spec["host"] = local[0]
        rank = 0 if ns == project else 2 if ns is None else 1
        picked.append((rank, r["kind"], {"name": qualified_name(r), **spec}))
    return [(kind, spec) for _, kind, spec in sorted(picked, key=lambda p: p[0])]


def workload_entry(resources: list[dict[str, Any]], project: str, member: dict[str, Any]) -> dict[str, Any]:
    """How to call one workload: its DNS name, subset, its mTLS modes (a DISABLE port takes plaintext) and the
    protocols its ports declare ("tcp" connects upstream at once: a server that speaks first is not kept waiting).
    Callers read the entry to call it, and its own sidecar reads it for inbound connections."""
    mode, ports = security.peer_modes(resources, project, Pod(**member))
    return {"host": member.get("workload") or member["service"], "version": member["version"], "mode": mode,
            "labels": Pod(**member).label_map,
            "port_modes": ports,
            "port_protocols": {str(port): protocol for port, protocol in member.get("port_protocols") or ()}}


def content_hash(body: dict[str, Any]) -> str:
    content = {k: v for k, v in body.items() if k != "hash"}
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:16]
