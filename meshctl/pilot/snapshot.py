"""Compile what one proxy needs into its snapshot (the format sidecar/snapshot.py reads, checked by it here).

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
from collections.abc import Collection, Mapping
from typing import Any

from meshctl.config.hosts import qualified, target
from meshctl.config.resources import namespace_of, qualified_name
from meshctl.errors import Conflict
from meshctl.home import MeshSettings
from meshctl.mesh import Pod, ProxyInfo
from meshctl.pilot import egress, observability, security
from sidecar import snapshot as contract
from sidecar.contract import FORMAT_VERSION


def mesh_config(settings: MeshSettings | None) -> dict[str, Any]:
    """The mesh-wide settings a sidecar applies (sidecar.snapshot.MeshConfig)."""
    chosen = settings or MeshSettings()
    return {"path_normalization": chosen.path_normalization, "num_trusted_proxies": chosen.num_trusted_proxies,
            "outbound_traffic_policy": chosen.outbound_traffic_policy}


def compile_snapshot(info: ProxyInfo | Mapping[str, Any], resources: list[dict[str, Any]], revision: int,
                     settings: MeshSettings | None = None) -> dict[str, Any]:
    """`info` is the proxy's typed proxy.json, or its JSON form (as inject builds it, or a test)."""
    if not isinstance(info, ProxyInfo):
        info = ProxyInfo.from_json(info)
    project, trust_domain, pod = info.project, info.trust_domain, info.pod
    apps: dict[str, list[Pod]] = {}
    for other in info.pods:
        apps.setdefault(other.app, []).append(other)

    mine = networking(resources, project, apps)
    mode, port_modes = security.peer_modes(resources, project, pod)
    body: dict[str, Any] = {
        "format": FORMAT_VERSION,
        "revision": revision,
        "trust_domain": trust_domain,
        "proxy": {"name": info.name, "project": project, "service": pod.service,
                  "app": pod.app, "version": pod.version, "identity": info.identity},
        "inbound": {"mode": mode, "port_modes": port_modes, "exclude_ports": list(pod.exclude_inbound),
                    "published_ports": list(pod.published)},
        "outbound": {"exclude_ports": list(pod.exclude_outbound)},
        "services": [{"name": app, "identity": info.identity_of(members[0]),
                      # replicas of one workload share its DNS name: one entry resolves them all
                      "workloads": [workload_entry(resources, project, m) for m in
                                    {(m.host, m.version): m for m in members}.values()]}
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


def workload_entry(resources: list[dict[str, Any]], project: str, member: Pod) -> dict[str, Any]:
    """How to call one workload: its DNS name, subset, its mTLS modes (a DISABLE port takes plaintext) and the
    protocols its ports declare ("tcp" connects upstream at once: a server that speaks first is not kept waiting).
    Callers read the entry to call it, and its own sidecar reads it for inbound connections."""
    mode, ports = security.peer_modes(resources, project, member)
    return {"host": member.host, "version": member.version, "mode": mode,
            "labels": member.label_map,
            "port_modes": ports,
            "port_protocols": {str(port): protocol for port, protocol in member.port_protocols}}


def content_hash(body: dict[str, Any]) -> str:
    content = {k: v for k, v in body.items() if k != "hash"}
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:16]


class SnapshotRefused(Conflict):
    """A compiled snapshot its sidecar would refuse. CONFLICT: the store (on disk) holds config that the data
    plane cannot take, though each resource passed meshctl's checks; no input file is to blame (not 3), and the
    same store compiles to the same refusal until it changes."""


def verified(info: ProxyInfo, snapshot: dict[str, Any]) -> dict[str, Any]:
    """`snapshot`, once the sidecar's own parser has read it as the sidecar will (through JSON); a snapshot its
    sidecar would refuse is never written, and the refusal names the proxy and the sidecar's reason."""
    try:
        contract.parse(json.loads(json.dumps(snapshot)))
    except (contract.SnapshotError, TypeError, ValueError) as exc:  # TypeError/ValueError: not JSON at all
        raise SnapshotRefused(f"proxy {info.name}: its sidecar would refuse the compiled snapshot (revision "
                              f"{snapshot.get('revision')}): {exc}", "no proxy was updated; change the resource it "
                              "names or go back with `meshctl rollback REV`") from None
    return snapshot
