"""The per-connection decision (sidecar.engine.plan), table-tested against today's rules (sidecar.engine.listeners)
and the server-first rules of issue 15, then fuzzed for the properties that must hold for any input."""

from __future__ import annotations

import copy
import dataclasses
import ipaddress
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar import snapshot
from sidecar.endpoints import Endpoint
from sidecar.engine.plan import (
    HTTP_FIRST_BYTES_S,
    INBOUND_PORT,
    L4_ALPN,
    L7H2,
    OUTBOUND_PORT,
    SNIFF_TIMEOUT_S,
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
    local_networks,
    sniff_timeout,
)
from tests.unit.fuzzing import FUZZ

WEB_ID = "spiffe://cluster.local/ns/p/sa/web"
DB_ID = "spiffe://cluster.local/ns/p/sa/db"
SNAP: dict[str, Any] = {
    "format": 1, "revision": 1, "hash": "h", "trust_domain": "cluster.local",
    "proxy": {"name": "p.web", "project": "p", "service": "web", "app": "web", "version": "v1", "identity": WEB_ID},
    "inbound": {"mode": "PERMISSIVE", "published_ports": [8080], "port_modes": {}},
    "outbound": {},
    "services": [
        {"name": "web", "identity": WEB_ID, "workloads": [{"host": "web", "version": "v1"}]},
        {"name": "db", "identity": DB_ID, "workloads": [
            {"host": "db", "version": "v1", "port_modes": {"9090": "DISABLE"},
             "port_protocols": {"8081": "tcp", "3306": "http"}},
            {"host": "db-off", "version": "v2", "mode": "DISABLE"}]},
    ],
}
POD_NETS = LocalNetworks((ipaddress.IPv4Network("172.18.0.0/16"),), frozenset({"172.18.0.1"}))
POD_PEER = ("172.18.0.7", 40000)
EDGE_PEER = ("203.0.113.9", 40000)
HTTP = b"GET / HTTP/1.1\r\nhost: db\r\n\r\n"
TLS = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"
BINARY = b"\x00\x00\x00\x08\x04\xd2\x16\x2f"  # PostgreSQL's SSLRequest
H2 = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def snap(mode: str = "PERMISSIVE", port_modes: dict[str, str] | None = None,
         own_protocols: dict[str, str] | None = None) -> snapshot.Snapshot:
    data = copy.deepcopy(SNAP)
    data["inbound"]["mode"] = mode
    data["inbound"]["port_modes"] = port_modes or {}
    if own_protocols:
        data["services"][0]["workloads"][0]["port_protocols"] = own_protocols
    return snapshot.parse(data)


def endpoint(host: str = "db") -> Endpoint:
    svc = snap().services[1]
    return Endpoint(svc, next(w for w in svc.workloads if w.host == host))


def out(port: int, first: bytes | None, to: Endpoint | None = None) -> ConnectionInfo:
    return ConnectionInfo(OUTBOUND_PORT, ("172.18.0.9", port), ("172.18.0.5", 50000), first, snap(), to,
                          networks=POD_NETS)


def inb(port: int, first: bytes | None, mode: str = "PERMISSIVE", peer: tuple[str, int] = POD_PEER,
        tls_peer: str | None = None, alpn: str | None = None, port_modes: dict[str, str] | None = None,
        own_protocols: dict[str, str] | None = None) -> ConnectionInfo:
    return ConnectionInfo(INBOUND_PORT, ("172.18.0.5", port), peer, first, snap(mode, port_modes, own_protocols),
                          tls_peer=tls_peer, alpn=alpn, networks=POD_NETS)


# --- outbound (15001): today's rules -------------------------------------------------------------------------

