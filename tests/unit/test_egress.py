"""Egress in the control plane: ServiceEntry validation, DestinationRule tls SIMPLE and its caCertificates, the
compiled `egress` of a snapshot (read back by the sidecar's contract), and the mesh-wide outbound policy."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives import serialization

from meshctl.config.analyze import Inventory, analyze_resources
from meshctl.config.resources import load
from meshctl.errors import InvalidInput, UsageError
from meshctl.home import MeshSettings
from meshctl.lifecycle.install import validate_outbound_policy
from meshctl.pilot.egress import egress
from meshctl.pilot.snapshot import compile_snapshot
from sidecar import snapshot as contract
from tests.unit.engine.test_egress import make_ca
from tests.unit.test_namespaces import info

SE = {"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry", "metadata": {"name": "api"},
      "spec": {"hosts": ["api.example.com"], "location": "MESH_EXTERNAL", "resolution": "DNS",
               "ports": [{"number": 80, "name": "http", "protocol": "HTTP", "targetPort": 443},
                         {"number": 5432, "name": "tcp-db"}]}}


def ca_pem() -> str:
    return make_ca("test CA")[0].public_bytes(serialization.Encoding.PEM).decode()


def dr(tls: dict[str, Any] | None = None, port_tls: dict[str, Any] | None = None,
       host: str = "api.example.com") -> dict[str, Any]:
    policy: dict[str, Any] = {}
    if tls is not None:
        policy["tls"] = tls
    if port_tls is not None:
        policy["portLevelSettings"] = [{"port": {"number": 80}, "tls": port_tls}]
    return {"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule", "metadata": {"name": "api"},
            "spec": {"host": host, "trafficPolicy": policy}}


def load_docs(tmp_path: Path, *docs: dict[str, Any]) -> list[dict[str, Any]]:
    path = tmp_path / "egress.yaml"
    path.write_text(yaml.safe_dump_all(docs))
    return load([str(path)])


def refused(tmp_path: Path, *docs: dict[str, Any]) -> str:
    with pytest.raises(InvalidInput) as caught:
        load_docs(tmp_path, *docs)
    return "\n".join(caught.value.details or [str(caught.value)])


def with_spec(**changes: Any) -> dict[str, Any]:
    return {**SE, "spec": {**SE["spec"], **changes}}


# --- ServiceEntry -------------------------------------------------------------------------------------------------


def test_a_service_entry_is_accepted_with_its_aliases(tmp_path: Path) -> None:
    assert load_docs(tmp_path, SE)[0]["kind"] == "ServiceEntry"
    from meshctl.config.kinds import find_kind
    assert find_kind("se") is find_kind("serviceentries") is find_kind("ServiceEntry")


@pytest.mark.parametrize("changes, expected", [
    ({"location": "MESH_INTERNAL"}, "spec.location: MESH_INTERNAL is not supported"),
    ({"hosts": ["*.example.com"]}, "wildcard hosts are not supported"),
    ({"hosts": ["192.0.2.1"]}, "is not a DNS name"),
    ({"hosts": []}, "spec.hosts: name at least one host"),
    ({"ports": []}, "spec.ports: give at least one port"),
    ({"ports": [{"number": 80}, {"number": 80}]}, "port 80 is listed twice"),
    ({"ports": [{"number": 80, "protocol": "SMTP"}]}, "spec.ports[0].protocol: 'SMTP' must be one of"),
    ({"resolution": "STATIC"}, "resolution STATIC needs endpoints"),
    ({"resolution": "STATIC", "endpoints": [{"address": "db.example.com"}]}, "resolution STATIC takes IP"),
    ({"endpoints": [{"address": "unix:///var/run/x.sock"}]}, "unix sockets are not supported"),
    ({"addresses": ["10.0.0.1"]}, "spec.addresses is not supported by meshctl: the sidecar matches a host"),
    ({"exportTo": ["."]}, "spec.exportTo is not supported by meshctl"),
    ({"workloadSelector": {"labels": {"app": "x"}}}, "spec.workloadSelector is not supported by meshctl"),
    ({"endpoints": [{"address": "10.0.0.1", "ports": {"http": 8080}}]}, "set the port's targetPort"),
])
def test_what_a_service_entry_cannot_say_is_named(tmp_path: Path, changes: dict[str, Any], expected: str) -> None:
    assert expected in refused(tmp_path, with_spec(**changes))


# --- DestinationRule tls SIMPLE and caCertificates ----------------------------------------------------------------


def test_simple_with_an_inline_ca_or_a_file_next_to_the_yaml(tmp_path: Path) -> None:
    pem = ca_pem()
    inline = load_docs(tmp_path, dr({"mode": "SIMPLE", "caCertificates": pem, "sni": "api.example.com"}))
    assert inline[0]["spec"]["trafficPolicy"]["tls"]["caCertificates"] == pem
    (tmp_path / "ca.pem").write_text(pem)
    from_file = load_docs(tmp_path, dr({"mode": "SIMPLE", "caCertificates": "ca.pem"}))
    assert from_file[0]["spec"]["trafficPolicy"]["tls"]["caCertificates"] == pem  # stored as PEM, read once


def test_ca_certificates_accepts_certificates_only(tmp_path: Path) -> None:
    key = make_ca("x")[1].private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()).decode()
    (tmp_path / "key.pem").write_text(key)
    (tmp_path / "mixed.pem").write_text(ca_pem() + key)
    (tmp_path / "shadow").write_text("root:x:0:0::/root:/bin/sh\n")
    assert "only CERTIFICATE blocks are accepted" in refused(tmp_path, dr({"mode": "SIMPLE",
                                                                            "caCertificates": "key.pem"}))
    assert "only CERTIFICATE blocks" in refused(tmp_path, dr({"mode": "SIMPLE", "caCertificates": "mixed.pem"}))
    assert "holds no PEM certificate" in refused(tmp_path, dr({"mode": "SIMPLE", "caCertificates": "shadow"}))
    assert "neither PEM certificates nor a file" in refused(tmp_path, dr({"mode": "SIMPLE",
                                                                          "caCertificates": "missing.pem"}))
    broken = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
    assert "not a valid X.509" in refused(tmp_path, dr({"mode": "SIMPLE", "caCertificates": broken}))
    assert "besides PEM certificates" in refused(tmp_path, dr({"mode": "SIMPLE",
                                                                "caCertificates": ca_pem() + "extra\n"}))


def test_mutual_and_simple_per_subset_are_refused(tmp_path: Path) -> None:
    assert "MUTUAL (TLS origination with client certificates) is not supported" in refused(
        tmp_path, dr({"mode": "MUTUAL"}))
    rule = dr()
    rule["spec"]["subsets"] = [{"name": "v1", "labels": {"version": "v1"},
                                "trafficPolicy": {"tls": {"mode": "SIMPLE"}}}]
    assert "spec.subsets[0]: tls mode SIMPLE applies to a ServiceEntry host as a whole" in refused(tmp_path, rule)


# --- the compiled snapshot ----------------------------------------------------------------------------------------


def test_egress_compiles_per_host_with_the_rules_tls(tmp_path: Path) -> None:
    pem = ca_pem()
    resources = load_docs(tmp_path, with_spec(hosts=["api.example.com", "mirror.example.com"]),
                          dr(port_tls={"mode": "SIMPLE", "caCertificates": pem}))
    entries = egress(resources, "shop")
    assert [e["hosts"] for e in entries] == [["api.example.com"], ["mirror.example.com"]]
    api_ports = entries[0]["ports"]
    assert api_ports[0] == {"number": 80, "protocol": "HTTP", "target": 443,
                            "tls": {"sni": "api.example.com", "ca": pem, "verify": True}}
    assert api_ports[1] == {"number": 5432, "protocol": "TCP", "target": 5432}  # protocol from the name's prefix
    assert "tls" not in entries[1]["ports"][0]  # the rule is for the other host

    # the whole host's tls, with sni and insecureSkipVerify, and the sidecar's contract reads it back
    resources = load_docs(tmp_path, SE, dr({"mode": "SIMPLE", "sni": "edge.example.com", "insecureSkipVerify": True}))
    body = compile_snapshot(info("shop"), resources, 1)
    snap = contract.parse(body)
    port = snap.egress[0].port(80)
    assert port is not None and port.tls is not None
    assert (port.tls.sni, port.tls.ca, port.tls.verify) == ("edge.example.com", None, False)
    assert snap.egress[0].port(5432) is not None and snap.egress[0].port(5432).tls is None  # type: ignore[union-attr]


def test_egress_follows_namespaces(tmp_path: Path) -> None:
    scoped = {**SE, "metadata": {"name": "api", "namespace": "other"}}
    resources = load_docs(tmp_path, scoped)
    assert egress(resources, "shop") == [] and len(egress(resources, "other")) == 1


def test_the_outbound_policy_is_mesh_wide_and_validated(tmp_path: Path) -> None:
    body = compile_snapshot(info("shop"), [], 1, MeshSettings(outbound_traffic_policy="REGISTRY_ONLY"))
    assert contract.parse(body).mesh.outbound_policy == "REGISTRY_ONLY"
    assert contract.parse(compile_snapshot(info("shop"), [], 1)).mesh.outbound_policy == "ALLOW_ANY"
    assert validate_outbound_policy("registry-only") == "REGISTRY_ONLY"
    with pytest.raises(UsageError, match="outbound-traffic-policy"):
        validate_outbound_policy("DENY_ALL")
    with pytest.raises(InvalidInput, match="outbound_traffic_policy must be one of"):
        MeshSettings.from_dict({"outbound_traffic_policy": "OPEN"}, tmp_path / "mesh.yaml")


def test_analyze_does_not_call_a_service_entry_host_unmeshed(tmp_path: Path) -> None:
    resources = load_docs(tmp_path, SE, dr({"mode": "SIMPLE"}), dr({"mode": "SIMPLE"}, host="nowhere.example.com")
                          | {"metadata": {"name": "nowhere"}})
    found = analyze_resources(resources, Inventory(projects={"shop": {"web"}}))
    codes = {(m.code, m.resource) for m in found}
    assert ("MSH0104", "DestinationRule api") not in codes
    assert any(m.code == "MSH0120" and m.resource == "DestinationRule nowhere" for m in found), found


def test_analyze_flags_what_the_sidecar_does_not_apply_to_a_service_entry_host(tmp_path: Path) -> None:
    """MSH0121: a call leaving the mesh never goes through the router, so a VirtualService for the host, and a
    DestinationRule's pool, balancer, outlier and subsets for it, change nothing; SIMPLE needs an HTTP port."""
    vs = {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService", "metadata": {"name": "api"},
          "spec": {"hosts": ["api.example.com"], "http": [{"timeout": "3s",
                                                          "route": [{"destination": {"host": "api.example.com"}}]}]}}
    pooled = dr({"mode": "SIMPLE"})
    pooled["spec"]["trafficPolicy"]["connectionPool"] = {"tcp": {"maxConnections": 1}}
    tcp_only = copy.deepcopy(SE)
    tcp_only["metadata"]["name"] = "db"  # type: ignore[index]
    tcp_only["spec"].update(hosts=["db.example.com"], ports=[{"number": 5432, "name": "tcp-db"}])  # type: ignore[attr-defined]
    db = dr({"mode": "SIMPLE"}, host="db.example.com") | {"metadata": {"name": "db"}}
    on_tcp = dr(None, host="api.example.com") | {"metadata": {"name": "api-5432"}}
    on_tcp["spec"]["trafficPolicy"]["portLevelSettings"] = [{"port": {"number": 5432}, "tls": {"mode": "SIMPLE"}}]
    found = analyze_resources(load_docs(tmp_path, SE, vs, pooled, tcp_only, db, on_tcp),
                              Inventory(projects={"shop": {"web"}}))
    flagged = {m.resource: m.text for m in found if m.code == "MSH0121"}
    assert set(flagged) == {"VirtualService api", "DestinationRule api", "DestinationRule db",
                            "DestinationRule api-5432"}, found
    assert "timeouts" in flagged["VirtualService api"] and "connectionPool" in flagged["DestinationRule api"]
    assert "HTTP ports only" in flagged["DestinationRule db"] and "5432 TCP" in flagged["DestinationRule db"]
    assert flagged["DestinationRule api-5432"].startswith("spec.trafficPolicy.portLevelSettings[0].tls: mode SIMPLE")
    assert not [m for m in analyze_resources(load_docs(tmp_path, SE, dr({"mode": "SIMPLE"})), None)
                if m.code == "MSH0121"]  # SIMPLE on the host's HTTP port is what applies


def test_one_walker_finds_every_tls_block_of_a_destination_rule_with_where_it_is() -> None:
    from meshctl.config.egress import TlsAt, tls_settings

    spec = {"trafficPolicy": {"tls": {"mode": "SIMPLE"}, "portLevelSettings": [{"port": {"number": 80}},
                                                                               {"port": {"number": 443},
                                                                                "tls": {"mode": "DISABLE"}}]},
            "subsets": [{"name": "v1"}, {"name": "v2", "trafficPolicy": {"tls": {"mode": "ISTIO_MUTUAL"}}}]}
    assert tls_settings(spec) == [
        TlsAt("spec.trafficPolicy.tls", {"mode": "SIMPLE"}),
        TlsAt("spec.trafficPolicy.portLevelSettings[1].tls", {"mode": "DISABLE"}, port=443),
        TlsAt("spec.subsets[1].trafficPolicy.tls", {"mode": "ISTIO_MUTUAL"}, subset=1)]
