"""Service level objectives: error budget and burn rate, from the same request metrics as `stat`.

An SLO says what share of a service's requests must succeed (availability) and/or be faster than a
threshold (latency), over a window. The error budget is the share allowed to fail; the burn rate is
how fast it is being spent: 1 spends exactly the budget over the window, 10 spends it in a tenth of it.
As in Google's SRE workbook, a fast burn must show both over the whole window and over its last
twelfth (so an old incident alone does not page, and neither does one bad second).

Numbers come from Prometheus over the window when the addon runs; otherwise from the sidecars'
counters since they started, which the report says.
"""

from __future__ import annotations

import json
import re
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from meshctl.config import changes
from meshctl.config.resources import Resource, namespace_of
from meshctl.config.schema import parse_duration
from meshctl.context import Context
from meshctl.errors import UsageError
from meshctl.runtime.direct import OPENER
from meshctl.telemetry import mesh
from meshctl.telemetry.golden import BUCKETS, REQUESTS, Golden, inbound, is_error

LATENCY_RE = re.compile(r"^\s*p(\d{1,2}(?:\.\d+)?)\s*<\s*(\S+)\s*$")
SHORT_WINDOW_FRACTION = 1 / 12
MIN_SHORT_WINDOW_S = 30.0
KIND = "ServiceLevelObjective"
Counts = Callable[[str, str | None, float], Golden]  # (service, project, seconds) -> its requests in the window


def parse_latency(text: str) -> tuple[float, str]:
    """'p99<300ms' -> (99.0, '300ms')."""
    m = LATENCY_RE.match(text)
    if not m:
        raise UsageError(f"--latency {text!r}: write it as pNN<DURATION, e.g. 'p99<300ms'")
    percentile, threshold = float(m.group(1)), m.group(2)
    if not 0 < percentile < 100:
        raise UsageError(f"--latency {text!r}: the percentile must be between 0 and 100")
    try:
        parse_duration(threshold)
    except ValueError as exc:
        raise UsageError(f"--latency {text!r}: {exc}") from None
    return percentile, threshold


def resource(service: str, availability: float | None, latency: str | None, window: str,
             project: str | None) -> dict[str, Any]:
    if availability is None and latency is None:
        raise UsageError("give --availability, --latency or both", "e.g. --availability 99.9 --latency 'p99<300ms'")
    if availability is not None and not 0 < availability < 100:
        raise UsageError(f"--availability {availability:g}: give a percentage below 100, e.g. 99.9")
    try:
        if parse_duration(window) < 60:
            raise UsageError(f"--window {window}: use at least 1m")
    except ValueError as exc:
        raise UsageError(f"--window: {exc}") from None
    spec: dict[str, Any] = {"service": service, "window": window}
    if availability is not None:
        spec["availability"] = availability
    if latency is not None:
        percentile, threshold = parse_latency(latency)
        spec["latency"] = {"percentile": percentile, "threshold": threshold}
    metadata = {"name": service, **({"namespace": project} if project else {})}
    return {"apiVersion": "meshctl.io/v1", "kind": KIND, "metadata": metadata, "spec": spec}


@dataclass(frozen=True)
class Objective:
    """One objective of an SLO, judged over the long and the short window."""
    name: str  # availability or latency
    target: float  # percent of requests that must be good
    long: Golden
    short: Golden
    threshold_ms: float | None = None

    def bad(self, g: Golden) -> float:
        return g.errors if self.threshold_ms is None else g.slower_than(self.threshold_ms)

    def burn(self, g: Golden) -> float | None:
        return None if g.requests <= 0 else (self.bad(g) / g.requests) / (1 - self.target / 100)

    @property
    def budget_left(self) -> float | None:
        """Share of the window's error budget still unspent (negative: overspent)."""
        burn = self.burn(self.long)
        return None if burn is None else 1 - burn

    @property
    def indicator(self) -> float | None:
        """The measured SLI: percent good over the window."""
        g = self.long
        return None if g.requests <= 0 else 100.0 * (1 - self.bad(g) / g.requests)


