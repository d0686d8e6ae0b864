"""[17] `inject` reads a project the way compose v2 reads it: `.env` (COMPOSE_PROJECT_NAME, variables),
`${VAR:-default}` and `${VAR:?message}`, an override file merged in order, and a profile that adds a service
only when it is enabled. The meshed project runs on the real engine: healthy sidecars, the replicas and
values compose resolved, a call between two services over mutual TLS, and a literal `$` kept literal."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from docker import DockerClient

from meshctl.inject import rewrite
from meshctl.runtime.compose import ComposeTool, find_compose
from meshctl.status import ExitCode
from tests.conftest import meshctl
from tests.e2e.conftest import App
from tests.e2e.test_dataplane import inbound
from tests.unit.composeyaml import read

PROJECT = "e2eprojenv"  # from the project's .env, never passed with -p
BASE = """# base: the app as developers run it
services:
  web:
    image: ${IMAGE:-meshctl/testbed:e2e}
    environment:
      TESTBED_NAME: web
      GREETING: ${GREETING:?set GREETING in .env}
      PRICE: "costs $$5"
    deploy:
      replicas: ${WEB_REPLICAS}
  client:
    image: meshctl/testbed:e2e
    command: ["sleep", "infinity"]
    init: true
  debug:
    image: meshctl/testbed:e2e
    command: ["sleep", "infinity"]
    init: true
    profiles: [debug]
"""
OVERRIDE = """services:
  web:
    environment:
      MODE: ${MODE:-from-default}
    labels: {version: v2}