@pytest.mark.parametrize(("info", "plan"), [
    (out(443, TLS, endpoint()), Passthrough(("172.18.0.9", 443))),  # the app's own TLS, meshed or not
    (out(443, TLS), Passthrough(("172.18.0.9", 443))),
    (out(9080, HTTP, endpoint()), L7Http(("172.18.0.9", 9080), DB_ID)),
    (out(9080, BINARY, endpoint()), L4Tcp(("172.18.0.9", 9080), DB_ID)),
    (out(9080, H2, endpoint()), L4Tcp(("172.18.0.9", 9080), DB_ID, h2=True)),  # h2c, no route: L4, ALPN h2
    (out(9080, HTTP), L7Http(("172.18.0.9", 9080))),  # outside the mesh: plaintext, but still HTTP at L7
    (out(9080, BINARY), Passthrough(("172.18.0.9", 9080))),
    (out(9080, HTTP, endpoint("db-off")), L7Http(("172.18.0.9", 9080))),  # a DISABLE workload takes plaintext
    (out(9080, BINARY, endpoint("db-off")), Passthrough(("172.18.0.9", 9080))),
    (out(9090, HTTP, endpoint()), L7Http(("172.18.0.9", 9090))),  # ... and a DISABLE port
    (out(9090, BINARY, endpoint()), Passthrough(("172.18.0.9", 9090))),
], ids=range(11))
def test_outbound_as_today(info: ConnectionInfo, plan: Plan) -> None:
    assert decide(info) == plan


@pytest.mark.parametrize("port", [15000, 15001, 15006, 15020, 15021, 15090, 15099])
@pytest.mark.parametrize("listener", [INBOUND_PORT, OUTBOUND_PORT])
def test_the_proxys_own_ports_are_refused_on_either_listener_without_waiting(listener: int, port: int) -> None:
    for first in (HTTP, TLS, BINARY, None):
        info = ConnectionInfo(listener, ("172.18.0.5", port), POD_PEER, first, snap(), endpoint(),
                              tls_peer=None, networks=POD_NETS)
        assert isinstance(decide(info), Refuse)
        assert sniff_timeout(info) == 0.0


@pytest.mark.parametrize("port", [14999, 15100])
def test_ports_next_to_the_proxys_are_not_refused(port: int) -> None:
    assert decide(out(port, HTTP, endpoint())) == L7Http(("172.18.0.9", port), DB_ID)


def test_a_connection_on_any_other_listener_is_refused() -> None:
    info = ConnectionInfo(15002, ("172.18.0.9", 80), POD_PEER, HTTP, snap())
    assert isinstance(decide(info), Refuse) and sniff_timeout(info) == 0.0


# --- outbound: server-first protocols --------------------------------------------------------------------------

@pytest.mark.parametrize("port", [21, 22, 25, 110, 143, 587, 5432, 6379, 11211, 27017])
def test_well_known_tcp_ports_connect_at_once(port: int) -> None:
    assert sniff_timeout(out(port, None, endpoint())) == 0.0
    assert decide(out(port, None, endpoint())) == L4Tcp(("172.18.0.9", port), DB_ID)  # mTLS between sidecars
    assert decide(out(port, None)) == Passthrough(("172.18.0.9", port))


def test_mysql_connects_at_once_unless_the_workload_declares_the_port_http() -> None:
    assert sniff_timeout(out(3306, None)) == 0.0  # unmeshed: no declaration, the default holds
    assert decide(out(3306, None)) == Passthrough(("172.18.0.9", 3306))
    # db declares 3306 as http: it waits for the request and parses it
    assert sniff_timeout(out(3306, None, endpoint())) == HTTP_FIRST_BYTES_S
    assert decide(out(3306, HTTP, endpoint())) == L7Http(("172.18.0.9", 3306), DB_ID)
    assert decide(out(3306, None, endpoint())) == L7Http(("172.18.0.9", 3306), DB_ID)
    assert decide(out(3306, TLS, endpoint())) == Passthrough(("172.18.0.9", 3306))  # still the app's TLS


def test_a_port_declared_tcp_is_tcp_even_when_the_client_speaks_http() -> None:
    assert sniff_timeout(out(8081, None, endpoint())) == 0.0
    for first in (None, HTTP, TLS, BINARY):
        assert decide(out(8081, first, endpoint())) == L4Tcp(("172.18.0.9", 8081), DB_ID)
    assert sniff_timeout(out(8081, None)) == SNIFF_TIMEOUT_S  # another destination's declaration is not ours


