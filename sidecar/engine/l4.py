"""The L4 path: a client connection relayed as bytes to its destination, over mTLS between sidecars.

Outbound, to a meshed workload: the app's plaintext goes into one mutual-TLS connection per app connection
(raw TCP has no message boundaries, so nothing can be pooled), offering only the L4 ALPN marker, so the
far sidecar relays at once without waiting for a byte: a server that speaks first (MySQL's handshake,
SMTP's greeting) reaches the client. The far side's identity is checked right after the handshake, before
a byte of the client's is written. Inbound, and to unmeshed destinations: plaintext TCP.

Both connections exist before the relay starts: whatever either side sends meanwhile (the client's first
bytes, the server's greeting) is held by `Held`, bounded by pausing the reading, and handed to the relay.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import cast

from sidecar.engine.plan import H2_ALPN, L4_ALPN
from sidecar.engine.pool import PoolError, dial
from sidecar.engine.relay import HIGH_WATER, Relay
from sidecar.engine.tls import client_context, identity_problem, server_context

log = logging.getLogger("meshctl.engine.l4")
CONNECT_TIMEOUT_S = 5.0


class L4Error(Exception):
    """No upstream: `kind` is "connect-failure" or "identity" (Envoy's UF and a failed peer check)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def l4_client_context(cert: Path, key: Path, bundle: Path) -> ssl.SSLContext:
    """mTLS to a peer sidecar's inbound, offering only the L4 marker."""
    return client_context(cert, key, bundle, alpn=(L4_ALPN,))


def inbound_server_context(cert: Path, key: Path, bundle: Path) -> ssl.SSLContext:
    """The inbound listener's mTLS: HTTP/1.1 for pooled L7 connections, the L4 marker (relay at once), or
    HTTP/2 (multiplexed L7 connections, or h2c relayed at L4)."""
    return server_context(cert, key, bundle, alpn=("http/1.1", L4_ALPN, H2_ALPN))


def contexts(directory: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(L4 client, inbound server) contexts from a proxy directory's cert.pem, key.pem and bundle.pem."""
    files = (directory / "cert.pem", directory / "key.pem", directory / "bundle.pem")
    return l4_client_context(*files), inbound_server_context(*files)


class Held(asyncio.Protocol):
    """A transport's protocol until the relay takes it over: keeps what arrives, pauses past HIGH_WATER."""

    def __init__(self, data: bytes = b"") -> None:
        self.transport: asyncio.Transport | None = None
        self.parts: list[bytes] = [data] if data else []
        self.size = len(data)
        self.eof = False
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses

    def data_received(self, data: bytes) -> None:
        self.parts.append(data)
        self.size += len(data)
        if self.size > HIGH_WATER and self.transport is not None:
            self.transport.pause_reading()  # resumed by the relay

    def eof_received(self) -> bool:
        self.eof = True
        return True  # keep the other direction open; the relay passes the EOF on

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True

    def take(self) -> bytes:
        data = b"".join(self.parts)
        self.parts.clear()
        return data


async def connect(address: tuple[str, int], identity: str, context: ssl.SSLContext | None,
                  timeout: float = CONNECT_TIMEOUT_S) -> tuple[asyncio.Transport, Held]:
    """A connection to `address`: mTLS to a peer of `identity` (with `context`), or plaintext when it is ""."""
    if identity and context is None:
        raise L4Error("connect-failure", "no workload certificate loaded")
    held = Held()
    try:
        transport = await dial(held, address, context if identity else None, timeout)
    except PoolError as exc:
        raise L4Error(exc.kind, str(exc)) from exc
    if identity:
        problem = identity_problem(transport.get_extra_info("ssl_object"), identity)
        if problem is not None:
            transport.abort()  # before a byte of the client's is written
            raise L4Error("identity", f"{address[0]}:{address[1]}: {problem}")
    return transport, held


def join(down: asyncio.Transport, down_held: Held, up: asyncio.Transport, up_held: Held,
         on_done: Callable[[], None] | None = None) -> Relay | None:
    """Relay between two held connections, what each held going first. None if one was already gone."""
    if down_held.lost or up_held.lost:
        down.abort()
        up.abort()
        if on_done is not None:
            on_done()
        return None
    relay = Relay(down, up, to_a=up_held.take(), to_b=down_held.take(), on_done=on_done)
    for side, held in ((relay.a, down_held), (relay.b, up_held)):
        if held.eof:  # an EOF that arrived while held: pass it on now
            side.eof_received()
    return relay


async def relay_to(down: asyncio.Transport, down_held: Held, address: tuple[str, int], identity: str,
                   context: ssl.SSLContext | None, on_done: Callable[[], None] | None = None) -> Relay | None:
    """Connect upstream at once and relay; if no upstream, the client connection is reset (TCP has no 503)."""
    try:
        up, up_held = await connect(address, identity, context)
    except L4Error as exc:
        log.warning("L4 %s: %s", exc.kind, exc)
        down.abort()
        if on_done is not None:
            on_done()
        return None
    except BaseException:  # cancelled: the caller still holds the connection's slot
        down.abort()
        raise
    return join(down, down_held, up, up_held, on_done)
