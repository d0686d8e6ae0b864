"""Golden metrics (requests, success rate, latency percentiles) from the sidecars' Istio metrics.

Counters only grow, so a window's numbers are the difference between two reads of every sidecar; a
sidecar that restarted in between (its counters went down) counts from zero. Rows are keyed by any
function of a sample's labels, so `stat`, `edges`, the dashboard and SLOs share one tally.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from meshctl.telemetry.scrape import Sample

REQUESTS = "istio_requests_total"
BUCKETS = "istio_request_duration_milliseconds_bucket"
# TCP relayed at L4: connections and bytes (received from the client, sent to it), counted when each closes
TCP = {"istio_tcp_connections_opened_total": "tcp_opened", "istio_tcp_connections_closed_total": "tcp_closed",
       "istio_tcp_received_bytes_total": "tcp_received", "istio_tcp_sent_bytes_total": "tcp_sent"}
OUTSIDE = ("PassthroughCluster", "BlackHoleCluster")  # Istio's clusters for hosts outside its registry
Key = tuple[str, ...]
KeyFn = Callable[[dict[str, str]], Key | None]


def is_error(code: str, grpc_status: str = "") -> bool:
    """Istio's success rate counts 5xx, and no response at all (0), as failures; a gRPC call also fails with any
    status but OK (HTTP 200 carrying grpc-status 14 is a failed call), as Kiali and `linkerd viz stat` count it."""
    return code.startswith("5") or code == "0" or grpc_status not in ("", "0")


@dataclass
class Golden:
    requests: float = 0.0
    errors: float = 0.0
    buckets: dict[float, float] = field(default_factory=dict)  # upper bound (ms) -> cumulative count
    tcp_opened: float = 0.0
    tcp_closed: float = 0.0
    tcp_received: float = 0.0
    tcp_sent: float = 0.0

    def add(self, other: Golden, sign: float = 1.0) -> None:
        self.requests += sign * other.requests
        self.errors += sign * other.errors
        for name in TCP.values():
            setattr(self, name, getattr(self, name) + sign * getattr(other, name))
        for bound, count in other.buckets.items():
            self.buckets[bound] = self.buckets.get(bound, 0.0) + sign * count

    @property
    def busy(self) -> bool:
        """Any request or TCP connection counted."""
        return self.requests > 0 or self.tcp_opened > 0 or self.tcp_closed > 0

    @property
    def success_rate(self) -> float | None:
        return None if self.requests <= 0 else 100.0 * (self.requests - self.errors) / self.requests

    def quantile(self, q: float) -> float | None:
        """Prometheus's histogram_quantile: linear within the bucket that holds the q-th observation."""
        bounds = sorted(self.buckets.items())
        if not bounds or bounds[-1][1] <= 0:
            return None
        rank = q * bounds[-1][1]
        lower, below = 0.0, 0.0
        for bound, count in bounds:
            if count >= rank:
                if math.isinf(bound):  # beyond the last finite bucket: that bound is all we know
                    return lower
                return lower + (bound - lower) * ((rank - below) / (count - below) if count > below else 1.0)
            lower, below = bound, count
        return lower

    def slower_than(self, threshold_ms: float) -> float:
        """How many requests took longer than the threshold (interpolated within its bucket)."""
        bounds = sorted(self.buckets.items())
        if not bounds:
            return 0.0
        total, lower, below = bounds[-1][1], 0.0, 0.0
        for bound, count in bounds:
            if bound >= threshold_ms:
                if math.isinf(bound):
                    return total - below
                within = below + (count - below) * (threshold_ms - lower) / (bound - lower) if bound > lower else count
                return total - within
            lower, below = bound, count
        return 0.0


def tally(samples: Iterable[Sample], key: KeyFn) -> dict[Key, Golden]:
    out: dict[Key, Golden] = {}
    for s in samples:
        if s.name not in (REQUESTS, BUCKETS) and s.name not in TCP:
            continue
        k = key(s.labels)
        if k is None:
            continue
        g = out.setdefault(k, Golden())
        if s.name in TCP:
            setattr(g, TCP[s.name], getattr(g, TCP[s.name]) + s.value)
        elif s.name == REQUESTS:
            g.requests += s.value
            if is_error(s.labels.get("response_code", ""), s.labels.get("grpc_response_status", "")):
                g.errors += s.value
        else:
            bound = float(s.labels.get("le", "+Inf"))
            g.buckets[bound] = g.buckets.get(bound, 0.0) + s.value
    return out