def test_any_other_port_sniffs_briefly_then_falls_back_to_tcp() -> None:
    assert sniff_timeout(out(9080, None, endpoint())) == SNIFF_TIMEOUT_S == 0.2
    assert decide(out(9080, None, endpoint())) == L4Tcp(("172.18.0.9", 9080), DB_ID)
    assert decide(out(9080, None)) == Passthrough(("172.18.0.9", 9080))
    assert decide(out(9080, b"GET", endpoint())) == L4Tcp(("172.18.0.9", 9080), DB_ID)  # still a prefix at the end


# --- inbound (15006): today's rules ----------------------------------------------------------------------------

@pytest.mark.parametrize(("info", "plan"), [
    (inb(9080, TLS), TerminateTls()),
    (inb(9080, TLS, "STRICT"), TerminateTls()),
    (inb(9080, TLS, "DISABLE"), Passthrough(("172.18.0.5", 9080))),  # the caller's own TLS, end to end
    (inb(9090, TLS, "STRICT", port_modes={"9090": "DISABLE"}), Passthrough(("172.18.0.5", 9090))),
    (inb(9080, TLS, "DISABLE", port_modes={"9080": "STRICT"}), TerminateTls()),
    (inb(9080, HTTP), L7Http(("172.18.0.5", 9080))),
    (inb(9080, BINARY), L4Tcp(("172.18.0.5", 9080))),
    (inb(9080, HTTP, "DISABLE"), L7Http(("172.18.0.5", 9080))),
    (inb(8080, HTTP, "STRICT", peer=EDGE_PEER), L7Http(("172.18.0.5", 8080))),  # the mesh's edge
    (inb(8080, BINARY, "STRICT", peer=EDGE_PEER), L4Tcp(("172.18.0.5", 8080))),
    (inb(8080, HTTP, "STRICT", peer=("172.18.0.1", 5)), L7Http(("172.18.0.5", 8080))),  # the host, via the gateway
    (inb(9080, HTTP, tls_peer=WEB_ID, alpn="http/1.1"), L7Http(("172.18.0.5", 9080))),  # inside our mTLS
    (inb(9080, BINARY, tls_peer=WEB_ID, alpn=None), L4Tcp(("172.18.0.5", 9080))),
    (inb(9080, HTTP, tls_peer=WEB_ID, alpn=L4_ALPN), L4Tcp(("172.18.0.5", 9080))),  # the L4 marker wins
    (inb(9080, H2, tls_peer=WEB_ID), L4Tcp(("172.18.0.5", 9080))),
    (inb(9080, HTTP, "STRICT", tls_peer=WEB_ID), L7Http(("172.18.0.5", 9080))),
], ids=range(16))
def test_inbound_as_today(info: ConnectionInfo, plan: Plan) -> None:
    assert decide(info) == plan


@pytest.mark.parametrize(("port", "first", "peer", "port_modes"), [
    (9080, HTTP, POD_PEER, None),
    (9080, BINARY, POD_PEER, None),
    (9080, None, POD_PEER, None),  # a silent (server-first) client gets nothing either
    (9080, b"\x16\x03\x09", POD_PEER, None),  # not a TLS record version
    (9080, HTTP, EDGE_PEER, None),  # from outside, but not through a published port
    (8080, HTTP, POD_PEER, None),  # a published port, but from a pod: it should have used mTLS
    (8080, HTTP, ("172.18.0.44", 1), {"8080": "STRICT"}),
    (9090, HTTP, POD_PEER, {"9090": "STRICT"}),  # PERMISSIVE workload, STRICT port
    (3306, None, POD_PEER, None),
], ids=range(9))
def test_plaintext_in_strict_is_refused(port: int, first: bytes | None, peer: tuple[str, int],
                                        port_modes: dict[str, str] | None) -> None:
    mode = "STRICT" if port_modes is None else "PERMISSIVE"
    plan = decide(inb(port, first, mode, peer=peer, port_modes=port_modes))
    assert isinstance(plan, Refuse), plan
    assert plan.message.startswith(b"HTTP/1.1 403 ") == (first == HTTP)
    if plan.message:
        head, body = plan.message.split(b"\r\n\r\n", 1)
        assert int(head.split(b"content-length: ")[1]) == len(body) and b"STRICT" in body


