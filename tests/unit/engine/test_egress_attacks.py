"""REGISTRY_ONLY and TLS origination from an attacker's side (sidecar.egress, sidecar.engine.egress): however the
app spells a Host, the sidecar dials only a registered host (or refuses and dials nothing); connections that
are not HTTP pass only to addresses a ServiceEntry host resolves to now; an origination context verifies."""

from __future__ import annotations

import ssl
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from hypothesis import given
from hypothesis import strategies as st

from sidecar.egress import External, ExternalPort, Originate, Resolver, normal_host
from sidecar.engine.call import Call
from sidecar.engine.egress import Egress, origination_context
from sidecar.engine.listeners import CaptureListener, Sidecar
from sidecar.engine.plan import OUTBOUND_PORT, L7Http, Passthrough
from sidecar.engine.plan import decide as decide_plan
from sidecar.engine.proxy import Response, Route
from tests.unit.engine.helpers import run
from tests.unit.engine.test_egress import make_ca, outbound, snap
from tests.unit.engine.test_plan import HTTP
from tests.unit.fakes import request_head
from tests.unit.fuzzing import FUZZ

APP_DIALLED = ("198.51.100.7", 80)  # the address the app connected to: never dialled for an unlisted Host


def decide(policy: str, host: str, port: int = 80) -> Route | Response:
    s = snap(policy)
    call = Call(outbound(s, HTTP, port=port), request_head(host=host, headers=[(b"host", host.encode())]))
    return Egress(lambda: s).decide(call, L7Http((APP_DIALLED[0], port)))


@pytest.mark.parametrize("host", [
    "evil.example", "api.example.evil.example", "evil.api.example", "api.example@evil.example",
    "evil.example#api.example", "api-example", "[api.example]", "[::1]", "[::1]:80",
    "198.51.100.7", "198.51.100.7:80", "api.example:80:80", "api.example%2e", "api%2eexample", "",
    "api.example\x00", "api.example evil.example", "xn--api.example", "api.exampl\u0435",
])
def test_an_unlisted_host_is_refused_and_nothing_is_dialled(host: str) -> None:
    answer = decide("REGISTRY_ONLY", host)
    assert isinstance(answer, Response) and answer.status == 502


@pytest.mark.parametrize("host", ["api.example", "API.EXAMPLE", "api.example.", "api.example:80", "api.example.:80",
                                  " api.example ", "api.example:443"])
def test_a_listed_host_in_any_spelling_goes_to_the_registered_host_only(host: str) -> None:
    answer = decide("REGISTRY_ONLY", host)
    # the port in Host is the app's to name: what is dialled is the registered port's target, by the host's name
    assert isinstance(answer, Route) and answer.address == ("api.example", 443)


def test_the_port_is_the_connections_not_the_hosts() -> None:
    # Host says :80 but the app connected to 5432 (a TCP port of the entry) or 8080 (none): refused
    for port in (5432, 8080):
        answer = decide("REGISTRY_ONLY", "api.example:80", port)
        assert isinstance(answer, Response) and answer.status == 502


@FUZZ
@given(st.text(alphabet=st.sampled_from(list("api.exmplAPI:8[]@ -%\t0x")), max_size=24))
def test_any_host_goes_to_the_registered_host_or_nowhere(host: str) -> None:
    answer = decide("REGISTRY_ONLY", host)
    if isinstance(answer, Route):
        assert answer.address == ("api.example", 443) and normal_host(host) == "api.example"
    else:
        assert answer.status == 502 and normal_host(host) != "api.example"


# --- connections that are not HTTP: the resolver -----------------------------------------------------------------

DB = External("p/db", ("localhost",), (ExternalPort(5432, "TCP", 6432),))


def test_addresses_not_resolved_from_a_listed_host_are_refused() -> None:
    async def go() -> list[int | None]:
        resolver = Resolver()
        resolver.replace((DB,))
        return [await resolver.target(address, True) for address in
                [("127.0.0.1", 5432), ("::1", 5432), ("::ffff:127.0.0.1", 5432), ("127.0.0.1", 6432),
                 ("127.0.0.2", 5432), ("0.0.0.0", 5432)]]

    assert run(go()) == [6432, None, None, None, None, None]


