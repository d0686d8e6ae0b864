"""Envoy's request limits, applied before any other addon sees a request."""

from __future__ import annotations

from mitmproxy.test import tflow

from addons.listeners import MAX_HEADERS, Listeners


def refused(**change: object) -> int | None:
    flow = tflow.tflow()
    for name, value in change.items():
        setattr(flow.request, name, value)
    Listeners.requestheaders(flow)
    return flow.response.status_code if flow.response else None


def test_unknown_versions_too_many_or_too_large_headers_are_refused() -> None:
    assert refused() is None
    assert refused(http_version="HTTP/1.0") is None
    assert refused(http_version="HTTP/9.9") == 505
    flow = tflow.tflow()
    assert refused(headers=type(flow.request.headers)(
        [(b"x-h%d" % i, b"v") for i in range(MAX_HEADERS + 1)])) == 431
    assert refused(headers=type(flow.request.headers)([(b"x-big", b"a" * 70_000)])) == 431
    assert refused(headers=type(flow.request.headers)([(b"x-h%d" % i, b"v") for i in range(MAX_HEADERS)])) is None
