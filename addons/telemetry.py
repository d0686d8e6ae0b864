"""Per-request telemetry: Istio's metric names and labels, and one JSON access-log line per request.

The sidecar reports as `destination` for inbound traffic and as `source` for outbound, like Istio's
proxies. Metrics live in a private registry served on :15090 by the admin addon.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

from mitmproxy import http, tcp

from addons.endpoints import Endpoints
from addons.listeners import INBOUND_PORT
from addons.live import LiveSnapshot
from addons.meters import (  # noqa: F401 (re-exported)
    LABELS,
    MAX_ATTRIBUTE,
    PARTY_LABELS,
    TCP_LABELS,
    Meters,
    app_of,
    clip,
    namespace_of,
)
from addons.mtls import peer_identity
from addons.snapshot import Snapshot


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
        self.meters = Meters(out)
        self.registry = self.meters.registry
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
        requests, duration, request_bytes, response_bytes = self.meters.http_series(
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

    # --- TCP --------------------------------------------------------------------------------------------

    def tcp_start(self, flow: tcp.TCPFlow) -> None:
        self.meters.tcp_opened.labels(**{k: self.parties(flow)[k] for k in TCP_LABELS}).inc()

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
        self.meters.tcp_closed.labels(**labels).inc()
        self.meters.tcp_sent.labels(**labels).inc(sent)
        self.meters.tcp_received.labels(**labels).inc(received)
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
        self.meters.log(entry)
