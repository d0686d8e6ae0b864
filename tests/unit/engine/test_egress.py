"""Egress in the sidecar: the plan for connections outside the mesh, the registry's answer per HTTP request, the
snapshot's `egress` contract, the resolver, and TLS originated to a real TLS server on loopback."""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import ssl
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from sidecar import snapshot
from sidecar.egress import External, ExternalPort, Originate, Resolver, http_target, normal_host
from sidecar.engine.egress import Egress, origination_context
from sidecar.engine.plan import OUTBOUND_PORT, ConnectionInfo, L7Http, Passthrough, Refuse, decide
from sidecar.engine.pool import Pool, PoolError
from sidecar.engine.proxy import Response, Route
from tests.unit.engine.helpers import Origin, run
from tests.unit.engine.test_plan import BINARY, HTTP, SNAP, TLS, endpoint, out
from tests.unit.fakes import request_head

API = {"name": "p/api", "hosts": ["api.example"], "endpoints": [],
       "ports": [{"number": 80, "protocol": "HTTP", "target": 443,
                  "tls": {"sni": "api.example", "ca": None, "verify": True}},
                 {"number": 5432, "protocol": "TCP", "target": 6432}]}


def snap(policy: str = "ALLOW_ANY", egress: list[dict[str, Any]] | None = None) -> snapshot.Snapshot:
    raw = copy.deepcopy(SNAP)
    raw["mesh"] = {"outbound_traffic_policy": policy}
    raw["egress"] = [API] if egress is None else egress
    return snapshot.parse(raw)


def outbound(s: snapshot.Snapshot, first: bytes | None, external_port: int | None = None,
             port: int = 5432) -> ConnectionInfo:
    return ConnectionInfo(OUTBOUND_PORT, ("198.51.100.7", port), ("172.18.0.5", 40000), first, s,
                          external_port=external_port)


# --- the plan -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("first", [BINARY, TLS, None])
def test_allow_any_passes_unknown_destinations_through(first: bytes | None) -> None:
    assert decide(outbound(snap(), first)) == Passthrough(("198.51.100.7", 5432))


@pytest.mark.parametrize("first", [BINARY, TLS, None])
def test_registry_only_closes_connections_to_unknown_addresses(first: bytes | None) -> None:
    plan = decide(outbound(snap("REGISTRY_ONLY"), first))
    assert isinstance(plan, Refuse) and "REGISTRY_ONLY" in plan.reason and "198.51.100.7:5432" in plan.reason
    assert plan.message == b""  # not HTTP: closed, logged


def test_a_service_entry_address_passes_to_its_target_port() -> None:
    for policy in ("ALLOW_ANY", "REGISTRY_ONLY"):
        assert decide(outbound(snap(policy), BINARY, 6432)) == Passthrough(("198.51.100.7", 6432))


def test_http_outside_the_mesh_is_judged_per_request() -> None:
    assert decide(outbound(snap("REGISTRY_ONLY"), HTTP, port=80)) == L7Http(("198.51.100.7", 80))


def test_meshed_destinations_are_in_the_registry() -> None:
    for first in (TLS, BINARY):  # the app's own TLS, and TCP over mesh mTLS, to a meshed endpoint
        info = dataclasses.replace(out(5432, first, endpoint()), snapshot=snap("REGISTRY_ONLY"))
        assert not isinstance(decide(info), Refuse)


# --- the snapshot contract ----------------------------------------------------------------------------------------


def test_snapshot_carries_the_policy_and_the_registry() -> None:
    s = snap("REGISTRY_ONLY")
    assert s.mesh.outbound_policy == "REGISTRY_ONLY"
    assert s.egress[0].port(80) == ExternalPort(80, "HTTP", 443, Originate("api.example", None, True))
    assert snapshot.parse({**SNAP}).mesh.outbound_policy == "ALLOW_ANY"  # older snapshots: today's behaviour


@pytest.mark.parametrize("mesh, egress, error", [
    ({"outbound_traffic_policy": "DENY"}, [], "outbound_traffic_policy"),
    ({}, {"hosts": []}, "egress must be a list"),
    ({}, [{"name": "x", "hosts": [], "ports": []}], "hosts"),
    ({}, [{"name": "x", "hosts": ["a"], "ports": [{"number": 0, "protocol": "TCP"}]}], "number"),
    ({}, [{"name": "x", "hosts": ["a"], "ports": [{"number": 80, "protocol": "HTTP",
                                                    "tls": {"sni": "a", "ca": "/etc/passwd"}}]}], "PEM"),
])
def test_a_bad_egress_section_is_rejected(mesh: dict[str, Any], egress: Any, error: str) -> None:
    with pytest.raises(snapshot.SnapshotError, match=error):
        snapshot.parse({**SNAP, "mesh": mesh, "egress": egress})


# --- per request --------------------------------------------------------------------------------------------------


def test_normal_host_and_matching() -> None:
    assert normal_host("API.Example:80.") == "api.example" and normal_host("api.example.") == "api.example"
    entries = snap().egress
    assert http_target(entries, "api.example", 80) is not None
    assert http_target(entries, "api.example", 8080) is None  # not a port of the entry
    assert http_target(entries, "api.example", 5432) is None  # a TCP port: not matched by Host
    assert http_target(entries, "evil.example", 80) is None


