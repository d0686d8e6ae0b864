"""Destination and retry policy as pure values: what Envoy does per cluster, small enough to test alone.

- `ClusterPolicy`: a DestinationRule's trafficPolicy for one subset (the subset's sections override the
  service's), with Istio's defaults where a field is left out.
- `RetryPolicy`: a route's retries, with Istio's default (2 attempts on connect failures, resets and 503).
- `Balancer`: picks an endpoint: ROUND_ROBIN, LEAST_REQUEST (two random choices), RANDOM, or a consistent
  hash (rendezvous hashing: when an endpoint goes, only its keys move).
- `Outliers`: ejects an endpoint after consecutive 5xx or gateway errors, for baseEjectionTime times the
  number of its ejections, never more than maxEjectionPercent of the endpoints (at least one may go).
"""

from __future__ import annotations

import hashlib
import random
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sidecar.contract import parse_duration
from sidecar.grpc import RETRY_ON as GRPC_RETRY_ON

STATUS_RE = re.compile(r"[1-5][0-9][0-9]")
UNLIMITED = 2**32 - 1  # Istio's default for every connection-pool limit
GATEWAY_ERRORS = frozenset({502, 503, 504})
# Every retryOn condition the sidecar acts on (Envoy's HTTP ones and Istio's gRPC ones); config refuses others.
RETRY_CONDITIONS = frozenset({"5xx", "gateway-error", "connect-failure", "reset", "retriable-4xx", "refused-stream",
                              "retriable-status-codes", *GRPC_RETRY_ON})


def seconds(text: Any, default: float | None = None) -> float | None:
    """Istio's duration strings ('250ms', '1.5s'); the control plane validated them already."""
    if not isinstance(text, str):
        return default
    try:
        return parse_duration(text)
    except ValueError:
        return default


def merged_policy(rule: Mapping[str, Any] | None, subset: str | None) -> dict[str, Any]:
    """The trafficPolicy in force for `subset`: each section the subset gives replaces the service's."""
    if rule is None:
        return {}
    policy = dict(rule.get("trafficPolicy") or {})
    for s in rule.get("subsets") or []:
        if s.get("name") == subset:
            policy.update(s.get("trafficPolicy") or {})
    return policy


def tls_disabled(tls: Mapping[str, Any] | None) -> bool:
    """A `tls` block sends plain text: mode DISABLE (Istio's default mode when a block is given without one)."""
    return tls is not None and tls.get("mode", "DISABLE") == "DISABLE"


