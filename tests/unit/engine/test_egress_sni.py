"""REGISTRY_ONLY and the app's own TLS leaving the mesh: admitted by the ClientHello's server name (SNI), not by
the address, which a CDN shares with any site (domain fronting). The plan, then the outbound listener on loopback
with real ClientHellos: the admitted one is dialled by name on the port's target, never the app's address."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest

from sidecar.engine.clienthello import Hello
from sidecar.engine.listeners import CaptureListener, Sidecar
from sidecar.engine.plan import HTTP_FIRST_BYTES_S, OUTBOUND_PORT, Passthrough, Refuse, decide, sniff_timeout
from tests.unit.engine.helpers import run
from tests.unit.engine.test_clienthello import real_hello, records
from tests.unit.engine.test_egress import outbound, snap
from tests.unit.engine.test_listeners import App

CDN = "198.51.100.7"  # where the app connected: an address api.example shares with other sites


def cdn_entry(port: int = 443, target: int = 8443, protocol: str = "TLS", hosts: tuple[str, ...] = ("api.example",),
              endpoints: tuple[str, ...] = ()) -> dict[str, Any]:
    return {"name": "p/cdn", "hosts": list(hosts), "endpoints": list(endpoints),
            "ports": [{"number": port, "protocol": protocol, "target": target}]}


def tls_info(policy: str, hello: Hello | None, port: int = 443, external_port: int | None = 8443,
             entry: dict[str, Any] | None = None) -> Any:
    info = outbound(snap(policy, [entry or cdn_entry()]), real_hello("api.example"), external_port, port)
    return dataclasses.replace(info, hello=hello)


# --- the plan -----------------------------------------------------------------------------------------------------


def test_fronting_to_a_registered_address_is_refused_naming_the_sni() -> None:
    plan = decide(tls_info("REGISTRY_ONLY", Hello("sni", host="evil.example")))  # the address does match
    assert isinstance(plan, Refuse) and "SNI evil.example" in plan.reason and "REGISTRY_ONLY" in plan.reason


@pytest.mark.parametrize("protocol", ["TLS", "HTTPS", "TCP", "HTTP"])
def test_a_registered_sni_is_dialled_by_name_on_the_target(protocol: str) -> None:
    plan = decide(tls_info("REGISTRY_ONLY", Hello("sni", host="api.example"), external_port=None,
                           entry=cdn_entry(protocol=protocol)))
    assert plan == Passthrough(("api.example", 8443))  # not CDN: the app's address is never dialled


def test_endpoints_stand_for_the_host() -> None:
    plan = decide(tls_info("REGISTRY_ONLY", Hello("sni", host="api.example"),
                           entry=cdn_entry(endpoints=("10.1.0.1", "10.1.0.2"))))
    assert isinstance(plan, Passthrough) and plan.address in (("10.1.0.1", 8443), ("10.1.0.2", 8443))


@pytest.mark.parametrize("hello, said", [
    (Hello("none"), "no SNI"), (None, "no ClientHello read"), (Hello("more", need=900), "incomplete"),
    (Hello("malformed", reason="longer than 16384 bytes"), "longer than 16384"),
    (Hello("sni", host="api.example"), "SNI api.example"),  # listed, but not on this port
])
def test_no_sni_a_broken_hello_or_another_port_is_refused(hello: Hello | None, said: str) -> None:
    plan = decide(tls_info("REGISTRY_ONLY", hello, port=8443 if hello and hello.host else 443))
    assert isinstance(plan, Refuse) and said in plan.reason and "REGISTRY_ONLY" in plan.reason


def test_allow_any_and_tcp_are_unchanged() -> None:
    assert decide(tls_info("ALLOW_ANY", Hello("sni", host="evil.example"), external_port=None)) == \
        Passthrough((CDN, 443))
    assert decide(tls_info("ALLOW_ANY", None)) == Passthrough((CDN, 8443))
    tcp = outbound(snap("REGISTRY_ONLY", [cdn_entry(protocol="TCP")]), b"\x00db", 8443, 443)
    assert decide(tcp) == Passthrough((CDN, 8443))  # not TLS: by its address, as before


@pytest.mark.parametrize("first", [
    b"\x00db", None,  # TCP, or a client silent past the sniffing (its ClientHello would come later)
    b"\x16\x03\x04\x00\x05",  # a record version classify does not take for TLS, that servers may
    b"\x16",  # the first byte alone when time ran out
])
@pytest.mark.parametrize("protocol", ["TLS", "HTTPS", "HTTP"])
def test_neither_http_nor_tls_on_a_port_judged_by_name_is_refused(first: bytes | None, protocol: str) -> None:
    info = outbound(snap("REGISTRY_ONLY", [cdn_entry(protocol=protocol)]), first, 8443, 443)
    plan = decide(info)
    assert isinstance(plan, Refuse) and "neither HTTP nor TLS" in plan.reason and "REGISTRY_ONLY" in plan.reason
    assert sniff_timeout(info) == HTTP_FIRST_BYTES_S  # a slow client is waited for, and judged by its name
    # where some entry lists the port as TCP, by address as before; and ALLOW_ANY is unchanged
    mixed = snap("REGISTRY_ONLY", [cdn_entry(protocol=protocol), {**cdn_entry(protocol="TCP"), "name": "p/db"}])
    assert decide(dataclasses.replace(info, snapshot=mixed)) == Passthrough((CDN, 8443))
    assert decide(dataclasses.replace(info, snapshot=snap("ALLOW_ANY", [cdn_entry(protocol=protocol)]))) == \
        Passthrough((CDN, 8443))


def test_a_relay_admitted_by_sni_is_judged_again_by_it() -> None:
    info = tls_info("REGISTRY_ONLY", Hello("sni", host="api.example"))
    listener = CaptureListener(OUTBOUND_PORT, Sidecar(snapshot=lambda: info.snapshot))
    assert listener.still_allowed(info)
    assert not listener.still_allowed(dataclasses.replace(info, snapshot=snap("REGISTRY_ONLY", [])))


# --- the listener, on loopback ------------------------------------------------------------------------------------


@dataclasses.dataclass
class Egress:
    listener: CaptureListener
    chosen: App  # the address the app connected to (the CDN's)
    upstream: App  # where the registered host's port targets


@contextlib.asynccontextmanager
async def egress(policy: str) -> AsyncIterator[Egress]:
    chosen, upstream = App(), App()
    chosen_port, upstream_port = await chosen.start(), await upstream.start()
    s = snap(policy, [cdn_entry(chosen_port, upstream_port, hosts=("localhost",))])

    async def by_address(address: tuple[str, int], look_again: bool) -> int | None:
        return upstream_port  # the address is a registered host's: what admitted fronting before

    listener = CaptureListener(OUTBOUND_PORT, Sidecar(snapshot=lambda: s, external=by_address,
                                                      original_destination=lambda sock: ("127.0.0.1", chosen_port)))
    await listener.start("127.0.0.1", 0)
    try:
        yield Egress(listener, chosen, upstream)
    finally:
        listener.close()
        for app in (chosen, upstream):
            assert app.server is not None
            app.server.close()


async def exchange(port: int, chunks: list[bytes], pause: float = 0.0) -> bytes:
    """Send `chunks` (pausing between them), and what comes back: the echo when admitted, b"" when refused."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    for chunk in chunks:
        writer.write(chunk)
        await writer.drain()
        await asyncio.sleep(pause)
    got = b""
    with contextlib.suppress(ConnectionError, TimeoutError):
        async with asyncio.timeout(3):
            while len(got) < sum(map(len, chunks)) and (data := await reader.read(65536)):
                got += data
    writer.close()
    return got