# --- inbound: server-first protocols ---------------------------------------------------------------------------

def test_inbound_tcp_ports() -> None:
    # DISABLE: nothing of ours to find, so a server-first app gets its client at once
    assert sniff_timeout(inb(3306, None, "DISABLE")) == 0.0
    assert decide(inb(3306, None, "DISABLE")) == L4Tcp(("172.18.0.5", 3306))
    # PERMISSIVE and STRICT must see whether it is our TLS: a peer sidecar's ClientHello comes at once
    assert sniff_timeout(inb(3306, None)) == SNIFF_TIMEOUT_S
    assert decide(inb(3306, None)) == L4Tcp(("172.18.0.5", 3306))  # a silent plaintext client: PERMISSIVE
    assert decide(inb(3306, TLS, "STRICT")) == TerminateTls()
    # inside our mTLS a TCP port relays at once, marker or not
    assert sniff_timeout(inb(3306, None, tls_peer=WEB_ID)) == 0.0
    assert decide(inb(3306, None, "STRICT", tls_peer=WEB_ID)) == L4Tcp(("172.18.0.5", 3306))
    assert sniff_timeout(inb(9080, None, tls_peer=WEB_ID, alpn=L4_ALPN)) == 0.0
    assert sniff_timeout(inb(9080, None, tls_peer=WEB_ID, alpn="http/1.1")) == SNIFF_TIMEOUT_S
    assert decide(inb(9080, None, tls_peer=WEB_ID, alpn="http/1.1")) == L4Tcp(("172.18.0.5", 9080))


def test_inbound_declarations_are_our_own_workloads() -> None:
    own = {"9080": "tcp", "3306": "http"}
    assert sniff_timeout(inb(9080, None, tls_peer=WEB_ID, own_protocols=own)) == 0.0
    assert decide(inb(9080, HTTP, tls_peer=WEB_ID, own_protocols=own)) == L4Tcp(("172.18.0.5", 9080))
    assert decide(inb(3306, HTTP, tls_peer=WEB_ID, own_protocols=own)) == L7Http(("172.18.0.5", 3306))
    assert decide(inb(3306, None, tls_peer=WEB_ID, own_protocols=own)) == L7Http(("172.18.0.5", 3306))
    # db's declarations (another workload) do not apply to us
    assert sniff_timeout(inb(8081, None, tls_peer=WEB_ID)) == SNIFF_TIMEOUT_S


# --- first bytes ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("data", "kind"), [
    (b"GET / HTTP/1.1\r\n", "http"), (b"POST /x HTTP/1.1\r\nHost: a\r\n", "http"), (b"OPTIONS * HTTP/1.1", "http"),
    (b"G", "undecided"), (b"GET", "undecided"), (b"PROPFIND", "undecided"), (b"", "undecided"),
    (b"\x16", "undecided"), (b"\x16\x03", "undecided"), (b"\x16\x03\x01", "tls"), (b"\x16\x03\x03\x00", "tls"),
    (b"\x16\x03\x04", "other"), (b"\x16\x02", "other"), (b"\x16\x04\x01", "other"),
    (b"PRI", "undecided"), (H2, "h2"), (b"*1\r\n$4\r\nPING\r\n", "other"), (BINARY, "other"),
    (b"PING\r\n", "other"), (b"A" * 21, "other"), (b"GE T", "other"), (b"G1T / HTTP/1.1", "other"),
    (b"get key\r\n", "http"), (b"SET a b\r\n", "http"),  # why memcached's and Redis's ports are declared TCP
])
def test_classify(data: bytes, kind: str) -> None:
    assert classify(data) == kind


ROUTES = """Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
eth0\t00000000\t010014AC\t0003\t0\t0\t0\t00000000\t0\t0\t0
eth0\t000014AC\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0
eth1\t000012AC\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0
short line
"""


