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
import json
import logging
import random
import re
import secrets
import time
import urllib.request
from collections import deque
from dataclasses import dataclass
from typing import Any, Protocol

from mitmproxy import http

from addons.listeners import INBOUND_PORT
from addons.live import LiveSnapshot
from addons.telemetry import clip, outcome

log = logging.getLogger("meshctl.tracing")
BUFFER_SPANS = 2048  # the embedded collector: at most ~1.5 KB a span (attributes are clipped), ~3 MB
EXPORT_QUEUE_MAX = 2048  # beyond this, spans for an unreachable exporter are dropped, not hoarded
EXPORT_EVERY_S = 1.0
HEX = re.compile(r"^[0-9a-f]+$")
B3_HEADERS = ("x-b3-traceid", "x-b3-spanid", "x-b3-parentspanid", "x-b3-sampled", "x-b3-flags")


@dataclass(frozen=True)
class SpanContext:
    trace_id: str  # 32 hex digits
    span_id: str  # 16 hex digits: the caller's span, our parent
    sampled: bool | None  # None: the caller left the decision to us


def _hex(value: str, *lengths: int) -> str | None:
    value = value.strip().lower()
    if len(value) in lengths and HEX.match(value) and value.strip("0"):
        return value.rjust(32, "0") if len(value) == 16 and 32 in lengths else value
    return None


def _sampled(flag: str | None) -> bool | None:
    if flag is None:
        return None
    return flag.strip().lower() in ("1", "true", "d")


def extract(headers: Any) -> SpanContext | None:
    """The caller's trace context: W3C traceparent first, then B3 single, then B3 multi headers."""
    if parent := headers.get("traceparent"):
        parts = parent.strip().split("-")
        if len(parts) == 4 and parts[0] != "ff":
            trace, span = _hex(parts[1], 32), _hex(parts[2], 16)
            if trace and span and HEX.match(parts[3].lower()) and len(parts[3]) == 2:
                return SpanContext(trace, span, bool(int(parts[3], 16) & 1))
    if single := headers.get("b3"):
        parts = single.strip().split("-")
        if len(parts) >= 2:
            trace, span = _hex(parts[0], 16, 32), _hex(parts[1], 16)
            if trace and span:
                return SpanContext(trace, span, _sampled(parts[2]) if len(parts) > 2 else None)
        elif parts[0] == "0":
            return None  # "b3: 0": deny sampling, with no context to continue
    trace, span = _hex(headers.get("x-b3-traceid", ""), 16, 32), _hex(headers.get("x-b3-spanid", ""), 16)
    if trace and span:
        debug = headers.get("x-b3-flags") == "1"
        return SpanContext(trace, span, True if debug else _sampled(headers.get("x-b3-sampled")))
    return None


def inject(headers: Any, trace_id: str, span_id: str, parent_id: str | None, sampled: bool) -> None:
    """Write this hop's context in both formats, so the next hop continues from our span."""
    headers["traceparent"] = f"00-{trace_id}-{span_id}-{'01' if sampled else '00'}"
    for name in B3_HEADERS:
        headers.pop(name, None)
    headers["x-b3-traceid"] = trace_id
    headers["x-b3-spanid"] = span_id
    if parent_id:
        headers["x-b3-parentspanid"] = parent_id
    headers["x-b3-sampled"] = "1" if sampled else "0"
    if "b3" in headers:
        headers["b3"] = f"{trace_id}-{span_id}-{'1' if sampled else '0'}" + (f"-{parent_id}" if parent_id else "")


@dataclass
class OpenSpan:
    trace_id: str
    span_id: str
    parent_id: str | None
    sampled: bool
    kind: str  # SERVER (inbound) or CLIENT (outbound)
    start: float


class Parties(Protocol):
    def parties(self, flow: Any) -> dict[str, str]: ...


def otlp_body(spans: list[dict[str, Any]]) -> dict[str, Any]:
    """Zipkin v2 spans as an OTLP/HTTP JSON ExportTraceServiceRequest, one resource per service."""
    by_service: dict[str, list[dict[str, Any]]] = {}
    for span in spans:
        start = span["timestamp"] * 1000
        by_service.setdefault(span["localEndpoint"]["serviceName"], []).append({
            "traceId": span["traceId"], "spanId": span["id"], **({"parentSpanId": span["parentId"]}
                                                                 if span.get("parentId") else {}),
            "name": span["name"], "kind": 2 if span["kind"] == "SERVER" else 3,
            "startTimeUnixNano": str(start), "endTimeUnixNano": str(start + span["duration"] * 1000),
            "attributes": [{"key": k, "value": {"stringValue": str(v)}} for k, v in span["tags"].items()],
            "status": {"code": 2 if "error" in span["tags"] else 1},
        })
    return {"resourceSpans": [{"resource": {"attributes": [{"key": "service.name", "value": {"stringValue": name}}]},
                               "scopeSpans": [{"scope": {"name": "meshctl"}, "spans": items}]}
                              for name, items in by_service.items()]}


class Tracing:
    def __init__(self, live: LiveSnapshot, telemetry: Parties) -> None:
        self.live = live
        self.telemetry = telemetry
        self.buffer: deque[dict[str, Any]] = deque(maxlen=BUFFER_SPANS)
        self.outbox: deque[dict[str, Any]] = deque(maxlen=EXPORT_QUEUE_MAX)
        self.exported = {"zipkin": 0, "otlp": 0}
        self.export_failures = {"zipkin": 0, "otlp": 0}

    def running(self) -> None:
        asyncio.get_running_loop().create_task(self._export_forever())

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
        self.buffer.append(record)
        tracing = self.live.current.tracing
        if tracing.zipkin or tracing.otlp:
            self.outbox.append(record)

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

    # --- the embedded collector and exporters ---------------------------------------------------------

    def recent(self) -> list[dict[str, Any]]:
        return list(self.buffer)

    async def _export_forever(self) -> None:
        while True:
            await asyncio.sleep(EXPORT_EVERY_S)
            if not self.outbox:
                continue
            batch = [self.outbox.popleft() for _ in range(min(len(self.outbox), 1000))]
            tracing = self.live.current.tracing
            for name, url, body in (("zipkin", tracing.zipkin, batch), ("otlp", tracing.otlp, otlp_body(batch))):
                if url:
                    await self._post(name, url, body, len(batch))

    async def _post(self, name: str, url: str, body: Any, count: int) -> None:
        def send() -> None:
            request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                             headers={"content-type": "application/json"})
            with urllib.request.urlopen(request, timeout=3) as resp:
                resp.read()

        try:
            await asyncio.to_thread(send)
            self.exported[name] += count
        except Exception as exc:  # the collector may be down: count it, say so now and then, keep going
            self.export_failures[name] += 1
            if self.export_failures[name] in (1, 10, 100) or self.export_failures[name] % 1000 == 0:
                log.warning("could not export %d spans to %s (%s): %s", count, name, url, exc)
