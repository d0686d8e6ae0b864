"""The sidecar's counter history: bounded rings, rotation, the nearest snapshot on the monotonic clock, the
answer's JSON, and /stats/history on the admin port (host only)."""

from __future__ import annotations

import asyncio
import json
from array import array

import pytest

from sidecar import admin, history
from sidecar.history import CounterHistory, Ring, Snapshot, nearest
from sidecar.meters import Meters
from tests.unit.engine.test_tap import get

REQ = "istio_requests_total"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0  # monotonic: any origin

    def __call__(self) -> float:
        return self.now


class Counters:
    """A fake registry: one request counter per label set, as prometheus_client's collect() names them."""

    def __init__(self) -> None:
        self.counts: dict[str, float] = {}

    def __call__(self) -> list[tuple[history.SeriesKey, float]]:
        return [((REQ, (("response_code", code),)), n) for code, n in self.counts.items()] + [
            (("istio_requests_created", ()), 1.0)]  # not a counter the history keeps


def snap(at: float) -> Snapshot:
    return Snapshot(at, array("d"))


def test_a_ring_is_bounded_and_drops_the_oldest() -> None:
    ring = Ring(every_s=1.0, keep_s=5.0)
    for t in range(20):
        assert ring.due(float(t))
        ring.add(snap(float(t)))
    assert [s.at for s in ring.snapshots] == [14.0, 15.0, 16.0, 17.0, 18.0, 19.0]
    assert not ring.due(19.5) and ring.due(20.0)


def test_nearest_is_closest_to_the_window_but_never_younger_than_half_of_it() -> None:
    snaps = [snap(t) for t in (0.0, 10.0, 20.0, 25.0, 29.7)]
    assert nearest(snaps, 30.0, 10.0).at == 20.0  # type: ignore[union-attr]
    assert nearest(snaps, 30.0, 7.0).at == 25.0  # type: ignore[union-attr]  # 5 s ago beats 10 s ago
    assert nearest(snaps, 30.0, 15.0).at == 10.0  # type: ignore[union-attr]  # a tie: the older one
    assert nearest(snaps, 30.0, 0.4).at == 29.7  # type: ignore[union-attr]
    assert nearest([snap(29.5)], 30.0, 2.0).at == 29.5  # type: ignore[union-attr]  # too young: the oldest there is
    assert nearest(snaps, 30.0, 3600.0).at == 0.0  # type: ignore[union-attr]  # shorter history: the oldest
    assert nearest([], 30.0, 5.0) is None


def test_the_history_looks_back_on_the_monotonic_clock_and_reports_how_far_it_reaches() -> None:
    clock, counters = Clock(), Counters()
    h = CounterHistory(counters, clock, fine=(1.0, 60.0), coarse=(10.0, 900.0))
    for _ in range(120):  # two minutes, a request a second
        clock.now += 1.0
        counters.counts["200"] = counters.counts.get("200", 0) + 1
        h.tick()
    answer = h.answer(30.0)
    assert answer["series"] == [[REQ, {"response_code": "200"}]]
    assert answer["now"] == [120.0] and answer["then"] == [90.0] and answer["span_s"] == 30.0
    assert answer["history_s"] == 120.0 and answer["uptime_s"] == 120.0
    long = h.answer(300.0)  # past the fine ring's minute: the coarse ring's oldest, the start
    assert long["then"] == [0.0] and long["span_s"] == 120.0
    assert len(h.rings[0].snapshots) == 61 and len(h.rings[1].snapshots) == 13


def test_a_series_born_after_a_snapshot_was_zero_then() -> None:
    clock, counters = Clock(), Counters()
    h = CounterHistory(counters, clock)
    clock.now += 10
    counters.counts["503"] = 4
    answer = h.answer(10.0)
    assert answer["now"] == [4.0] and answer["then"] == [0.0] and answer["span_s"] == 10.0


def test_the_series_table_is_bounded() -> None:
    clock, counters = Clock(), Counters()
    h = CounterHistory(counters, clock, max_series=2)
    counters.counts = {"200": 1, "404": 2, "503": 3}
    clock.now += 1
    h.tick()
    assert len(h.series) == 2 and h.truncated and len(h.rings[0].snapshots[-1].values) == 2
    assert h.answer(1.0)["truncated"] is True


