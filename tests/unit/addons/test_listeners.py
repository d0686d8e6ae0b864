"""Envoy's request limits, applied before any other addon sees a request."""

from __future__ import annotations

import pytest
from mitmproxy import connection, options
from mitmproxy.proxy import context
from mitmproxy.proxy.mode_specs import ProxyMode
from mitmproxy.test import tflow

from addons.authz import Decision
from addons.listeners import MAX_HEADERS, Listeners, Refuse
from addons.snapshot import Snapshot


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


# --- inbound TCP authorization covers every way in ---------------------------------------------------------

class DenyAll:
    def connection_allowed(self, client: object, port: int) -> Decision:
        return Decision(False, "no rule of the ALLOW policies matches")


class AllowAll:
    def connection_allowed(self, client: object, port: int) -> Decision:
        return Decision(True, "allowed")


def inbound_layer(mode: str, gate: object, data: bytes) -> object:
    from types import SimpleNamespace

    snap = Snapshot(revision=1, hash="h", name="p.redis", service="redis", app="redis", version="v1",
                    identity="spiffe://cluster.local/ns/p/sa/redis", trust_domain="cluster.local", mode=mode)
    client = connection.Client(peername=("10.0.0.9", 4000), sockname=("10.0.0.5", 15006), timestamp_start=0,
                               proxy_mode=ProxyMode.parse("transparent@15006"))
    ctx = context.Context(client, options.Options())
    ctx.server.address = ("10.0.0.5", 6379)
    listeners = Listeners(SimpleNamespace(current=snap), None, None, authz=gate)  # type: ignore[arg-type]
    return listeners._inbound(ctx, data)


@pytest.mark.parametrize("data", [b"\x16\x03\x01\x00\x05hello", b"*1\r\n$4\r\nPING\r\n", b"\x00\x01binary"])
def test_a_denied_tcp_connection_is_refused_on_a_disable_port_even_when_it_starts_like_tls(data: bytes) -> None:
    assert isinstance(inbound_layer("DISABLE", DenyAll(), data), Refuse)
    assert not isinstance(inbound_layer("DISABLE", AllowAll(), data), Refuse)
