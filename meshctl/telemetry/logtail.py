"""`logs -f -n N`: the last N entries, then each new one as it comes, in columns that line up across lines.

The live streams start before the history is read, so no entry falls between the two; the overlap (an
entry in both) is printed once. Columns are sized from the header, every proxy's name and the history's
rows (a path at most 60 wide, a peer 48); a later, longer path or peer is cut with an ellipsis rather than
move the columns (-o json has every byte).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator
from typing import Any

from meshctl.aligned import Aligned
from meshctl.telemetry.logs import LogFilter

COLUMNS = ["time", "proxy", "dir", "method", "path", "status", "duration", "peer", "tls", "flags"]
MINIMUMS = {"time": 8, "method": 7, "path": 32, "duration": 9, "peer": 20}
CAPS = {"path": 60, "peer": 48}


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}ms"


def row(e: dict[str, Any]) -> list[Any]:
    """One entry's cells, in COLUMNS order."""
    inbound = e.get("direction") == "inbound"
    peer = e.get("source_workload") or e.get("source") if inbound else e.get("destination_service") or \
        e.get("destination")
    when = time.strftime("%H:%M:%S", time.localtime(e.get("time") or 0))
    return [when, e.get("proxy"), "in" if inbound else "out", e.get("method", "TCP"),
            e.get("path", "-"), e.get("status", "-"), _ms(e.get("duration_ms")), peer,
            "mTLS" if e.get("mtls") else "plain", e.get("flags", "-")]


def last(entries: Iterable[dict[str, Any]], wanted: LogFilter, n: int) -> list[dict[str, Any]]:
    """The newest `n` entries that match, oldest first."""
    if n <= 0:
        return []
    return sorted((e for e in entries if wanted.matches(e)), key=lambda e: e.get("time") or 0)[-n:]


def _identity(entry: dict[str, Any]) -> str:
    return json.dumps(entry, sort_keys=True, default=str)


def followed(shown: list[dict[str, Any]], live: Iterator[dict[str, Any]],
             wanted: LogFilter) -> Iterator[dict[str, Any]]:
    """The live entries that match, without those `shown` already (the streams overlap the history read)."""
    pending = {_identity(e) for e in shown}
    for entry in live:
        if not wanted.matches(entry):
            continue
        if pending:
            key = _identity(entry)
            if key in pending:
                pending.discard(key)
                continue
        yield entry


def columns(proxies: Iterable[str], shown: Iterable[dict[str, Any]]) -> Aligned:
    """Columns wide enough for every proxy's name and the rows already shown."""
    names = [len(p) for p in proxies]
    return Aligned(COLUMNS, [row(e) for e in shown], {**MINIMUMS, "proxy": max(names, default=0)}, CAPS)
