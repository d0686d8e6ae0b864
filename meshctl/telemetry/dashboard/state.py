"""The dashboard's state: two pollers refresh their sections, the server hands out the latest as JSON."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

from meshctl.telemetry.dashboard.graph import build_graph
from meshctl.telemetry.dashboard.history import HISTORY_POINTS, History
from meshctl.telemetry.dashboard.routes import route_rows
from meshctl.telemetry.dashboard.sources import Sources
from meshctl.telemetry.scrape import Sample


def _guarded(read: Callable[[], Any]) -> tuple[Any, str | None]:
    """(result, None), or (None, the error in one line): a failing section must not stop the others."""
    try:
        return read(), None
    except Exception as exc:  # MeshError has a one-line form; anything else is shown by type
        one_line = getattr(exc, "one_line", None)
        return None, one_line() if callable(one_line) else f"{type(exc).__name__}: {exc}"


def _section(rows: Any, error: str | None, when: float | None) -> dict[str, Any]:
    return {"rows": rows if rows is not None else [], "error": error, "updated_at": when}


class Dashboard:
    """The state builder: `poll_fast` and `poll_slow` refresh their sections; `state()` is what the page gets."""

    def __init__(self, sources: Sources, clock: Callable[[], float] = time.time, project: str | None = None,
                 interval_s: float = 2.0, history: int = HISTORY_POINTS) -> None:
        self.sources, self.clock, self.project, self.interval_s = sources, clock, project, interval_s
        self.history = History(history)
        self._lock = threading.Lock()
        self._before: tuple[float, dict[str, list[Sample]]] | None = None
        self._seq = 0
        self._state: dict[str, Any] = {
            "seq": 0, "generated_at": clock(), "project": project, "interval_s": interval_s, "window_s": None,
            "graph": {"nodes": [], "edges": [], "error": None, "updated_at": None},
            "history": self.history.as_dict(),
            "routes": _section(None, None, None), "proxies": _section(None, None, None),
            "slos": _section(None, None, None),
        }
        self._json = json.dumps(self._state).encode()

    def _publish(self, update: dict[str, Any]) -> None:
        with self._lock:
            self._seq += 1
            self._state = {**self._state, **update, "seq": self._seq, "generated_at": self.clock()}
            self._json = json.dumps(self._state, default=str).encode()

    def state(self) -> dict[str, Any]:
        with self._lock:
            return dict(self._state)

    def state_json(self) -> bytes:
        with self._lock:
            return self._json

    def poll_fast(self) -> None:
        """Scrape every sidecar: the graph, golden metrics and history for the interval; the route weights."""
        update: dict[str, Any] = {}

        def scrape() -> dict[str, Any]:
            proxies = self.sources.proxies()
            when, now = self.clock(), self.sources.metrics(proxies)
            before = self._before
            seconds = max(when - before[0], 1e-6) if before else None
            # A sidecar not read last time (new, or its scrape failed) starts from now: no spike of all it
            # ever counted in one interval.
            base = {name: before[1].get(name) or samples for name, samples in now.items()} if before else None
            graph = build_graph(proxies, now, base, seconds)
            self._before = (when, now)
            update["window_s"] = None if seconds is None else round(seconds, 3)
            if seconds is not None:
                self.history.add(when, graph["nodes"])
            return graph

        graph, error = _guarded(scrape)
        when = self.clock()
        update["graph"] = {**(graph or {"nodes": [], "edges": []}), "error": error, "updated_at": when}
        update["history"] = self.history.as_dict()
        rows, error = _guarded(lambda: route_rows(self.sources.resources(), self.project))
        update["routes"] = _section(rows, error, when)
        self._publish(update)

    def poll_slow(self) -> None:
        """Proxy sync status and SLOs (each reads every sidecar again, so less often)."""
        statuses, status_error = _guarded(self.sources.statuses)
        slos, slo_error = _guarded(self.sources.slos)
        when = self.clock()
        self._publish({"proxies": _section(statuses, status_error, when),
                       "slos": _section(slos, slo_error, when)})
