"""HTTP/2 through a pair of sidecars' capture listeners with mutual TLS, a real gRPC app and client (grpcio):
h2c at L4 (ALPN h2, so the far side knows without looking) when config asks for nothing more; at L7 on both
sides when a VirtualService routes the service; and a connection relayed at L4 is closed when config starts
asking for L7, so a long-lived channel reconnects into routing and per-call policy."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest

from sidecar import snapshot
from sidecar.endpoints import Endpoint
from sidecar.engine import l4
from sidecar.engine.call import Call
from sidecar.engine.h2pool import H2Pool
from sidecar.engine.h2proxy import H2Proxy
from sidecar.engine.listeners import CaptureListener, Sidecar
from sidecar.engine.plan import INBOUND_PORT, L7H2, OUTBOUND_PORT, L4Tcp, TerminateTls, inbound_wants_l7, routed
from sidecar.engine.proxy import Route
from sidecar.engine.tls import client_context
from tests.unit.engine.helpers import TD, Pki, make_pki, run

REVIEWS_ID = f"{TD}/reviews"
ROUTE = {"name": "reviews", "hosts": ["reviews"], "http": [{"route": [{"destination": {"host": "reviews"}}]}]}


def snap(app: str, routes: list[dict[str, Any]]) -> snapshot.Snapshot:
    return snapshot.parse({
        "format": 1, "revision": 1, "hash": "h" + str(len(routes)), "trust_domain": "cluster.local",
        "proxy": {"name": f"shop.{app}", "service": app, "app": app, "version": "v1", "identity": f"{TD}/{app}"},
        "inbound": {"mode": "STRICT"}, "outbound": {},
        "services": [{"name": "reviews", "identity": REVIEWS_ID, "workloads": [{"host": "reviews", "version": "v1"}]}],
        "routes": routes,
    })


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def app() -> Any:
    server = grpc.server(concurrent.futures.ThreadPoolExecutor(4))

    def hello(request: bytes, context: grpc.ServicerContext) -> bytes:
        return b"hello " + request

    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(
        "demo.Echo", {"Hello": grpc.unary_unary_rpc_method_handler(hello)})])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield port
    server.stop(0)


@dataclass
class Pair:
    out: CaptureListener
    inb: CaptureListener
    calls: list[Call]
    routes: list[list[dict[str, Any]]]  # [the routes in force], changed by a test


@contextlib.asynccontextmanager
async def sidecars(pki: Pki, app_port: int, routes: list[dict[str, Any]]) -> AsyncIterator[Pair]:
    calls: list[Call] = []
    state = [routes]
    d = pki.dirs["client"]
    h2_client = client_context(d / "cert.pem", d / "key.pem", d / "bundle.pem", alpn=("h2",))
    proxy = H2Proxy(H2Pool(lambda: h2_client), path_mode=lambda: "merge_slashes", on_done=calls.append)
    app_proxy = H2Proxy(H2Pool(lambda: None), path_mode=lambda: "merge_slashes", on_done=calls.append)

    def h2_of(side: H2Proxy) -> Any:
        def connection(p: L7H2, info: Any) -> Any:
            route = Route(p.address, p.identity)
            return side.connection(lambda call: route, info)
        return connection

    inb = CaptureListener(INBOUND_PORT, Sidecar(
        snapshot=lambda: snap("reviews", state[0]), server_tls=lambda: l4.contexts(pki.dirs["reviews"])[1],
        h2=h2_of(app_proxy), original_destination=lambda sock: ("127.0.0.1", app_port)))
    await inb.start("127.0.0.1", 0)
    port = inb.address[1]
    endpoint = snap("productpage", []).services[0]

    async def lookup(ip: str) -> Endpoint | None:
        return Endpoint(endpoint, endpoint.workloads[0])

    out = CaptureListener(OUTBOUND_PORT, Sidecar(
        snapshot=lambda: snap("productpage", state[0]), lookup=lookup, h2_tls=lambda: h2_client,
        h2=h2_of(proxy), original_destination=lambda sock: ("127.0.0.1", port)))
    await out.start("127.0.0.1", 0)
    try:
        yield Pair(out, inb, calls, state)
    finally:
        out.close()
        inb.close()


def call(port: int, channel: grpc.Channel | None = None) -> bytes:
    own = channel is None
    channel = channel or grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        return channel.unary_unary("/demo.Echo/Hello")(b"you", timeout=5)  # type: ignore[no-any-return]
    finally:
        if own:
            channel.close()


def test_h2c_without_a_route_is_relayed_at_l4_with_alpn_h2(pki: Pki, app: int) -> None:
    async def go() -> None:
        async with sidecars(pki, app, []) as pair:
            assert await asyncio.to_thread(call, pair.out.address[1]) == b"hello you"
            assert pair.out.plans == [L4Tcp] and pair.inb.plans == [TerminateTls, L4Tcp]
            assert not pair.calls  # no request was seen at L7 on either side

    run(go())


def test_a_routed_service_is_served_per_call_on_both_sides_over_mutual_tls(pki: Pki, app: int) -> None:
    async def go() -> None:
        async with sidecars(pki, app, [ROUTE]) as pair:
            for _ in range(3):
                assert await asyncio.to_thread(call, pair.out.address[1]) == b"hello you"
            assert pair.out.plans == [L7H2] * 3 and pair.inb.plans == [TerminateTls, L7H2]  # one pooled connection
            outbound = [c for c in pair.calls if not c.inbound]
            inbound = [c for c in pair.calls if c.inbound]
            assert len(outbound) == len(inbound) == 3
            assert {c.caller for c in inbound} == {f"{TD}/productpage"}  # the peer's verified identity, per call
            assert {(c.protocol, c.grpc_status) for c in pair.calls} == {("grpc", 0)}

    run(go())


def test_a_relayed_channel_is_closed_when_config_asks_for_l7_and_reconnects_into_it(pki: Pki, app: int) -> None:
    async def go() -> None:
        async with sidecars(pki, app, []) as pair:
            channel = grpc.insecure_channel(f"127.0.0.1:{pair.out.address[1]}")
            try:
                assert await asyncio.to_thread(call, 0, channel) == b"hello you"
                assert len(pair.out.h2_relays) == 1 and len(pair.inb.h2_relays) == 1
                pair.routes[0] = [ROUTE]  # a VirtualService now routes reviews
                new = snap("productpage", [ROUTE])
                assert routed(new, "reviews") and inbound_wants_l7(snap("reviews", [ROUTE]))
                closed = pair.out.close_h2_relays(
                    lambda info: info.endpoint is not None and routed(new, info.endpoint.service.name))
                closed += pair.inb.close_h2_relays(lambda info: True)
                assert closed == 2
                for _ in range(20):  # the same channel: it reconnects, now at L7
                    with contextlib.suppress(grpc.RpcError):
                        if await asyncio.to_thread(call, 0, channel) == b"hello you" and pair.calls:
                            break
                    await asyncio.sleep(0.1)
                assert pair.out.plans[-1] is L7H2 and pair.calls
            finally:
                channel.close()

    run(go())
