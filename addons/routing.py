"""L7 routing: for each outbound HTTP request, the VirtualService rules of the called service decide the
subset, and a pod of that subset is picked. Per request, so one keep-alive connection is split by weight.

Pure functions do the matching and choosing (tested without a network); the addon only applies them.
A service without a VirtualService keeps plain mTLS passthrough to the pod Docker's DNS picked.
"""

from __future__ import annotations

import logging
import random
import re
from collections.abc import Mapping
from typing import Any

from mitmproxy import http

from addons.endpoints import Endpoints
from addons.live import LiveSnapshot
from addons.mtls import MutualTLS

log = logging.getLogger("meshctl.routing")


def string_matches(spec: Mapping[str, str], value: str | None, ignore_case: bool = False) -> bool:
    if value is None:
        return False
    def fold(text: str) -> str:
        return text.lower() if ignore_case else text

    if "exact" in spec:
        return fold(value) == fold(spec["exact"])
    if "prefix" in spec:
        return fold(value).startswith(fold(spec["prefix"]))
    if "regex" in spec:
        return re.fullmatch(spec["regex"], value, re.IGNORECASE if ignore_case else 0) is not None
    return True


def request_matches(match: Mapping[str, Any], method: str, path: str, headers: Mapping[str, str],
                    query: Mapping[str, str]) -> bool:
    """Istio's HTTPMatchRequest: every condition given must hold."""
    uri = path.split("?", 1)[0]
    if "uri" in match and not string_matches(match["uri"], uri, bool(match.get("ignoreUriCase"))):
        return False
    if "method" in match and not string_matches(match["method"], method):
        return False
    for name, spec in (match.get("headers") or {}).items():
        if not string_matches(spec, headers.get(name.lower())):
            return False
    return all(string_matches(spec, query.get(name)) for name, spec in (match.get("queryParams") or {}).items())


def select_rule(vs: Mapping[str, Any], method: str, path: str, headers: Mapping[str, str],
                query: Mapping[str, str]) -> Mapping[str, Any] | None:
    """The first rule whose match list is empty or has one matching entry (rules are ordered)."""
    rules: list[Mapping[str, Any]] = vs.get("http", [])
    for rule in rules:
        matches = rule.get("match") or []
        if not matches or any(request_matches(m, method, path, headers, query) for m in matches):
            return rule
    return None


def pick_destination(rule: Mapping[str, Any], roll: float) -> Mapping[str, Any] | None:
    """A destination by weight; `roll` is uniform in [0, 100). One destination without weight gets 100."""
    routes = rule.get("route") or []
    if len(routes) == 1 and "weight" not in routes[0]:
        return dict(routes[0]["destination"])
    upto = 0.0
    for route in routes:
        upto += float(route.get("weight", 0))
        if roll < upto:
            return dict(route["destination"])
    return None


def subset_version(destinations: list[Mapping[str, Any]], host: str, subset: str | None) -> str | None:
    """The `version` label a DestinationRule subset selects (Istio's subset -> labels)."""
    if subset is None:
        return None
    for dr in destinations:
        if dr.get("host") == host:
            for s in dr.get("subsets", []):
                if s.get("name") == subset:
                    return str((s.get("labels") or {}).get("version", subset))
    return subset  # no DestinationRule: meshctl's convention is that a subset is named after its version


class Routing:
    def __init__(self, live: LiveSnapshot, endpoints: Endpoints, mtls: MutualTLS) -> None:
        self.live = live
        self.endpoints = endpoints
        self.mtls = mtls

    async def requestheaders(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None or not flow.server_conn.tls or flow.server_conn.address is None:
            return  # only outbound calls to meshed services come here with upstream mTLS
        snap = self.live.current
        if not snap.routes:
            return
        try:
            await self._route(flow, snap)
        except Exception:  # a routing bug must be visible, not silently route somewhere
            log.exception("routing failed for %s", flow.request.pretty_url)
            flow.response = http.Response.make(503, b"meshctl: routing failed; see the sidecar's log\n",
                                               {"content-type": "text/plain"})
            flow.metadata["mesh_flags"] = "NR"

    async def _route(self, flow: http.HTTPFlow, snap: Any) -> None:
        address = flow.server_conn.address
        assert address is not None
        endpoint = await self.endpoints.lookup(address[0])
        if endpoint is None:
            return
        service = endpoint.service
        vs = next((r for r in snap.routes if service.name in r.get("hosts", [])), None)
        if vs is None:
            return
        req = flow.request
        rule = select_rule(vs, req.method, req.path, {k.lower(): v for k, v in req.headers.items()},
                           dict(req.query))
        if rule is None:
            flow.response = http.Response.make(404, f"meshctl: no route of VirtualService {vs['name']} matches "
                                               f"{req.method} {req.path}\n".encode(), {"content-type": "text/plain"})
            flow.metadata["mesh_flags"] = "NR"
            return
        dest = pick_destination(rule, random.uniform(0, 100))
        if dest is None:
            return
        version = subset_version(list(snap.destinations), dest.get("host", service.name), dest.get("subset"))
        target = self.endpoints.find_service(dest.get("host", service.name)) or service
        candidates = [ip for ip, e in self.endpoints.by_ip.items()
                      if e.service.name == target.name and (version is None or e.workload.version == version)]
        if not candidates:
            flow.response = http.Response.make(503, f"meshctl: no running instance of {target.name} subset "
                                               f"{dest.get('subset')}\n".encode(), {"content-type": "text/plain"})
            flow.metadata["mesh_flags"] = "UH"  # Envoy's flag: no healthy upstream
            return
        ip = random.choice(candidates)
        port = int((dest.get("port") or {}).get("number") or address[1])
        self.mtls.expected[(ip, port)] = target.identity
        req.host, req.port = ip, port  # the Host header stays what the app sent
        flow.metadata["mesh_route"] = {"virtualservice": vs["name"], "subset": dest.get("subset")}
