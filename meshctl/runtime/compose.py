"""Find the compose implementation on this machine: v2 (`docker compose`) first, else v1 (`docker-compose`)."""

from __future__ import annotations

import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from meshctl.errors import EngineError, MeshError


@dataclass(frozen=True)
class ComposeTool:
    argv: tuple[str, ...]
    version: str

    @property
    def generation(self) -> int:
        return 2 if self.argv[:2] == ("docker", "compose") else 1


def _version(argv: list[str]) -> str | None:
    if shutil.which(argv[0]) is None:
        return None
    try:
        done = subprocess.run([*argv, "version", "--short"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() or None if done.returncode == 0 else None


def find_compose() -> ComposeTool | None:
    for argv in (["docker", "compose"], ["docker-compose"]):
        version = _version(argv)
        if version:
            return ComposeTool(tuple(argv), version)
    return None


def require_compose() -> ComposeTool:
    tool = find_compose()
    if tool is None:
        raise MeshError("neither `docker compose` nor `docker-compose` is installed",
                        "install the compose plugin, or `apt-get install docker-compose`")
    return tool


def run_compose(tool: ComposeTool, project: str, file: Path, *args: str, timeout: float = 900,
                env: dict[str, str] | None = None) -> str:
    """Run compose for `project` (on the engine `env` points at); a failure becomes one line with compose's own
    last words."""
    argv = [*tool.argv, "-p", project, "-f", str(file), *args]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired as exc:
        raise EngineError(f"`{' '.join(argv)}` did not finish within {timeout:.0f}s") from exc
    if done.returncode != 0:
        last = [line for line in (done.stderr or done.stdout).splitlines() if line.strip()][-3:]
        raise EngineError(f"`{' '.join(argv[:len(tool.argv)])} {' '.join(args)}` failed: {' | '.join(last)}")
    return done.stdout


def compose_down(tool: ComposeTool, project: str, file: Path, attempts: int = 4,
                 env: dict[str, str] | None = None) -> None:
    """`down`, retried: Docker 20.10 frees a network's endpoints asynchronously after its containers go,
    so removing the network right away can fail with "has active endpoints"."""
    for attempt in range(attempts):
        try:
            run_compose(tool, project, file, "down", "--volumes", "--remove-orphans", "--timeout", "2", env=env)
            return
        except EngineError:
            if attempt == attempts - 1:
                raise
            time.sleep(1 + attempt)