"""
DOTENV = f"COMPOSE_PROJECT_NAME={PROJECT}\nWEB_REPLICAS=2\nGREETING='hello from .env'\n"
TD = "spiffe://cluster.local/ns"


def v2() -> ComposeTool:
    tool = find_compose()
    if tool is None or tool.generation != 2:
        pytest.fail("compose v2 is not installed: ./install.sh installs it")
    return tool


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = tmp_path_factory.mktemp("compose-project")
    (src / "base.yaml").write_text(BASE)
    (src / "override.yaml").write_text(OVERRIDE)
    (src / ".env").write_text(DOTENV)
    (src / "other.env").write_text("WEB_REPLICAS=1\n")  # no GREETING: `${GREETING:?…}` refuses
    return src


def inject(mesh_home: Path, src: Path, out: Path, *flags: str) -> tuple[dict[str, Any], str]:
    done = meshctl("inject", "-f", str(src / "base.yaml"), "-f", str(src / "override.yaml"), "-o", str(out), *flags,
                   home=mesh_home)
    assert done.code == 0, done.err
    return read(out.read_text()), done.err


def config(tool: ComposeTool, *args: str) -> dict[str, Any]:
    done = subprocess.run([*tool.argv, *args, "config", "--format", "json"], capture_output=True, text=True,
                          timeout=60, check=True)
    model: dict[str, Any] = json.loads(done.stdout)
    return model


@pytest.fixture(scope="module")
def meshed(engine: DockerClient, mesh_home: Path, testbed_image: str, project: Path,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[App]:
    out = tmp_path_factory.mktemp("meshed-project") / "meshed.yaml"  # elsewhere: paths must still resolve
    inject(mesh_home, project, out, "--profile", "debug")
    app = App(engine, v2(), PROJECT, out)
    try:
        app.compose("--profile", "debug", "up", "-d", "--remove-orphans")
        app.wait_healthy()
        yield app
    finally:
        app.compose("--profile", "debug", "down", "--volumes", "--remove-orphans", "--timeout", "2")


def test_the_project_is_read_as_compose_reads_it(mesh_home: Path, project: Path, tmp_path: Path) -> None:
    data, err = inject(mesh_home, project, tmp_path / "meshed.yaml")
    assert "meshed the merged model of" in err and "comments are not carried over" in err
    assert f"in project {PROJECT!r}" in err  # .env's COMPOSE_PROJECT_NAME
    services = data["services"]
    assert {"web", "web-proxy", "web-2", "web-2-proxy", "client", "client-proxy"} == set(services)  # no debug
    web = services["web"]
    assert web["image"] == "meshctl/testbed:e2e"
    assert web["environment"]["GREETING"] == "hello from .env" and web["environment"]["MODE"] == "from-default"
    assert web["labels"]["version"] == "v2"  # from the override
    assert data[rewrite.MARKER]["original"]["files"] == [str(project / "base.yaml"), str(project / "override.yaml")]
    with_debug, _ = inject(mesh_home, project, tmp_path / "debug.yaml", "--profile", "debug")
    assert {"debug", "debug-proxy"} <= set(with_debug["services"])
    assert with_debug["services"]["debug-proxy"]["profiles"] == ["debug"]  # runs with the profile, as the app


def test_a_required_variable_unset_is_one_line_naming_it(mesh_home: Path, project: Path, tmp_path: Path) -> None:
    out = tmp_path / "meshed.yaml"
    done = meshctl("inject", "-f", str(project / "base.yaml"), "--env-file", str(project / "other.env"),
                   "-o", str(out), home=mesh_home)
    assert done.code == ExitCode.INVALID_INPUT and not out.exists()
    lines = [line for line in done.err.splitlines() if line.strip()]
    assert len(lines) == 1 and "GREETING" in lines[0] and "set GREETING in .env" in lines[0], done.err
    assert "base.yaml" in lines[0]


def test_the_meshed_project_runs_with_what_compose_resolved(meshed: App) -> None:
    webs = [meshed.container(s) for s in ("web", "web-2")]  # WEB_REPLICAS=2: a pod each
    for web in webs:
        env = dict(e.split("=", 1) for e in web.attrs["Config"]["Env"])
        assert env["GREETING"] == "hello from .env" and env["MODE"] == "from-default"
        assert env["PRICE"] == "costs $5"  # `$$` in the source: a literal dollar, not interpolated twice
    assert meshed.container("web-proxy").labels["io.meshctl.subset"] == "v2"
    assert meshed.container("debug-proxy").status == "running"  # the profile's service, meshed


def test_a_call_between_two_services_is_mutual_tls(meshed: App) -> None:
    for caller in ("client", "debug"):
        meshed.wait_for(lambda c=caller: meshed.exec(c, "curl", "-sf", "-o", "/dev/null",  # type: ignore[misc]
                                                     "http://web:8080/echo")[0] == 0, f"{caller} reaches web")
    def seen() -> list[tuple[bool, str]]:  # the access log is written after the answer: read until it is there
        return [(e["mtls"], e["source"]) for sidecar in ("web-proxy", "web-2-proxy") for e in inbound(meshed, sidecar)]
    for caller in ("client", "debug"):
        meshed.wait_for(lambda c=caller: any(e == (True, f"{TD}/{PROJECT}/sa/{c}")  # type: ignore[misc]
                                             for e in seen()), f"web logged an mTLS call from {caller}", timeout=5)
    assert all(mtls for mtls, _ in seen()), seen()


def test_every_app_field_inject_does_not_own_reads_the_same_in_compose(meshed: App, project: Path) -> None:
    """[9]'s fidelity property on the canonical path, as compose itself reads both."""
    tool = v2()
    before = config(tool, "--project-directory", str(project), "-f", str(project / "base.yaml"),
                    "-f", str(project / "override.yaml"), "--profile", "debug")["services"]
    after = config(tool, "-p", PROJECT, "-f", str(meshed.file), "--profile", "debug")["services"]
    owned = set(rewrite.MOVED_KEYS) | {"depends_on", "labels", "deploy"}
    for name, svc in before.items():
        for field, value in svc.items():
            if field not in owned:
                assert after[name][field] == value, (name, field)
        assert svc.get("labels", {}).items() <= after[name]["labels"].items()
