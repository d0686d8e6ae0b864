"""Trace context and finished spans, independent of the proxy engine.

- W3C `traceparent` and B3 (single and multi) headers: `extract` the caller's context, `inject` this hop's;
  both work on any mapping-like header object with get/[]=/pop/in.
- `SpanStore`: the bounded buffer the embedded collector (`/spans`, read by `meshctl trace`) serves, and the
  background export to Zipkin (v2 JSON) and OTLP/HTTP (JSON) when configured.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import urllib.request
from collections import deque
from dataclasses import dataclass
from typing import Any

from sidecar.live import LiveSnapshot

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


class SpanStore:
    """Finished spans: the embedded collector's buffer and the exporters' queue."""

    def __init__(self, live: LiveSnapshot) -> None:
        self.live = live
        self.buffer: deque[dict[str, Any]] = deque(maxlen=BUFFER_SPANS)
        self.outbox: deque[dict[str, Any]] = deque(maxlen=EXPORT_QUEUE_MAX)
        self.exported = {"zipkin": 0, "otlp": 0}
        self.export_failures = {"zipkin": 0, "otlp": 0}

    def add(self, record: dict[str, Any]) -> None:
        self.buffer.append(record)
        tracing = self.live.current.tracing
        if tracing.zipkin or tracing.otlp:
            self.outbox.append(record)

    def recent(self) -> list[dict[str, Any]]:
        return list(self.buffer)

    async def export_forever(self) -> None:
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
