"""Access-log filtering and the `top` aggregation, as pure functions over the sidecars' JSON log lines."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from meshctl.errors import UsageError
from meshctl.mesh import account_of
from meshctl.telemetry.golden import OUTSIDE

STATUS_RE = re.compile(r"^([1-5])xx$|^([1-5][0-9][0-9])$")


@dataclass(frozen=True)
class LogFilter:
    statuses: tuple[str, ...] = ()  # "503" or "5xx"
    path: str | None = None
    peer: str | None = None
    direction: str | None = None

    @classmethod
    def parse(cls, status: str | None, path: str | None, peer: str | None, direction: str | None) -> LogFilter:
        statuses = tuple(s.strip().lower() for s in (status or "").split(",") if s.strip())
        bad = [s for s in statuses if not STATUS_RE.match(s)]
        if bad:
            raise UsageError(f"--status {bad[0]!r}: give a status such as 503, a class such as 5xx, or a comma list")
        if direction not in (None, "inbound", "outbound"):
            raise UsageError(f"--direction {direction!r}: use inbound or outbound")
        return cls(statuses, path, peer, direction)

    def matches(self, entry: dict[str, Any]) -> bool:
        if self.direction and entry.get("direction") != self.direction:
            return False
        if self.statuses:
            code = str(entry.get("status", ""))
            if not any(code == s or (s.endswith("xx") and code[:1] == s[0]) for s in self.statuses):
                return False
        if self.path and not str(entry.get("path", "")).startswith(self.path):
            return False
        if self.peer:
            inbound = entry.get("direction") == "inbound"
            names = ([entry.get("source_workload"), entry.get("source")] if inbound else
                     [entry.get("destination_service"), entry.get("destination_workload"), entry.get("destination")])
            peer = self.peer
            if not any(n and (n == peer or account_of(str(n)) == peer or n.startswith(f"{peer}-")) for n in names):
                return False
        return True


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def top_routes(entries: list[dict[str, Any]], seconds: float) -> list[dict[str, Any]]:
    """HTTP requests grouped by route (caller, service, method, path without the query), busiest first.

    Only the server side's entries count, so a call through two sidecars is counted once; calls that
    leave the mesh count on the caller's side.
    """
    groups: dict[tuple[str, str, str, str], list[dict[str, Any]]] = {}
    for e in entries:
        if "method" not in e:
            continue
        if e.get("direction") == "inbound":
            key = (e.get("source_workload") or "unknown", e.get("destination_service") or "?")
        elif e.get("destination_service") in OUTSIDE or e.get("destination_workload") == "unknown":
            key = (e.get("source_workload") or "?", e.get("authority") or e.get("destination_service") or "?")
        else:
            continue
        path = str(e.get("path", "")).split("?", 1)[0]
        groups.setdefault((*key, e["method"], path), []).append(e)
    rows = []
    for (src, dst, method, path), items in groups.items():
        durations = [float(e.get("duration_ms") or 0) for e in items]
        ok = sum(1 for e in items if 0 < int(e.get("status") or 0) < 500)
        rows.append({"source": src, "destination": dst, "method": method, "path": path, "count": len(items),
                     "rps": round(len(items) / seconds, 2) if seconds > 0 else None,
                     "success_rate": round(100.0 * ok / len(items), 2), "p50_ms": percentile(durations, 0.5),
                     "max_ms": max(durations)})
    return sorted(rows, key=lambda r: (-r["count"], r["destination"], r["path"]))
