"""`meshctl prune` against a fake engine: only projects with no container left lose their proxy directories
(certificates, keys, snapshots) and stored config; it asks first, refuses without a terminal, and fails closed."""

from __future__ import annotations

import errno
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from meshctl.config.store import Store
from meshctl.errors import EngineError
from meshctl.inject.injector import inject
from meshctl.status import ExitCode
from tests.unit.cli import Done, meshctl
from tests.unit.fakes import FakeContainer, FakeEngine
from tests.unit.fuzzing import context, make_home, one_line, tree_state

COMPOSE = "services:\n  web:\n    image: nginx\n  api:\n    image: nginx\n"
ROUTE = """apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: web, namespace: NS}
spec:
  hosts: [web]
  http: [{route: [{destination: {host: web}}]}]
"""


def engine(answers: Iterator[set[str] | None]) -> FakeEngine:
    """One stopped container per live project (stopped ones count too); `answers` can change it call by call."""
    def containers() -> list[FakeContainer]:
        live = next(answers)
        if live is None:
            raise EngineError("the engine stopped answering")
        return [FakeContainer(f"{p}-web-1", {"com.docker.compose.project": p}, "exited") for p in sorted(live)]

    return FakeEngine(containers=containers)


def repeat(live: set[str]) -> Iterator[set[str] | None]:
    while True:
        yield live


@dataclass
class Mesh:
    home: Path

    def prune(self, *argv: str, live: Iterator[set[str] | None]) -> Done:
        return meshctl("prune", *argv, home=self.home, engine=lambda: engine(live))

    def config(self) -> list[tuple[str, str]]:
        return sorted((r["metadata"].get("namespace", ""), r["metadata"]["name"])
                      for r in Store(self.home / "config").read().resources)


@pytest.fixture
def mesh(tmp_path: Path) -> Mesh:
    """Two meshed projects, `gone` and `kept`, each with a VirtualService in its namespace."""
    home = make_home(tmp_path / "home")
    for project in ("gone", "kept"):
        work = tmp_path / project
        work.mkdir()
        (work / "compose.yaml").write_text(COMPOSE)
        inject(context(home), str(work / "compose.yaml"), project, "PERMISSIVE", work)
        (work / "route.yaml").write_text(ROUTE.replace("NS", project))
        assert meshctl("apply", "-f", str(work / "route.yaml"), home=home).code == 0
    return Mesh(home)


def test_dry_run_lists_the_gone_projects_leftovers_and_removes_nothing(mesh: Mesh) -> None:
    before = tree_state(mesh.home)
    ran = mesh.prune("--dry-run", live=repeat({"kept", "unrelated"}))
    assert ran.code == 0, ran.err
    assert str(mesh.home / "proxies" / "gone" / "web") in ran.out and "VirtualService gone/web" in ran.out
    assert "kept" not in ran.out
    assert tree_state(mesh.home) == before


def test_without_a_terminal_or_yes_it_refuses_in_one_line(mesh: Mesh) -> None:
    before = tree_state(mesh.home)
    ran = mesh.prune(live=repeat({"kept"}))
    assert ran.code == ExitCode.USAGE and "pass --yes" in one_line(ran.err)
    assert tree_state(mesh.home) == before


def test_yes_removes_proxy_dirs_and_config_of_gone_projects_only(mesh: Mesh) -> None:
    revision = Store(mesh.home / "config").current_number()
    ran = mesh.prune("--yes", live=repeat({"kept"}))
    assert ran.code == 0, ran.err
    assert not (mesh.home / "proxies" / "gone").exists()
    assert sorted(p.name for p in (mesh.home / "proxies" / "kept").iterdir()) == ["api", "web"]
    assert (mesh.home / "proxies" / "kept" / "web" / "key.pem").is_file()
    assert mesh.config() == [("kept", "web")]
    assert Store(mesh.home / "config").current_number() == revision + 1
    assert "removed the leftovers of 1 projects (gone)" in ran.err
    again = mesh.prune("--yes", live=repeat({"kept"}))
    assert again.code == 0 and "Nothing to prune" in again.err


def test_a_project_that_comes_back_before_the_removal_is_kept(mesh: Mesh) -> None:
    ran = mesh.prune("--yes", live=iter([{"kept"}, {"kept", "gone"}]))  # `up` ran between listing and removing
    assert ran.code == 0, ran.err
    assert (mesh.home / "proxies" / "gone" / "web" / "cert.pem").is_file()
    assert mesh.config() == [("gone", "web"), ("kept", "web")]
    assert "kept gone: it has containers again" in ran.err


def test_an_engine_that_does_not_answer_removes_nothing(mesh: Mesh) -> None:
    before = tree_state(mesh.home)
    ran = mesh.prune("--yes", live=iter([None]))
    assert ran.code == ExitCode.ENGINE and "stopped answering" in one_line(ran.err)
    ran = mesh.prune("--yes", live=iter([set(), None]))  # listed, then asked again just before removing
    assert ran.code == ExitCode.ENGINE and ran.err.splitlines()[-1] == "error: the engine stopped answering"
    assert tree_state(mesh.home) == before


def test_no_mesh_here(tmp_path: Path) -> None:
    ran = Mesh(tmp_path / "nothing").prune("--yes", live=repeat(set()))
    assert ran.code == ExitCode.NOT_INSTALLED and "meshctl install" in one_line(ran.err)


def test_a_removal_that_fails_halfway_leaves_nothing_a_later_prune_cannot_find(mesh: Mesh,
                                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    real = shutil.rmtree

    def rmtree(path: Path) -> None:  # the first project's directories go, the second's cannot be removed
        if Path(path).name == "kept":
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        real(path)

    monkeypatch.setattr(shutil, "rmtree", rmtree)
    ran = mesh.prune("--yes", live=repeat(set()))
    assert ran.code == ExitCode.PERMISSION and ran.err.splitlines()[-1].startswith("error: cannot remove")
    monkeypatch.setattr(shutil, "rmtree", real)
    again = mesh.prune("--yes", live=repeat(set()))
    assert again.code == 0, again.err
    assert mesh.config() == []  # the config of `gone`, whose directories went first, was not left behind
    assert not (mesh.home / "proxies" / "gone").exists() and not (mesh.home / "proxies" / "kept").exists()
