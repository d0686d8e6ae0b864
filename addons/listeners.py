"""What each captured connection becomes: the layer stack, chosen per listener. Fails closed.

Inbound (15006), from peers:
  TLS         -> our TLS server (mutual, verified), then HTTP or raw TCP to the app in plaintext
  plaintext   -> PERMISSIVE/DISABLE: HTTP or raw TCP to the app; STRICT: refused, unless it entered
                 through a published port from outside the pod's networks (the mesh's edge)
Outbound (15001), from our app:
  app's own TLS        -> passed through untouched (never intercepted)
  a meshed destination -> HTTP/1 over mTLS (L7), or raw TCP / h2c over mTLS (L4)
  anything else        -> passed through as plain TCP
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable
from typing import Any, Protocol

from mitmproxy import connection, http
from mitmproxy.net.tls import starts_like_tls_record
from mitmproxy.proxy import commands, context, events, layer, layers
from mitmproxy.proxy.layers.http import HTTPMode

from addons.endpoints import Endpoints
from addons.engine import plan
from addons.live import LiveSnapshot
from addons.mtls import MutualTLS
from addons.snapshot import Snapshot

log = logging.getLogger("meshctl.listeners")
INBOUND_PORT = 15006
OUTBOUND_PORT = 15001
H2_PREFACE = b"PRI * HTTP/2.0"
L4_ALPN = b"meshctl-l4"
HTTP_VERSIONS = ("HTTP/1.0", "HTTP/1.1", "HTTP/2.0")  # anything else is refused, not passed on as HTTP/1.1
MAX_HEADERS = 100  # Envoy's defaults: headers_count and max_request_headers_kb
MAX_HEADER_BYTES = 60 * 1024
PROXY_PORTS = (15000, 15099)  # offered on L4 tunnels so the far side never mistakes them for HTTP ALPN


class Refuse(layer.Layer):
    """Close the client connection at once, after an optional final message. Nothing reaches the app."""

    def __init__(self, ctx: context.Context, message: bytes = b"") -> None:
        super().__init__(ctx)
        self.message = message

    def _handle_event(self, event: events.Event) -> layer.CommandGenerator[None]:
        if isinstance(event, events.Start):
            if self.message:
                yield commands.SendData(self.context.client, self.message)
            yield commands.CloseConnection(self.context.client)


def looks_like_http1(data: bytes) -> bool:
    first_line = data.split(b"\n", 1)[0]
    return (len(data) >= 3 and data[:3].isalpha() and b" " in first_line and not data.startswith(H2_PREFACE))


def local_networks(route_table: str) -> tuple[list[ipaddress.IPv4Network], set[str]]:
    """The pod's own subnets and their gateways (one parser, the engine's)."""
    found = plan.local_networks(route_table)
    return list(found.nets), set(found.gateways)


class TcpGate(Protocol):
    def connection_allowed(self, client: connection.Client, port: int) -> Any: ...


class Listeners:
    def __init__(self, live: LiveSnapshot, mtls: MutualTLS, endpoints: Endpoints,
                 networks: tuple[Iterable[ipaddress.IPv4Network], set[str]] = ((), set()),
                 authz: TcpGate | None = None) -> None:
        self.authz = authz  # AuthorizationPolicy for inbound TCP, judged when a connection opens
        self.live = live
        self.mtls = mtls
        self.endpoints = endpoints
        self.networks = list(networks[0])
        self.gateways = networks[1]

    @property
    def snap(self) -> Snapshot:
        return self.live.current  # read per connection: a new snapshot applies to new connections at once

    def _from_edge(self, peer_ip: str, port: int) -> bool:
        """Plaintext that came in through a published port from the host or beyond, not from a pod."""
        if port not in self.snap.published_ports:
            return False
        if peer_ip in self.gateways:
            return True
        addr = ipaddress.ip_address(peer_ip)
        return not any(addr in net for net in self.networks)

    async def next_layer(self, nextlayer: layer.NextLayer) -> None:
        if nextlayer.layer is not None:
            return
        ctx = nextlayer.context
        try:
            data = nextlayer.data_client()
            if not data or (len(data) < 3 and data.isalpha()):
                return  # wait for the client's first bytes, or enough of them to tell an HTTP method
            port = ctx.client.proxy_mode.custom_listen_port
            if ctx.server.address and PROXY_PORTS[0] <= ctx.server.address[1] <= PROXY_PORTS[1]:
                # Aimed at the proxy's own ports: forwarding it would dial ourselves, over and over.
                log.warning("refused a connection to the proxy's own port %s", ctx.server.address[1])
                nextlayer.layer = Refuse(ctx)
            elif port == INBOUND_PORT:
                nextlayer.layer = self._inbound(ctx, data)
            elif port == OUTBOUND_PORT:
                nextlayer.layer = await self._outbound(ctx, data)
            else:
                nextlayer.layer = Refuse(ctx)
        except Exception:
            log.exception("refusing a connection: could not decide how to handle it")
            nextlayer.layer = Refuse(ctx)

    @staticmethod
    def requestheaders(flow: http.HTTPFlow) -> None:
        """Envoy's limits on what a request may be, checked before any other addon sees it."""
        if flow.response is not None:
            return
        req = flow.request
        if req.http_version not in HTTP_VERSIONS:
            refusal = (505, f"{req.http_version[:20]!r} is not an HTTP version this mesh speaks")
        elif len(req.headers.fields) > MAX_HEADERS:
            refusal = (431, f"{len(req.headers.fields)} request headers; at most {MAX_HEADERS} are accepted")
        elif sum(len(k) + len(v) + 4 for k, v in req.headers.fields) > MAX_HEADER_BYTES:
            refusal = (431, f"request headers larger than {MAX_HEADER_BYTES // 1024} KiB")
        else:
            return
        flow.response = http.Response.make(refusal[0], f"meshctl: {refusal[1]}\n".encode(),
                                           {"content-type": "text/plain", "connection": "close"})
        flow.metadata["mesh_flags"] = "DPE"  # Envoy's downstream protocol error

    def _inbound(self, ctx: context.Context, data: bytes) -> layer.Layer:
        if ctx.client.tls:  # inside our verified mTLS: the peer's app protocol
            return self._inbound_app(ctx, data)
        assert ctx.server.address is not None
        mode = self.snap.port_modes.get(ctx.server.address[1], self.snap.mode)  # PeerAuthentication per port
        if starts_like_tls_record(data):
            if mode == "DISABLE":  # the caller's own TLS, end to end: judged as TCP when it opens
                return self._tcp_gate(ctx) or layers.TCPLayer(ctx, ignore=True)
            return layers.ClientTLSLayer(ctx)
        peer_ip, _ = ctx.client.peername
        if mode == "STRICT" and not self._from_edge(peer_ip, ctx.server.address[1]):
            log.warning("refused plaintext from %s to port %d: %s requires mutual TLS (STRICT)",
                        peer_ip, ctx.server.address[1], self.snap.app)
            body = (f"meshctl: {self.snap.app} requires mutual TLS (PeerAuthentication STRICT); "
                    f"plaintext from {peer_ip} refused\n").encode()
            message = (b"HTTP/1.1 403 Forbidden\r\ncontent-type: text/plain\r\nconnection: close\r\n"
                       + f"content-length: {len(body)}\r\n\r\n".encode() + body) if looks_like_http1(data) else b""
            return Refuse(ctx, message)
        return self._inbound_app(ctx, data)

    def _inbound_app(self, ctx: context.Context, data: bytes) -> layer.Layer:
        """HTTP is authorized per request (addons.authz); other TCP here, once, when the connection opens."""
        refused = None if looks_like_http1(data) else self._tcp_gate(ctx)
        return refused or self._app_protocol(ctx, data)

    def _tcp_gate(self, ctx: context.Context) -> layer.Layer | None:
        """A Refuse layer when AuthorizationPolicy denies this TCP connection, else None."""
        if self.authz is None:
            return None
        assert ctx.server.address is not None
        decision = self.authz.connection_allowed(ctx.client, ctx.server.address[1])
        if decision.allowed:
            return None
        log.warning("refused a TCP connection from %s to port %d: %s", ctx.client.peername[0],
                    ctx.server.address[1], decision.reason)
        return Refuse(ctx)

    def _app_protocol(self, ctx: context.Context, data: bytes) -> layer.Layer:
        if looks_like_http1(data):
            return layers.HttpLayer(ctx, HTTPMode.transparent)
        return layers.TCPLayer(ctx)

    async def _outbound(self, ctx: context.Context, data: bytes) -> layer.Layer:
        if starts_like_tls_record(data):
            return layers.TCPLayer(ctx, ignore=True)
        assert ctx.server.address is not None
        endpoint, _ = await self.endpoints.owner(ctx.server.address[0])  # routing re-targets a gone pod's HTTP
        if endpoint is None or not endpoint.workload.accepts_mtls(ctx.server.address[1]):
            # outside the mesh, or a workload whose PeerAuthentication is DISABLE: plaintext, as Istio does
            return self._app_protocol(ctx, data) if looks_like_http1(data) else layers.TCPLayer(ctx, ignore=True)
        if len(self.mtls.expected) > 4096:  # addresses churn as containers come and go: keep it bounded
            self.mtls.expected.clear()
        self.mtls.expected[ctx.server.address] = endpoint.service.identity
        ctx.server.tls = True
        if looks_like_http1(data):
            return layers.HttpLayer(ctx, HTTPMode.transparent)
        ctx.server.alpn_offers = [L4_ALPN]
        tunnel = layers.ServerTLSLayer(ctx)
        tunnel.child_layer = layers.TCPLayer(ctx)
        return tunnel