@dataclass(frozen=True)
class ClusterPolicy:
    lb: str = "LEAST_REQUEST"  # Istio's default since 1.14
    hash_header: str | None = None
    hash_cookie: str | None = None
    hash_cookie_ttl: float | None = None
    hash_cookie_path: str = "/"
    hash_source_ip: bool = False
    max_connections: int = UNLIMITED
    max_pending: int = UNLIMITED
    max_requests_per_connection: int = 0  # 0: unlimited
    max_retries: int = UNLIMITED
    connect_timeout: float = 10.0
    idle_timeout: float = 3600.0
    consecutive_5xx: int = 0  # 0: not tracked
    consecutive_gateway: int = 0
    interval: float = 10.0
    base_ejection: float = 30.0
    max_ejection_percent: float = 10.0
    tls_disabled: bool = False  # DestinationRule tls.mode DISABLE: plain text to the host, not mesh mTLS
    tls_ports: tuple[tuple[int, bool], ...] = ()  # portLevelSettings: port -> disabled, overriding the above

    def mtls(self, port: int) -> bool:
        """Whether calls to `port` use mesh mutual TLS (ISTIO_MUTUAL, the default) rather than plain text."""
        return not dict(self.tls_ports).get(port, self.tls_disabled)

    @classmethod
    def from_spec(cls, policy: Mapping[str, Any]) -> ClusterPolicy:
        lb = policy.get("loadBalancer") or {}
        ch = lb.get("consistentHash") or {}
        cookie = ch.get("httpCookie") or {}
        tcp = (policy.get("connectionPool") or {}).get("tcp") or {}
        http = (policy.get("connectionPool") or {}).get("http") or {}
        od = policy.get("outlierDetection")
        values: dict[str, Any] = {
            "lb": "CONSISTENT_HASH" if ch else lb.get("simple", "LEAST_REQUEST"),
            "hash_header": (ch.get("httpHeaderName") or "").lower() or None,
            "hash_cookie": cookie.get("name"),
            "hash_cookie_ttl": seconds(cookie.get("ttl")),
            "hash_cookie_path": cookie.get("path", "/"),
            "hash_source_ip": bool(ch.get("useSourceIp")),
            "max_connections": tcp.get("maxConnections", UNLIMITED),
            "max_pending": http.get("http1MaxPendingRequests", UNLIMITED),
            "max_requests_per_connection": http.get("maxRequestsPerConnection", 0),
            "max_retries": http.get("maxRetries", UNLIMITED),
            "connect_timeout": seconds(tcp.get("connectTimeout"), 10.0),
            "idle_timeout": seconds(http.get("idleTimeout"), 3600.0),
            "tls_disabled": tls_disabled(policy.get("tls")),
            "tls_ports": tuple((int((p.get("port") or {}).get("number", 0)), tls_disabled(p["tls"]))
                               for p in policy.get("portLevelSettings") or [] if "tls" in p),
        }
        if od is not None:  # Istio's defaults apply once outlierDetection is given at all
            values |= {"consecutive_5xx": od.get("consecutive5xxErrors", 5),
                       "consecutive_gateway": od.get("consecutiveGatewayErrors", 0),
                       "interval": seconds(od.get("interval"), 10.0),
                       "base_ejection": seconds(od.get("baseEjectionTime"), 30.0),
                       "max_ejection_percent": float(od.get("maxEjectionPercent", 10))}
        return cls(**values)


# --- retries ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 2
    per_try_timeout: float | None = None
    conditions: frozenset[str] = frozenset({"connect-failure", "refused-stream", "unavailable", "cancelled",
                                            "retriable-status-codes"})
    statuses: frozenset[int] = frozenset({503})

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any] | None) -> RetryPolicy:
        if spec is None:
            return cls()
        tokens = [t.strip() for t in str(spec.get("retryOn", "")).split(",") if t.strip()]
        codes = [t for t in tokens if STATUS_RE.fullmatch(t)]  # ASCII digits: '²'.isdigit() is True, int('²') fails
        statuses = frozenset(int(t) for t in codes)
        conditions = frozenset(t for t in tokens if t not in codes)
        if statuses:
            conditions |= {"retriable-status-codes"}
        if not tokens:  # Istio keeps its default conditions when only attempts are given
            conditions, statuses = cls.conditions, cls.statuses
        return cls(attempts=int(spec.get("attempts", 2)), per_try_timeout=seconds(spec.get("perTryTimeout")),
                   conditions=conditions, statuses=statuses)

    def retriable(self, status: int | None, failure: str | None, grpc_status: int | None = None) -> bool:
        """`status` is the upstream's answer; `failure` is 'connect-failure', 'reset', 'refused-stream' or
        'timeout' without one; `grpc_status` a gRPC answer's status, when its headers carried it."""
        c = self.conditions
        if grpc_status is not None and any(GRPC_RETRY_ON.get(t) == grpc_status for t in c):
            return True
        if failure == "refused-stream":  # HTTP/2 REFUSED_STREAM: the upstream never processed it
            return bool(c & {"refused-stream", "reset", "5xx"})
        if failure == "connect-failure":
            return bool(c & {"connect-failure", "5xx", "gateway-error"})
        if failure == "reset":
            return bool(c & {"reset", "5xx"})
        if failure == "timeout":  # Envoy: a per-try timeout is a 504 for retry purposes
            return bool(c & {"5xx", "gateway-error"})
        if status is None:
            return False
        return (("5xx" in c and status >= 500) or ("gateway-error" in c and status in GATEWAY_ERRORS)
                or ("retriable-4xx" in c and status == 409)
                or ("retriable-status-codes" in c and status in self.statuses))