def test_memory_stays_bounded_over_a_long_run() -> None:
    clock, counters = Clock(), Counters()
    h = CounterHistory(counters, clock)
    for i in range(3600):
        clock.now += 1.0
        counters.counts[str(i % 50)] = float(i)
        h.tick()
    fine, coarse = (len(r.snapshots) for r in h.rings)
    assert (fine, coarse) == (61, 91) and h.history_s(clock.now) == 900.0


def test_counted_reads_what_collect_gives_without_collecting() -> None:
    """Meters.counted() reads prometheus_client's children directly (collect() is too slow once a second on the
    event loop): the same names, labels and values as collect(), so a library upgrade that changes its
    internals fails here, not in `stat -t`."""
    meters = Meters()
    for i in range(5):
        series = meters.http_series(("destination", f"w{i}") + ("x",) * 23)
        series[0].inc(i + 1)
        for ms in (0.3, 7.0, 99.0, 5e6):
            series[1].observe(ms)
    meters.tcp_opened.labels(*("t",) * len(meters.tcp_opened._labelnames)).inc(3)
    meters.tcp_sent.labels(*("t",) * len(meters.tcp_sent._labelnames)).inc(1234)
    collected = sorted((s.name, tuple(sorted(s.labels.items())), s.value)
                       for metric in (meters.requests, meters.duration, meters.tcp_opened, meters.tcp_closed,
                                      meters.tcp_sent, meters.tcp_received)
                       for family in metric.collect() for s in family.samples if s.name in history.WANTED)
    for _ in range(2):  # the second read comes from the cached keys
        counted = sorted((name, tuple(sorted(pairs)), value) for (name, pairs), value in meters.counted())
        assert counted == collected and len(counted) == 5 + 5 * 16 + 2  # 16 buckets a histogram, up to +Inf


def test_the_meters_feed_the_history_with_prometheus_sample_names() -> None:
    meters = Meters()
    h = CounterHistory(meters.counted)
    labels = ("destination",) + ("x",) * 24
    series = meters.http_series(labels)
    series[0].inc()
    series[1].observe(7.0)
    answer = h.answer(5.0)
    names = {name for name, _ in answer["series"]}  # type: ignore[attr-defined]
    assert names == {REQ, "istio_request_duration_milliseconds_bucket"}
    assert sum(answer["now"]) == 1 + 12  # type: ignore[arg-type]  # the request; 7 ms in 12 buckets (10 ms to +Inf)


@pytest.mark.parametrize(("query", "window"), [("window=30", 30.0), ("window=0.5&x=1", 0.5), ("window=0", None),
                                                ("window=nan", None), ("window=inf", None), ("", None),
                                                ("window=abc", None)])
def test_the_window_query(query: str, window: float | None) -> None:
    assert history.window_of(query) == window


def test_the_answer_is_compact_json_and_a_bad_query_is_400() -> None:
    h = CounterHistory(Counters(), Clock())
    status, ctype, body = history.serve(h, "window=5")
    assert (status, ctype) == (200, "application/json") and b" " not in body
    assert set(json.loads(body)) == {"window_s", "span_s", "history_s", "uptime_s", "truncated", "series", "now",
                                     "then"}
    assert history.serve(h, "window=-1")[0] == 400


async def _get(port: int, path: str, source: str) -> bytes:
    reader, writer = await get(port, path, source)
    data = await reader.read()
    writer.close()
    return data


@pytest.mark.parametrize(("source", "status"), [("127.0.0.3", b"200 OK"),  # .3 plays the host's gateway
                                                ("127.0.0.1", b"200 OK"),  # the pod itself, as for /spans
                                                ("127.0.0.2", b"403 Forbidden")])  # another container
def test_the_admin_port_serves_the_history_to_the_host_only(source: str, status: bytes) -> None:
    h = CounterHistory(Counters(), Clock())

    async def run() -> bytes:
        server = await admin.serve("127.0.0.1", 0, {}, frozenset({"127.0.0.3"}), None,
                                   {"/stats/history": lambda q: history.serve(h, q)})
        port = server.sockets[0].getsockname()[1]
        try:
            return await _get(port, "/stats/history?window=30", source)
        finally:
            server.close()

    response = asyncio.run(run())
    assert response.startswith(b"HTTP/1.1 " + status)
    assert (b'"window_s":30.0' in response) == (status == b"200 OK")
