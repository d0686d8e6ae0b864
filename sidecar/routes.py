"""VirtualService and DestinationRule decisions as pure functions: Istio's request matching (first rule wins),
weighted picks, subsets, fault percentages and header operations. No I/O; both proxy paths use them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sidecar import regex


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
        return regex.fullmatch(spec["regex"], value, ignore_case)  # RE2, compiled once per pattern
    return True


def request_matches(match: Mapping[str, Any], method: str, path: str, headers: Mapping[str, str],
                    query: Mapping[str, str], port: int | None = None) -> bool:
    """Istio's HTTPMatchRequest: every condition given must hold; `port` is the one the app called."""
    if "port" in match and match["port"] != port:
        return False
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
                query: Mapping[str, str], port: int | None = None) -> Mapping[str, Any] | None:
    """The first rule whose match list is empty or has one matching entry (rules are ordered)."""
    rules: list[Mapping[str, Any]] = vs.get("http", [])
    for rule in rules:
        matches = rule.get("match") or []
        if not matches or any(request_matches(m, method, path, headers, query, port) for m in matches):
            return rule
    return None


def pick_route(rule: Mapping[str, Any], roll: float) -> Mapping[str, Any] | None:
    """A route entry by weight; `roll` is uniform in [0, 100). One destination without weight gets 100."""
    routes = rule.get("route") or []
    if len(routes) == 1 and "weight" not in routes[0]:
        return dict(routes[0])
    upto = 0.0
    for route in routes:
        upto += float(route.get("weight", 0))
        if roll < upto:
            return dict(route)
    return None


def pick_destination(rule: Mapping[str, Any], roll: float) -> Mapping[str, Any] | None:
    route = pick_route(rule, roll)
    return dict(route["destination"]) if route else None


def subset_labels(destinations: list[Mapping[str, Any]], host: str, subset: str | None) -> Mapping[str, Any]:
    """The labels a DestinationRule subset selects (Istio's subset -> labels; {} for no subset: every workload).
    A subset no DestinationRule defines keeps meshctl's convention: it is named after its version."""
    if subset is None:
        return {}
    for dr in destinations:
        if dr.get("host") == host:
            for s in dr.get("subsets", []):
                if s.get("name") == subset:
                    return s.get("labels") or {}
    return {"version": subset}


def percent_hit(spec: Mapping[str, Any] | None, roll: float) -> bool:
    """Istio's `percentage: {value: P}`; an absent percentage means every request."""
    value = (spec or {}).get("value", 100)
    return roll < float(value)


def apply_header_ops(headers: Any, ops: Mapping[str, Any] | None) -> None:
    """Istio's HeaderOperations, in its order: set replaces, add appends, remove deletes."""
    if not ops:
        return
    for name, value in (ops.get("set") or {}).items():
        headers[name] = value
    for name, value in (ops.get("add") or {}).items():
        headers.add(name, value)
    for name in ops.get("remove") or []:
        headers.pop(name, None)


MIRROR_LIMIT = 64  # outstanding mirrored requests; more are dropped (mirroring must never slow the caller)
MIRROR_TIMEOUT_S = 5.0
FAILURES = {"timeout": (504, "UT", "upstream request timeout"),
            "connect-failure": (503, "UF", "upstream connect error"),
            "reset": (503, "UC", "upstream connection reset before the response"),
            "refused-stream": (503, "UC", "upstream refused the stream before the response"),
            "overflow": (503, "UO", "upstream overflow: connection pool limits reached")}