def egress_call(s: snapshot.Snapshot, host: str) -> tuple[Route | Response, Any]:
    from sidecar.engine.call import Call
    info = outbound(s, HTTP)
    call = Call(info, request_head(host=host, headers=[(b"host", host.encode())]))
    return Egress(lambda: s).decide(call, L7Http(("198.51.100.7", 80))), call


def test_registry_only_answers_502_with_the_reason() -> None:
    answer, call = egress_call(snap("REGISTRY_ONLY"), "evil.example")
    assert isinstance(answer, Response) and answer.status == 502
    assert b"evil.example is not in the mesh's registry (outboundTrafficPolicy REGISTRY_ONLY)" in answer.body
    assert b"add a ServiceEntry" in answer.body
    assert call.flags == "NR" and call.reason is not None and "REGISTRY_ONLY" in call.reason


def test_allow_any_keeps_the_destination() -> None:
    answer, _ = egress_call(snap(), "evil.example")
    assert answer == Route(("198.51.100.7", 80))


def test_a_listed_host_is_dialled_by_name_with_tls() -> None:
    # the sidecar connects to the host it resolves, on the target port, whatever address the app connected to
    answer, call = egress_call(snap("REGISTRY_ONLY"), "API.example:80")
    assert isinstance(answer, Route) and answer.address == ("api.example", 443) and answer.identity == ""
    assert answer.pool is not None and answer.pool.server_name == "api.example"
    assert call.route == {"host": "api.example", "subset": None, "attempts": 1}


def test_endpoints_are_used_in_turn_and_plain_ports_use_the_listeners_pool() -> None:
    entry = {"name": "e", "hosts": ["db.example"], "endpoints": ["10.1.0.1", "10.1.0.2"],
             "ports": [{"number": 80, "protocol": "HTTP", "target": 8080}]}
    s = snap("REGISTRY_ONLY", [entry])
    egress = Egress(lambda: s)
    from sidecar.engine.call import Call
    seen = []
    for _ in range(2):
        call = Call(outbound(s, HTTP), request_head(host="db.example", headers=[(b"host", b"db.example")]))
        route = egress.decide(call, L7Http(("198.51.100.7", 80)))
        assert isinstance(route, Route) and route.pool is None
        seen.append(route.address)
    assert sorted(seen) == [("10.1.0.1", 8080), ("10.1.0.2", 8080)]


# --- the resolver -------------------------------------------------------------------------------------------------


def test_resolver_maps_addresses_to_target_ports() -> None:
    async def go() -> tuple[int | None, int | None, int | None]:
        resolver = Resolver()
        resolver.replace((External("e", ("localhost",), (ExternalPort(5432, "TCP", 6432),)),))
        return (await resolver.target(("127.0.0.1", 5432), True), await resolver.target(("127.0.0.1", 80), True),
                await resolver.target(("127.0.0.2", 5432), True))

    assert run(go()) == (6432, None, None)


# --- TLS origination against a real TLS server ------------------------------------------------------------------


def make_ca(name: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A self-signed test CA (valid for an hour) and its key."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=1))
            .not_valid_after(now + dt.timedelta(hours=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True).sign(key, hashes.SHA256()))
    return cert, key


def write_server_pair(directory: Path, ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, name: str) -> None:
    """cert.pem and key.pem in `directory`: a server certificate for the DNS name `name`, signed by `ca`."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=1)).not_valid_after(now + dt.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    (directory / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                          serialization.PrivateFormat.PKCS8,
                                                          serialization.NoEncryption()))


def tls_server(tmp_path: Path, name: str) -> tuple[ssl.SSLContext, str]:
    """A server context whose certificate for `name` a test CA signed, and that CA's PEM."""
    ca, ca_key = make_ca("test CA")
    write_server_pair(tmp_path, ca, ca_key, name)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    return ctx, ca.public_bytes(serialization.Encoding.PEM).decode()


def originate(tmp_path: Path, tls: Originate | None, server_name: str = "api.example") -> str:
    """'ok', or the PoolError's kind, for a TLS connection to a loopback server certified for `server_name`."""
    server_ctx, ca = tls_server(tmp_path, server_name)
    chosen = tls or Originate("api.example", ca)

    async def go() -> str:
        origin = await Origin().start(server_ctx)
        try:
            pool = Pool(origination_context(chosen), server_name=chosen.sni, connect_timeout=5)
            try:
                conn = await pool.connect((("127.0.0.1", origin.port), ""))
            except PoolError as exc:
                return exc.kind
            assert conn.transport is not None
            sslobj = conn.transport.get_extra_info("ssl_object")
            conn.close()
            return "ok" if sslobj is not None and sslobj.server_hostname == chosen.sni else "no tls"
        finally:
            await origin.stop()

    return run(go())


def test_tls_origination_checks_the_ca_and_the_name(tmp_path: Path) -> None:
    assert originate(tmp_path, None) == "ok"
    other_ca = make_ca("another CA")[0].public_bytes(serialization.Encoding.PEM).decode()
    assert originate(tmp_path, Originate("api.example", other_ca)) == "connect-failure"  # not signed by it
    # signed by the right CA, but for another name than the SNI: refused
    assert originate(tmp_path, None, server_name="evil.example") == "connect-failure"
    # insecureSkipVerify: no check at all
    assert originate(tmp_path, Originate("api.example", other_ca, verify=False)) == "ok"


def test_origination_context_without_a_ca_uses_the_system_store() -> None:
    ctx = origination_context(Originate("api.example"))
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
