"""The Docker engines of a mesh that spans hosts, each named by the Docker context users already have.

The CLI's own engine (DOCKER_HOST, or the current context) is the cluster's manager: it holds the swarm's
managers, the overlay network and the add-ons. A pod placed nowhere runs there; its node name is "".
Every other node is a context name (`docker context create node2 --docker host=ssh://me@node2`), which this
module turns into an SDK client, as `docker --context node2` would.
"""

from __future__ import annotations

import os
from typing import Final

import docker
import docker.errors
from docker import DockerClient
from docker.context import ContextAPI

from meshctl.errors import EngineError, UsageError
from meshctl.runtime.engine import CONNECT_TIMEOUT_S, MIN_API_VERSION, connect

MANAGER: Final = ""  # the node name of the CLI's own engine
DEFAULT_CONTEXT: Final = "default"  # Docker's name for DOCKER_HOST, or the local socket
CREATE_HINT = "create it with `docker context create NAME --docker host=ssh://USER@HOST` (see `docker context ls`)"


def shown(node: str) -> str:
    """A node as users see it: its context name, or the manager's."""
    return node or "manager"


def current_context() -> str:
    """The context the docker CLI would use now (DOCKER_HOST wins, as in the CLI)."""
    if os.environ.get("DOCKER_HOST"):
        return DEFAULT_CONTEXT
    if os.environ.get("DOCKER_CONTEXT"):
        return os.environ["DOCKER_CONTEXT"]
    try:
        return ContextAPI.get_current_context().Name or DEFAULT_CONTEXT
    except docker.errors.DockerException:
        return DEFAULT_CONTEXT


def context_host(name: str) -> str:
    """The engine address a context names; UsageError when there is no such context."""
    if name == DEFAULT_CONTEXT:
        return os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
    try:
        found = ContextAPI.get_context(name)
    except docker.errors.DockerException as exc:
        raise UsageError(f"cannot read Docker context {name!r}: {exc}", CREATE_HINT) from exc
    if found is None or not found.Host:
        raise UsageError(f"there is no Docker context named {name!r}", CREATE_HINT)
    return str(found.Host)


def context_client(name: str, timeout: int = CONNECT_TIMEOUT_S) -> DockerClient:
    """An SDK client for the engine a context names, checked to answer."""
    if name in (MANAGER, DEFAULT_CONTEXT):
        return connect(timeout)
    host = context_host(name)
    found = ContextAPI.get_context(name)
    try:
        client = DockerClient(base_url=host, tls=found.TLSConfig if found else False, timeout=timeout,
                              version=MIN_API_VERSION, use_ssh_client=host.startswith("ssh://"))
        client.ping()
    except docker.errors.DockerException as exc:
        raise EngineError(f"cannot reach the Docker engine of context {name!r} at {host}",
                          f"check that it runs and that `docker --context {name} info` works") from exc
    return client


def compose_env(node: str) -> dict[str, str]:
    """The environment that points the docker CLI (and compose) at `node`."""
    env = dict(os.environ)
    if node not in (MANAGER, DEFAULT_CONTEXT):
        env.pop("DOCKER_HOST", None)
        env["DOCKER_CONTEXT"] = node
    return env