def test_a_removed_service_entry_admits_no_new_connection() -> None:
    """Once the registry no longer lists a host, its addresses are refused at once, not after the next DNS
    round (up to REFRESH_EVERY_S): a connection opened in between would outlive the ServiceEntry."""
    async def go() -> tuple[int | None, int | None, int | None]:
        resolver = Resolver()
        resolver.replace((DB,))
        before = await resolver.target(("127.0.0.1", 5432), True)
        resolver.replace(())
        gone = await resolver.target(("127.0.0.1", 5432), False)
        other = External("p/other", ("localhost",), (ExternalPort(25, "TCP", 25),))
        resolver.replace((other,))  # same address, another port: the old port is gone with its entry
        return before, gone, await resolver.target(("127.0.0.1", 5432), False)

    assert run(go()) == (6432, None, None)


# --- TLS origination -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("ca", [None, "ca"])
def test_origination_verifies_the_certificate_and_the_name(ca: Any) -> None:
    if ca:
        ca = make_ca("t")[0].public_bytes(serialization.Encoding.PEM).decode()
    ctx = origination_context(Originate("api.example", ca))
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    assert ctx.minimum_version >= ssl.TLSVersion.TLSv1_2
    if ca:  # a given CA replaces the system's store: a public CA's certificate for the host is not enough
        assert len(ctx.get_ca_certs()) == 1


# --- relays opened before a change: judged by the registry as it is now -----------------------------------------

class FakeRelay:
    closed = False

    def close(self) -> None:
        self.closed = True


@pytest.mark.parametrize(("egress", "kept"), [(None, True), ([], False)])
def test_a_relay_to_a_removed_service_entry_is_closed(egress: list[dict[str, Any]] | None, kept: bool) -> None:
    """Under REGISTRY_ONLY, a TCP connection let through to a ServiceEntry host does not outlive the entry:
    the port found at accept is looked up again, in the table the new snapshot left (no DNS)."""
    resolver = Resolver()
    resolver._resolved = {"api.example": {"198.51.100.7"}}  # as a DNS round left it
    resolver.replace(snap("REGISTRY_ONLY").egress)
    assert resolver.known(("198.51.100.7", 5432)) == 6432
    s = snap("REGISTRY_ONLY", egress)
    resolver.replace(s.egress)
    listener = CaptureListener(OUTBOUND_PORT, Sidecar(snapshot=lambda: s, external_known=resolver.known))
    relay = FakeRelay()
    listener.relays[relay] = outbound(snap("REGISTRY_ONLY"), b"\x00db", external_port=6432)  # type: ignore[index]
    assert listener.close_refused_relays(s) == (0 if kept else 1)
    assert relay.closed is not kept


# --- HTTP to a TCP port of a ServiceEntry ---------------------------------------------------------------------

ES = {"name": "p/es", "hosts": ["es.example"], "endpoints": [], "ports": [{"number": 7000, "protocol": "TCP",
                                                                         "target": 7001}]}


@pytest.mark.parametrize("policy", ["ALLOW_ANY", "REGISTRY_ONLY"])
def test_http_to_a_tcp_port_of_a_listed_address_passes_to_its_target_port(policy: str) -> None:
    """A TCP port takes any bytes, HTTP too, to its targetPort: HTTP was judged by Host as if the port were HTTP
    (502 under REGISTRY_ONLY, the app's port and not targetPort under ALLOW_ANY)."""
    s = snap(policy, [ES])
    assert decide_plan(outbound(s, HTTP, external_port=7001, port=7000)) == Passthrough(("198.51.100.7", 7001))
    # not listed there: judged per request as before
    assert isinstance(decide_plan(outbound(s, HTTP, external_port=None, port=7000)), L7Http)
    # a port that is HTTP for some entry stays judged by Host, whatever else the address is
    both = snap(policy, [ES, {**ES, "name": "p/web", "hosts": ["web.example"],
                              "ports": [{"number": 7000, "protocol": "HTTP", "target": 7000}]}])
    assert isinstance(decide_plan(outbound(both, HTTP, external_port=7001, port=7000)), L7Http)
