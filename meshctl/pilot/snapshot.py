"""Compile what one proxy needs into its snapshot (format 1, read by addons/snapshot.py).

A snapshot carries the revision it was compiled from and a hash of its content, so a proxy's ack says
exactly which config it runs.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from meshctl.inject.rewrite import Pod
from meshctl.pki.workload import spiffe_id

FORMAT = 1


def proxy_name(project: str, service: str) -> str:
    return f"{project}.{service}"


def compile_snapshot(pod: Pod, pods: list[Pod], project: str, trust_domain: str, revision: int) -> dict[str, Any]:
    apps: dict[str, list[Pod]] = {}
    for other in pods:
        apps.setdefault(other.app, []).append(other)
    body: dict[str, Any] = {
        "format": FORMAT,
        "revision": revision,
        "trust_domain": trust_domain,
        "proxy": {"name": proxy_name(project, pod.service), "project": project, "service": pod.service,
                  "app": pod.app, "version": pod.version, "identity": spiffe_id(trust_domain, project, pod.app)},
        "inbound": {"mode": pod.mode, "exclude_ports": list(pod.exclude_inbound),
                    "published_ports": list(pod.published)},
        "outbound": {"exclude_ports": list(pod.exclude_outbound)},
        "services": [{"name": app, "identity": spiffe_id(trust_domain, project, app),
                      "workloads": [{"host": p.service, "version": p.version} for p in members]}
                     for app, members in sorted(apps.items())],
    }
    body["hash"] = content_hash(body)
    return body


def content_hash(body: dict[str, Any]) -> str:
    content = {k: v for k, v in body.items() if k != "hash"}
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:16]
