"""A short history of the request counters, so `meshctl stat -t 30s` answers at once with the last 30 s
(as `linkerd viz stat` does from Prometheus) instead of waiting 30 s for the next window.

Two rings of snapshots, on the monotonic clock (a wall-clock step must not stretch or shrink a window):
FINE, one a second for the last minute, and COARSE, one every 10 s for the last 15 minutes. A snapshot
holds only values (8 bytes a series) against one table of series shared by all of them, and only the
counters `stat` and `edges` read (requests, the latency histogram's buckets, TCP connections and bytes).
The table holds at most MAX_SERIES series, so the history is bounded: (61 + 91) snapshots x 2048 series
x 8 bytes = 2.4 MiB at most; a typical sidecar's ~100 series take ~120 KiB.
"""

from __future__ import annotations

import json
import math
import time
from array import array
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from urllib.parse import parse_qs

# What the CLI's window reads: counters only (a gauge's difference means nothing)
WANTED = frozenset({"istio_requests_total", "istio_request_duration_milliseconds_bucket",
                    "istio_tcp_connections_opened_total", "istio_tcp_connections_closed_total",
                    "istio_tcp_received_bytes_total", "istio_tcp_sent_bytes_total"})
FINE = (1.0, 60.0)  # (every, keep) in seconds
COARSE = (10.0, 900.0)
MAX_SERIES = 2048
SeriesKey = tuple[str, tuple[tuple[str, str], ...]]  # (sample name, labels in the metric's order)
Read = Callable[[], Iterable[tuple[SeriesKey, float]]]  # ((sample name, labels), value): keys made once


@dataclass(frozen=True)
class Snapshot:
    at: float  # monotonic seconds
    values: array  # type: ignore[type-arg]  # by series index; a series added later was 0 then


class Ring:
    """The last `keep_s` seconds of snapshots, one per `every_s` at most: a bounded deque, the oldest drops."""

    def __init__(self, every_s: float, keep_s: float) -> None:
        self.every_s = every_s
        self.snapshots: deque[Snapshot] = deque(maxlen=int(keep_s // every_s) + 1)

    def due(self, now: float) -> bool:
        return not self.snapshots or now - self.snapshots[-1].at >= self.every_s - 1e-6

    def add(self, snapshot: Snapshot) -> None:
        self.snapshots.append(snapshot)

    @property
    def oldest(self) -> Snapshot | None:
        return self.snapshots[0] if self.snapshots else None


def nearest(snapshots: Iterable[Snapshot], now: float, window_s: float) -> Snapshot | None:
    """The snapshot closest to `now - window_s` (an older one on a tie), but none younger than half the window:
    a 2 s window must not be measured over the 0.1 s since the last snapshot. Without such a snapshot (the
    history is shorter than half the window), the oldest there is."""
    old_enough = [s for s in snapshots if now - s.at >= window_s / 2]
    if not old_enough:
        return min(snapshots, key=lambda s: s.at, default=None)
    return min(old_enough, key=lambda s: (abs(now - s.at - window_s), s.at))


class CounterHistory:
    """Snapshots of the counters `read` returns; `tick()` every FINE[0] seconds keeps both rings current."""

    def __init__(self, read: Read, clock: Callable[[], float] = time.monotonic, max_series: int = MAX_SERIES,
                 fine: tuple[float, float] = FINE, coarse: tuple[float, float] = COARSE) -> None:
        self.read = read
        self.clock = clock
        self.max_series = max_series
        self.index: dict[SeriesKey, int] = {}
        self.series: list[SeriesKey] = []
        self.truncated = False  # series past max_series are left out of the history (and of its answers)
        self.started = clock()
        self.rings = (Ring(*fine), Ring(*coarse))
        self.tick()  # the counters as they start: every window of a young sidecar reaches back to its start

    def values(self) -> array:  # type: ignore[type-arg]
        """The counters now, by series index (a new series gets an index while the table has room)."""
        found: dict[int, float] = {}
        for key, value in self.read():
            if key[0] not in WANTED:
                continue
            i = self.index.get(key)
            if i is None:
                if len(self.series) >= self.max_series:
                    self.truncated = True
                    continue
                i = self.index[key] = len(self.series)
                self.series.append(key)
            found[i] = value
        out = array("d", bytes(8 * len(self.series)))
        for i, value in found.items():
            out[i] = value
        return out

    def tick(self) -> None:
        now = self.clock()
        due = [ring for ring in self.rings if ring.due(now)]
        if due:
            snapshot = Snapshot(now, self.values())  # one snapshot shared by both rings when both are due
            for ring in due:
                ring.add(snapshot)

    def history_s(self, now: float) -> float:
        """How far back the history reaches."""
        return max((now - ring.oldest.at for ring in self.rings if ring.oldest), default=0.0)

    def answer(self, window_s: float) -> dict[str, object]:
        """The counters now and as they were about `window_s` ago, with how far apart the two are (`span_s`)."""
        now_values = self.values()
        now = self.clock()
        then = nearest([s for ring in self.rings for s in ring.snapshots], now, window_s)
        then_values = list(then.values) if then else []
        then_values += [0.0] * (len(now_values) - len(then_values))
        return {"window_s": window_s, "span_s": round(now - then.at, 3) if then else 0.0,
                "history_s": round(self.history_s(now), 3), "uptime_s": round(now - self.started, 3),
                "truncated": self.truncated,
                "series": [[name, dict(labels)] for name, labels in self.series],
                "now": list(now_values), "then": then_values}


def window_of(query: str) -> float | None:
    """`window=30` (seconds) from the query string; None when missing or not a positive finite number."""
    try:
        value = float(parse_qs(query).get("window", [""])[0])
    except ValueError:
        return None
    return value if math.isfinite(value) and value > 0 else None


def serve(history: CounterHistory, query: str) -> tuple[int, str, bytes]:
    window = window_of(query)
    if window is None:
        return 400, "text/plain", b"give the window in seconds: /stats/history?window=30\n"
    return 200, "application/json", json.dumps(history.answer(window), separators=(",", ":")).encode()