def evaluate(slo: dict[str, Any], counts: Counts, max_burn: float) -> list[dict[str, Any]]:
    spec = slo["spec"]
    window_s = parse_duration(spec["window"])
    short_s = max(MIN_SHORT_WINDOW_S, window_s * SHORT_WINDOW_FRACTION)
    project = slo["metadata"].get("namespace")
    long, short = counts(spec["service"], project, window_s), counts(spec["service"], project, short_s)
    objectives = []
    if "availability" in spec:
        objectives.append(Objective("availability", float(spec["availability"]), long, short))
    if "latency" in spec:
        lat = spec["latency"]
        objectives.append(Objective(f"latency p{lat['percentile']:g}<{lat['threshold']}", float(lat["percentile"]),
                                    long, short, parse_duration(lat["threshold"]) * 1000))
    rows = []
    for o in objectives:
        burn_long, burn_short = o.burn(o.long), o.burn(o.short)
        if burn_long is None:
            state = "NO DATA"
        elif burn_long >= max_burn and (burn_short or 0) >= max_burn:
            state = "BURNING"
        elif (o.budget_left or 0) <= 0:
            state = "EXHAUSTED"
        else:
            state = "OK"
        rows.append({"service": spec["service"], "project": project, "objective": o.name, "target": o.target,
                     "window": spec["window"], "requests": round(o.long.requests),
                     "indicator": None if o.indicator is None else round(o.indicator, 3),
                     "budget_left": None if o.budget_left is None else round(100 * o.budget_left, 1),
                     "burn_rate": None if burn_long is None else round(burn_long, 2),
                     "burn_rate_short": None if burn_short is None else round(burn_short, 2),
                     "p_observed_ms": None if o.threshold_ms is None or o.long.requests <= 0
                     else round(o.long.quantile(o.target / 100) or 0, 1),
                     "state": state})
    return rows


# --- where the numbers come from -------------------------------------------------------------------------

def _selector(service: str, project: str | None) -> str:
    labels = {"reporter": "destination", "destination_service_name": service}
    if project:
        labels["destination_service_namespace"] = project
    return ",".join(f'{k}="{v}"' for k, v in labels.items())


def prometheus_counts(base_url: str) -> Counts:
    def query(expr: str) -> list[dict[str, Any]]:
        url = f"{base_url}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        with OPENER.open(url, timeout=5) as resp:
            body = json.loads(resp.read())
        return list(body.get("data", {}).get("result", []))

    def counts(service: str, project: str | None, seconds: float) -> Golden:
        sel, rng = _selector(service, project), f"{max(1, int(seconds))}s"
        g = Golden()
        for item in query(f"sum by (response_code, grpc_response_status) (increase({REQUESTS}{{{sel}}}[{rng}]))"):
            value = float(item["value"][1])
            g.requests += value
            metric = item["metric"]
            if is_error(metric.get("response_code", ""), metric.get("grpc_response_status", "")):
                g.errors += value
        for item in query(f"sum by (le) (increase({BUCKETS}{{{sel}}}[{rng}]))"):
            g.buckets[float(item["metric"].get("le", "+Inf"))] = float(item["value"][1])
        return g

    return counts


# --- the store's objectives and their state ------------------------------------------------------------

def objectives(c: Context, service: str | None = None, project: str | None = None) -> list[Resource]:
    """The SLOs (of `service`; of those in `project`'s namespace, when given)."""
    found = [r for r in changes.current(c) if r["kind"] == KIND and (service is None or r["spec"]["service"] == service)
             and (project is None or namespace_of(r) == project)]
    if service and not found:
        where = f" in project {project!r}" if project else ""
        raise UsageError(f"no SLO for {service!r}{where}",
                         f"set one with `meshctl slo set {service} --availability 99.9`")
    return found


def counts_source(c: Context) -> tuple[Counts, str]:
    """Prometheus over the window when the addon runs; else the sidecars' counters since they started."""
    from meshctl.extras.prometheus import client as prometheus  # the addon module is optional at run time

    url = prometheus.url(c.home)
    if url:
        return prometheus_counts(url), "prometheus"

    def since_start(service: str, project: str | None, seconds: float) -> Golden:
        proxies = [p for p in mesh.running(c, project) if p.app == service]
        tallied = mesh.measure(c, proxies, 0, lambda labels: ("all",) if inbound(labels) else None)
        return tallied.get(("all",), Golden())

    return since_start, "proxies (since start)"


def status_rows(c: Context, service: str | None, max_burn: float) -> list[dict[str, Any]]:
    counts, source = counts_source(c)
    return [{**row, "source": source} for r in objectives(c, service) for row in evaluate(r, counts, max_burn)]