def test_local_networks_from_the_route_table() -> None:
    nets = local_networks(ROUTES)
    assert nets.nets == (ipaddress.IPv4Network("172.20.0.0/16"), ipaddress.IPv4Network("172.18.0.0/16"))
    assert nets.gateways == {"172.20.0.1", "172.18.0.1"}


# --- properties ------------------------------------------------------------------------------------------------

FIRST = st.one_of(st.none(), st.binary(max_size=40), st.sampled_from([HTTP, TLS, BINARY, H2, b"GET", b"\x16"]))
PORTS = st.one_of(st.integers(1, 65535), st.sampled_from([80, 3306, 8080, 8081, 9090, 15000, 15006, 15099]))
MODES = st.sampled_from(snapshot.MODES)
PEERS = st.sampled_from([POD_PEER, EDGE_PEER, ("172.18.0.1", 1), ("not-an-ip", 1)])


@FUZZ
@given(first=FIRST, port=PORTS, host=st.sampled_from([None, "db", "db-off"]))
def test_outbound_meshed_traffic_never_leaves_in_plaintext_unless_it_is_the_apps_own_tls(
        first: bytes | None, port: int, host: str | None) -> None:
    to = endpoint(host) if host else None
    plan = decide(out(port, first, to))
    if 15000 <= port <= 15099:
        assert isinstance(plan, Refuse)
    elif to is not None and to.workload.accepts_mtls(port):
        declared_tcp = to.workload.protocol(port) == "tcp"
        if isinstance(plan, Passthrough):
            assert first is not None and classify(first) == "tls" and not declared_tcp
        else:
            assert isinstance(plan, (L7Http, L4Tcp)) and plan.identity == DB_ID
    else:
        assert isinstance(plan, (L7Http, Passthrough)) and getattr(plan, "identity", "") == ""


@FUZZ
@given(first=FIRST, port=PORTS, mode=MODES, peer=PEERS, port_mode=st.one_of(st.none(), MODES))
def test_inbound_plaintext_never_reaches_a_strict_app_except_at_the_edge(
        first: bytes | None, port: int, mode: str, peer: tuple[str, int], port_mode: str | None) -> None:
    info = inb(port, first, mode, peer=peer, port_modes={str(port): port_mode} if port_mode else None)
    plan = decide(info)
    effective = port_mode or mode
    assert sniff_timeout(info) >= 0
    if 15000 <= port <= 15099:
        assert isinstance(plan, Refuse)
    elif first is not None and classify(first) == "tls":
        assert plan == (Passthrough(info.destination) if effective == "DISABLE" else TerminateTls())
    elif effective == "STRICT":
        edge = port == 8080 and peer in (EDGE_PEER, ("172.18.0.1", 1))
        assert isinstance(plan, Refuse) != edge, plan


@FUZZ
@given(listener=st.integers(0, 65535), first=FIRST, port=PORTS, mode=MODES, tls_peer=st.one_of(st.none(), st.text(
    max_size=5)), alpn=st.one_of(st.none(), st.sampled_from([L4_ALPN, "http/1.1", "h2"])))
def test_decide_is_total(listener: int, first: bytes | None, port: int, mode: str, tls_peer: str | None,
                         alpn: str | None) -> None:
    info = ConnectionInfo(listener, ("172.18.0.5", port), POD_PEER, first, snap(mode), endpoint(),
                          tls_peer=tls_peer, alpn=alpn, networks=POD_NETS)
    plan = decide(info)
    assert isinstance(plan, (L7Http, L4Tcp, Passthrough, TerminateTls, Refuse))
    if listener not in (INBOUND_PORT, OUTBOUND_PORT):
        assert isinstance(plan, Refuse)
    if isinstance(plan, TerminateTls):
        assert listener == INBOUND_PORT and tls_peer is None


