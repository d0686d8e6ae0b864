"""Compile Istio's security resources into what one proxy enforces (part of its snapshot).

Scope, as in Istio with compose projects for namespaces: a resource without a namespace (or in
`istio-system`) applies mesh-wide, one with `namespace: PROJECT` to that project; a selector narrows it
to the workloads whose compose labels match.
"""

from __future__ import annotations

from typing import Any

from meshctl.config.resources import ROOT_NAMESPACES, namespace_of
from meshctl.mesh import Pod
from sidecar.jwt import JwtError, jwks_uri_problem, parse_jwks

Resource = dict[str, Any]


def _scope(r: Resource, project: str) -> int | None:
    """How specifically `r` applies to this project: 0 mesh-wide, 1 namespace; None: not at all."""
    ns = namespace_of(r)  # older versions could store an empty one: no namespace
    if ns in ROOT_NAMESPACES:
        return 0
    return 1 if ns == project else None


def selects(r: Resource, project: str, pod: Pod) -> bool:
    if _scope(r, project) is None:
        return False
    labels = ((r["spec"].get("selector") or {}).get("matchLabels")) or {}
    have = pod.label_map  # every compose label: a selector naming one the pod lacks selects nothing
    return all(have.get(k) == v for k, v in labels.items())


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
    ns = r["metadata"].get("namespace") or None
    return f"{ns}/{r['metadata']['name']}" if ns else r["metadata"]["name"]


def authorization(resources: list[Resource], project: str, pod: Pod) -> list[dict[str, Any]]:
    return [{"name": policy_name(r), "action": r["spec"].get("action", "ALLOW"), "rules": r["spec"].get("rules", [])}
            for r in resources if r["kind"] == "AuthorizationPolicy" and selects(r, project, pod)]


def request_authentication(resources: list[Resource], project: str, pod: Pod) -> list[dict[str, Any]]:
    rules = []
    for r in resources:
        if r["kind"] != "RequestAuthentication" or not selects(r, project, pod):
            continue
        for rule in r["spec"].get("jwtRules", []):
            compiled = {"policy": policy_name(r), **rule}
            uri = rule.get("jwksUri")
            if uri and jwks_uri_problem(str(uri)):
                # stored before jwksUri was http(s) only: never read it, nor show its path to the pod; without
                # inline keys, tokens of this issuer are refused
                del compiled["jwksUri"]
                if not rule.get("jwks"):
                    compiled["jwks_error"] = ("the policy's jwksUri is not an http(s) URL (meshctl reads no files; "
                                              "re-apply it with the keys inline in jwks)")
            if "jwks" in compiled:
                try:
                    parse_jwks(str(compiled["jwks"]))
                except JwtError as exc:
                    compiled["jwks_error"] = f"the inline JWKS is not usable: {exc}"
            rules.append(compiled)
    return rules
