"""The sidecar's metrics and access log, independent of the proxy engine: Istio's metric names and labels
in a private Prometheus registry (served on :15090), and one JSON line per request or connection.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Iterator
from typing import Any, TextIO

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.utils import floatToGoString

from sidecar.contract import Identity, IdentityError, parse_spiffe

# Istio's standard labels, all of them, with compose's values (namespace = compose project; the README's
# "Metrics" section has the table): Istio's dashboards and Kiali select and group by every one of these.
PARTY_LABELS = ("reporter", "source_workload", "source_workload_namespace", "source_app", "source_version",
                "source_principal", "source_canonical_service", "source_canonical_revision", "source_cluster",
                "destination_service", "destination_service_name", "destination_service_namespace",
                "destination_app", "destination_workload", "destination_workload_namespace", "destination_version",
                "destination_principal", "destination_canonical_service", "destination_canonical_revision",
                "destination_cluster", "connection_security_policy")
LABELS = (*PARTY_LABELS, "request_protocol", "response_code", "response_flags", "grpc_response_status")
TCP_LABELS = (*PARTY_LABELS, "request_protocol")  # request_protocol="tcp", as Istio's TCP metrics carry it
# One Docker engine is one "cluster" (Istio's default name is "Kubernetes"); a fixed name keeps Kiali's and the
# dashboards' cluster selectors working and the series stable.
CLUSTER = "compose"


def le(bound: float) -> str:
    """A bucket's `le` label as collect() writes it (0.5, 10.0, +Inf)."""
    text: str = floatToGoString(bound)  # type: ignore[no-untyped-call]
    return text
# Kubernetes' default cluster domain: Istio's destination_service is `<service>.<namespace>.svc.cluster.local`
# (reviews.default.svc.cluster.local), and Kiali and the dashboards split it on dots.
DOMAIN = "svc.cluster.local"
# The image's version (set at build), for istio_build{component="proxy"}: the mesh dashboard lists it
PROXY_VERSION = os.environ.get("MESHCTL_PROXY_VERSION", "dev")
# Istio's proxies export no *_created series; they would only double the scrape.
disable_created_metrics()  # type: ignore[no-untyped-call]
LOG_BATCH = 256
SERIES_LIMIT = 4096  # resolved label sets kept; past it the cache starts over (the metrics are untouched)
DURATION_BUCKETS_MS = (0.5, 1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000)


# Envoy's max_path_tag_length: a path or error text longer than this is cut in spans and access logs, so
# every span and log line has a fixed maximum size and the span buffers' count bounds their bytes.
MAX_ATTRIBUTE = 256


def clip(text: str | None, limit: int = MAX_ATTRIBUTE) -> str | None:
    return text if text is None or len(text) <= limit else text[:limit] + "…"


def app_of(identity: str | None) -> str:
    """spiffe://td/ns/project/sa/app -> app (the caller's logical service)."""
    parsed = _identity(identity)
    return parsed.account if parsed else "unknown"


def fqdn(service: str, namespace: str) -> str:
    """Istio's destination_service: reviews in project shop -> reviews.shop.svc.cluster.local."""
    return f"{service}.{namespace}.{DOMAIN}"


def namespace_of(identity: str | None) -> str:
    """spiffe://td/ns/project/sa/app -> project."""
    parsed = _identity(identity)
    return parsed.namespace if parsed else "unknown"


def _identity(identity: str | None) -> Identity | None:
    try:
        return parse_spiffe(identity) if identity else None
    except IdentityError:
        return None


