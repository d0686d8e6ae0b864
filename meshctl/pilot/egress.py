"""Compile ServiceEntries (and the DestinationRules of their hosts) into a proxy's `egress` (sidecar.egress).

Scope as for security resources: one without a namespace applies mesh-wide, one in a project to that project;
the project's own DestinationRule for a host wins over a mesh-wide one. One entry per host, so each host carries
its own TLS settings: a port's `tls` comes from the rule's portLevelSettings for that port, else its trafficPolicy,
and applies to its HTTP ports (the sidecar originates TLS for requests it reads).
"""

from __future__ import annotations

from typing import Any

from meshctl.config.egress import protocol, tls_settings
from meshctl.config.resources import ROOT_NAMESPACES, namespace_of
from meshctl.pilot.security import policy_name
from sidecar.egress import HTTP_PROTOCOLS

Resource = dict[str, Any]


def _in_scope(r: Resource, project: str) -> bool:
    return namespace_of(r) in ROOT_NAMESPACES or namespace_of(r) == project


def _rule_for(resources: list[Resource], project: str, host: str) -> Resource | None:
    rules = [r for r in resources if r["kind"] == "DestinationRule" and _in_scope(r, project)
             and str(r["spec"].get("host", "")).lower().rstrip(".") == host]
    return next((r for r in rules if namespace_of(r) == project), None) or next(iter(rules), None)


def _tls(rule: Resource | None, host: str, number: int) -> dict[str, Any] | None:
    """The sidecar's TLS to `host:number` (DestinationRule tls SIMPLE), or None: plain text as the app sent it."""
    host_wide = [t for t in tls_settings((rule or {}).get("spec", {})) if t.subset is None]
    chosen = next((t for t in host_wide if t.port == number), None) or next((t for t in host_wide if t.port is None),
                                                                            None)
    tls = chosen.tls if chosen else None
    if not tls or tls.get("mode") != "SIMPLE":
        return None
    return {"sni": tls.get("sni") or host, "ca": tls.get("caCertificates"), "verify": not tls.get("insecureSkipVerify")}


def egress(resources: list[Resource], project: str) -> list[dict[str, Any]]:
    """The external hosts `project`'s proxies may call; its own ServiceEntries first (the first for a host wins)."""
    out: list[tuple[bool, dict[str, Any]]] = []
    for r in resources:
        if r["kind"] != "ServiceEntry" or not _in_scope(r, project):
            continue
        spec = r["spec"]
        endpoints = [str(e["address"]) for e in spec.get("endpoints") or []]
        for host in dict.fromkeys(str(h).lower().rstrip(".") for h in spec.get("hosts") or []):
            rule = _rule_for(resources, project, host)
            ports = []
            for p in spec.get("ports") or []:
                port = {"number": p["number"], "protocol": protocol(p), "target": p.get("targetPort", p["number"])}
                # TLS is originated on the HTTP path; TCP, TLS and HTTPS ports pass through as the app sent them
                tls = _tls(rule, host, p["number"]) if port["protocol"] in HTTP_PROTOCOLS else None
                ports.append({**port, **({"tls": tls} if tls else {})})
            out.append((namespace_of(r) != project, {"name": policy_name(r), "hosts": [host], "ports": ports,
                                            "endpoints": endpoints}))
    return [entry for _, entry in sorted(out, key=lambda pair: pair[0])]
