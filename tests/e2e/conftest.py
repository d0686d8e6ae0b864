"""End-to-end fixtures: a real Docker engine. With CI=true a missing engine fails the test, never skips it."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import docker.models.containers
import pytest
from docker import DockerClient

from meshctl import const
from meshctl.home import MeshHome, default_cache
from meshctl.runtime import images
from meshctl.runtime.compose import ComposeTool, compose_down, require_compose, run_compose
from sidecar.snapshot import PROXY_DIR
from tests.conftest import meshctl


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Destructive tests (uninstall --purge) remove every meshctl image: run them after everything else."""
    for item in items:
        if "/e2e/" in str(item.fspath):
            item.add_marker(pytest.mark.e2e)
    # The engine restart stops every other project's apps: it runs after them, just before the destructive ones.
    items.sort(key=lambda item: (item.get_closest_marker("destructive") is not None,
                                 item.get_closest_marker("engine_restart") is not None))


@pytest.fixture(scope="session")
def engine() -> Iterator[DockerClient]:
    try:
        client = docker.from_env(timeout=30)
        client.ping()
    except docker.errors.DockerException as exc:
        message = f"no Docker engine answers ({exc}); run ./install.sh to start one"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    remove_orphaned_pods(client)
    yield client
    client.close()


def remove_orphaned_pods(client: DockerClient) -> None:
    """Remove the projects of sidecars whose mesh home is gone: left by an earlier session that was killed
    (or whose engine stopped under it), they come back by their restart policy when the engine starts and
    crash-loop without their certificates, which every engine-wide view (check, Prometheus) would count."""
    projects = set()
    for sidecar in client.containers.list(all=True, filters={"label": f"{const.LABEL_COMPONENT}=sidecar"}):
        sources = [m["Source"] for m in sidecar.attrs.get("Mounts", []) if m.get("Destination") == str(PROXY_DIR)]
        # <home>/proxies/<name>: Docker re-creates a missing bind source, but never the home's settings
        if sources and not MeshHome(Path(sources[0]).parent.parent).is_installed():
            projects.add(sidecar.labels.get("com.docker.compose.project", ""))
    for project in sorted(projects - {""}):
        for container in client.containers.list(all=True, filters={"label": f"com.docker.compose.project={project}"}):
            container.remove(force=True)


# --- a mesh, and meshed apps on it ------------------------------------------------------------------------



TESTBED = Path(__file__).parent / "testbed"
TESTBED_IMAGE = "meshctl/testbed:e2e"


@pytest.fixture(scope="session")
def mesh_home(engine: DockerClient) -> Iterator[Path]:
    home = Path(tempfile.mkdtemp(prefix="meshctl-e2e-"))
    done = meshctl("install", home=home)
    assert done.code == 0, done.err
    yield home
    shutil.rmtree(home, ignore_errors=True)


@dataclass
class App:
    """A meshed compose project under test, with helpers to reach into its containers."""
    engine: DockerClient
    tool: ComposeTool
    project: str
    file: Path

    def container(self, service: str) -> docker.models.containers.Container:
        found = self.engine.containers.list(all=True, filters={"label": [
            f"com.docker.compose.project={self.project}", f"com.docker.compose.service={service}"]})
        assert found, f"no container for service {service}"
        return found[0]

    def exec(self, service: str, *cmd: str) -> tuple[int, str]:
        code, out = self.container(service).exec_run(list(cmd), demux=False)
        return code, (out or b"").decode(errors="replace")

    def logs(self, service: str) -> list[dict]:
        lines = self.container(service).logs(stderr=False).decode(errors="replace").splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")]

    def compose(self, *args: str) -> str:
        return run_compose(self.tool, self.project, self.file, *args)

    def down(self) -> None:
        compose_down(self.tool, self.project, self.file)

    def wait_for(self, condition: Callable[[], bool], what: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                return
            time.sleep(0.2)
        raise AssertionError(f"timed out after {timeout}s waiting until {what}")

    def wait_healthy(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            sidecars = self.engine.containers.list(all=True, filters={"label": [
                f"com.docker.compose.project={self.project}", "io.meshctl.component=sidecar"]})
            states = [((c.attrs.get("State") or {}).get("Health") or {}).get("Status") for c in sidecars]
            if sidecars and all(s == "healthy" for s in states):
                return
            time.sleep(0.5)
        raise AssertionError(f"sidecars of {self.project} not healthy within {timeout}s")


def up_meshed(engine: DockerClient, home: Path, source: Path, project: str, workdir: Path, *flags: str) -> App:
    out = workdir / "meshed.yaml"
    done = meshctl("inject", str(source), "-p", project, "-o", str(out), *flags, home=home)
    assert done.code == 0, done.err
    app = App(engine, require_compose(), project, out)
    app.compose("up", "-d", "--remove-orphans")
    app.wait_healthy()
    return app


@pytest.fixture(scope="session")
def testbed_image(engine: DockerClient, mesh_home: Path) -> str:
    # wsproto came with mitmproxy in the sidecar's venv; the sidecar no longer carries mitmproxy
    wheelhouse = images.ensure_wheelhouse(default_cache(), lambda _: None, packages=["grpcio", "wsproto"])
    with tempfile.TemporaryDirectory() as tmp:
        ctx = Path(tmp)
        for name in ("Dockerfile", "server.py", "client.py", "steady.py"):
            shutil.copy(TESTBED / name, ctx / name)
        shutil.copytree(wheelhouse, ctx / "wheelhouse")
        build_hash = images.tree_hash([TESTBED], extra=[engine.images.get("meshctl/proxy:0.1.0").id])
        current = images.find_image(engine, TESTBED_IMAGE)
        if current is None or images.image_label(current, "io.meshctl.build-hash") != build_hash:
            images.build_image(engine, TESTBED_IMAGE, ctx, "test-image", build_hash, {}, lambda _: None)
    return TESTBED_IMAGE


@pytest.fixture(scope="session")
def testbed(engine: DockerClient, mesh_home: Path, testbed_image: str,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[App]:
    workdir = tmp_path_factory.mktemp("testbed")
    try:
        app = up_meshed(engine, mesh_home, TESTBED / "compose.yaml", "e2etestbed", workdir)
        for upstream in ("web", "web-strict", "slow"):  # healthy sidecars; now wait for the apps behind them
            app.wait_for(lambda u=upstream: app.exec("client", "curl", "-sf", "-o", "/dev/null",  # type: ignore[misc]
                                                     f"http://{u}:8080/echo")[0] == 0, f"{upstream} answers")
        yield app
    finally:
        if (workdir / "meshed.yaml").is_file():
            App(engine, require_compose(), "e2etestbed", workdir / "meshed.yaml").down()


@pytest.fixture(scope="session")
def demo(engine: DockerClient, mesh_home: Path) -> Iterator[dict]:
    try:
        done = meshctl("demo", "-o", "json", home=mesh_home)
        assert done.code == 0, done.err + done.out
        yield json.loads(done.out)
    finally:
        down = meshctl("demo", "--down", home=mesh_home)
        assert down.code == 0, down.err

