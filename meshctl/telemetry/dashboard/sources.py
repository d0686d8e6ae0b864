"""Where the dashboard reads from: the running sidecars, their metrics, the store, sync status and SLOs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from meshctl.config.resources import Resource
from meshctl.context import Context
from meshctl.runtime.proxies import Proxy
from meshctl.telemetry.scrape import Sample


@dataclass
class Sources:
    """Where the dashboard reads from; live ones talk to Docker and the sidecars, tests pass fakes."""
    proxies: Callable[[], list[Proxy]]
    metrics: Callable[[list[Proxy]], dict[str, list[Sample]]]
    resources: Callable[[], list[Resource]]
    statuses: Callable[[], list[dict[str, Any]]]
    slos: Callable[[], list[dict[str, Any]]]


def live_sources(ctx: Context, project: str | None) -> Sources:
    from meshctl.config import changes
    from meshctl.pilot.status import proxy_statuses
    from meshctl.telemetry import mesh, slo

    def statuses() -> list[dict[str, Any]]:
        rows = [s.as_dict() for s in proxy_statuses(ctx)]
        return [r for r in rows if project is None or r["name"].startswith(f"{project}.")]

    def slos() -> list[dict[str, Any]]:
        rows = slo.status_rows(ctx, None, 1.0)
        return [r for r in rows if project is None or r.get("project") in (None, project)]

    return Sources(proxies=lambda: mesh.running(ctx, project), metrics=lambda ps: mesh.metrics(ctx, ps),
                   resources=lambda: changes.current(ctx), statuses=statuses, slos=slos)
