"""`stat -t 30s` and `edges -t 30s` look back, as `linkerd viz stat` does, instead of waiting for the window.

Each sidecar keeps a short history of its counters (sidecar.history, served on :15090/stats/history to the
host only) and answers with its counters now and as they were about the window ago, in one read. A
window's numbers are the difference, scaled to the window asked for (snapshots are a second apart, ten
seconds past the last minute), as Prometheus's increase() extrapolates. A sidecar younger than the window
gives what it has, unscaled, and the output says so. A sidecar without the history (an image older than
this meshctl) is measured the old way, over the next window.
"""

from __future__ import annotations

import json
import urllib.error
from dataclasses import dataclass, field
from typing import Any

from meshctl import const
from meshctl.context import Context
from meshctl.runtime.direct import OPENER
from meshctl.runtime.proxies import Proxy
from meshctl.telemetry import golden, mesh
from meshctl.telemetry.scrape import Sample

HISTORY_PATH = "/stats/history"
SHORT_SLACK_S = 1.0  # snapshots a second apart: history this much shorter than the window still covers it


@dataclass(frozen=True)
class History:
    """One sidecar's answer: its counters now and `span_s` seconds before, and how far back it remembers."""

    now: list[Sample]
    then: list[Sample]
    span_s: float
    history_s: float
    truncated: bool = False


@dataclass
class Measured:
    tallied: dict[golden.Key, golden.Golden] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # footnotes: whose numbers cover less than the window


def parse_history(data: Any) -> History | None:
    """The sidecar's JSON (sidecar.history.CounterHistory.answer); None when it is not that shape."""
    try:
        series, now, then = data["series"], data["now"], data["then"]
        if not (len(series) == len(now) == len(then)):
            return None
        keys = [(str(name), {str(k): str(v) for k, v in labels.items()}) for name, labels in series]
        return History([Sample(n, lab, float(v)) for (n, lab), v in zip(keys, now, strict=True)],
                       [Sample(n, lab, float(v)) for (n, lab), v in zip(keys, then, strict=True)],
                       float(data["span_s"]), float(data["history_s"]), bool(data.get("truncated", False)))
    except (KeyError, TypeError, ValueError, AttributeError):
        return None


def fetch(address: str, window_s: float, timeout: float = 3.0) -> History | None:
    """Ask one sidecar; None when it cannot answer (unreachable, or too old to keep a history)."""
    url = f"http://{address}:{const.PORT_METRICS}{HISTORY_PATH}?window={window_s:g}"
    try:
        with OPENER.open(url, timeout=timeout) as resp:
            return parse_history(json.loads(resp.read()))
    except (urllib.error.URLError, OSError, ValueError):
        return None


def _duration(seconds: float) -> str:
    return f"{seconds:.0f}s" if seconds < 120 else f"{seconds / 60:.0f}m"


def looked_back(answers: dict[str, History], window_s: float, key: golden.KeyFn) -> Measured:
    """Per key, what the sidecars counted over the last `window_s` seconds, from their histories."""
    out = Measured()
    for proxy, answer in sorted(answers.items()):
        # one proxy at a time: window() counts a proxy whose counters went down as restarted, from zero
        part = golden.window({proxy: answer.now}, {proxy: answer.then}, key)
        short = answer.history_s < window_s - SHORT_SLACK_S
        if short:
            out.notes.append(f"{proxy}: only {_duration(answer.history_s)} of history")
        if answer.truncated:
            out.notes.append(f"{proxy}: too many series; its history leaves some out")
        factor = 1.0 if short or answer.span_s <= 0 else window_s / answer.span_s
        for k, g in part.items():
            out.tallied.setdefault(k, golden.Golden()).add(g, factor)
    return out


def measure(c: Context, proxies: list[Proxy], window_s: float, key: golden.KeyFn) -> Measured:
    """What the proxies counted over the last `window_s` seconds (0: since each one started)."""
    if not window_s:
        return Measured(mesh.measure(c, proxies, 0, key))
    answers = mesh.each(c, proxies, lambda address: fetch(address, window_s))
    # a truncated history leaves out series that appeared late (a new status code in an incident): its sidecar
    # is measured by waiting, as one without a history
    have = {name: a for name, a in answers.items() if a is not None and not a.truncated}
    out = looked_back(have, window_s, key)
    older = [p for p in proxies if p.name not in have]
    if older:  # no history to read: wait for the window, as before the history
        for k, g in mesh.measure(c, older, window_s, key).items():
            out.tallied.setdefault(k, golden.Golden()).add(g)
        for p in older:
            why = ("too many series for its history" if answers.get(p.name) is not None
                   else "no counter history (unreachable, or an older sidecar image)")
            out.notes.append(f"{p.name}: {why}; measured over the next {_duration(window_s)}")
    return out
