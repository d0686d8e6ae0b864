"""`stat -t 30s` looks back: the sidecars' history answers parsed, the window's deltas scaled to the window, a young
sidecar's footnote, a restarted one counted from zero (never negative), and older sidecars measured the old way."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from rich.console import Console

from meshctl.context import Context
from meshctl.telemetry import golden, lookback, mesh
from meshctl.telemetry.lookback import History, looked_back, parse_history
from meshctl.telemetry.scrape import Sample
from sidecar.history import CounterHistory

KEY = ("p", "reviews", "v1")
LABELS = {"reporter": "destination", "destination_service": "reviews", "destination_version": "v1",
          "destination_service_namespace": "p"}


def requests(n: float, code: str = "200") -> Sample:
    return Sample("istio_requests_total", {**LABELS, "response_code": code}, n)


def history(now: list[Sample], then: list[Sample], span_s: float = 30.0, history_s: float = 600.0) -> History:
    return History(now, then, span_s, history_s)


def test_the_sidecars_own_answer_parses() -> None:
    counts = {"n": 0.0}

    class Clock:
        now = 0.0

        def __call__(self) -> float:
            return self.now

    clock = Clock()
    key = ("istio_requests_total", tuple({**LABELS, "response_code": "200"}.items()))
    h = CounterHistory(lambda: [(key, counts["n"])], clock)
    for _ in range(40):
        clock.now += 1
        counts["n"] += 2
        h.tick()
    parsed = parse_history(h.answer(30.0))
    assert parsed is not None and parsed.span_s == 30.0 and parsed.history_s == 40.0
    assert [s.value for s in parsed.now] == [80.0] and [s.value for s in parsed.then] == [20.0]
    assert parsed.now[0].labels["response_code"] == "200"


@pytest.mark.parametrize("bad", [None, [], {"series": [["x", {}]], "now": [], "then": [], "span_s": 1,
                                            "history_s": 1}, {"series": [], "now": [], "then": []},
                                 {"series": [["x", "notlabels"]], "now": [1], "then": [0], "span_s": 1,
                                  "history_s": 1}])
def test_an_answer_of_another_shape_is_none(bad: Any) -> None:
    assert parse_history(bad) is None


def test_the_delta_is_scaled_to_the_window_asked_for() -> None:
    answers = {"a": history([requests(160), requests(10, "503")], [requests(100), requests(4, "503")], span_s=20.0)}
    measured = looked_back(answers, 30.0, golden.by_service_version)
    row = measured.tallied[KEY]
    assert (row.requests, row.errors) == (99.0, 9.0) and measured.notes == []  # 66 and 6 in 20 s -> 30 s


def test_a_young_sidecar_gives_what_it_has_unscaled_and_says_so() -> None:
    answers = {"old": history([requests(50)], [requests(20)]),
               "web-proxy": history([requests(12)], [], span_s=12.0, history_s=12.0)}
    measured = looked_back(answers, 30.0, golden.by_service_version)
    assert measured.tallied[KEY].requests == 30 + 12
    assert measured.notes == ["web-proxy: only 12s of history"]


def test_a_counter_that_went_down_counts_from_zero_never_negative() -> None:
    """A restart between the two reads (a fake scrape: then > now) is a new proxy: what it counted since."""
    answers = {"a": history([requests(7), requests(1, "503")], [requests(100), requests(5, "503")])}
    row = looked_back(answers, 30.0, golden.by_service_version).tallied[KEY]
    assert (row.requests, row.errors) == (8.0, 1.0)
    assert row.requests >= 0 and row.errors >= 0


def test_a_truncated_history_is_noted() -> None:
    answer = History([requests(2)], [requests(1)], 30.0, 600.0, truncated=True)
    assert "leaves some out" in looked_back({"a": answer}, 30.0, golden.by_service_version).notes[0]


class FakeProxy:
    def __init__(self, name: str) -> None:
        self.name = name


def test_measure_reads_histories_and_waits_only_for_sidecars_without_one(monkeypatch: pytest.MonkeyPatch) -> None:
    proxies: list[Any] = [FakeProxy("new"), FakeProxy("old")]
    scrapes = iter([{"old": [requests(10)]}, {"old": [requests(25)]}])
    answers = {"new": history([requests(40)], [requests(10)]), "old": None}
    monkeypatch.setattr(mesh, "each", lambda c, ps, read: {p.name: answers[p.name] for p in ps})
    monkeypatch.setattr(mesh, "metrics", lambda c, ps: next(scrapes))
    naps: list[float] = []
    monkeypatch.setattr(mesh.time, "sleep", naps.append)
    measured = lookback.measure(Context(), proxies, 30.0, golden.by_service_version)
    assert measured.tallied[KEY].requests == 30 + 15 and naps == [30.0]
    assert measured.notes == ["old: no counter history (unreachable, or an older sidecar image); measured over the "
                              "next 30s"]


def test_a_truncated_history_is_measured_by_waiting(monkeypatch: pytest.MonkeyPatch) -> None:
    """Series past the table's cap (a 503 that first appears in an incident) are missing from a truncated
    history: its sidecar is measured over the next window instead, and the 503s are counted."""
    late = [requests(10), requests(5, "503")]
    answers = {"full": History([requests(40)], [requests(10)], 30.0, 600.0, truncated=True)}
    scrapes = iter([{"full": [requests(10)]}, {"full": late}])
    monkeypatch.setattr(mesh, "each", lambda c, ps, read: {p.name: answers[p.name] for p in ps})
    monkeypatch.setattr(mesh, "metrics", lambda c, ps: next(scrapes))
    naps: list[float] = []
    monkeypatch.setattr(mesh.time, "sleep", naps.append)
    measured = lookback.measure(Context(), [FakeProxy("full")], 30.0, golden.by_service_version)
    assert naps == [30.0] and measured.tallied[KEY].requests == 5
    assert measured.notes == ["full: too many series for its history; measured over the next 30s"]


def test_measure_never_waits_when_every_sidecar_has_a_history(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mesh, "each", lambda c, ps, read: {p.name: history([requests(3)], []) for p in ps})
    naps: list[float] = []
    monkeypatch.setattr(mesh.time, "sleep", naps.append)
    measured = lookback.measure(Context(), [FakeProxy("a")], 5.0, golden.by_service_version)
    assert naps == [] and measured.tallied[KEY].requests == 0.5  # 3 in 30 s, scaled to 5 s


def test_window_zero_is_the_totals_since_each_proxy_started(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mesh, "metrics", lambda c, ps: {"a": [requests(42)]})
    measured = lookback.measure(Context(), [FakeProxy("a")], 0, golden.by_service_version)
    assert measured.tallied[KEY].requests == 42 and measured.notes == []


def test_stat_footnotes_go_under_the_table_and_to_stderr_with_json() -> None:
    from meshctl.cli import observe
    from meshctl.output import OutputFormat

    out, err = io.StringIO(), io.StringIO()
    c = Context(out=Console(file=out, width=200, color_system=None), err=Console(file=err, width=200,
                                                                                  color_system=None))
    notes = ["web-proxy: only 12s of history"]
    c.out.print(observe._stat_view(c, OutputFormat.table, [], notes))
    assert out.getvalue().splitlines()[-1] == "* web-proxy: only 12s of history" and err.getvalue() == ""
    out.truncate(0)
    out.seek(0)
    c.out.print(observe._stat_view(c, OutputFormat.json, [], notes))
    assert json.loads(out.getvalue()) == [] and err.getvalue() == "note: web-proxy: only 12s of history\n"
