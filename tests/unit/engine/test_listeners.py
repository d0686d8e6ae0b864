"""The capture listeners and the L4 path in one process, on loopback: an outbound and an inbound engine
sidecar with mutual TLS between them, and apps behind. The original destination is given per listener here
(test_netns.py reads it with SO_ORIGINAL_DST behind real nat rules): the outbound's is the inbound listener,
the inbound's is the app."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from sidecar import snapshot
from sidecar.endpoints import Endpoint
from sidecar.engine import l4, plan
from sidecar.engine.authorize import Authorizer
from sidecar.engine.listeners import CaptureListener, Sidecar
from sidecar.engine.plan import INBOUND_PORT, OUTBOUND_PORT, ConnectionInfo, L4Tcp, L7Http, Passthrough, Refuse
from sidecar.engine.pool import Pool
from sidecar.engine.proxy import Listener, Response
from tests.unit.engine.helpers import TD, Origin, Pki, closed, connect, make_pki, read_response, request, run
from tests.unit.fakes import Live

REVIEWS_ID = f"{TD}/reviews"
GREETING = b"5.5.5-10.11.6-MariaDB greeting\x00"


def snap(app: str, mode: str = "PERMISSIVE", protocols: dict[int, str] | None = None) -> snapshot.Snapshot:
    return snapshot.parse({
        "format": 1, "revision": 1, "hash": "h", "trust_domain": "cluster.local",
        "proxy": {"name": f"shop.{app}", "service": app, "app": app, "version": "v1", "identity": f"{TD}/{app}"},
        "inbound": {"mode": mode}, "outbound": {},
        "services": [{"name": "reviews", "identity": REVIEWS_ID, "workloads": [
            {"host": "reviews", "version": "v1",
             "port_protocols": {str(p): v for p, v in (protocols or {}).items()}}]}],
    })


@dataclass
class App:
    """A TCP server that speaks first (as MySQL does) when `greeting` is set, then echoes."""

    greeting: bytes = b""
    connections: int = 0
    server: asyncio.Server | None = None
    received: bytearray = field(default_factory=bytearray)

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        with contextlib.suppress(ConnectionError):
            if self.greeting:
                writer.write(self.greeting)
            while data := await reader.read(65536):
                self.received += data
                writer.write(data)
                await writer.drain()
            writer.close()


@dataclass
class Mesh:
    out: CaptureListener
    inb: CaptureListener
    app_port: int


def endpoint_of(svc: snapshot.Snapshot) -> Endpoint:
    return Endpoint(svc.services[0], svc.services[0].workloads[0])


@contextlib.asynccontextmanager
async def mesh(pki: Pki, app_port: int, *, server: str = "reviews", mode: str = "PERMISSIVE",
               declare_tcp: bool = True, **inbound: Any) -> AsyncIterator[Mesh]:
    """Outbound sidecar (productpage) -> inbound sidecar (reviews, with `server`'s certificate) -> app."""
    deny = Listener(lambda head: Response(500), Pool(None))
    inb = CaptureListener(INBOUND_PORT, Sidecar(
        snapshot=lambda: snap("reviews", mode), server_tls=lambda: l4.contexts(pki.dirs[server])[1],
        l7=Listener(lambda head: Response(500), Pool(None)),
        original_destination=lambda sock: ("127.0.0.1", app_port), **inbound))
    await inb.start("127.0.0.1", 0)
    port = inb.address[1]
    out_snap = snap("productpage", protocols={port: "tcp"} if declare_tcp else None)
    out = CaptureListener(OUTBOUND_PORT, Sidecar(
        snapshot=lambda: out_snap, lookup=lambda ip: _found(endpoint_of(out_snap)),
        l4_tls=lambda: l4.contexts(pki.dirs["client"])[0], l7=Listener(deny.decide, Pool(pki.client[0])),
        original_destination=lambda sock: ("127.0.0.1", port)))
    await out.start("127.0.0.1", 0)
    try:
        yield Mesh(out, inb, app_port)
    finally:
        out.close()
        inb.close()


async def _found(e: Endpoint) -> Endpoint | None:
    return e


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def test_a_server_first_protocol_on_a_tcp_port_gets_its_greeting_at_once(pki: Pki, monkeypatch: Any) -> None:
    monkeypatch.setattr(plan, "SNIFF_TIMEOUT_S", 2.0)  # a wait would show; none may happen

    async def go() -> float:
        app = App(GREETING)
        async with mesh(pki, await app.start()) as m:
            started = time.monotonic()
            reader, writer = await connect(m.out.address[1])
            greeting = await reader.readexactly(len(GREETING))  # the client has sent nothing
            elapsed = time.monotonic() - started
            writer.write(b"select 1")
            assert await reader.readexactly(8) == b"select 1"
            assert greeting == GREETING and app.received == b"select 1"
            assert m.out.plans == [L4Tcp] and m.inb.plans == [plan.TerminateTls, L4Tcp]
            writer.close()
            return elapsed

    assert run(go()) < 2.0


def test_a_silent_client_on_an_undeclared_port_gets_tcp_after_the_sniffing_timeout(pki: Pki, monkeypatch: Any) -> None:
    monkeypatch.setattr(plan, "SNIFF_TIMEOUT_S", 0.5)

    async def go() -> float:
        app = App(GREETING)
        async with mesh(pki, await app.start(), declare_tcp=False) as m:
            started = time.monotonic()
            reader, writer = await connect(m.out.address[1])
            assert await reader.readexactly(len(GREETING)) == GREETING
            elapsed = time.monotonic() - started
            assert m.out.plans == [L4Tcp]
            writer.close()
            return elapsed

    assert run(go()) >= 0.5  # the outbound waited; the inbound did not (the L4 marker)


def test_a_client_first_echo_over_l4_both_ways_large(pki: Pki) -> None:
    async def go() -> None:
        app = App()
        async with mesh(pki, await app.start(), declare_tcp=False) as m:
            reader, writer = await connect(m.out.address[1])
            payload = bytes(range(256)) * 4096  # 1 MiB
            writer.write(b"\x00\x01" + payload)  # binary: not HTTP, not TLS
            assert await reader.readexactly(len(payload) + 2) == b"\x00\x01" + payload
            writer.write_eof()  # half-close passes through; the app closes; so do we
            assert await closed(reader)
            assert m.out.plans == [L4Tcp] and app.connections == 1
            await asyncio.sleep(0.05)
            assert m.out.open == 0 and m.inb.open == 0

    run(go())


def test_an_http_request_takes_the_l7_path_both_sides(pki: Pki) -> None:
    async def go() -> None:
        origin = await Origin().start()
        async with mesh(pki, origin.port, declare_tcp=False) as m:
            reader, writer = await connect(m.out.address[1])
            for _ in range(2):  # keep-alive on the client side, pooled mTLS between the sidecars
                writer.write(request(b"GET", b"/x"))
                answer = await read_response(reader)
                assert answer.status == 200 and answer.body == b"ok"
            assert m.out.plans == [L7Http] and m.inb.plans == [plan.TerminateTls, L7Http]
            assert [r.target for r in origin.requests] == [b"/x", b"/x"] and origin.connections == 1
            writer.close()
        await origin.stop()

    run(go())


def test_a_request_line_written_in_pieces_is_still_http(pki: Pki) -> None:
    async def go() -> None:
        origin = await Origin().start()
        async with mesh(pki, origin.port, declare_tcp=False) as m:
            reader, writer = await connect(m.out.address[1])
            writer.write(b"GE")
            await asyncio.sleep(0.05)
            writer.write(request(b"GET", b"/y")[2:])
            assert (await read_response(reader)).status == 200
            assert m.out.plans == [L7Http]
            writer.close()
        await origin.stop()

    run(go())


@pytest.mark.parametrize("server", ["ratings", "stranger"])  # the wrong identity; a certificate from another CA
def test_l4_to_a_peer_with_the_wrong_identity_is_cut_before_a_byte(pki: Pki, server: str) -> None:
    async def go() -> None:
        app = App(GREETING)
        async with mesh(pki, await app.start(), server=server) as m:
            reader, writer = await connect(m.out.address[1])
            writer.write(b"secret")
            assert await closed(reader)
            await asyncio.sleep(0.05)
            assert app.received == b"" and (server == "stranger" or app.connections <= 1)
            assert m.out.open == 0

    run(go())


def test_strict_refuses_plaintext_and_callers_without_our_certificate(pki: Pki) -> None:
    async def go() -> None:
        app = App(GREETING)
        async with mesh(pki, await app.start(), mode="STRICT") as m:
            port = m.inb.address[1]
            reader, writer = await connect(port)  # plaintext HTTP: a 403 says why
            writer.write(request())
            answer = await read_response(reader)
            assert answer.status == 403 and b"STRICT" in answer.body
            reader, writer = await connect(port)  # silent plaintext (a server-first client): closed
            assert await closed(reader, timeout=5)
            reader, writer = await connect(port)
            writer.write(b"\x00\x01binary")
            assert await closed(reader)
            no_cert = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # TLS, but no client certificate
            no_cert.check_hostname, no_cert.verify_mode = False, ssl.CERT_NONE
            with contextlib.suppress(ssl.SSLError, ConnectionError):
                reader, writer = await connect(port, ssl_context=no_cert)
                writer.write(b"hello")
                assert await closed(reader)
            for stranger in (pki.stranger[0], pki.client[0]):  # another CA's; then ours: only that one gets in
                with contextlib.suppress(ssl.SSLError, ConnectionError):
                    reader, writer = await connect(port, ssl_context=stranger)
                    writer.write(b"\x00hello")
                    await asyncio.sleep(0.1)
            await asyncio.sleep(0.1)
            assert app.connections == 1 and app.received == b"\x00hello"
            assert m.inb.plans.count(Refuse) == 3

    run(go())


def test_relayed_connections_the_new_config_refuses_are_closed_and_the_others_kept(pki: Pki) -> None:
    """A plaintext TCP connection opened while the port was PERMISSIVE does not outlive a change to STRICT; an mTLS
    one stays, until a policy denies it; a gate that fails closes it (fail closed)."""
    verdict: list[str | None] = [None]

    def gate(info: ConnectionInfo) -> str | None:
        if verdict[0] == "raise":
            raise RuntimeError("policy bug")
        return verdict[0]

    async def echoes(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes) -> bool:
        writer.write(data)
        try:
            return await asyncio.wait_for(reader.readexactly(len(data)), 2) == data
        except (asyncio.IncompleteReadError, ConnectionError):
            return False

    async def go() -> None:
        app = App()
        async with mesh(pki, await app.start(), tcp_gate=gate) as m:
            plain = await connect(m.inb.address[1])  # straight to the inbound port, no certificate
            secure = await connect(m.out.address[1])  # through the outbound sidecar: mutual TLS
            assert await echoes(*plain, b"\x00plain") and await echoes(*secure, b"\x00secure")
            assert m.inb.close_refused_relays(snap("reviews", "PERMISSIVE")) == 0  # nothing changed: none closed
            assert m.inb.close_refused_relays(snap("reviews", "STRICT")) == 1
            assert await closed(plain[0]) and await echoes(*secure, b"\x00still")
            verdict[0] = "deny-all"
            assert m.inb.close_refused_relays(snap("reviews", "STRICT")) == 1
            assert await closed(secure[0])
            verdict[0] = None
            secure = await connect(m.out.address[1])
            assert await echoes(*secure, b"\x00again")
            verdict[0] = "raise"
            assert m.inb.close_refused_relays(snap("reviews", "STRICT")) == 1 and await closed(secure[0])
            await asyncio.sleep(0.05)
            assert not m.inb.relays

    run(go())


def test_a_policy_applied_later_closes_the_tcp_connections_it_denies(pki: Pki) -> None:
    """The real authorizer as the gate: an AuthorizationPolicy that arrives while a TCP connection is open is
    judged on that connection at once (on the new snapshot, before it becomes current), as at accept."""
    live = Live(snap("reviews"))
    authorizer = Authorizer(live)  # type: ignore[arg-type]

    async def go() -> None:
        app = App()
        async with mesh(pki, await app.start(), tcp_gate=authorizer.tcp_gate) as m:
            reader, writer = await connect(m.out.address[1])
            writer.write(b"\x00hello")
            assert await reader.readexactly(6) == b"\x00hello"
            principal = f"{TD}/productpage".removeprefix("spiffe://")
            denying = dataclasses.replace(live.current, authorization=({
                "name": "deny-productpage", "action": "DENY", "rules": [{"from": [{"source": {"principals": [
                    principal]}}]}]},))
            assert m.inb.close_refused_relays(live.current) == 0
            assert m.inb.close_refused_relays(denying) == 1
            assert await closed(reader)

    run(go())


def test_the_tcp_gate_is_asked_for_inbound_l4_and_fails_closed(pki: Pki) -> None:
    seen: list[ConnectionInfo] = []

    def gate(info: ConnectionInfo) -> str | None:
        seen.append(info)
        if len(seen) == 1:
            return "no rule allows it"
        raise RuntimeError("policy bug")

    async def go() -> None:
        app = App(GREETING)
        async with mesh(pki, await app.start(), tcp_gate=gate) as m:
            for _ in range(2):
                reader, _ = await connect(m.out.address[1])
                assert await closed(reader)
            assert app.connections == 0
            assert seen[0].tls_peer == f"{TD}/productpage" and seen[0].alpn == plan.L4_ALPN

    run(go())


def test_the_proxys_own_ports_and_unredirected_connections_are_refused(pki: Pki) -> None:
    async def go() -> None:
        for destination in (("127.0.0.1", 15000), ("127.0.0.1", 15001), None):
            def original(sock: Any, d: Any = destination) -> tuple[str, int]:
                if d is None:
                    raise OSError("no original destination")
                return d[0], d[1]

            lst = CaptureListener(OUTBOUND_PORT, Sidecar(snapshot=lambda: snap("productpage"),
                                                         original_destination=original))
            await lst.start("127.0.0.1", 0)
            reader, writer = await connect(lst.address[1])
            writer.write(request())
            assert await closed(reader)
            assert lst.plans == [Refuse] and lst.open == 0
            lst.close()

    run(go())


def test_the_connection_cap_closes_the_excess_at_once(pki: Pki) -> None:
    async def go() -> None:
        app = App()
        port = await app.start()
        lst = CaptureListener(OUTBOUND_PORT, Sidecar(snapshot=lambda: snap("productpage", protocols=None),
                                                     original_destination=lambda s: ("127.0.0.1", port)),
                              max_connections=2)
        await lst.start("127.0.0.1", 0)
        held = [await connect(lst.address[1]) for _ in range(2)]
        for _, w in held:
            w.write(b"\x00x")
        reader, _ = await connect(lst.address[1])
        assert await closed(reader)
        assert lst.refused == 1 and lst.plans == [Passthrough, Passthrough]
        for r, _ in held:
            assert await r.readexactly(2) == b"\x00x"
        lst.close()

    run(go())


def test_a_reset_upstream_resets_the_client_and_frees_the_slot(pki: Pki, tmp_path: Path) -> None:
    async def go() -> None:
        lst = CaptureListener(OUTBOUND_PORT, Sidecar(snapshot=lambda: snap("productpage"),
                                                     original_destination=lambda s: ("127.0.0.1", 1)))
        await lst.start("127.0.0.1", 0)
        reader, writer = await connect(lst.address[1])
        writer.write(b"\x00x")  # passthrough to a closed port
        assert await closed(reader)
        await asyncio.sleep(0.05)
        assert lst.open == 0
        lst.close()

    run(go())
