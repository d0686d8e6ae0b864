"""Read every running sidecar at once: metrics, spans and access logs, straight from the data plane.

No collector process is needed: each sidecar keeps its counters, histograms and recent spans, and
writes its access log to its container's output, where Docker keeps it.
"""

from __future__ import annotations

import json
import time
import urllib.error
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from meshctl import const
from meshctl.context import Context
from meshctl.errors import UsageError
from meshctl.pilot import dataplane
from meshctl.runtime.direct import OPENER
from meshctl.runtime.engine import engine_errors
from meshctl.runtime.proxies import Proxy, read_each
from meshctl.telemetry import golden
from meshctl.telemetry.scrape import Sample, scrape

T = TypeVar("T")


def running(ctx: Context, project: str | None = None, service: str | None = None) -> list[Proxy]:
    """Running sidecars, optionally of one project and one service (app or compose service name); in a cluster,
    those of every node that answers."""
    found = dataplane.listing(ctx, project)
    if found.unreachable:
        whose = "its" if len(found.unreachable) == 1 else "their"
        ctx.warn_once(f"{dataplane.down_note(found.unreachable)}: {whose} sidecars are left out")
    proxies = [p for p in found.proxies if p.state == "running"]
    if service:
        proxies = [p for p in proxies if service in (p.app, p.service, p.name)]
        if not proxies:
            down = f"; {dataplane.down_note(found.unreachable)}" if found.unreachable else ""
            raise UsageError(f"no running sidecar serves {service!r}{down}",
                             "see `meshctl proxy-status` for the services in this mesh")
    return proxies


def each(ctx: Context, proxies: list[Proxy], read: Callable[[str], T]) -> dict[str, T]:
    """read(address) for every proxy, in parallel: proxy name -> result."""
    network = ctx.home.settings().network
    results = read_each(proxies, lambda p: read(p.address_on(network) or ""))
    return {p.name: result for p, result in zip(proxies, results, strict=True)}


def metrics(ctx: Context, proxies: list[Proxy]) -> dict[str, list[Sample]]:
    return each(ctx, proxies, scrape)


def measure(ctx: Context, proxies: list[Proxy], window_s: float, key: golden.KeyFn) -> dict[golden.Key, golden.Golden]:
    """What the proxies counted over the next `window_s` seconds (0: since each one started), tallied by `key`."""
    before = metrics(ctx, proxies) if window_s else None
    if window_s:
        time.sleep(window_s)
    return golden.window(metrics(ctx, proxies), before, key)


def spans_of(address: str, timeout: float = 3.0) -> list[dict[str, Any]]:
    try:
        with OPENER.open(f"http://{address}:{const.PORT_METRICS}/spans", timeout=timeout) as resp:
            data = json.loads(resp.read())
    except (urllib.error.URLError, OSError, ValueError):
        return []
    return [s for s in data if isinstance(s, dict)] if isinstance(data, list) else []


def spans(ctx: Context, proxies: list[Proxy]) -> list[dict[str, Any]]:
    return [s for found in each(ctx, proxies, spans_of).values() for s in found]


def access_log(ctx: Context, proxy: Proxy, since: float | None = None, tail: int | None = None,
               follow: bool = False) -> Iterator[dict[str, Any]]:
    """The sidecar's JSON access-log lines (its other output, the proxy's own log, is skipped)."""
    with engine_errors(f"read the logs of {proxy.container}"):
        container = dataplane.engine_of(ctx, proxy).containers.get(proxy.cid or proxy.container)
        kwargs: dict[str, Any] = {"stdout": True, "stderr": False, "tail": tail if tail is not None else "all"}
        if since is not None:
            kwargs["since"] = since
        output = container.logs(**kwargs, stream=True, follow=True) if follow else container.logs(**kwargs)
    lines = _lines(output) if follow else iter(output.splitlines())
    for line in lines:
        if entry := parse_log_line(line):
            yield {**entry, "proxy": proxy.name}


def _lines(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """Whole lines from a stream whose chunks may split them."""
    buffer = b""
    for chunk in chunks:
        *done, buffer = (buffer + chunk).split(b"\n")
        yield from done


def parse_log_line(line: bytes) -> dict[str, Any] | None:
    line = line.strip()
    if not line.startswith(b"{"):
        return None
    try:
        entry = json.loads(line)
    except ValueError:
        return None
    return entry if isinstance(entry, dict) and "direction" in entry else None