def test_fronting_is_refused_and_nothing_is_dialled(caplog: pytest.LogCaptureFixture) -> None:
    async def go() -> None:
        async with egress("REGISTRY_ONLY") as e:
            assert await exchange(e.listener.address[1], [real_hello("evil.example")]) == b""
            assert e.chosen.connections == e.upstream.connections == 0

    with caplog.at_level(logging.WARNING, "meshctl.engine.listeners"):
        run(go())
    assert any("SNI evil.example" in r.message and "REGISTRY_ONLY" in r.message for r in caplog.records)


@pytest.mark.parametrize("split", [0, 100])
def test_a_registered_sni_is_admitted_and_dialled_by_name(split: int) -> None:
    """Whole, or re-framed into 100-byte records sent apart (as a post-quantum hello spans segments)."""
    hello = real_hello("localhost")
    chunks = [hello] if not split else _record_list(records(hello, split))

    async def go() -> None:
        async with egress("REGISTRY_ONLY") as e:
            assert await exchange(e.listener.address[1], chunks, pause=0.02) == b"".join(chunks)
            assert e.upstream.connections == 1 and e.chosen.connections == 0  # by name, to the target port

    run(go())


@pytest.mark.parametrize("host", ["evil.example", "localhost"])
def test_a_client_silent_past_the_sniffing_is_still_judged_by_its_sni(host: str, monkeypatch: Any) -> None:
    """Waiting out the sniffing timeout before the ClientHello no longer makes it TCP judged by its address."""
    monkeypatch.setattr("sidecar.engine.plan.SNIFF_TIMEOUT_S", 0.05)
    hello = real_hello(host)

    async def go() -> None:
        async with egress("REGISTRY_ONLY") as e:
            reader, writer = await asyncio.open_connection("127.0.0.1", e.listener.address[1])
            await asyncio.sleep(0.3)
            writer.write(hello)
            got = b""
            with contextlib.suppress(ConnectionError, TimeoutError):
                async with asyncio.timeout(3):
                    while len(got) < len(hello) and (data := await reader.read(65536)):
                        got += data
            writer.close()
            assert got == (hello if host == "localhost" else b"")
            assert e.chosen.connections == 0 and e.upstream.connections == (host == "localhost")

    run(go())


def _record_list(data: bytes) -> list[bytes]:
    out = []
    while data:
        end = 5 + int.from_bytes(data[3:5], "big")
        out.append(data[:end])
        data = data[end:]
    return out


@pytest.mark.parametrize("first", [
    real_hello(),  # no SNI
    b"\x16\x03\x01\x40\x00\x01\x00\x50\x00" + b"\x03\x03" + b"\x00" * 200,  # declares a 20 KiB ClientHello
])
def test_no_sni_and_an_oversized_hello_are_refused(first: bytes, caplog: pytest.LogCaptureFixture) -> None:
    async def go() -> None:
        async with egress("REGISTRY_ONLY") as e:
            assert await exchange(e.listener.address[1], [first]) == b""
            assert e.chosen.connections == e.upstream.connections == 0

    with caplog.at_level(logging.WARNING, "meshctl.engine.listeners"):
        run(go())
    assert any("REGISTRY_ONLY" in r.message and ("no SNI" in r.message or "longer than" in r.message)
               for r in caplog.records)


def test_allow_any_is_unchanged() -> None:
    async def go() -> None:
        async with egress("ALLOW_ANY") as e:
            hello = real_hello("evil.example")
            assert await exchange(e.listener.address[1], [hello]) == hello
            assert e.upstream.connections == 1  # the address's registered target port, as before

    run(go())
