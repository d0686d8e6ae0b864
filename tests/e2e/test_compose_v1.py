"""The v1 smoke test: CI runs the e2e suite on compose v2; this runs one small meshed project with
docker-compose v1 explicitly (its `project_service_1` container names, its YAML 1.1): up, healthy sidecars,
one call over mutual TLS, down."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from docker import DockerClient

from meshctl.runtime.compose import ComposeTool, _version
from meshctl.runtime.proxies import list_proxies
from meshctl.telemetry.scrape import parse
from tests.conftest import meshctl
from tests.e2e.conftest import App

PROJECT = "e2ecomposev1"
COMPOSE = """# one server, one caller, both meshed; the server refuses plaintext
services:
  web:
    image: meshctl/testbed:e2e
    environment: {TESTBED_NAME: web}
    labels: {mesh.mtls-mode: STRICT}
  client:
    image: meshctl/testbed:e2e
    command: ["sleep", "infinity"]
    init: true
"""


@pytest.fixture(scope="module")
def v1_app(engine: DockerClient, mesh_home: Path, testbed_image: str,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[App]:
    version = _version(["docker-compose"])
    assert version and version.startswith("1."), f"docker-compose v1 is not installed ({version})"
    workdir = tmp_path_factory.mktemp("v1")
    (workdir / "compose.yaml").write_text(COMPOSE)
    done = meshctl("inject", str(workdir / "compose.yaml"), "-p", PROJECT, "-o", str(workdir / "meshed.yaml"),
                   home=mesh_home)
    assert done.code == 0, done.err
    app = App(engine, ComposeTool(("docker-compose",), version), PROJECT, workdir / "meshed.yaml")
    try:
        app.compose("up", "-d")
        app.wait_healthy()
        yield app
    finally:
        app.down()


def test_a_meshed_project_runs_on_compose_v1_with_mutual_tls(v1_app: App, engine: DockerClient) -> None:
    names = {c.name for c in engine.containers.list(filters={"label": f"com.docker.compose.project={PROJECT}"})}
    assert {f"{PROJECT}_web-proxy_1", f"{PROJECT}_web_1", f"{PROJECT}_client-proxy_1"} <= names  # v1's names
    proxies = list_proxies(engine, PROJECT)  # found by label, whatever the names
    assert sorted(p.name for p in proxies) == [f"{PROJECT}.client", f"{PROJECT}.web"]
    assert all(p.ready for p in proxies), proxies
    v1_app.wait_for(lambda: v1_app.exec("client", "curl", "-sf", "-o", "/dev/null", "http://web:8080/echo")[0] == 0,
                    "web answers the client")
    code, text = v1_app.exec("web-proxy", "curl", "-s", "--max-time", "5", "127.0.0.1:15090/stats/prometheus")
    assert code == 0, text
    served = [s for s in parse(text) if s.name == "istio_requests_total" and s.labels.get("reporter") == "destination"
              and s.labels.get("response_code") == "200"]
    assert served and all(s.labels.get("connection_security_policy") == "mutual_tls" for s in served), served
    assert {s.labels.get("source_principal") for s in served} == {f"spiffe://cluster.local/ns/{PROJECT}/sa/client"}
