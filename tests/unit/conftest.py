from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(autouse=True, scope="module")
def no_certificate_agent() -> Iterator[None]:
    """Unit tests make throwaway homes: no certificate agent for them (the e2e tests run the real one).

    Per module (autouse fixtures come first in their scope, so a module's own home fixture runs under it too;
    per test, an agent was left running for each module-scoped home), not at import: an e2e session's install
    in the same run must still start its agent."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MESHCTL_AGENT", "off")
        yield


@pytest.fixture
def unwritable_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory nobody can write to. Root ignores file modes, so as root it is a read-only tmpfs."""
    target = tmp_path / "readonly"
    target.mkdir()
    if os.geteuid() != 0:
        target.chmod(0o500)
        yield target
        target.chmod(0o700)
        return
    subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(target)], check=True)
    try:
        yield target
    finally:
        subprocess.run(["umount", str(target)], check=True)


@pytest.fixture
def installed_home(tmp_path: Path) -> Path:
    """A mesh home with settings, CA and store, made by install's own local steps (no engine needed)."""
    from meshctl.context import Context
    from meshctl.home import MeshHome
    from meshctl.lifecycle import install

    ctx = Context(home=MeshHome(tmp_path / "home"))
    settings = install.resolve_settings(ctx, None, None, None)
    for step in (install.HomeStep(ctx, settings), install.CAStep(ctx, settings), install.StoreStep(ctx)):
        step.apply(lambda _: None)
    return ctx.home.root
