"""The capture listeners (15001 outbound, 15006 inbound): accept, find where the connection was going, look
at its first bytes without taking them, and carry out sidecar.engine.plan's decision.

- The original destination is read with SO_ORIGINAL_DST (nat REDIRECT; IPv4, as the capture rules are).
  A connection without one (made to the listener directly) is refused: it would be aimed at the proxy.
- First bytes are peeked (MSG_PEEK) on the raw socket, so a TLS ClientHello is still there for our TLS
  server to read, and nothing has to be replayed. The wait is plan.sniff_timeout's: none for a TCP port
  (a server-first protocol gets its upstream at once), SNIFF_TIMEOUT_S otherwise.
- Inbound TLS is our mutual TLS, terminated here; inside it the caller's first bytes are read (not peeked)
  and handed to whichever path takes the connection.
- A cap on the connections this listener holds (deciding, or relaying at L4); L7 connections count in the
  L7 listener's own cap. Over the cap a connection is closed at once.
Anything that goes wrong while deciding refuses the connection: policy fails closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import socket
import ssl
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

from sidecar.contract import PORT_OUTBOUND as OUTBOUND_PORT
from sidecar.egress import REGISTRY_ONLY
from sidecar.endpoints import Endpoint
from sidecar.engine import clienthello, l4
from sidecar.engine.plan import (
    H2_ALPN,
    L7H2,
    ConnectionInfo,
    L4Tcp,
    L7Http,
    LocalNetworks,
    Passthrough,
    Plan,
    Refuse,
    TerminateTls,
    classify,
    decide,
    sniff_timeout,
    wants_hello,
)
from sidecar.engine.proxy import Decide, Downstream, Listener, Route
from sidecar.engine.relay import Relay
from sidecar.engine.tls import peer_uris
from sidecar.snapshot import Snapshot

log = logging.getLogger("meshctl.engine.listeners")

SO_ORIGINAL_DST = 80  # linux/netfilter_ipv4.h; read at level SOL_IP, gives a struct sockaddr_in
PEEK_BYTES = 64  # enough for a TLS record header or an HTTP method and its space
HELLO_TIMEOUT_S = 2.0  # the whole ClientHello (REGISTRY_ONLY, TLS leaving the mesh) must have come by then
PEEK_RETRY_S = 0.005  # a partial first read (readable, but undecided) is looked at again after this
HANDSHAKE_TIMEOUT_S = 5.0
ACCEPT_BATCH = 64


def original_destination(sock: socket.socket) -> tuple[str, int]:
    """Where the client meant to connect before the nat REDIRECT. OSError when there was none."""
    raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    family, port, addr = struct.unpack_from("!HH4s", raw)
    if socket.htons(family) != socket.AF_INET:  # sa_family is host order; the rest network order
        raise OSError(f"SO_ORIGINAL_DST gave address family {socket.htons(family)}")
    return socket.inet_ntoa(addr), port


async def no_endpoint(ip: str) -> Endpoint | None:
    return None


async def no_external(address: tuple[str, int], look_again: bool) -> int | None:
    return None


class TcpEvents(Protocol):
    def tcp_opened(self, info: ConnectionInfo, upstream: tuple[str, int], identity: str) -> Any: ...

    def tcp_closed(self, conn: Any, received: int, sent: int, error: str | None = None) -> None: ...


@dataclass
class Sidecar:
    """What the capture listeners read. Callables, so a reload reaches new connections at once."""

    snapshot: Callable[[], Snapshot]
    lookup: Callable[[str], Awaitable[Endpoint | None]] = no_endpoint  # sidecar.endpoints' owner, for outbound
    # Outbound outside the mesh: the ServiceEntry port to connect to (sidecar.egress.Resolver.target)
    external: Callable[[tuple[str, int], bool], Awaitable[int | None]] = no_external
    # The same, from what is known now without asking DNS (Resolver.known): for relays judged again on a change
    external_known: Callable[[tuple[str, int]], int | None] = lambda address: None
    networks: LocalNetworks = field(default_factory=LocalNetworks)
    server_tls: Callable[[], ssl.SSLContext | None] = lambda: None  # inbound: ALPN ("http/1.1", L4_ALPN)
    l4_tls: Callable[[], ssl.SSLContext | None] = lambda: None  # outbound L4: l4.l4_client_context
    h2_tls: Callable[[], ssl.SSLContext | None] = lambda: None  # outbound HTTP/2 relayed at L4 (ALPN h2)
    l7: Listener | None = None  # the HTTP/1.1 path; without it L7 plans are refused
    # The per-connection decision of the L7 path; by default every request goes to the plan's destination.
    l7_decide: Callable[[L7Http, ConnectionInfo], Decide] | None = None
    # AuthorizationPolicy for inbound TCP: the reason to refuse, or None. L7 is authorized per request.
    tcp_gate: Callable[[ConnectionInfo], str | None] | None = None
    tcp: TcpEvents | None = None  # telemetry of relayed connections
    # The HTTP/2 path: the protocol serving a connection's streams; without it L7H2 plans are refused.
    h2: Callable[[L7H2, ConnectionInfo], asyncio.Protocol] | None = None
    original_destination: Callable[[socket.socket], tuple[str, int]] = original_destination


class Sniffer(l4.Held):
    """Inside our TLS: holds the caller's bytes and says when more came."""

    def __init__(self) -> None:
        super().__init__()
        self.changed = asyncio.Event()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self.changed.set()

    def eof_received(self) -> bool:
        self.changed.set()
        return super().eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self.changed.set()

    async def first_bytes(self, timeout: float) -> bytes | None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while not self.eof and not self.lost and (not self.parts or classify(b"".join(self.parts))
                                                           == "undecided"):
                    self.changed.clear()
                    await self.changed.wait()
        return b"".join(self.parts) or None


