"""`uninject` and `prune` on the real engine, in a mesh home of their own (prune must not reap the shared
home's leftovers that other tests keep): a meshed project runs, goes down, gives back its compose file byte
for byte, and prune removes its proxy directories and config while a running project keeps its own."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from docker import DockerClient

from meshctl.home import MeshHome
from meshctl.pki import agent
from meshctl.runtime.compose import require_compose
from tests.conftest import meshctl
from tests.e2e.conftest import App
from tests.unit.test_prune import ROUTE

# As people write them: CRLF, comments, unicode, odd spacing, no final newline.
GONE = ("# one server and its caller ✓\r\nservices:\r\n  web:   # the server\r\n    image: meshctl/testbed:e2e\r\n"
        "    environment: {TESTBED_NAME: web}\r\n\r\n  client:\r\n    image: meshctl/testbed:e2e\r\n"
        "    command: [\"sleep\", \"infinity\"]\r\n    init: true   # reaps the shell").encode()
KEPT = b"services:\n  web:\n    image: meshctl/testbed:e2e\n    environment: {TESTBED_NAME: kept}\n"


@pytest.fixture(scope="module")
def home(engine: DockerClient, testbed_image: str) -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="meshctl-e2e-prune-")) / "home"
    done = meshctl("install", home=root)
    assert done.code == 0, done.err
    yield root
    agent.stop(MeshHome(root))
    shutil.rmtree(root.parent, ignore_errors=True)


def meshed(engine: DockerClient, home: Path, workdir: Path, project: str, source: bytes) -> App:
    workdir.mkdir()
    (workdir / "compose.yaml").write_bytes(source)
    done = meshctl("inject", str(workdir / "compose.yaml"), "-p", project, "-o", str(workdir / "meshed.yaml"),
                   home=home)
    assert done.code == 0, done.err
    (workdir / "route.yaml").write_text(ROUTE.replace("NS", project))
    assert meshctl("apply", "-f", str(workdir / "route.yaml"), home=home).code == 0
    return App(engine, require_compose(), project, workdir / "meshed.yaml")


def test_uninject_round_trips_and_prune_removes_only_gone_projects(engine: DockerClient, home: Path,
                                                                   tmp_path: Path) -> None:
    gone = meshed(engine, home, tmp_path / "gone", "e2eprunegone", GONE)
    kept = meshed(engine, home, tmp_path / "kept", "e2eprunekept", KEPT)
    try:
        for app in (gone, kept):
            app.compose("up", "-d")
            app.wait_healthy()
        gone.wait_for(lambda: gone.exec("client", "curl", "-sf", "-o", "/dev/null", "http://web:8080/echo")[0] == 0,
                      "the meshed web answers its client")
        gone.down()

        back = tmp_path / "gone" / "back.yaml"
        done = meshctl("uninject", str(gone.file), "-o", str(back), home=home)
        assert done.code == 0 and "byte for byte" in done.err, done.err
        assert back.read_bytes() == GONE

        proxies = home / "proxies"
        listed = meshctl("prune", "--dry-run", home=home)
        assert listed.code == 0, listed.err
        assert str(proxies / "e2eprunegone" / "web") in listed.out and "e2eprunekept" not in listed.out
        refused = meshctl("prune", home=home, stdin="")  # no terminal, no --yes
        assert refused.code == 2 and "--yes" in refused.err
        assert (proxies / "e2eprunegone" / "web" / "key.pem").is_file()

        done = meshctl("prune", "--yes", home=home)
        assert done.code == 0, done.err
        assert not (proxies / "e2eprunegone").exists()
        assert (proxies / "e2eprunekept" / "web" / "key.pem").is_file()
        config = meshctl("get", "virtualservice", "-o", "json", home=home)
        assert '"e2eprunekept"' in config.out and '"e2eprunegone"' not in config.out
        kept.wait_healthy(timeout=10)  # the running project never noticed
    finally:
        for app in (gone, kept):
            app.down()


def test_uninject_of_a_merged_project_gives_composes_model_and_leaves_the_files(home: Path, tmp_path: Path) -> None:
    """Several -f files are merged by the real `docker compose config`; uninject gives back that model."""
    base, override = tmp_path / "compose.yaml", tmp_path / "override.yaml"
    base.write_bytes(b"# base\nservices:\n  web:\n    image: meshctl/testbed:e2e\n")
    override.write_bytes(b"services:\n  web:\n    environment: {TESTBED_NAME: merged}\n")
    before = base.read_bytes(), override.read_bytes()
    out, back = tmp_path / "meshed.yaml", tmp_path / "back.yaml"
    done = meshctl("inject", "-f", str(base), "-f", str(override), "-p", "e2eprunemerged", "-o", str(out), home=home)
    assert done.code == 0, done.err
    done = meshctl("uninject", str(out), "-o", str(back), home=home)
    assert done.code == 0 and "never changed" in done.err, done.err
    model = yaml.safe_load(back.read_text())
    assert model["services"]["web"]["environment"] == {"TESTBED_NAME": "merged"}
    assert "x-meshctl" not in model and "web-proxy" not in model["services"]
    assert (base.read_bytes(), override.read_bytes()) == before
