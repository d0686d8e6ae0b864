"""install twice, check, uninstall --purge: the foundation against the real engine."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from docker import DockerClient

from meshctl import const
from meshctl.home import MeshHome
from meshctl.pki import agent
from tests.conftest import meshctl

MANAGED = {"label": f"{const.LABEL_MANAGED}=true"}


def engine_state(engine: DockerClient) -> dict[str, object]:
    net = engine.networks.get(const.NETWORK_NAME)
    return {
        "network": net.id,
        "images": sorted(i.id for i in engine.images.list(filters=MANAGED)),
        "proxy": engine.images.get(const.PROXY_IMAGE).id,
    }


AGENT_FILES = {"citadel.log", "citadel.pid", "citadel.lock", "ca/.lock"}  # the running agent's, not install's


def home_state(home: Path) -> dict[str, bytes]:
    return {name: p.read_bytes() for p in sorted(home.rglob("*"))
            if p.is_file() and (name := str(p.relative_to(home))) not in AGENT_FILES}


def agent_alive(pid: int) -> bool:
    try:
        return b"certs\x00agent" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


@pytest.mark.destructive
def test_install_twice_check_uninstall(engine: DockerClient, tmp_path: Path) -> None:
    home = tmp_path / "home"
    first = meshctl("install", home=home)
    assert first.code == 0, first.err
    assert "meshctl is installed" in first.err

    assert home.stat().st_mode & 0o777 == 0o700
    assert (home / "ca" / "root-key.pem").stat().st_mode & 0o777 == 0o600
    assert (home / "config" / "current").read_text().strip() == "0"
    assert agent.running(MeshHome(home))  # the certificate agent runs from install on
    pid = int((home / "citadel.pid").read_text())
    state, files = engine_state(engine), home_state(home)
    net = engine.networks.get(const.NETWORK_NAME)
    assert net.attrs["Driver"] == "bridge" and net.attrs["Labels"][const.LABEL_MANAGED] == "true"

    second = meshctl("install", home=home)
    assert second.code == 0, second.err
    assert "nothing changed" in second.err
    assert engine_state(engine) == state
    assert home_state(home) == files

    plan = meshctl("install", "--dry-run", "-o", "json", home=home)
    assert plan.code == 0 and plan.out.count("already in place") == 6

    check = meshctl("check", home=home)
    assert check.code == 0, check.out + check.err
    assert check.out.count("√") == 8 and "×" not in check.out, check.out

    version = meshctl("version", "-o", "json", home=home)
    assert '"sidecar": "0.1.0"' in version.out

    refused = meshctl("uninstall", "--purge", home=home, stdin="")
    assert refused.code == 2 and "--yes" in refused.err
    assert home.exists()

    gone = meshctl("uninstall", "--purge", "--yes", home=home)
    assert gone.code == 0, gone.err
    assert not home.exists()
    deadline = time.monotonic() + 10
    while agent_alive(pid):
        assert time.monotonic() < deadline, "the certificate agent outlived its mesh home"
        time.sleep(0.2)
    assert engine.containers.list(all=True, filters=MANAGED) == []
    assert engine.networks.list(filters=MANAGED) == []
    assert engine.images.list(filters=MANAGED) == []

    again = meshctl("uninstall", "--yes", home=home)
    assert again.code == 0 and "Nothing to remove" in again.err
