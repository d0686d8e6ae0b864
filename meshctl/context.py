"""The explicit environment every command gets (httpie's habit): no globals, swapped for fakes in tests."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from rich.console import Console

from meshctl.home import MeshHome, default_cache, default_home

if TYPE_CHECKING:
    from docker import DockerClient


def _console(stream: TextIO, stderr: bool = False) -> Console:
    # Piped output keeps whole rows (like kubectl): no wrapping at an imagined 80 columns.
    width = None if stream.isatty() or os.environ.get("COLUMNS") else 400
    return Console(stderr=stderr, soft_wrap=True, width=width)


def _connect() -> DockerClient:
    from meshctl.runtime.engine import connect

    return connect()


@dataclass
class Context:
    home: MeshHome = field(default_factory=lambda: MeshHome(default_home()))
    cache_dir: Path = field(default_factory=default_cache)
    out: Console = field(default_factory=lambda: _console(sys.stdout))
    err: Console = field(default_factory=lambda: Console(stderr=True, soft_wrap=True))
    debug: bool = False
    docker_factory: Callable[[], DockerClient] = _connect
    clock: Callable[[], float] = time.time
    _docker: DockerClient | None = field(default=None, repr=False)

    def docker(self) -> DockerClient:
        """The engine client, connected on first use so commands that need no engine never wait for one."""
        if self._docker is None:
            self._docker = self.docker_factory()
        return self._docker
