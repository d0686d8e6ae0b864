"""`logs -f -n N`: the last N matching entries, then the new ones (the overlap once), in columns that line up."""

from __future__ import annotations

import io
import queue
from typing import Any

import pytest
from rich.console import Console

from meshctl.cli import observe
from meshctl.context import Context
from meshctl.output import OutputFormat
from meshctl.telemetry import logtail, mesh
from meshctl.telemetry.logs import LogFilter

EVERYTHING = LogFilter()


def entry(t: float, path: str = "/", status: int = 200, proxy: str = "shop.reviews-v1", **more: Any) -> dict[str, Any]:
    return {"time": t, "direction": "inbound", "method": "GET", "path": path, "status": status, "duration_ms": 1.5,
            "source_workload": "productpage", "mtls": True, "flags": "-", "proxy": proxy, **more}


def test_last_keeps_the_newest_matching_entries_oldest_first() -> None:
    entries = [entry(3), entry(1), entry(4, status=503), entry(2), entry(5, status=503)]
    assert [e["time"] for e in logtail.last(entries, EVERYTHING, 3)] == [3, 4, 5]
    assert [e["time"] for e in logtail.last(entries, LogFilter.parse("5xx", None, None, None), 1)] == [5]
    assert logtail.last(entries, EVERYTHING, 0) == []


def test_followed_skips_the_overlap_with_the_history_once_and_filters() -> None:
    shown = [entry(1), entry(2)]
    live = iter([entry(2), entry(3, status=404), entry(2), entry(4)])
    got = logtail.followed(shown, live, LogFilter.parse("2xx", None, None, None))
    assert [e["time"] for e in got] == [2, 4]  # the first 2 was already shown; a second, equal one is new


def test_columns_fit_every_proxy_name_and_cut_long_paths() -> None:
    shown = [entry(1, "/short")]
    cols = logtail.columns(["shop.reviews-v1", "shop.a-much-longer-proxy-name"], shown)
    lines = [cols.header(), cols.line(logtail.row(shown[0])),
             cols.line(logtail.row(entry(2, "/" + "x" * 200, proxy="shop.a-much-longer-proxy-name", flags="UT")))]
    starts = {line.index(word) for line, word in zip(lines, ["STATUS", "200", "200"], strict=True)}
    assert len(starts) == 1, lines  # the status column starts at the same place on every line
    assert "…" in lines[2] and len(lines[2]) < 200 and lines[2].endswith("UT")
    assert not any(line.endswith(" ") for line in lines)


class FakeProxy:
    def __init__(self, name: str) -> None:
        self.name = name


def test_follow_prints_the_last_n_then_new_entries_aligned(monkeypatch: pytest.MonkeyPatch) -> None:
    history = {"shop.reviews-v1": [entry(t) for t in (1, 2, 3)],
               "shop.reviews-v2": [entry(2.5, "/reviews/2", proxy="shop.reviews-v2")]}
    monkeypatch.setattr(mesh, "access_log", lambda c, p, since=None, **kw: iter(history[p.name]))
    live: queue.Queue[Any] = queue.Queue()
    for e in (entry(3), entry(4, "/a/much/longer/path/than/before", status=503), None):  # None: the fake ends
        live.put(e)
    buffer = io.StringIO()
    c = Context(out=Console(file=buffer, width=200, color_system=None, soft_wrap=True))
    observe._follow(c, [FakeProxy("shop.reviews-v1"), FakeProxy("shop.reviews-v2")], None, 2, live, EVERYTHING,
                    OutputFormat.table)
    lines = buffer.getvalue().splitlines()
    assert len(lines) == 4 and lines[0].startswith("TIME")  # the header, the last 2, the one new entry
    assert "/reviews/2" in lines[1] and "/a/much/longer/path" in lines[3] and "503" in lines[3]
    assert len({line.index(word) for line, word in zip(lines, ["STATUS", "200", "200", "503"], strict=True)}) == 1