def _wake(ready: asyncio.Future[None]) -> None:
    if not ready.done():
        ready.set_result(None)


def _first_bytes(data: bytes) -> int:
    return 0 if data and (classify(data) != "undecided" or len(data) >= PEEK_BYTES) else PEEK_BYTES


def _whole_hello(data: bytes) -> int:
    hello = clienthello.parse(data)
    return hello.need if hello.status == "more" else 0


async def peek(sock: socket.socket, timeout: float, want: Callable[[bytes], int] = _first_bytes) -> bytes | None:
    """The first bytes waiting on `sock`, left in place; at most `timeout` seconds. None if none came (or EOF).
    `want(bytes so far)`: how many to look at next, 0 when they are enough (by default: what `classify` needs)."""
    loop = asyncio.get_running_loop()
    seen: bytes | None = None
    fd = sock.fileno()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            while True:
                ready: asyncio.Future[None] = loop.create_future()
                loop.add_reader(fd, _wake, ready)
                try:
                    await ready
                finally:
                    loop.remove_reader(fd)
                size = want(seen or b"") or PEEK_BYTES
                try:
                    data = sock.recv(size, socket.MSG_PEEK)
                except (BlockingIOError, InterruptedError):
                    continue
                if not data:  # EOF with nothing sent
                    return seen
                seen = data
                if not want(data):
                    return data
                if len(data) >= size:  # all that was asked for is there, and it tells how much more: look again now
                    continue
                await asyncio.sleep(PEEK_RETRY_S)  # still readable: wait for more rather than spin
    return seen


