"""Compile Istio's security resources into what one proxy enforces (part of its snapshot).

Scope, as in Istio with compose projects for namespaces: a resource without a namespace (or in
`istio-system`) applies mesh-wide, one with `namespace: PROJECT` to that project; a selector narrows it
to the workloads whose `app`/`version` labels match.
"""

from __future__ import annotations

import json
import urllib.parse
from pathlib import Path
from typing import Any

from meshctl.inject.rewrite import Pod

ROOT_NAMESPACES = (None, "istio-system")
Resource = dict[str, Any]


def _scope(r: Resource, project: str) -> int | None:
    """How specifically `r` applies to this project: 0 mesh-wide, 1 namespace; None: not at all."""
    ns = r["metadata"].get("namespace")
    if ns in ROOT_NAMESPACES:
        return 0
    return 1 if ns == project else None


def selects(r: Resource, project: str, pod: Pod) -> bool:
    if _scope(r, project) is None:
        return False
    labels = ((r["spec"].get("selector") or {}).get("matchLabels")) or {}
    return all({"app": pod.app, "version": pod.version}.get(k) == v for k, v in labels.items())


def peer_modes(resources: list[Resource], project: str, pod: Pod) -> tuple[str, dict[str, str]]:
    """The inbound mTLS mode and per-port modes: the pod's label, then mesh-wide, namespace and workload
    PeerAuthentication, the most specific winning; UNSET inherits."""
    mode, ports = pod.mode, {}
    found = [r for r in resources if r["kind"] == "PeerAuthentication" and selects(r, project, pod)]
    ranked = sorted(found, key=lambda r: (2 if r["spec"].get("selector") else _scope(r, project) or 0))
    for r in ranked:
        chosen = (r["spec"].get("mtls") or {}).get("mode", "UNSET")
        if chosen != "UNSET":
            mode = chosen
        for port, setting in (r["spec"].get("portLevelMtls") or {}).items():
            if setting.get("mode", "UNSET") != "UNSET":
                ports[str(port)] = setting["mode"]
    return mode, ports


def policy_name(r: Resource) -> str:
    ns = r["metadata"].get("namespace")
    return f"{ns}/{r['metadata']['name']}" if ns else r["metadata"]["name"]


def authorization(resources: list[Resource], project: str, pod: Pod) -> list[dict[str, Any]]:
    return [{"name": policy_name(r), "action": r["spec"].get("action", "ALLOW"), "rules": r["spec"].get("rules", [])}
            for r in resources if r["kind"] == "AuthorizationPolicy" and selects(r, project, pod)]


def _local_jwks(uri: str) -> str | None:
    """A file the control plane reads and inlines (file:///path or /path); None for http(s), which the sidecar
    fetches itself."""
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme in ("http", "https"):
        return None
    path = Path(parsed.path if parsed.scheme == "file" else uri)
    return path.read_text()


def request_authentication(resources: list[Resource], project: str, pod: Pod) -> list[dict[str, Any]]:
    rules = []
    for r in resources:
        if r["kind"] != "RequestAuthentication" or not selects(r, project, pod):
            continue
        for rule in r["spec"].get("jwtRules", []):
            compiled = {"policy": policy_name(r), **rule}
            if rule.get("jwksUri"):
                try:
                    local = _local_jwks(rule["jwksUri"])
                except OSError as exc:  # tokens of this issuer will be refused: fail closed, and say why
                    compiled["jwks_error"] = f"cannot read {rule['jwksUri']}: {exc.strerror}"
                    local = None
                except UnicodeDecodeError:
                    compiled["jwks_error"] = f"{rule['jwksUri']} is not a text file"
                    local = None
                if local is not None:
                    compiled["jwks"] = local
                    del compiled["jwksUri"]
            if "jwks" in compiled:
                try:
                    json.loads(compiled["jwks"])
                except (ValueError, RecursionError):
                    compiled["jwks_error"] = "the JWKS is not valid JSON"
            rules.append(compiled)
    return rules
