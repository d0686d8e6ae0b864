"""The Docker engines of a mesh that spans hosts, each named by the Docker context users already have.

The CLI's own engine (DOCKER_HOST, or the current context) is the cluster's manager: it holds the swarm's
managers, the overlay network and the add-ons. A pod placed nowhere runs there; its node name is "".
Every other node is a context name (`docker context create node2 --docker host=ssh://me@node2`), which this
module turns into an SDK client, as `docker --context node2` would.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import docker
import docker.errors
import requests.exceptions
from docker import DockerClient
from docker.tls import TLSConfig

from meshctl.errors import EngineError, UsageError
from meshctl.runtime.engine import CONNECT_TIMEOUT_S, MIN_API_VERSION, connect

MANAGER: Final = ""  # the node name of the CLI's own engine
DEFAULT_CONTEXT: Final = "default"  # Docker's name for DOCKER_HOST, or the local socket
CREATE_HINT = "create it with `docker context create NAME --docker host=ssh://USER@HOST` (see `docker context ls`)"


def shown(node: str) -> str:
    """A node as users see it: its context name, or the manager's."""
    return node or "manager"


def docker_config_dir() -> Path:
    return Path(os.environ.get("DOCKER_CONFIG") or Path.home() / ".docker")


@dataclass(frozen=True)
class DockerContext:
    """A context as the docker CLI stores it (the SDK's own reader misses them without a config.json)."""
    name: str
    host: str
    tls_dir: Path | None  # ca.pem, cert.pem, key.pem when the context has TLS material
    skip_tls_verify: bool = False

    def tls(self) -> TLSConfig | bool:
        if self.tls_dir is None:
            return False
        files = {n: self.tls_dir / f"{n}.pem" for n in ("ca", "cert", "key")}
        cert = (str(files["cert"]), str(files["key"])) if files["cert"].is_file() else None
        ca = str(files["ca"]) if files["ca"].is_file() else None
        return TLSConfig(client_cert=cert, ca_cert=ca, verify=bool(ca) and not self.skip_tls_verify)


def current_context() -> str:
    """The context the docker CLI would use now (DOCKER_HOST wins, as in the CLI)."""
    if os.environ.get("DOCKER_HOST"):
        return DEFAULT_CONTEXT
    if os.environ.get("DOCKER_CONTEXT"):
        return os.environ["DOCKER_CONTEXT"]
    try:
        config = json.loads((docker_config_dir() / "config.json").read_text())
    except (OSError, ValueError):
        return DEFAULT_CONTEXT
    return str(config.get("currentContext") or DEFAULT_CONTEXT) if isinstance(config, dict) else DEFAULT_CONTEXT


def read_context(name: str) -> DockerContext:
    """A stored context: <config>/contexts/meta/<sha256 of name>/meta.json; UsageError when there is none."""
    if name == DEFAULT_CONTEXT:
        return DockerContext(name, os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock", None)
    digest = hashlib.sha256(name.encode()).hexdigest()
    meta = docker_config_dir() / "contexts" / "meta" / digest / "meta.json"
    try:
        data = json.loads(meta.read_text())
        endpoint = data["Endpoints"]["docker"]
        host = str(endpoint["Host"])
    except FileNotFoundError:
        raise UsageError(f"there is no Docker context named {name!r}", CREATE_HINT) from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UsageError(f"cannot read Docker context {name!r} ({meta}): {exc}", "recreate it with "
                         f"`docker context rm {name}` and `docker context create`") from None
    tls_dir = docker_config_dir() / "contexts" / "tls" / digest / "docker"
    return DockerContext(name, host, tls_dir if tls_dir.is_dir() else None, bool(endpoint.get("SkipTLSVerify")))


def context_host(name: str) -> str:
    """The engine address a context names; UsageError when there is no such context."""
    return read_context(name).host


def context_client(name: str, timeout: int = CONNECT_TIMEOUT_S) -> DockerClient:
    """An SDK client for the engine a context names, checked to answer."""
    if name in (MANAGER, DEFAULT_CONTEXT):
        return connect(timeout)
    found = read_context(name)
    host = found.host
    try:
        client = DockerClient(base_url=host, tls=found.tls(), timeout=timeout,
                              version=MIN_API_VERSION, use_ssh_client=host.startswith("ssh://"))
        client.ping()
    except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
        # with the API version given, the SDK does not wrap the transport's errors
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