class CaptureListener:
    """One capture port. `open` counts the connections it holds; `refused` those it turned away."""

    def __init__(self, port: int, sidecar: Sidecar, *, max_connections: int = 4096) -> None:
        self.port = port
        self.sidecar = sidecar
        self.max_connections = max_connections
        self.open = 0
        self.refused = 0
        self.relays: dict[Relay, ConnectionInfo] = {}  # checked again when config changes (still_allowed)
        self.h2_relays: dict[Relay, ConnectionInfo] = {}  # HTTP/2 relayed at L4: replanned when config changes
        self.plans: list[type] = []  # the kinds of plan carried out, most recent last (bounded; for tests)
        self._sock: socket.socket | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self, host: str = "0.0.0.0", port: int | None = None) -> None:
        """Listen on `port` (default: the capture port). IP_TRANSPARENT is not needed: nat REDIRECT is used."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, self.port if port is None else port))
        sock.listen(1024)
        sock.setblocking(False)
        self._sock = sock
        asyncio.get_running_loop().add_reader(sock.fileno(), self._accept)

    @property
    def address(self) -> tuple[str, int]:
        assert self._sock is not None
        return cast(tuple[str, int], self._sock.getsockname())

    def close(self) -> None:
        if self._sock is not None:
            asyncio.get_running_loop().remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None
        for task in list(self._tasks):
            task.cancel()
        for relay in list(self.relays):
            relay.close()

    # --- accepting and deciding ----------------------------------------------------------------------------

    def _accept(self) -> None:
        assert self._sock is not None
        for _ in range(ACCEPT_BATCH):
            try:
                conn, peer = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE and the like: the next round may succeed
                log.warning("accept failed on %d: %s", self.port, exc)
                return
            conn.setblocking(False)
            if self.open >= self.max_connections:
                self.refused += 1
                conn.close()
                continue
            self.open += 1
            task = asyncio.get_running_loop().create_task(self._handle(conn, peer))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _handle(self, sock: socket.socket, peer: tuple[str, int]) -> None:
        handed = False
        try:
            try:
                info = await self._info(sock, peer)
                wait = sniff_timeout(info)
                if wait:
                    info = dataclasses.replace(info, first_bytes=await peek(sock, wait))
                if wants_hello(info):  # judged by its server name: the whole ClientHello, still left in place
                    first = await peek(sock, HELLO_TIMEOUT_S, _whole_hello) or info.first_bytes
                    info = dataclasses.replace(info, first_bytes=first, hello=clienthello.parse(first or b""))
                plan: Plan = decide(info)
            except Exception as exc:
                log.exception("refusing a connection: could not decide how to handle it")
                info, plan = None, Refuse(f"a connection from {peer[0]}: could not decide how to handle it ({exc})")
            handed = await self._carry_out(sock, plan, info)
        except Exception:
            log.exception("connection from %s:%d failed", *peer)
        finally:
            if not handed:
                sock.close()
                self.open -= 1

    async def _info(self, sock: socket.socket, peer: tuple[str, int]) -> ConnectionInfo:
        try:
            destination = self.sidecar.original_destination(sock)
        except OSError:  # a connection to the listener itself, not redirected: it would be aimed at us
            destination = (sock.getsockname()[0], self.port)
        endpoint = await self.sidecar.lookup(destination[0]) if self.port == OUTBOUND_PORT else None
        snap = self.sidecar.snapshot()
        external = None
        if self.port == OUTBOUND_PORT and endpoint is None:  # REGISTRY_ONLY: an unknown address is looked up now
            external = await self.sidecar.external(destination, snap.mesh.outbound_policy == REGISTRY_ONLY)
        return ConnectionInfo(self.port, destination, (str(peer[0]), int(peer[1])), None,
                              snap, endpoint, networks=self.sidecar.networks, external_port=external)

    def _note(self, plan: Plan) -> None:
        self.plans.append(type(plan))
        if len(self.plans) > 256:
            del self.plans[:128]

    # --- carrying out a plan (True when the connection was handed over; it then owns the slot) ----------------

    async def _carry_out(self, sock: socket.socket, plan: Plan, info: ConnectionInfo | None) -> bool:
        self._note(plan)
        if isinstance(plan, Refuse):
            self._refuse(sock, plan, info)
            return False
        assert info is not None
        if isinstance(plan, TerminateTls):
            return await self._terminate_tls(sock, info)
        loop = asyncio.get_running_loop()
        if isinstance(plan, L7Http):
            decide_ = self._l7_decide(plan, info)
            if decide_ is None:
                self._refuse(sock, Refuse(f"HTTP from {info.peer[0]}: no L7 path configured"), info)
                return False
            assert self.sidecar.l7 is not None
            l7 = self.sidecar.l7
            await loop.connect_accepted_socket(lambda: Downstream(l7, decide_, info), sock)
            self.open -= 1  # the L7 listener counts it from here
            return True
        if isinstance(plan, L7H2):
            if self.sidecar.h2 is None:
                self._refuse(sock, Refuse(f"HTTP/2 from {info.peer[0]}: no HTTP/2 path configured"), info)
                return False
            protocol = self.sidecar.h2(plan, info)
            await loop.connect_accepted_socket(lambda: protocol, sock)
            self.open -= 1  # the HTTP/2 path counts it from here
            return True
        down, held = await loop.connect_accepted_socket(l4.Held, sock)
        return await self._relay(down, held, plan, info)

    def _refuse(self, sock: socket.socket, plan: Refuse, info: ConnectionInfo | None) -> None:
        log.warning("refused %s", plan.reason)
        with contextlib.suppress(OSError):
            for _ in range(16):  # what was sent so far: closing with unread bytes would be a reset, not an answer
                if not sock.recv(65536):
                    break
        if plan.message:
            with contextlib.suppress(OSError):
                sock.send(plan.message)

    def _l7_decide(self, plan: L7Http, info: ConnectionInfo) -> Decide | None:
        if self.sidecar.l7 is None:
            return None
        if self.sidecar.l7_decide is not None:
            return self.sidecar.l7_decide(plan, info)
        route = Route(plan.address, plan.identity)
        return lambda call: route

    async def _relay(self, down: asyncio.Transport, held: l4.Held, plan: Plan, info: ConnectionInfo) -> bool:
        assert isinstance(plan, (L4Tcp, Passthrough))
        if info.listener != OUTBOUND_PORT and self.sidecar.tcp_gate is not None:
            try:
                refusal = self.sidecar.tcp_gate(info)
            except Exception:
                log.exception("the TCP authorization failed; refused")
                refusal = "the policy could not be evaluated"
            if refusal is not None:
                log.warning("refused a TCP connection from %s to port %d: %s", info.peer[0], info.destination[1],
                            refusal)
                down.abort()
                self.open -= 1
                return True
        identity = plan.identity if isinstance(plan, L4Tcp) else ""
        h2 = isinstance(plan, L4Tcp) and plan.h2
        context = (self.sidecar.h2_tls() if h2 else self.sidecar.l4_tls()) if identity else None
        box: list[Relay] = []
        events = self.sidecar.tcp
        opened = None
        if events is not None:
            try:
                opened = events.tcp_opened(info, plan.address, identity)
            except Exception:  # telemetry is never a reason to fail a connection
                log.exception("recording an opened connection failed")

        def done() -> None:
            self.open -= 1
            if box:
                self.relays.pop(box[0], None)
                self.h2_relays.pop(box[0], None)
            if events is not None and opened is not None:
                relay = box[0] if box else None
                try:
                    events.tcp_closed(opened, relay.a.received if relay else 0, relay.b.received if relay else 0,
                                      None if relay else "no upstream connection")
                except Exception:
                    log.exception("recording a closed connection failed")

        relay = await l4.relay_to(down, held, plan.address, identity, context, on_done=done)
        if relay is not None and not relay.done:
            box.append(relay)
            self.relays[relay] = info
            if h2 or info.alpn == H2_ALPN or (info.first_bytes is not None and classify(info.first_bytes) == "h2"):
                self.h2_relays[relay] = info
        return True

    def close_refused_relays(self, snap: Snapshot) -> int:
        """Close the relays `snap` would not have let in (plaintext on a port now STRICT, a policy that now denies,
        a host REGISTRY_ONLY does not admit), as Envoy drains the connections of a changed listener: a connection
        opened under the old config does not outlive it."""
        closing = [relay for relay, info in self.relays.items() if not self.still_allowed(self._under(info, snap))]
        for relay in closing:
            relay.close()
        return len(closing)

    def _under(self, info: ConnectionInfo, snap: Snapshot) -> ConnectionInfo:
        """`info` as if it opened under `snap`: outside the mesh, with the registry's port as it is now (the one
        found at accept stands for a ServiceEntry that may be gone)."""
        info = dataclasses.replace(info, snapshot=snap)
        if info.listener == OUTBOUND_PORT and info.endpoint is None:
            info = dataclasses.replace(info, external_port=self.sidecar.external_known(info.destination))
        return info

    def still_allowed(self, info: ConnectionInfo) -> bool:
        """The same decision as at accept (plan, then the TCP gate inbound), on `info`'s snapshot; fails closed."""
        try:
            if isinstance(decide(info), Refuse):
                return False
            return info.listener == OUTBOUND_PORT or self.sidecar.tcp_gate is None or \
                self.sidecar.tcp_gate(info) is None
        except Exception:
            log.exception("checking a relayed connection against new config failed; closing it")
            return False

    def close_h2_relays(self, now_l7: Callable[[ConnectionInfo], bool]) -> int:
        """Close the HTTP/2 connections relayed at L4 that config now wants at L7 (a VirtualService routes
        their service, a policy reads request fields): a gRPC client reconnects at once, and its new connection
        gets the routing and per-call policy. Left open, a long-lived channel would never see them."""
        closing = [relay for relay, info in self.h2_relays.items() if now_l7(info)]
        for relay in closing:
            self.h2_relays.pop(relay, None)
            relay.close()
        return len(closing)

    def _hand_over(self, down: asyncio.Transport, sniffer: Sniffer, protocol: asyncio.Protocol) -> None:
        """Inside our TLS: the L7 path takes the connection, and the bytes read while deciding."""
        self.open -= 1  # the L7 path counts it from here
        down.set_protocol(protocol)
        protocol.connection_made(down)
        if data := sniffer.take():
            protocol.data_received(data)
        if sniffer.eof:
            protocol.eof_received()

    async def _terminate_tls(self, sock: socket.socket, info: ConnectionInfo) -> bool:
        context = self.sidecar.server_tls()
        if context is None:
            self._refuse(sock, Refuse(f"mutual TLS from {info.peer[0]}: no workload certificate loaded"), info)
            return False
        loop = asyncio.get_running_loop()
        sniffer = Sniffer()
        try:
            transport, _ = await loop.connect_accepted_socket(lambda: sniffer, sock, ssl=context,
                                                              ssl_handshake_timeout=HANDSHAKE_TIMEOUT_S)
        except (OSError, ssl.SSLError, TimeoutError) as exc:
            log.warning("refused mutual TLS from %s: %s", info.peer[0], exc or type(exc).__name__)
            return False
        down = transport
        ssl_object = down.get_extra_info("ssl_object")
        uris = peer_uris(ssl_object)
        inner = dataclasses.replace(info, tls_peer=uris[0] if len(uris) == 1 else "",
                                    alpn=ssl_object.selected_alpn_protocol() if ssl_object is not None else None)
        try:
            wait = sniff_timeout(inner)
            if wait:
                inner = dataclasses.replace(inner, first_bytes=await sniffer.first_bytes(wait))
            plan = decide(inner)
        except Exception as exc:
            log.exception("refusing a connection: could not decide how to handle it")
            plan = Refuse(f"a connection from {info.peer[0]} inside mutual TLS: could not decide how to handle it "
                          f"({exc})")
        self._note(plan)
        if isinstance(plan, L7Http):
            decide_ = self._l7_decide(plan, inner)
            if decide_ is not None and not sniffer.lost:
                assert self.sidecar.l7 is not None
                self._hand_over(down, sniffer, Downstream(self.sidecar.l7, decide_, inner))
                return True
            plan = Refuse(f"HTTP from {info.peer[0]}: no L7 path configured")
        if isinstance(plan, L7H2) and self.sidecar.h2 is not None and not sniffer.lost:
            self._hand_over(down, sniffer, self.sidecar.h2(plan, inner))
            return True
        if isinstance(plan, L7H2):
            plan = Refuse(f"HTTP/2 from {info.peer[0]}: no HTTP/2 path configured")
        if isinstance(plan, (L4Tcp, Passthrough)):
            return await self._relay(down, sniffer, plan, inner)
        log.warning("refused %s (inside mutual TLS)", plan.reason if isinstance(plan, Refuse) else plan)
        down.abort()
        self.open -= 1
        return True
