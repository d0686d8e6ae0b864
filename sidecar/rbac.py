"""AuthorizationPolicy's decision as pure code: Istio's evaluation over a typed Subject (no I/O, no proxy).

AUDIT policies are noted; DENY policies are checked first; then, if any ALLOW policy selects this workload,
a request no ALLOW rule matches is denied. Within a rule, `from`, `to` and `when` must all match; any one
entry of a list may. TCP connections are judged with what TCP has: a rule that needs HTTP fields never
ALLOWs TCP, and is applied without them to DENY it (stricter, as Istio does).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from sidecar.normalize import split_host

HTTP_ONLY = ("methods", "notMethods", "paths", "notPaths", "hosts", "notHosts", "requestPrincipals",
             "notRequestPrincipals")


@dataclass
class Subject:
    """What a decision may look at."""
    principal: str | None = None  # cluster.local/ns/PROJECT/sa/APP, as Istio writes it (no spiffe://)
    request_principal: str | None = None  # iss/sub of a valid JWT
    claims: dict[str, Any] = field(default_factory=dict)
    method: str | None = None  # None: a TCP connection
    path: str | None = None
    host: str | None = None
    port: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    peer_ip: str | None = None  # the connection's source address (ipBlocks)
    remote_ip: str | None = None  # the original client, from trusted X-Forwarded-For hops (remoteIpBlocks)

    # namespace and service_account match the principal as Envoy's RBAC does for Istio's fields (the pattern
    # `.*/ns/NS/.*`), not by parsing it as an identity (sidecar.contract): a principal the strict parser would
    # refuse must still meet a DENY rule's namespaces. Verified peers carry only citadel's valid IDs anyway.
    @property
    def namespace(self) -> str | None:
        if self.principal and "/ns/" in self.principal:
            return self.principal.split("/ns/", 1)[1].split("/", 1)[0]
        return None

    @property
    def service_account(self) -> str | None:
        """NAMESPACE/ACCOUNT of the peer's principal, any trust domain (Istio's serviceAccounts)."""
        principal, ns = self.principal or "", self.namespace
        return f"{ns}/{principal.rsplit('/sa/', 1)[1]}" if ns and "/sa/" in principal else None


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str
    audited: str | None = None


def string_match(pattern: str, value: str | None) -> bool:
    """Istio's: exact, `prefix*`, `*suffix`, or `*` (present)."""
    if value is None:
        return False
    if pattern == "*":
        return value != ""
    if pattern.endswith("*"):
        return value.startswith(pattern[:-1])
    if pattern.startswith("*"):
        return value.endswith(pattern[1:])
    return value == pattern


@lru_cache(maxsize=4096)
def network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """An ipBlocks entry (`10.0.0.0/8` or one address), parsed once; the control plane validated it."""
    return ipaddress.ip_network(text.strip(), strict=False)


def ip_match(pattern: str, value: str | None) -> bool:
    if not value:
        return False
    try:
        address = ipaddress.ip_address(value.strip())
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            address = address.ipv4_mapped  # ::ffff:10.1.2.3 is 10.1.2.3
        return address in network(pattern)
    except ValueError:  # not an address (a garbled X-Forwarded-For): matches no block, so ALLOW fails closed
        return False


def host_match(pattern: str, value: str | None) -> bool:
    """Istio's `hosts`: case-insensitive, trailing dot ignored; a pattern without a port matches any port."""
    if value is None:
        return False
    want, want_port = split_host(pattern)
    host, port = split_host(value)
    return string_match(want, host) and (want_port is None or want_port == port)


def exact_match(pattern: str, value: str | None) -> bool:
    return value is not None and value == pattern


# serviceAccounts take no wildcards (Istio refuses them), so a `*` is never a pattern here
MATCHERS = {"ipBlocks": ip_match, "remoteIpBlocks": ip_match, "hosts": host_match, "serviceAccounts": exact_match}


def field_matches(spec: Mapping[str, Any], name: str, value: str | None) -> bool:
    """`name` and `notName` of one source/operation: in the first list (if given), in neither of the second."""
    match = MATCHERS.get(name, string_match)
    ok = True
    if name in spec:
        ok = any(match(str(p), value) for p in spec[name])
    negated = "not" + name[0].upper() + name[1:]
    if ok and negated in spec:
        ok = not any(match(str(p), value) for p in spec[negated])
    return ok


