"""Egress on the testbed: a ServiceEntry'd host reached over TLS the sidecar originates, and the mesh-wide
outbound policy REGISTRY_ONLY. The "external" host is a local TLS server container on the mesh network under
network aliases (api.example.test, other.example.test): no test traffic leaves this machine."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

import docker.errors
import pytest
from cryptography.hazmat.primitives import serialization
from docker import DockerClient

from meshctl.home import MeshHome
from tests.conftest import meshctl
from tests.e2e.conftest import App
from tests.e2e.test_security_policies import call, synced
from tests.unit.engine.test_egress import make_ca, write_server_pair

SERVER_NAME = "meshctl-e2e-egress-api"
PROJECT = "e2etestbed"
# TLS on 443 (answers with the SNI it was given) and plain HTTP on 80, both HTTP/1.1 with Connection: close.
SERVER = r"""
import asyncio, ssl
SEEN = {}
def answer(text):
    body = text.encode()
    return b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\nconnection: close\r\n\r\n" % len(body) + body
async def serve(reader, writer, kind):
    head = await reader.readuntil(b"\r\n\r\n")
    host = [l.split(b":", 1)[1].strip().decode() for l in head.split(b"\r\n") if l.lower().startswith(b"host:")]
    sni = SEEN.get("sni") if kind == "tls" else "-"
    writer.write(answer(f"{kind} ok host={host[0] if host else '-'} sni={sni}\n"))
    await writer.drain()
    writer.close()
async def main():
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain("/certs/cert.pem", "/certs/key.pem")
    ctx.sni_callback = lambda sslobj, name, context: SEEN.update(sni=name)
    await asyncio.start_server(lambda r, w: serve(r, w, "tls"), "0.0.0.0", 443, ssl=ctx)
    await asyncio.start_server(lambda r, w: serve(r, w, "plain"), "0.0.0.0", 80)
    await asyncio.Event().wait()
