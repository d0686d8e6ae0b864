"""`meshctl demo`: install if needed, mesh bookinfo, send traffic, show what the mesh did.

The newcomer sees the proxies, the mTLS identity on each edge (read from the receiving sidecars'
own metrics) and the request counts, then how to stop it.
"""

from __future__ import annotations

import json
import shutil
import time
import urllib.error
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from meshctl.context import Context
from meshctl.errors import Timeout
from meshctl.inject.injector import inject
from meshctl.pilot import dataplane
from meshctl.resources import SAMPLES, shipped
from meshctl.runtime.compose import compose_down, require_compose, run_compose
from meshctl.runtime.direct import OPENER
from meshctl.runtime.proxies import Proxy
from meshctl.telemetry.scrape import scrape

Progress = Callable[[str], None]
PROJECT = "bookinfo"
PORT = 9080
READY_TIMEOUT_S = 180


@dataclass
class Edge:
    source: str
    destination: str
    requests: int
    mtls: bool
    codes: dict[str, int] = field(default_factory=dict)


def demo_dir(ctx: Context) -> Path:
    return ctx.home.root / "demo" / PROJECT


def compose_file(ctx: Context) -> Path:
    return demo_dir(ctx) / "compose.yaml"


def up(ctx: Context, progress: Progress) -> None:
    out = demo_dir(ctx)
    out.mkdir(parents=True, exist_ok=True)
    result = inject(ctx, str(shipped(SAMPLES) / "bookinfo" / "compose.yaml"), PROJECT, "PERMISSIVE", out)
    compose_file(ctx).write_text(result.text)
    progress(f"starting {len(result.pods)} meshed services (building the sample image on first run)")
    run_compose(require_compose(), PROJECT, compose_file(ctx), "up", "-d", "--build", "--remove-orphans")


def get(url: str, timeout: float = 5) -> int:
    """The HTTP status; for productpage a 200 counts only if every service behind it answered 200 too."""
    try:
        with OPENER.open(url, timeout=timeout) as resp:
            body = resp.read()
            status = int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (urllib.error.URLError, OSError):
        return 0
    try:
        backends = json.loads(body).get("status", {})
    except ValueError:
        return status
    return max((int(code) for code in backends.values() if int(code) != 200), default=status)


def wait_ready(ctx: Context, progress: Progress) -> list[Proxy]:
    deadline = time.monotonic() + READY_TIMEOUT_S
    seen = "no proxies yet"
    while time.monotonic() < deadline:
        proxies = dataplane.sidecars(ctx, PROJECT)
        ready = sum(p.ready for p in proxies)
        seen = f"{ready}/{len(proxies)} proxies ready"
        if proxies and ready == len(proxies):
            status = get(f"http://127.0.0.1:{PORT}/productpage")
            if status == 200:
                return proxies
            seen += f", productpage answered {status or 'nothing'}" + (" (a service behind it failed)"
                                                                        if status >= 500 else "")
        progress(seen)
        time.sleep(0.5)
    raise Timeout(f"bookinfo was not ready within {READY_TIMEOUT_S}s: {seen}",
                  f"see `docker compose -p {PROJECT} -f {compose_file(ctx)} ps` and the sidecars' logs")


def send_traffic(count: int) -> Counter[int]:
    return Counter(get(f"http://127.0.0.1:{PORT}/productpage") for _ in range(count))


def edges(proxies: list[Proxy], network: str) -> list[Edge]:
    """Who called whom, as the receiving sidecars saw it (reporter=destination), with the caller's identity."""
    found: dict[tuple[str, str], Edge] = {}
    for proxy in proxies:
        address = proxy.address_on(network)
        for sample in scrape(address) if address else []:
            if sample.name != "istio_requests_total" or sample.labels.get("reporter") != "destination":
                continue
            key = (sample.labels["source_principal"], proxy.service)
            edge = found.setdefault(key, Edge(key[0], proxy.service, 0,
                                              sample.labels.get("connection_security_policy") == "mutual_tls"))
            edge.requests += int(sample.value)
            code = sample.labels.get("response_code", "?")
            edge.codes[code] = edge.codes.get(code, 0) + int(sample.value)
    return sorted(found.values(), key=lambda e: (e.destination, e.source))


def down(ctx: Context) -> bool:
    file = compose_file(ctx)
    if not file.is_file():
        return False
    compose_down(require_compose(), PROJECT, file)
    shutil.rmtree(demo_dir(ctx), ignore_errors=True)
    shutil.rmtree(ctx.home.proxies_dir / PROJECT, ignore_errors=True)
    return True
