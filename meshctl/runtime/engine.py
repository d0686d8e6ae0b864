"""One way to reach the Docker engine, and one place that turns its errors into lines users can act on."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import docker
import docker.errors
import requests.exceptions
from docker import DockerClient

from meshctl.errors import EngineError

# Debian's docker.io speaks API 1.41; asking for it keeps newer SDKs from refusing older engines.
MIN_API_VERSION = "1.41"
CONNECT_TIMEOUT_S = 10
START_HINT = "start it (`dockerd &` as root, or `systemctl start docker`) or set DOCKER_HOST; ./install.sh does both"


def engine_address() -> str:
    return os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"


def connect(timeout: int = CONNECT_TIMEOUT_S) -> DockerClient:
    try:
        client = docker.from_env(timeout=timeout)
        client.ping()
    except docker.errors.DockerException as exc:
        reason = _reason(exc)
        if "Permission denied" in reason or "PermissionError" in reason:
            raise EngineError(f"no permission to use the Docker engine at {engine_address()}",
                              "add your user to the docker group (then log in again) or run as root") from exc
        raise EngineError(f"cannot reach the Docker engine at {engine_address()}", START_HINT) from exc
    return client


def _reason(exc: BaseException) -> str:
    parts = []
    while exc is not None:
        parts.append(f"{type(exc).__name__}: {exc}")
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return " <- ".join(parts)


@contextlib.contextmanager
def engine_errors(doing: str) -> Iterator[None]:
    """Wrap engine calls: an API error becomes one line that says what we were doing and why it failed."""
    try:
        yield
    except docker.errors.APIError as exc:
        detail = exc.explanation or str(exc)
        if isinstance(detail, bytes):
            detail = detail.decode(errors="replace")
        raise EngineError(f"Docker engine refused to {doing}: {detail}") from exc
    except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
        # an engine that went away mid-command (a node cut off): the SDK lets the transport's error through
        raise EngineError(f"lost the Docker engine while trying to {doing}: {exc}", START_HINT) from exc


@contextlib.contextmanager
def patient(client: DockerClient, seconds: int) -> Iterator[None]:
    """A longer read timeout for one slow call (loading an image, joining a swarm): the engine answers only
    when it is done, and the client's own timeout is a connect check's 10 s."""
    api = client.api
    before = api.timeout
    api.timeout = max(seconds, before or 0)
    try:
        yield
    finally:
        api.timeout = before