asyncio.run(main())
"""


def write_certs(directory: Path) -> None:
    """ca.pem (signs the server's cert.pem/key.pem for api.example.test), other-ca.pem (signs nothing of ours)."""
    ca, ca_key = make_ca("egress test CA")
    write_server_pair(directory, ca, ca_key, "api.example.test")
    (directory / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (directory / "other-ca.pem").write_bytes(make_ca("another CA")[0].public_bytes(serialization.Encoding.PEM))
    for path in directory.iterdir():
        path.chmod(0o644)
    directory.chmod(0o755)


@pytest.fixture(scope="module")
def external(engine: DockerClient, mesh_home: Path, testbed: App, testbed_image: str,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A TLS server outside the mesh (no sidecar) on the mesh network, as api.example.test and other.example.test;
    yields the directory holding its CA's certificate."""
    certs = tmp_path_factory.mktemp("egress-certs")
    write_certs(certs)
    with contextlib.suppress(docker.errors.NotFound):  # left by an interrupted run
        engine.containers.get(SERVER_NAME).remove(force=True)
    container = engine.containers.create(testbed_image, ["python3", "-c", SERVER], name=SERVER_NAME,
                                         volumes={str(certs): {"bind": "/certs", "mode": "ro"}},
                                         labels={"io.meshctl.test": "egress"})
    network = engine.networks.get(MeshHome(mesh_home).settings().network)
    network.connect(container, aliases=["api.example.test", "other.example.test"])
    container.start()
    try:
        probe = ["python3", "-c", "import socket; [socket.create_connection(('127.0.0.1', p), 1) for p in (80, 443)]"]
        testbed.wait_for(lambda: container.exec_run(probe).exit_code == 0, "the external server listens", timeout=30)
        yield certs
    finally:
        meshctl("install", "--outbound-traffic-policy", "ALLOW_ANY", home=mesh_home)  # the mesh home is shared
        for kind, name in (("serviceentry", "api"), ("destinationrule", "api")):
            meshctl("delete", kind, name, "-p", PROJECT, home=mesh_home)
        container.remove(force=True)
        synced(mesh_home, PROJECT)


def apply(home: Path, text: str) -> None:
    done = meshctl("apply", "-p", PROJECT, "-f", "-", home=home, stdin=text)
    assert done.code == 0, done.err
    synced(home, PROJECT)


SERVICE_ENTRY = """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: api}
spec:
  hosts: [api.example.test]
  location: MESH_EXTERNAL
  ports:
  - {number: 80, name: http, protocol: HTTP, targetPort: 443}
  resolution: DNS
"""


def tls_rule(ca_pem: str) -> str:
    indented = "\n".join("        " + line for line in ca_pem.strip().splitlines())
    return f"""
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: api}}
spec:
  host: api.example.test
  trafficPolicy:
    tls:
      mode: SIMPLE
      caCertificates: |
{indented}
"""


def test_tls_origination_to_a_service_entry_host(external: Path, testbed: App, mesh_home: Path) -> None:
    apply(mesh_home, SERVICE_ENTRY + "---" + tls_rule((external / "ca.pem").read_text()))
    status, body = call(testbed, "client", "http://api.example.test/")
    # the app spoke plain HTTP to port 80; its sidecar spoke TLS to 443, with the host as SNI, and checked the CA
    assert status == "200" and "tls ok host=api.example.test sni=api.example.test" in body, body

    # a CA that did not sign the server's certificate: the sidecar does not send the request
    apply(mesh_home, tls_rule((external / "other-ca.pem").read_text()))
    status, body = call(testbed, "client", "http://api.example.test/")
    assert status == "503" and "tls ok" not in body, body

    # a path instead of the PEM: read at apply (relative to the YAML file), only certificates accepted
    rule = tls_rule("x").replace("caCertificates: |\n        x", "caCertificates: ca.pem")
    (external / "rule.yaml").write_text(rule)
    done = meshctl("apply", "-p", PROJECT, "-f", str(external / "rule.yaml"), home=mesh_home)
    assert done.code == 0, done.err
    (external / "key-rule.yaml").write_text(rule.replace("ca.pem", "key.pem"))
    refused = meshctl("apply", "-p", PROJECT, "-f", str(external / "key-rule.yaml"), home=mesh_home)
    assert refused.code != 0 and "only CERTIFICATE blocks" in refused.err, refused.err
    synced(mesh_home, PROJECT)
    assert "tls ok" in call(testbed, "client", "http://api.example.test/")[1]


def test_registry_only(external: Path, testbed: App, mesh_home: Path) -> None:
    # also the app's own TLS on 443: admitted by the name in its ClientHello (SNI), not by the address
    port_80 = "targetPort: 443}\n"
    with_tls = SERVICE_ENTRY.replace(port_80, port_80 + "  - {number: 443, name: tls, protocol: TLS}\n")
    apply(mesh_home, with_tls + "---" + tls_rule((external / "ca.pem").read_text()))
    # ALLOW_ANY (the default): a host no ServiceEntry lists is reached as the app addressed it
    status, body = call(testbed, "client", "http://other.example.test/")
    assert status == "200" and "plain ok" in body, body

    done = meshctl("install", "--outbound-traffic-policy", "REGISTRY_ONLY", home=mesh_home)
    assert done.code == 0, done.err
    synced(mesh_home, PROJECT)
    status, body = call(testbed, "client", "http://other.example.test/")
    assert status == "502", body
    assert "other.example.test is not in the mesh's registry (outboundTrafficPolicy REGISTRY_ONLY)" in body, body
    assert "add a ServiceEntry" in body, body
    status, body = call(testbed, "client", "http://api.example.test/")  # listed: still works, over TLS
    assert status == "200" and "tls ok" in body, body
    assert call(testbed, "client", "http://web:8080/echo")[0] == "200"  # meshed services are in the registry
    # TLS to a listed host is admitted by its SNI; another name on the same address (fronting) is closed
    code, out = testbed.exec("client", "curl", "-sk", "--max-time", "5", "https://api.example.test/")
    assert code == 0 and "tls ok host=api.example.test sni=api.example.test" in out, out
    code, out = testbed.exec("client", "curl", "-sk", "--max-time", "5", "https://other.example.test/")
    assert code != 0 and "tls ok" not in out, out  # other.example.test is an alias of the same container
    refused = [e for e in testbed.logs("client-proxy") if e.get("status") == 502 and e.get("reason")]
    assert any("other.example.test" in e["reason"] and "REGISTRY_ONLY" in e["reason"] for e in refused), refused[-3:]
    # in the metrics, as Istio names them: the ServiceEntry host, BlackHoleCluster (refused), PassthroughCluster
    edges = json.loads(meshctl("edges", "-p", PROJECT, "-o", "json", home=mesh_home).out)
    leaving = {e["destination"] for e in edges if e["source"] == "client" and e["destination_identity"] == "unknown"}
    assert {"api.example.test", "BlackHoleCluster", "PassthroughCluster"} <= leaving, edges

    done = meshctl("install", "--outbound-traffic-policy", "ALLOW_ANY", home=mesh_home)
    assert done.code == 0, done.err
    synced(mesh_home, PROJECT)
    assert call(testbed, "client", "http://other.example.test/")[0] == "200"
    assert json.loads(meshctl("get", "serviceentry", "-p", PROJECT, "-o", "json", home=mesh_home).out)