def test_the_capture_modules_import_neither_meshctl_nor_mitmproxy() -> None:
    import subprocess
    import sys

    code = ("import sys, sidecar.engine.listeners, sidecar.engine.l4, sidecar.engine.plan; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'meshctl', 'mitmproxy', 'OpenSSL'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]"


# --- HTTP/2: L7 only when config asks for it -----------------------------------------------------------------

def with_config(info: ConnectionInfo, **config: Any) -> ConnectionInfo:
    data = copy.deepcopy(info.snapshot.raw)
    data.update(config)
    return dataclasses.replace(info, snapshot=snapshot.parse(data))


VS_DB = {"name": "db-routes", "hosts": ["db"], "http": [{"route": [{"destination": {"host": "db"}}]}]}
PATH_RULE = {"action": "ALLOW", "rules": [{"to": [{"operation": {"paths": ["/demo.Echo/*"]}}]}]}
PRINCIPAL_RULE = {"action": "ALLOW", "rules": [{"from": [{"source": {"principals": ["cluster.local/ns/p/sa/web"]}}]}]}


def test_outbound_h2c_goes_l7_only_when_a_virtualservice_routes_the_service() -> None:
    assert decide(with_config(out(9080, H2, endpoint()), routes=[VS_DB])) == L7H2(("172.18.0.9", 9080), DB_ID)
    assert decide(out(9080, H2, endpoint())) == L4Tcp(("172.18.0.9", 9080), DB_ID, h2=True)
    other = {**VS_DB, "hosts": ["web"]}
    assert decide(with_config(out(9080, H2, endpoint()), routes=[other])) == L4Tcp(("172.18.0.9", 9080), DB_ID,
                                                                                   h2=True)


def test_outbound_h2c_on_a_port_declared_http_is_still_http2_and_on_a_tcp_port_tcp() -> None:
    assert decide(out(3306, H2, endpoint())) == L4Tcp(("172.18.0.9", 3306), DB_ID, h2=True)
    assert decide(out(8081, None, endpoint())) == L4Tcp(("172.18.0.9", 8081), DB_ID)


def test_outbound_h2c_outside_the_mesh_or_to_a_disable_workload_passes_through() -> None:
    routed = [VS_DB]
    assert decide(with_config(out(9080, H2), routes=routed)) == Passthrough(("172.18.0.9", 9080))
    assert decide(with_config(out(9080, H2, endpoint("db-off")), routes=routed)) == Passthrough(("172.18.0.9", 9080))


def test_inbound_h2_inside_our_mtls_is_known_by_alpn_without_waiting() -> None:
    info = inb(9080, None, tls_peer=WEB_ID, alpn="h2")
    assert sniff_timeout(info) == 0.0
    assert decide(info) == L4Tcp(("172.18.0.5", 9080))  # no policy reads request fields: L4 to the app


@pytest.mark.parametrize(("config", "l7"), [
    ({"authorization": [PATH_RULE]}, True),
    ({"authorization": [{"action": "DENY", "rules": [{"when": [{"key": "request.headers[x-a]",
                                                                "values": ["1"]}]}]}]}, True),
    ({"jwt": [{"issuer": "https://issuer", "jwks": "{}"}]}, True),
    ({"authorization": [PRINCIPAL_RULE]}, False),  # judged per connection at L4 (the TCP gate)
    ({"routes": [{**VS_DB, "hosts": ["web"]}]}, True),  # a VirtualService routes this service (web)
    ({"routes": [VS_DB]}, False),  # ... another service
    ({}, False),
])
def test_inbound_h2_goes_l7_when_a_policy_reads_request_fields(config: dict[str, Any], l7: bool) -> None:
    for info in (inb(9080, None, tls_peer=WEB_ID, alpn="h2"), inb(9080, H2)):  # in mTLS, or plaintext h2c
        plan = decide(with_config(info, **config))
        assert plan == (L7H2(("172.18.0.5", 9080)) if l7 else L4Tcp(("172.18.0.5", 9080)))


def test_plaintext_h2c_in_strict_is_still_refused() -> None:
    assert isinstance(decide(with_config(inb(9080, H2, mode="STRICT"), authorization=[PATH_RULE])), Refuse)
