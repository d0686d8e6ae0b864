"""The series behind the sparklines: each service version's recent RPS, success rate and p99."""

from __future__ import annotations

from typing import Any

HISTORY_POINTS = 150


class History:
    """The last N points of each service version's RPS, success rate and p99, on one shared time axis."""

    FIELDS = ("rps", "success_rate", "p99_ms")

    def __init__(self, points: int = HISTORY_POINTS) -> None:
        self.points = points
        self.t: list[float] = []
        self.series: dict[str, dict[str, Any]] = {}

    def add(self, when: float, nodes: list[dict[str, Any]]) -> None:
        self.t.append(round(when, 3))
        for n in nodes:
            if n["kind"] != "service" or n["id"] in self.series:
                continue
            self.series[n["id"]] = {"id": n["id"], "app": n["app"], "version": n["version"],
                                    "project": n["project"],
                                    **{f: [None] * (len(self.t) - 1) for f in self.FIELDS}}
        current = {n["id"]: n for n in nodes}
        for nid, s in self.series.items():
            for f in self.FIELDS:
                s[f].append(current[nid].get(f) if nid in current else None)
        drop = max(0, len(self.t) - self.points)
        if drop:
            del self.t[:drop]
            for s in self.series.values():
                for f in self.FIELDS:
                    del s[f][:drop]
        for nid in [nid for nid, s in self.series.items() if all(s[f] == [None] * len(s[f]) for f in self.FIELDS)
                    and nid not in current]:
            del self.series[nid]

    def as_dict(self) -> dict[str, Any]:
        return {"t": list(self.t), "series": [{**s, **{f: list(s[f]) for f in self.FIELDS}}
                                               for _, s in sorted(self.series.items())]}
