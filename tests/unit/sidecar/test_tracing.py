"""Trace context: W3C and B3 in, both out; spans as Zipkin v2 and OTLP JSON."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from sidecar.snapshot import SnapshotError, _tracing
from sidecar.spans import extract, inject, otlp_body

TRACE, SPAN = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"


def test_w3c_traceparent_wins_and_carries_the_sampled_flag() -> None:
    ctx = extract({"traceparent": f"00-{TRACE}-{SPAN}-01", "x-b3-traceid": "1" * 32, "x-b3-spanid": "2" * 16})
    assert ctx is not None and (ctx.trace_id, ctx.span_id, ctx.sampled) == (TRACE, SPAN, True)
    assert extract({"traceparent": f"00-{TRACE}-{SPAN}-00"}).sampled is False  # type: ignore[union-attr]


def test_b3_single_and_multi_headers_and_64_bit_trace_ids() -> None:
    single = extract({"b3": f"{TRACE}-{SPAN}-1"})
    assert single is not None and single.trace_id == TRACE and single.sampled is True
    multi = extract({"x-b3-traceid": "a" * 16, "x-b3-spanid": SPAN})
    assert multi is not None and multi.trace_id == "0" * 16 + "a" * 16 and multi.sampled is None  # we decide
    assert extract({"x-b3-traceid": "a" * 16, "x-b3-spanid": SPAN, "x-b3-flags": "1"}).sampled is True  # type: ignore[union-attr]


@given(st.dictionaries(st.sampled_from(["traceparent", "b3", "x-b3-traceid", "x-b3-spanid", "x-b3-sampled"]),
                       st.text(max_size=80)))
def test_garbage_headers_never_raise_and_never_yield_a_malformed_context(headers: dict[str, str]) -> None:
    ctx = extract(headers)
    if ctx is not None:
        assert len(ctx.trace_id) == 32 and len(ctx.span_id) == 16 and int(ctx.trace_id, 16) > 0


def test_inject_rewrites_both_formats_so_the_next_hop_is_our_child() -> None:
    headers = {"traceparent": f"00-{TRACE}-{SPAN}-01", "x-b3-parentspanid": "stale", "b3": "x"}
    inject(headers, TRACE, "1111111111111111", SPAN, True)
    assert headers["traceparent"] == f"00-{TRACE}-1111111111111111-01"
    assert headers["x-b3-spanid"] == "1111111111111111" and headers["x-b3-parentspanid"] == SPAN
    assert headers["b3"] == f"{TRACE}-1111111111111111-1-{SPAN}"
    again = extract(headers)
    assert again is not None and again.span_id == "1111111111111111"


def test_otlp_body_groups_spans_by_service() -> None:
    span = {"traceId": TRACE, "id": SPAN, "name": "GET /", "kind": "SERVER", "timestamp": 1_000_000, "duration": 5,
            "localEndpoint": {"serviceName": "web.p"}, "tags": {"http.status_code": "503", "error": "503"}}
    body = otlp_body([span, {**span, "id": "2" * 16, "parentId": SPAN, "kind": "CLIENT"}])
    [resource] = body["resourceSpans"]
    spans = resource["scopeSpans"][0]["spans"]
    assert [s["kind"] for s in spans] == [2, 3] and spans[1]["parentSpanId"] == SPAN
    assert spans[0]["startTimeUnixNano"] == "1000000000" and spans[0]["endTimeUnixNano"] == "1000005000"
    assert spans[0]["status"] == {"code": 2}


def test_snapshot_tracing_section_is_validated() -> None:
    assert _tracing({}).sampling == 100.0
    assert _tracing({"sampling": 5, "zipkin": "http://z:9411/api/v2/spans"}).zipkin == "http://z:9411/api/v2/spans"
    for bad in ({"sampling": 101}, {"sampling": True}, {"otlp": "ftp://x"}, []):
        try:
            _tracing(bad)
        except SnapshotError:
            continue
        raise AssertionError(f"{bad} was accepted")
