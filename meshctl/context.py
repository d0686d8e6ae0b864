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

from meshctl.errors import NotInstalled
from meshctl.home import MeshHome, default_cache, default_home

if TYPE_CHECKING:
    from docker import DockerClient


NODE_RETRY_S = 10.0  # a node whose engine did not answer is not asked again sooner


def _console(stream: TextIO, stderr: bool = False) -> Console:
    # Piped output keeps whole rows (like kubectl): no wrapping at an imagined 80 columns.
    width = None if stream.isatty() or os.environ.get("COLUMNS") else 400
    return Console(stderr=stderr, soft_wrap=True, width=width)


def _connect() -> DockerClient:
    from meshctl.runtime.engine import connect

    return connect()


def _node_client(node: str) -> DockerClient:
    from meshctl.runtime.nodes import context_client

    return context_client(node)


@dataclass
class Context:
    home: MeshHome = field(default_factory=lambda: MeshHome(default_home()))
    cache_dir: Path = field(default_factory=default_cache)
    out: Console = field(default_factory=lambda: _console(sys.stdout))
    err: Console = field(default_factory=lambda: Console(stderr=True, soft_wrap=True))
    debug: bool = False
    docker_factory: Callable[[], DockerClient] = _connect
    clock: Callable[[], float] = time.time
    node_factory: Callable[[str], DockerClient] = _node_client  # another node's engine, by Docker context name
    _docker: DockerClient | None = field(default=None, repr=False)
    _engines: dict[str, DockerClient] = field(default_factory=dict, repr=False)
    _warned: set[str] = field(default_factory=set, repr=False)
    _down: dict[str, tuple[float, Exception]] = field(default_factory=dict, repr=False)  # node -> (until, why)

    def docker(self) -> DockerClient:
        """The engine client, connected on first use so commands that need no engine never wait for one."""
        if self._docker is None:
            self._docker = self.docker_factory()
        return self._docker

    def engine(self, node: str) -> DockerClient:
        """A node's engine client ("" is the manager's, `docker()`), connected on first use and kept. A node that
        does not answer raises; it is tried again after NODE_RETRY_S (it may come back), and until then the same
        error is raised at once, so a watch or the dashboard does not wait for its connect timeout every read."""
        if not node:
            return self.docker()
        if node not in self._engines:
            until, why = self._down.get(node, (0.0, None))
            if why is not None and self.clock() < until:
                raise why
            try:
                self._engines[node] = self.node_factory(node)
            except Exception as exc:
                self._down[node] = (self.clock() + NODE_RETRY_S, exc)
                raise
            self._down.pop(node, None)
        return self._engines[node]

    def warn_once(self, text: str) -> None:
        """A one-line warning on stderr, printed once per command (a watch or the dashboard reads again and again)."""
        if text not in self._warned:
            self._warned.add(text)
            self.err.print(f"warning: {text}", highlight=False, markup=False)

    def clustered(self) -> bool:
        """Whether the mesh spans hosts (`meshctl cluster init`); False where no mesh is installed."""
        try:
            return self.home.settings().cluster
        except NotInstalled:
            return False

    def nodes(self) -> list[str]:
        """Every node of the mesh: the manager ("") first, then the joined contexts; just the manager on one host."""
        return ["", *list(self.home.settings().nodes)] if self.clustered() else [""]
