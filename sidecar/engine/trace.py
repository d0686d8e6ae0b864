"""Tracing on the engine: a span per request and hop, its context passed on in the headers.

A request with no trace context starts a trace (sampled at the configured rate); one with W3C `traceparent`
or B3 headers continues it. This hop's span becomes the parent of the next: the headers are rewritten before
the request moves on. Inbound hops are SERVER spans, outbound ones CLIENT spans (Zipkin v2).
"""

from __future__ import annotations

import logging
import random
from typing import Any

from sidecar.engine.call import Call
from sidecar.engine.observe import Observer, outcome_flags
from sidecar.live import LiveSnapshot
from sidecar.meters import clip
from sidecar.spans import OpenSpan, SpanStore, extract, inject

log = logging.getLogger("meshctl.tracing")


# Trace, span and request ids come from the process's PRNG, as Envoy's do: they name, they do not protect, and
# three getrandom() calls per request and hop were a measurable cost.


class Tracer:
    def __init__(self, live: LiveSnapshot, observer: Observer, store: SpanStore) -> None:
        self.live = live
        self.observer = observer
        self.store = store

    def request(self, call: Call) -> None:
        try:
            self._open(call)
        except Exception:  # tracing is never a reason to fail a request
            log.exception("could not start a span")

    def _open(self, call: Call) -> None:
        headers = call.headers
        caller = extract(headers)
        if caller is not None and caller.sampled is not None:
            sampled = caller.sampled
        else:
            sampled = random.random() * 100 < self.live.current.tracing.sampling
        trace_id = caller.trace_id if caller else f"{random.getrandbits(128):032x}"
        span = OpenSpan(trace_id, f"{random.getrandbits(64):016x}", caller.span_id if caller else None, sampled,
                        "SERVER" if call.inbound else "CLIENT", call.start)
        inject(headers, span.trace_id, span.span_id, span.parent_id, sampled)
        if "x-request-id" not in headers:
            headers["x-request-id"] = f"{random.getrandbits(128):032x}"
        call.span = span

    def done(self, call: Call) -> None:
        span = call.span
        if not isinstance(span, OpenSpan) or not span.sampled:
            return
        try:
            self.store.add(self._record(call, span))
        except Exception:
            log.exception("could not finish a span")

    def _record(self, call: Call, span: OpenSpan) -> dict[str, Any]:
        snap = self.live.current
        parties = self.observer.parties(call)
        inbound = span.kind == "SERVER"
        status, flags = call.status, outcome_flags(call)
        project = snap.name.split(".", 1)[0]
        peer = parties["source_principal"] if inbound else parties["destination_principal"]
        tags = {"http.method": clip(call.method, 32), "http.path": clip(call.path),
                "http.status_code": str(status), "peer.identity": peer, "node_id": snap.name,
                "upstream_cluster": f"{parties['destination_service_name']}|{parties['destination_version']}",
                "mtls": str(parties["connection_security_policy"] == "mutual_tls").lower(),
                "response_flags": flags}
        if call.route is not None:  # the router's decision
            tags["route"] = f"{call.route.get('host')}|{call.route.get('subset') or '-'}"
            tags["attempts"] = str(call.route.get("attempts", 1))
        if call.grpc_status is not None:  # Envoy's tag; a gRPC call failed on HTTP 200 is still an error
            tags["grpc.status_code"] = str(call.grpc_status)
        if call.error or status >= 500 or status == 0 or call.grpc_status not in (None, 0):
            tags["error"] = clip(call.error) if call.error else (
                f"grpc-status {call.grpc_status}" if call.grpc_status else str(status))
        end = call.end or span.start
        record: dict[str, Any] = {
            "traceId": span.trace_id, "id": span.span_id, "name": f"{call.method} {tags['http.path']}",
            "kind": span.kind,
            "timestamp": int(span.start * 1_000_000), "duration": max(1, int((end - span.start) * 1_000_000)),
            "localEndpoint": {"serviceName": f"{snap.app}.{project}"},
            "remoteEndpoint": {"serviceName": parties["source_workload"] if inbound
                               else parties["destination_service_name"]},
            "tags": tags,
        }
        if span.parent_id:
            record["parentId"] = span.parent_id
        return record
