"""The canary's health, read from its own sidecars' Prometheus endpoints (reporter="destination").

Counters only grow, so a step's numbers are the difference between two reads. A sidecar that restarted
(its counters went down) counts from zero.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from meshctl.telemetry import golden
from meshctl.telemetry.golden import Golden
from meshctl.telemetry.scrape import Sample

IN: golden.Key = ("in",)  # the one key of a canary's tally: its inbound view


def counters(samples: Iterable[Sample]) -> dict[str, float]:
    """What a gate needs from one sidecar (its inbound view), flat so the rollout state can store it."""
    return _flat(golden.tally(samples, lambda labels: IN if golden.inbound(labels) else None).get(IN, Golden()))


def _flat(g: Golden) -> dict[str, float]:
    return {"requests": g.requests, "errors": g.errors,
            **{f"le:{'+Inf' if math.isinf(b) else b}": c for b, c in g.buckets.items()}}


def _golden(flat: dict[str, float]) -> Golden:
    return Golden(requests=flat.get("requests", 0.0), errors=flat.get("errors", 0.0),
                  buckets={float(k[3:]): v for k, v in flat.items() if k.startswith("le:")})


def delta(now: dict[str, dict[str, float]], before: dict[str, dict[str, float]]) -> dict[str, float]:
    """The canary's counts since the step's baseline, summed over its pods (golden.since: a restart counts
    from zero)."""
    total = Golden()
    for pod, values in now.items():
        base = {IN: _golden(before[pod])} if pod in before else {}
        for g in golden.since({IN: _golden(values)}, base).values():
            total.add(g)
    return _flat(total)


def p99_ms(d: dict[str, float]) -> float | None:
    """Interpolated within its bucket, like Prometheus's histogram_quantile (and `meshctl stat`)."""
    return _golden(d).quantile(0.99)


@dataclass(frozen=True)
class Verdict:
    passed: bool | None  # None: not enough traffic to tell yet
    requests: int
    success_rate: float | None
    p99_ms: float | None
    reason: str


def judge(d: dict[str, float], min_success: float, max_p99: float, min_requests: int) -> Verdict:
    requests = int(d.get("requests", 0))
    if requests < min_requests:
        return Verdict(None, requests, None, None, f"{requests} requests reached the canary (want {min_requests})")
    rate = 100.0 * (requests - d.get("errors", 0)) / requests
    p99 = p99_ms(d)
    if rate < min_success:
        return Verdict(False, requests, rate, p99, f"success rate {rate:.1f}% < {min_success:g}%")
    if p99 is not None and p99 > max_p99:
        return Verdict(False, requests, rate, p99, f"p99 latency {p99:g} ms > {max_p99:g} ms")
    return Verdict(True, requests, rate, p99, f"success rate {rate:.1f}%, p99 <= {p99:g} ms" if p99 is not None
                   else f"success rate {rate:.1f}%")
