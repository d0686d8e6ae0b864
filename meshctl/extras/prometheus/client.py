"""Asking the prometheus addon: where it answers (`url(home)`, None when it does not run) and its HTTP API
(`query(base, promql)`, `targets(base)`), each failure one clear MeshError."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
from typing import Any

from docker import DockerClient

from meshctl.errors import MeshError
from meshctl.extras.prometheus import NAME
from meshctl.extras.prometheus.config import JOB_SIDECARS
from meshctl.extras.prometheus.container import find_container, web_url
from meshctl.home import MeshHome
from meshctl.runtime.direct import OPENER


def url(home: MeshHome, client: DockerClient | None = None) -> str | None:
    """Prometheus's base URL (http://127.0.0.1:PORT) while the addon's container runs; None when the addon is
    not installed in this mesh home or its container is not running."""
    if not home.is_installed():
        return None
    settings = home.settings()
    if NAME not in settings.addons:
        return None
    if client is None:
        from meshctl.runtime.engine import connect

        client = connect()
    container = find_container(client)
    if container is None or container.status != "running":
        return None
    return web_url(container, settings)


def api(base: str, endpoint: str, params: dict[str, str] | None = None, timeout: float = 5) -> Any:
    """GET /api/v1/<endpoint>; returns its `data`, or raises one clear MeshError."""
    address = f"{base}/api/v1/{endpoint}" + (f"?{urllib.parse.urlencode(params)}" if params else "")
    try:
        with OPENER.open(address, timeout=timeout) as resp:
            body = json.loads(resp.read())
    except urllib.error.HTTPError as exc:  # Prometheus explains a bad query in a JSON body with a 4xx
        try:
            body = json.loads(exc.read())
        except ValueError:
            raise MeshError(f"Prometheus at {base} answered {exc.code} to /api/v1/{endpoint}") from exc
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise MeshError(f"Prometheus at {base} does not answer: {reason}", "see `meshctl check`") from exc
    if body.get("status") != "success":
        raise MeshError(f"Prometheus refused /api/v1/{endpoint} {params or ''}: {body.get('error', body)}")
    return body.get("data")


def query(base: str, promql: str, timeout: float = 5) -> list[dict[str, Any]]:
    """An instant query: [{"metric": {labels}, "value": [time, "value"]}, ...]."""
    data = api(base, "query", {"query": promql}, timeout)
    result = data.get("result") if isinstance(data, dict) else None
    return result if isinstance(result, list) else []


def targets(base: str, job: str | None = JOB_SIDECARS, timeout: float = 5) -> list[dict[str, Any]]:
    """The active targets (of one job, by default the sidecars'), each with `labels`, `health`, `lastError`."""
    data = api(base, "targets", {"state": "active"}, timeout)
    active = data.get("activeTargets") or [] if isinstance(data, dict) else []
    return [t for t in active if job is None or (t.get("labels") or {}).get("job") == job]
