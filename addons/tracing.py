"""Distributed tracing: each sidecar hop records a span, and passes the context on in the headers.

A request with no trace context starts a trace (sampled at the configured rate); one with W3C
`traceparent` or B3 headers continues it. The span of this hop becomes the parent of the next: the
sidecar rewrites the headers before the request moves on, so the app (which forwards the headers it
received, as apps in any mesh must) hands our span id to its own calls. Inbound hops are SERVER spans,
outbound hops CLIENT spans, in Zipkin's v2 model.

Finished spans go to a bounded in-memory buffer (the embedded collector `meshctl trace` reads from
every sidecar) and, when configured, to Zipkin (v2 JSON) and OTLP/HTTP (JSON) in the background.
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
import time
from typing import Any, Protocol

from mitmproxy import http

from addons.listeners import INBOUND_PORT
from addons.live import LiveSnapshot
from addons.meters import clip
from addons.spans import (  # noqa: F401 (re-exported)
    B3_HEADERS,
    BUFFER_SPANS,
    EXPORT_QUEUE_MAX,
    OpenSpan,
    SpanContext,
    SpanStore,
    extract,
    inject,
    otlp_body,
)
from addons.telemetry import outcome

log = logging.getLogger("meshctl.tracing")


class Parties(Protocol):
    def parties(self, flow: Any) -> dict[str, str]: ...


class Tracing(SpanStore):
    def __init__(self, live: LiveSnapshot, telemetry: Parties) -> None:
        super().__init__(live)
        self.telemetry = telemetry

    def running(self) -> None:
        asyncio.get_running_loop().create_task(self.export_forever())

    # --- per request ------------------------------------------------------------------------------------

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        try:
            self._open(flow)
        except Exception:  # tracing is never a reason to fail a request
            log.exception("could not start a span")

    def _open(self, flow: http.HTTPFlow) -> None:
        caller = extract(flow.request.headers)
        inbound = flow.client_conn.proxy_mode.custom_listen_port == INBOUND_PORT
        if caller is not None and caller.sampled is not None:
            sampled = caller.sampled
        else:
            sampled = random.random() * 100 < self.live.current.tracing.sampling
        trace_id = caller.trace_id if caller else secrets.token_hex(16)
        span = OpenSpan(trace_id, secrets.token_hex(8), caller.span_id if caller else None, sampled,
                        "SERVER" if inbound else "CLIENT", flow.request.timestamp_start or time.time())
        inject(flow.request.headers, span.trace_id, span.span_id, span.parent_id, sampled)
        if "x-request-id" not in flow.request.headers:
            flow.request.headers["x-request-id"] = secrets.token_hex(16)
        flow.metadata["mesh_span"] = span

    def response(self, flow: http.HTTPFlow) -> None:
        self._close(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        if flow.response is None:
            self._close(flow)

    def _close(self, flow: http.HTTPFlow) -> None:
        span = flow.metadata.get("mesh_span")
        if not isinstance(span, OpenSpan) or not span.sampled:
            return
        try:
            record = self._record(flow, span)
        except Exception:
            log.exception("could not finish a span")
            return
        self.add(record)

    def _record(self, flow: http.HTTPFlow, span: OpenSpan) -> dict[str, Any]:
        snap = self.live.current
        parties = self.telemetry.parties(flow)
        inbound = span.kind == "SERVER"
        end, status, flags = outcome(flow)
        project = snap.name.split(".", 1)[0]
        peer = parties["source_principal"] if inbound else parties["destination_principal"]
        tags = {"http.method": clip(flow.request.method, 32), "http.path": clip(flow.request.path.split("?", 1)[0]),
                "http.status_code": str(status), "peer.identity": peer, "node_id": snap.name,
                "upstream_cluster": f"{parties['destination_service']}|{parties['destination_version']}",
                "mtls": str(parties["connection_security_policy"] == "mutual_tls").lower(),
                "response_flags": flags}
        if isinstance(route := flow.metadata.get("mesh_route"), dict):  # the router's decision
            tags["route"] = f"{route.get('host')}|{route.get('subset') or '-'}"
            tags["attempts"] = str(route.get("attempts", 1))
        if flow.error or status >= 500 or status == 0:
            tags["error"] = clip(flow.error.msg) if flow.error else str(status)
        record: dict[str, Any] = {
            "traceId": span.trace_id, "id": span.span_id, "name": f"{flow.request.method} {tags['http.path']}",
            "kind": span.kind,
            "timestamp": int(span.start * 1_000_000), "duration": max(1, int((end - span.start) * 1_000_000)),
            "localEndpoint": {"serviceName": f"{snap.app}.{project}"},
            "remoteEndpoint": {"serviceName": parties["source_workload"] if inbound
                               else parties["destination_service"]},
            "tags": tags,
        }
        if span.parent_id:
            record["parentId"] = span.parent_id
        return record
