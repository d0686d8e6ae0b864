"""Telemetry on the engine: Istio's metrics and one JSON access-log line per request and per TCP connection,
with the same names, labels and fields as before the engine (sidecar.meters holds them).

The sidecar reports as `destination` for inbound traffic and as `source` for outbound, like Istio's proxies.
Both ends of a request are worked out once (`parties`), and the span reads them too.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from sidecar.contract import PORT_INBOUND as INBOUND_PORT
from sidecar.egress import REGISTRY_ONLY
from sidecar.endpoints import Endpoints
from sidecar.engine.call import Call
from sidecar.engine.plan import ConnectionInfo
from sidecar.live import LiveSnapshot
from sidecar.meters import CLUSTER, PARTY_LABELS, Meters, app_of, clip, fqdn, namespace_of

PASSTHROUGH, BLACKHOLE = "PassthroughCluster", "BlackHoleCluster"  # Istio's clusters for unregistered hosts


@dataclass(slots=True)
class TcpConnection:
    """One relayed TCP connection, from when it opened."""

    info: ConnectionInfo
    upstream: tuple[str, int]
    identity: str  # the upstream's SPIFFE ID ("" = plaintext)
    parties: dict[str, str]
    start: float = field(default_factory=time.time)


class Observer:
    def __init__(self, live: LiveSnapshot, endpoints: Endpoints, meters: Meters) -> None:
        self.live = live
        self.endpoints = endpoints
        self.meters = meters

    # --- who talked to whom ------------------------------------------------------------------------------

    def parties(self, call: Call) -> dict[str, str]:
        if call.parties is None:
            # Answered before an upstream was chosen (a fault, no route): the service the app was calling
            upstream = call.upstream or (call.conn.destination if call.conn is not None else None)
            call.parties = self._parties(call.conn, upstream, call.upstream_identity, call)
        return call.parties

    def _leaving(self, call: Call) -> tuple[str, str] | None:
        """How Istio names a call leaving the mesh, as (service, namespace): a ServiceEntry host by its name (routed
        there by the egress decision), a request REGISTRY_ONLY refused as BlackHoleCluster; None: any other."""
        snap = self.live.current
        host = str((call.route or {}).get("host") or "")
        entry = next((e for e in snap.egress if host in e.hosts), None) if host else None
        if entry is not None:
            return host, entry.name.split("/", 1)[0] if "/" in entry.name else "unknown"
        if call.flags == "NR" and snap.mesh.outbound_policy == REGISTRY_ONLY:
            return BLACKHOLE, "unknown"
        return None

    def _parties(self, info: ConnectionInfo | None, upstream: tuple[str, int] | None,
                 upstream_identity: str, call: Call | None = None) -> dict[str, str]:
        snap = self.live.current
        project = snap.name.split(".", 1)[0]
        # This proxy's own side of the call; Istio's canonical service and revision are the app and version labels.
        me = {"workload": snap.service, "workload_namespace": project, "app": snap.app, "version": snap.version,
              "principal": snap.identity, "canonical_service": snap.app, "canonical_revision": snap.version,
              "cluster": CLUSTER}
        if info is not None and info.listener == INBOUND_PORT:
            peer = info.tls_peer or None
            # The caller's workload and version: its pod address, when the certificate says it is one of ours.
            caller = self.endpoints.by_ip.get(info.peer[0]) if peer else None
            caller = caller if caller and caller.service.identity == peer else None
            # else the app whose identity it is (its account may differ: `mesh.service-account`), else the account
            app = caller.service.name if caller else next(
                (s.name for s in snap.services if peer and s.identity == peer), app_of(peer))
            version = caller.workload.version if caller else "unknown"
            source = {"workload": caller.workload.host if caller else app, "app": app, "version": version,
                      "workload_namespace": namespace_of(peer), "principal": peer or "unknown",
                      "canonical_service": app, "canonical_revision": version,
                      "cluster": CLUSTER if peer else "unknown"}
            return {"reporter": "destination", **_side("source", source), **_side("destination", me),
                    **_service(snap.app, project), "connection_security_policy": "mutual_tls" if peer else "none"}
        endpoint = self.endpoints.by_ip.get(upstream[0]) if upstream else None
        if endpoint is None and upstream is not None:
            endpoint = self.endpoints.departed_endpoint(upstream[0])
        mtls = endpoint is not None and bool(upstream_identity)
        if endpoint is None:
            # Istio's names for traffic leaving the mesh: a registered host's (from config), else fixed labels,
            # so outside addresses cannot grow the metric series without bound.
            name, namespace = (self._leaving(call) if call is not None else None) or (PASSTHROUGH, "unknown")
            service = {"destination_service": name, "destination_service_name": name,
                       "destination_service_namespace": namespace}
            far = dict.fromkeys(("workload", "workload_namespace", "app", "version", "principal",
                                 "canonical_service", "canonical_revision", "cluster"), "unknown")
        else:
            namespace = namespace_of(endpoint.service.identity)
            namespace = project if namespace == "unknown" else namespace
            service = _service(endpoint.service.name, namespace)
            far = {"workload": endpoint.workload.host, "workload_namespace": namespace, "app": endpoint.service.name,
                   "version": endpoint.workload.version, "principal": endpoint.service.identity,
                   "canonical_service": endpoint.service.name, "canonical_revision": endpoint.workload.version,
                   "cluster": CLUSTER}
        return {"reporter": "source", **_side("source", me), **_side("destination", far), **service,
                "connection_security_policy": "mutual_tls" if mtls else "none"}

    # --- HTTP ----------------------------------------------------------------------------------------------

    def request_done(self, call: Call) -> None:
        parties = self.parties(call)
        end = call.end or time.time()
        status, flags = call.status, outcome_flags(call)
        duration_ms = (end - call.start) * 1000
        requests, duration, request_bytes, response_bytes = self.meters.http_series(
            (*(parties[k] for k in PARTY_LABELS), call.protocol, str(status), flags,
             "" if call.grpc_status is None else str(call.grpc_status)))
        requests.inc()
        duration.observe(duration_ms)
        request_bytes.observe(call.request_bytes)
        response_bytes.observe(call.response_bytes)
        head = call.head
        entry = {
            "time": call.start, "direction": "inbound" if parties["reporter"] == "destination" else "outbound",
            "method": clip(call.method, 32), "authority": clip(call.authority), "path": clip(call.target),
            "protocol": "HTTP/" + head.version.decode(), "status": status, "duration_ms": round(duration_ms, 3),
            "bytes_received": call.request_bytes, "bytes_sent": call.response_bytes,
            "source": parties["source_principal"], "destination": parties["destination_principal"],
            "source_workload": parties["source_workload"], "source_version": parties["source_version"],
            "destination_service": parties["destination_service_name"],  # the short name, as `logs` shows it
            "destination_workload": parties["destination_workload"],
            "destination_version": parties["destination_version"],
            "upstream": "{}:{}".format(*call.upstream) if call.upstream else None,
            "route": call.route, "audit": call.audit,
            "mtls": parties["connection_security_policy"] == "mutual_tls", "flags": flags,
            "trace_id": getattr(call.span, "trace_id", None),
            "request_id": clip(call.headers.get("x-request-id")) if head.method else None,
            "error": clip(call.error), "reason": call.reason,
        }
        if call.grpc_status is not None:
            entry["grpc_status"] = call.grpc_status
        if not head.method and call.conn is not None:  # refused before a request was whole: who sent it
            entry["peer_address"] = call.conn.peer[0]
        self.meters.log(entry)

    # --- TCP -----------------------------------------------------------------------------------------------

    def tcp_opened(self, info: ConnectionInfo, upstream: tuple[str, int], identity: str) -> TcpConnection:
        conn = TcpConnection(info, upstream, identity, self._parties(info, upstream, identity))
        self.meters.tcp_opened.labels(**tcp_labels(conn.parties)).inc()
        return conn

    def tcp_closed(self, conn: TcpConnection, received: int, sent: int, error: str | None = None) -> None:
        """`received` from the client, `sent` to it."""
        parties = conn.parties
        labels = tcp_labels(parties)
        self.meters.tcp_closed.labels(**labels).inc()
        self.meters.tcp_sent.labels(**labels).inc(sent)
        self.meters.tcp_received.labels(**labels).inc(received)
        self.meters.log({"time": conn.start, "direction": "inbound" if parties["reporter"] == "destination"
                         else "outbound", "protocol": "tcp", "bytes_received": received, "bytes_sent": sent,
                         "source": parties["source_principal"], "destination": parties.get("destination_workload"),
                         "mtls": parties["connection_security_policy"] == "mutual_tls", "error": error})


def tcp_labels(parties: dict[str, str]) -> dict[str, str]:
    return {**{k: parties[k] for k in PARTY_LABELS}, "request_protocol": "tcp"}


def _side(prefix: str, party: dict[str, str]) -> dict[str, str]:
    return {f"{prefix}_{k}": v for k, v in party.items()}


def _service(name: str, namespace: str) -> dict[str, str]:
    return {"destination_service": fqdn(name, namespace), "destination_service_name": name,
            "destination_service_namespace": namespace}


def outcome_flags(call: Call) -> str:
    """Envoy-style flags: what a hook or the engine set, else "-" with a response and UF without one."""
    return call.flags if call.flags != "-" or call.status else "UF"