def remote_address(peer_ip: str | None, forwarded_for: Sequence[str], trusted_hops: int) -> str | None:
    """Envoy's `xff_num_trusted_hops` with use_remote_address: with N trusted hops the original client is the
    Nth address from the right of X-Forwarded-For (the leftmost if there are fewer); with none, the peer."""
    if trusted_hops <= 0:
        return peer_ip
    chain = [a.strip() for value in forwarded_for for a in value.split(",") if a.strip()]
    if not chain:
        return peer_ip
    chosen = chain[-min(trusted_hops, len(chain))]
    try:
        ipaddress.ip_address(chosen)
    except ValueError:  # `10.1.2.3:80`, `010.001.002.003`, garbage: Envoy falls back to the peer, so do we
        return peer_ip
    return chosen


def condition_value(key: str, s: Subject) -> list[str]:
    if key.startswith("request.headers["):
        value = s.headers.get(key[len("request.headers["):-1].lower())
        return [] if value is None else [value]
    if key.startswith("request.auth.claims["):
        claim = s.claims.get(key[len("request.auth.claims["):-1])
        return [str(c) for c in claim] if isinstance(claim, list) else [] if claim is None else [str(claim)]
    simple = {"source.principal": s.principal, "source.namespace": s.namespace,
              "request.auth.principal": s.request_principal, "destination.port": str(s.port)}
    if key == "request.auth.audiences":
        aud = s.claims.get("aud")
        return [aud] if isinstance(aud, str) else [str(a) for a in aud or []]
    value = simple.get(key)
    return [] if value is None else [value]


def _needs_http(rule: Mapping[str, Any]) -> bool:
    ops = [t.get("operation") or {} for t in rule.get("to") or []]
    sources = [f.get("source") or {} for f in rule.get("from") or []]
    return (any(k in op for op in ops for k in HTTP_ONLY) or any(k in src for src in sources for k in HTTP_ONLY)
            or any(str(c.get("key", "")).startswith(("request.", )) for c in rule.get("when") or []))


def needs_request_fields(policies: Sequence[Mapping[str, Any]]) -> bool:
    """Whether any rule reads a field only a request has (method, path, headers, request.* conditions)."""
    return any(_needs_http(rule) for policy in policies for rule in policy.get("rules") or [])


def rule_matches(rule: Mapping[str, Any], s: Subject, relaxed: bool = False) -> bool:
    """`relaxed`: judge a TCP connection by the rule minus its HTTP-only parts (for DENY)."""
    tcp = s.method is None

    def source_ok(src: Mapping[str, Any]) -> bool:
        return (field_matches(src, "principals", s.principal) and field_matches(src, "namespaces", s.namespace)
                and field_matches(src, "serviceAccounts", s.service_account)
                and field_matches(src, "ipBlocks", s.peer_ip) and field_matches(src, "remoteIpBlocks", s.remote_ip)
                and ((tcp and relaxed) or field_matches(src, "requestPrincipals", s.request_principal)))

    def op_ok(op: Mapping[str, Any]) -> bool:
        return (field_matches(op, "ports", str(s.port)) and ((tcp and relaxed) or (
            field_matches(op, "methods", s.method) and field_matches(op, "paths", s.path)
            and field_matches(op, "hosts", s.host))))

    def when_ok(cond: Mapping[str, Any]) -> bool:
        if tcp and relaxed and str(cond.get("key", "")).startswith("request."):
            return True
        values = condition_value(str(cond["key"]), s)
        ok = not cond.get("values") or any(string_match(str(p), v) for p in cond["values"] for v in values)
        return ok and not any(string_match(str(p), v) for p in cond.get("notValues") or [] for v in values)

    if tcp and not relaxed and _needs_http(rule):
        return False
    return ((not rule.get("from") or any(source_ok(f.get("source") or {}) for f in rule["from"]))
            and (not rule.get("to") or any(op_ok(t.get("operation") or {}) for t in rule["to"]))
            and all(when_ok(c) for c in rule.get("when") or []))


def decide(policies: Sequence[Mapping[str, Any]], s: Subject) -> Decision:
    audited = None
    for p in policies:
        if p["action"] == "AUDIT" and any(rule_matches(r, s) for r in p.get("rules") or []):
            audited = p["name"]
    for p in policies:
        if p["action"] != "DENY":
            continue
        for i, rule in enumerate(p.get("rules") or []):
            if rule_matches(rule, s, relaxed=True):
                return Decision(False, f"denied by AuthorizationPolicy {p['name']} (DENY rule {i})", audited)
    allows = [p for p in policies if p["action"] == "ALLOW"]
    if not allows:
        return Decision(True, "no ALLOW policy selects this workload", audited)
    for p in allows:
        for i, rule in enumerate(p.get("rules") or []):
            if rule_matches(rule, s):
                return Decision(True, f"allowed by AuthorizationPolicy {p['name']} (rule {i})", audited)
    names = ", ".join(p["name"] for p in allows)
    return Decision(False, f"no rule of the ALLOW policies for this workload ({names}) matches", audited)