def window(now: dict[str, list[Sample]], before: dict[str, list[Sample]] | None, key: KeyFn) -> dict[Key, Golden]:
    """Per key, what happened between two reads of each proxy (or since it started, without `before`)."""
    total: dict[Key, Golden] = {}
    for proxy, samples in now.items():
        base = tally(before.get(proxy, []), key) if before else {}
        for k, g in since(tally(samples, key), base).items():
            total.setdefault(k, Golden()).add(g)
    return total


def since(now: dict[Key, Golden], before: dict[Key, Golden]) -> dict[Key, Golden]:
    """One proxy's counts between two reads of it: `now` less `before`, or all of `now` when its counters went
    down (it restarted in between, so it counted from zero). The one counter delta: `stat`, the dashboard,
    SLOs and a canary's gates all take theirs from here."""
    restarted = _count(now) < _count(before)
    out: dict[Key, Golden] = {}
    for k, g in now.items():
        row = out[k] = Golden()
        row.add(g)
        if not restarted and k in before:
            row.add(before[k], -1.0)
    return out


def _count(rows: dict[Key, Golden]) -> float:
    return sum(g.requests + g.tcp_opened for g in rows.values())


def service_name(labels: dict[str, str]) -> str:
    """The destination's short service name: destination_service_name, else destination_service cut at its first
    dot (Istio's destination_service is an FQDN, reviews.shop.svc.cluster.local)."""
    return labels.get("destination_service_name") or labels.get("destination_service", "").split(".", 1)[0]


def inbound(labels: dict[str, str]) -> bool:
    return labels.get("reporter") == "destination"


def by_service_version(labels: dict[str, str]) -> Key | None:
    if not inbound(labels):
        return None
    return (labels.get("destination_service_namespace", ""), service_name(labels),
            labels.get("destination_version", ""))


def by_edge(labels: dict[str, str]) -> Key | None:
    """Who calls whom: meshed calls as the server saw them, calls leaving the mesh as the caller saw them."""
    if inbound(labels):
        return (labels.get("source_workload_namespace", ""), labels.get("source_workload", ""),
                labels.get("destination_service_namespace", ""), labels.get("destination_workload", ""),
                labels.get("source_principal", ""), labels.get("destination_principal", ""),
                labels.get("connection_security_policy", ""))
    if leaves_the_mesh(labels):  # PassthroughCluster, BlackHoleCluster, or a ServiceEntry host by its name
        return (labels.get("source_workload_namespace", ""), labels.get("source_workload", ""), "",
                service_name(labels), labels.get("source_principal", ""), "unknown",
                labels.get("connection_security_policy", ""))
    return None


def leaves_the_mesh(labels: dict[str, str]) -> bool:
    """A call its caller reported to no meshed workload: Istio's clusters for unregistered hosts, or a far side
    whose labels are `unknown` (a ServiceEntry host)."""
    return not inbound(labels) and bool(service_name(labels)) and (
        service_name(labels) in OUTSIDE or labels.get("destination_workload", "unknown") == "unknown")


def summary(g: Golden, seconds: float | None) -> dict[str, float | int | None]:
    """One row's numbers, rounded for people and JSON alike."""
    def r(x: float | None, digits: int = 2) -> float | None:
        return None if x is None else round(x, digits)
    return {"requests": round(g.requests), "errors": round(g.errors),
            "rps": r(g.requests / seconds) if seconds else None, "success_rate": r(g.success_rate, 3),
            "p50_ms": r(g.quantile(0.5)), "p95_ms": r(g.quantile(0.95)), "p99_ms": r(g.quantile(0.99)),
            # TCP relayed at L4, as the server's sidecar counted it: bytes from the client and to it
            "tcp_connections": round(g.tcp_opened), "tcp_received_bytes": round(g.tcp_received),
            "tcp_sent_bytes": round(g.tcp_sent)}