class Meters:
    """The metrics (resolved label sets cached) and the access-log stream."""

    def __init__(self, out: TextIO = sys.stdout) -> None:
        self.out = out
        self._pending: list[str] = []
        self._flusher: asyncio.Handle | None = None
        self.registry = CollectorRegistry()
        self.requests = Counter("istio_requests", "Requests handled by this proxy.", LABELS, registry=self.registry)
        self.duration = Histogram("istio_request_duration_milliseconds", "Request duration in milliseconds.",
                                  LABELS, buckets=DURATION_BUCKETS_MS, registry=self.registry)
        self.request_bytes = Histogram("istio_request_bytes", "Request body sizes.", LABELS,
                                       buckets=(100, 1000, 10_000, 100_000, 1_000_000, 10_000_000),
                                       registry=self.registry)
        self.response_bytes = Histogram("istio_response_bytes", "Response body sizes.", LABELS,
                                        buckets=(100, 1000, 10_000, 100_000, 1_000_000, 10_000_000),
                                        registry=self.registry)
        self.tcp_opened = Counter("istio_tcp_connections_opened", "TCP connections opened.", TCP_LABELS,
                                  registry=self.registry)
        self.tcp_closed = Counter("istio_tcp_connections_closed", "TCP connections closed.", TCP_LABELS,
                                  registry=self.registry)
        self.tcp_sent = Counter("istio_tcp_sent_bytes", "Bytes sent to the client of a TCP connection.",
                                TCP_LABELS, registry=self.registry)
        self.tcp_received = Counter("istio_tcp_received_bytes", "Bytes received from the client of a TCP "
                                    "connection.", TCP_LABELS, registry=self.registry)
        self._series: dict[tuple[str, ...], tuple[Any, Any, Any, Any]] = {}
        self._keys: dict[tuple[str, Any], Any] = {}  # counted()'s keys, made once per series
        # Istio's proxies say which build they run; the mesh dashboard's "Istio Component Versions" reads it
        Gauge("istio_build", "Istio component build info.", ("component", "tag"), registry=self.registry).labels(
            "proxy", PROXY_VERSION).set(1)

    def http_series(self, values: tuple[str, ...]) -> tuple[Any, Any, Any, Any]:
        """The four metrics' children for one label set (in LABELS order). Resolved once: labels() checks
        its arguments and takes a lock on every call, a cost paid per request otherwise."""
        series = self._series.get(values)
        if series is None:
            if len(self._series) >= SERIES_LIMIT:
                self._series.clear()
            series = self._series[values] = (self.requests.labels(*values), self.duration.labels(*values),
                                              self.request_bytes.labels(*values),
                                              self.response_bytes.labels(*values))
        return series

    def counted(self) -> Iterator[tuple[tuple[str, tuple[tuple[str, str], ...]], float]]:
        """The samples of the request and TCP counters and the latency histogram, as collect() names them, each
        with its key (sample name, label pairs): what sidecar.history keeps, once a second on the event loop.
        Read from the children, with keys made once per series: collect() builds a Sample per value, and it
        and the keys took ~13 ms for 50 label sets, a stall the proxy's requests would wait out
        (tests/unit/sidecar/test_history.py checks this against collect())."""
        keys = self._keys
        if len(keys) > 4 * SERIES_LIMIT:  # label sets come and go (pods, versions): forget the old ones' keys
            keys.clear()
        for counter in (self.requests, self.tcp_opened, self.tcp_closed, self.tcp_sent, self.tcp_received):
            name = counter._name + "_total"
            children: dict[Any, Any] = counter._metrics  # prometheus_client's own: labels -> child
            for values, child in list(children.items()):
                key = keys.get((name, values))
                if key is None:
                    key = keys[(name, values)] = (name, tuple(zip(counter._labelnames, values, strict=True)))
                yield key, child._value.get()
        name = self.duration._name + "_bucket"
        histograms: dict[Any, Any] = self.duration._metrics
        for values, child in list(histograms.items()):
            found = keys.get((name, values))
            if found is None:
                pairs = tuple(zip(self.duration._labelnames, values, strict=True))
                found = keys[(name, values)] = tuple((name, (*pairs, ("le", le(b))))
                                                     for b in child._upper_bounds)
            cumulative = 0.0
            for bucket_key, bucket in zip(found, child._buckets, strict=True):
                cumulative += bucket.get()
                yield bucket_key, cumulative

    def log(self, entry: dict[str, Any]) -> None:
        """One access-log line. The lines of one turn of the event loop are written together, on the next
        turn (one write per batch instead of one per request: a write and a flush per line were ~10% of a
        busy sidecar's CPU), or at once when LOG_BATCH lines wait. Without a running event loop (tests, the
        CLI) each line is written at once."""
        self._pending.append(json.dumps(entry, separators=(",", ":")))
        if len(self._pending) >= LOG_BATCH:
            self.flush_log()
        elif self._flusher is None:
            try:
                self._flusher = asyncio.get_running_loop().call_soon(self.flush_log)
            except RuntimeError:
                self.flush_log()

    def flush_log(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            self._flusher = None
        if self._pending:
            self.out.write("\n".join(self._pending) + "\n")
            self._pending.clear()
            self.out.flush()
