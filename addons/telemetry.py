"""Per-request telemetry: Istio's metric names and labels, and one JSON access-log line per request.

The sidecar reports as `destination` for inbound traffic and as `source` for outbound, like Istio's
proxies. Metrics live in a private registry served on :15090 by the admin addon.
"""

from __future__ import annotations

import json
import re
import sys
import time
from typing import Any, TextIO

from mitmproxy import http, tcp
from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics

from addons.endpoints import Endpoints
from addons.listeners import INBOUND_PORT
from addons.live import LiveSnapshot
from addons.mtls import peer_identity
from addons.snapshot import Snapshot

# Istio's standard labels (namespace = compose project), less the Kubernetes-only ones.
PARTY_LABELS = ("reporter", "source_workload", "source_workload_namespace", "source_app", "source_version",
                "source_principal", "destination_service", "destination_service_namespace", "destination_app",
                "destination_workload", "destination_version", "destination_principal", "connection_security_policy")
LABELS = (*PARTY_LABELS, "request_protocol", "response_code", "response_flags")
TCP_LABELS = PARTY_LABELS
# Istio's proxies export no *_created series; they would only double the scrape.
disable_created_metrics()  # type: ignore[no-untyped-call]
SERIES_LIMIT = 4096  # resolved label sets kept; past it the cache starts over (the metrics are untouched)
DURATION_BUCKETS_MS = (0.5, 1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000)


# Envoy's max_path_tag_length: a path or error text longer than this is cut in spans and access logs, so
# every span and log line has a fixed maximum size and the span buffers' count bounds their bytes.
MAX_ATTRIBUTE = 256


def clip(text: str | None, limit: int = MAX_ATTRIBUTE) -> str | None:
    return text if text is None or len(text) <= limit else text[:limit] + "…"


def app_of(identity: str | None) -> str:
    """spiffe://td/ns/project/sa/app -> app (the caller's logical service)."""
    return identity.rsplit("/sa/", 1)[-1] if identity and "/sa/" in identity else "unknown"


def namespace_of(identity: str | None) -> str:
    """spiffe://td/ns/project/sa/app -> project."""
    match = re.search(r"/ns/([^/]+)/sa/", identity or "")
    return match.group(1) if match else "unknown"


def outcome(flow: http.HTTPFlow) -> tuple[float, int, str]:
    """When the exchange ended, its status (0: no response) and its Envoy-style flags (UF: upstream failure)."""
    end = (flow.response.timestamp_end if flow.response and flow.response.timestamp_end else None) or time.time()
    status = flow.response.status_code if flow.response else 0
    return end, status, flow.metadata.get("mesh_flags") or ("-" if flow.response else "UF")