def backoff(attempt: int, base: float = 0.025, cap: float = 0.25) -> float:
    """Envoy's: fully jittered exponential, 25 ms base, capped at 250 ms."""
    return random.uniform(0, min(cap, base * (2 ** attempt)))


# --- load balancing -----------------------------------------------------------------------------------

def rendezvous(key: str, candidates: Sequence[str]) -> str:
    return max(candidates, key=lambda ip: hashlib.blake2b(f"{key}|{ip}".encode(), digest_size=8).digest())


class Balancer:
    def __init__(self, policy: ClusterPolicy) -> None:
        self.policy = policy
        self.next = 0
        self.active: dict[str, int] = {}  # in-flight requests per endpoint, for LEAST_REQUEST

    def pick(self, candidates: Sequence[str], hash_key: str | None) -> str:
        ordered = sorted(candidates)
        if self.policy.lb == "CONSISTENT_HASH" and hash_key is not None:
            return rendezvous(hash_key, ordered)
        if self.policy.lb == "ROUND_ROBIN":
            self.next += 1
            return ordered[self.next % len(ordered)]
        if self.policy.lb == "LEAST_REQUEST" and len(ordered) > 1:
            a, b = random.sample(ordered, 2)
            return a if self.active.get(a, 0) <= self.active.get(b, 0) else b
        return random.choice(ordered)


# --- outlier detection --------------------------------------------------------------------------------

@dataclass
class HostHealth:
    consecutive_5xx: int = 0
    consecutive_gateway: int = 0
    ejections: int = 0
    ejected_until: float = 0.0


@dataclass
class Outliers:
    policy: ClusterPolicy
    clock: Callable[[], float] = time.monotonic
    hosts: dict[str, HostHealth] = field(default_factory=dict)

    @property
    def enabled(self) -> bool:
        return self.policy.consecutive_5xx > 0 or self.policy.consecutive_gateway > 0

    def ejected(self, ip: str) -> bool:
        health = self.hosts.get(ip)
        return health is not None and health.ejected_until > self.clock()

    def healthy(self, candidates: Sequence[str]) -> list[str]:
        """Candidates not ejected; all of them if every one is (Envoy's panic mode: better than nothing)."""
        ok = [ip for ip in candidates if not self.ejected(ip)]
        return ok or list(candidates)

    def record(self, ip: str, status: int | None, failure: str | None, population: int) -> bool:
        """Count one result; returns True if it ejected `ip`."""
        if not self.enabled:
            return False
        health = self.hosts.setdefault(ip, HostHealth())
        gateway = failure is not None or status in GATEWAY_ERRORS
        if gateway or (status is not None and status >= 500):
            health.consecutive_5xx += 1
            health.consecutive_gateway += 1 if gateway else 0
        else:
            health.consecutive_5xx = health.consecutive_gateway = 0
            return False
        p = self.policy
        tripped = ((p.consecutive_5xx and health.consecutive_5xx >= p.consecutive_5xx)
                   or (p.consecutive_gateway and health.consecutive_gateway >= p.consecutive_gateway))
        if not tripped or self.ejected(ip):
            return False
        now = self.clock()
        ejected_now = sum(1 for h in self.hosts.values() if h.ejected_until > now)
        allowed = max(1, int(population * p.max_ejection_percent / 100)) if p.max_ejection_percent > 0 else 0
        if ejected_now >= allowed:
            return False
        health.ejections += 1
        health.ejected_until = now + p.base_ejection * health.ejections
        health.consecutive_5xx = health.consecutive_gateway = 0
        return True

    def snapshot(self) -> dict[str, Any]:
        now = self.clock()
        return {ip: {"ejected": h.ejected_until > now, "ejections": h.ejections,
                     "consecutive_5xx": h.consecutive_5xx} for ip, h in sorted(self.hosts.items())}