class Telemetry:
    def __init__(self, live: LiveSnapshot, endpoints: Endpoints, out: TextIO = sys.stdout) -> None:
        self.live = live
        self.endpoints = endpoints
        self.out = out
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

    @property
    def snap(self) -> Snapshot:
        return self.live.current

    # --- who talked to whom ---------------------------------------------------------------------------

    def parties(self, flow: http.HTTPFlow | tcp.TCPFlow) -> dict[str, str]:
        """Both ends of the flow, worked out once per flow (metrics, the access log and the span share it)."""
        found = flow.metadata.get("mesh_parties")
        if found is None:
            found = flow.metadata["mesh_parties"] = self._parties(flow)
        return found

    def _parties(self, flow: http.HTTPFlow | tcp.TCPFlow) -> dict[str, str]:
        snap = self.snap
        project = snap.name.split(".", 1)[0]
        me = {"workload": snap.service, "namespace": project, "app": snap.app, "version": snap.version,
              "principal": snap.identity}
        inbound = flow.client_conn.proxy_mode.custom_listen_port == INBOUND_PORT
        if inbound:
            peer = peer_identity(flow.client_conn.certificate_list) if flow.client_conn.tls_established else None
            # The caller's workload and version: its pod address, when the certificate says it is one of ours.
            caller = self.endpoints.by_ip.get(flow.client_conn.peername[0]) if peer else None
            caller = caller if caller and caller.service.identity == peer else None
            return {"reporter": "destination", "source_app": app_of(peer), "source_principal": peer or "unknown",
                    "source_workload": caller.workload.host if caller else app_of(peer),
                    "source_version": caller.workload.version if caller else "unknown",
                    "source_workload_namespace": namespace_of(peer),
                    "destination_service": snap.app, "destination_service_namespace": project,
                    "destination_app": snap.app, "destination_workload": snap.service,
                    "destination_version": snap.version, "destination_principal": snap.identity,
                    "connection_security_policy": "mutual_tls" if peer else "none"}
        routed = flow.metadata.get("mesh_upstream") if isinstance(flow, http.HTTPFlow) else None
        address = routed or flow.server_conn.address  # routed requests go out on the router's own connections
        endpoint = self.endpoints.by_ip.get(address[0]) if address else None
        mtls = bool(endpoint) and (routed is not None or flow.server_conn.tls)
        return {"reporter": "source", "source_workload": me["workload"], "source_workload_namespace": project,
                "source_app": me["app"], "source_version": me["version"], "source_principal": me["principal"],
                # Istio's name for traffic leaving the mesh: a fixed label, so outside addresses cannot grow
                # the metric series without bound.
                "destination_service": endpoint.service.name if endpoint else "PassthroughCluster",
                "destination_service_namespace": project if endpoint else "unknown",
                "destination_app": endpoint.service.name if endpoint else "unknown",
                "destination_workload": endpoint.workload.host if endpoint else "unknown",
                "destination_version": endpoint.workload.version if endpoint else "unknown",
                "destination_principal": endpoint.service.identity if endpoint else "unknown",
                "connection_security_policy": "mutual_tls" if mtls else "none"}

    # --- HTTP -------------------------------------------------------------------------------------------

    def response(self, flow: http.HTTPFlow) -> None:
        self._record(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        if flow.response is None:
            self._record(flow)

    def _record(self, flow: http.HTTPFlow) -> None:
        parties = self.parties(flow)
        end, status, flags = outcome(flow)
        duration_ms = (end - flow.request.timestamp_start) * 1000
        req_bytes = len(flow.request.raw_content or b"")
        resp_bytes = len(flow.response.raw_content or b"") if flow.response else 0
        requests, duration, request_bytes, response_bytes = self._http_series(
            (*(parties[k] for k in PARTY_LABELS), "http", str(status), flags))
        requests.inc()
        duration.observe(duration_ms)
        request_bytes.observe(req_bytes)
        response_bytes.observe(resp_bytes)
        self._log({
            "time": flow.request.timestamp_start, "direction": "inbound" if parties["reporter"] == "destination"
            else "outbound", "method": clip(flow.request.method, 32), "authority": clip(flow.request.host_header or ""),
            "path": clip(flow.request.path), "protocol": flow.request.http_version, "status": status,
            "duration_ms": round(duration_ms, 3), "bytes_received": req_bytes, "bytes_sent": resp_bytes,
            "source": parties["source_principal"], "destination": parties["destination_principal"],
            "source_workload": parties["source_workload"], "source_version": parties["source_version"],
            "destination_service": parties["destination_service"],
            "destination_workload": parties["destination_workload"],
            "destination_version": parties["destination_version"],
            "upstream": "{}:{}".format(*upstream) if (upstream := flow.metadata.get("mesh_upstream")
                                                       or flow.server_conn.address) else None,
            "route": flow.metadata.get("mesh_route"), "audit": flow.metadata.get("mesh_audit"),
            "mtls": parties["connection_security_policy"] == "mutual_tls", "flags": flags,
            "trace_id": getattr(flow.metadata.get("mesh_span"), "trace_id", None),
            "request_id": clip(flow.request.headers.get("x-request-id")),
            "error": clip(flow.error.msg) if flow.error else None, "reason": flow.metadata.get("mesh_reason"),
        })

    def _http_series(self, values: tuple[str, ...]) -> tuple[Any, Any, Any, Any]:
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

    # --- TCP --------------------------------------------------------------------------------------------

    def tcp_start(self, flow: tcp.TCPFlow) -> None:
        self.tcp_opened.labels(**{k: self.parties(flow)[k] for k in TCP_LABELS}).inc()

    def websocket_message(self, flow: http.HTTPFlow) -> None:
        if flow.websocket is not None:
            flow.websocket.messages.clear()  # relayed already; kept, they would grow for the connection's life

    def tcp_message(self, flow: tcp.TCPFlow) -> None:
        # Count, then drop: mitmproxy keeps every relayed chunk, which a long-lived connection cannot afford.
        for message in flow.messages:
            key = "mesh_rx" if message.from_client else "mesh_tx"
            flow.metadata[key] = flow.metadata.get(key, 0) + len(message.content)
        flow.messages.clear()

    def tcp_end(self, flow: tcp.TCPFlow) -> None:
        parties = self.parties(flow)
        labels = {k: parties[k] for k in TCP_LABELS}
        sent, received = flow.metadata.get("mesh_tx", 0), flow.metadata.get("mesh_rx", 0)
        self.tcp_closed.labels(**labels).inc()
        self.tcp_sent.labels(**labels).inc(sent)
        self.tcp_received.labels(**labels).inc(received)
        self._log({"time": flow.client_conn.timestamp_start, "direction": "inbound" if parties["reporter"] ==
                   "destination" else "outbound", "protocol": "tcp", "bytes_received": received, "bytes_sent": sent,
                   "source": parties["source_principal"], "destination": parties.get("destination_workload"),
                   "mtls": parties["connection_security_policy"] == "mutual_tls",
                   "error": flow.error.msg if flow.error else None})

    tcp_error = tcp_end

    def refused_head(self, client: Any, status: int, reason: str) -> None:
        """A request head refused while it was read (addons.framing): no flow exists, so log it here."""
        inbound = client.proxy_mode.custom_listen_port == INBOUND_PORT
        peer = peer_identity(client.certificate_list) if inbound and client.tls_established else None
        self._log({"time": time.time(), "direction": "inbound" if inbound else "outbound", "method": "",
                   "path": "", "protocol": "HTTP/1.1", "status": status, "flags": "DPE", "reason": reason,
                   "source": peer or "unknown", "peer_address": client.peername[0] if client.peername else None,
                   "mtls": peer is not None})

    def _log(self, entry: dict[str, Any]) -> None:
        self.out.write(json.dumps(entry, separators=(",", ":")) + "\n")
        self.out.flush()
