"""`--watch`: kubectl's changed rows (`get -w`), a refreshing table (`proxy-status -w`, `stat -w`) on a terminal and
changed snapshots in a pipe, `--interval`, Ctrl-C as exit 130; and the fixed columns rows printed one by one use."""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from typer.testing import CliRunner

from meshctl import watch
from meshctl.aligned import Aligned
from meshctl.cli import app, run
from meshctl.context import Context
from meshctl.home import MeshHome
from meshctl.mesh import SNAPSHOT_JSON, proxy_dir
from meshctl.output import OutputFormat, simple_table
from meshctl.pilot import status as pilot_status
from meshctl.status import ExitCode
from meshctl.telemetry import lookback, mesh
from meshctl.telemetry.scrape import Sample
from tests.unit.fakes import FakeEngine
from tests.unit.test_cli_habits import sidecar


def console(terminal: bool = False) -> tuple[Console, io.StringIO]:
    buffer = io.StringIO()
    return Console(file=buffer, force_terminal=terminal, width=100, color_system=None, soft_wrap=True), buffer


def reads(*snapshots: Any) -> Callable[[], Any]:
    """A fake source: each call returns the next snapshot (the last one again once they run out)."""
    it: Iterator[Any] = iter(snapshots)
    last: list[Any] = []

    def read() -> Any:
        last[:] = [next(it, last[0] if last else None)]
        return last[0]

    return read


class Sleeps:
    def __init__(self) -> None:
        self.calls: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


# --- fixed columns -------------------------------------------------------------------------------------------


def test_columns_line_up_across_lines_and_carry_no_trailing_spaces() -> None:
    cols = Aligned(["name", "ns", "note"], [["reviews", "shop", "x"]])
    header, first, second = cols.header(), cols.line(["reviews", "shop", "x"]), cols.line(["db", "-", "longer note"])
    assert header == "NAME     NS    NOTE"
    assert first == "reviews  shop  x" and second == "db       -     longer note"
    assert [line.index(word) for line, word in ((header, "NS"), (first, "shop"), (second, "-"))] == [9, 9, 9]


def test_a_longer_name_widens_its_column_a_capped_one_is_cut() -> None:
    cols = Aligned(["name", "path", "status"], [["a", "/x", 200], ["b", "/a/b/c/d/e", 200]], caps={"path": 8})
    assert cols.line(["productpage-v1", "/x", 200]) == "productpage-v1  /x        200"
    assert cols.line(["a", "/a/very/long/path", 503]) == "a               /a/very…  503"
    assert cols.line(["a", "/b", 200]) == "a               /b        200"  # the widths stay


# --- kubectl's habit: rows as they change --------------------------------------------------------------------


def rows_of(*names: tuple[str, str]) -> dict[str, dict[str, str]]:
    return {name: {"name": name, "target": target} for name, target in names}


def test_rows_prints_the_table_then_added_changed_and_deleted_rows() -> None:
    out, buffer = console()
    sleep = Sleeps()
    read = reads(rows_of(("reviews", "v1")), rows_of(("reviews", "v1")),
                 rows_of(("reviews", "v2"), ("ratings", "v1")), rows_of(("ratings", "v1")))
    watch.rows(out, read, ["name", "target"], lambda r: [r["name"], r["target"]], 2.0, sleep=sleep,
               max_iterations=4)
    assert buffer.getvalue().splitlines() == ["NAME     TARGET", "reviews  v1", "ratings  v1", "reviews  v2",
                                              "reviews  v2  (deleted)"]
    assert sleep.calls == [2.0, 2.0, 2.0]


def test_rows_as_json_are_kubectls_watch_events() -> None:
    out, buffer = console()
    read = reads(rows_of(("reviews", "v1")), rows_of())
    watch.rows(out, read, ["name"], lambda r: [r["name"]], 1.0, fmt=OutputFormat.json, sleep=Sleeps(),
               max_iterations=2)
    decoder, text, events = json.JSONDecoder(), buffer.getvalue().strip(), []
    while text:
        event, end = decoder.raw_decode(text)
        events.append(event)
        text = text[end:].strip()
    assert events == [{"type": "ADDED", "object": {"name": "reviews", "target": "v1"}},
                      {"type": "DELETED", "object": {"name": "reviews", "target": "v1"}}]


# --- the watch(1) habit: a refreshing table -----------------------------------------------------------------


def test_refreshing_in_a_pipe_prints_each_changed_snapshot_once_with_no_control_codes() -> None:
    out, buffer = console()
    read = reads([1], [1], [2], [2], [3])
    watch.refreshing(out, read, lambda data: simple_table(["n"], [data]), 0.5, sleep=Sleeps(), max_iterations=5)
    assert buffer.getvalue() == "N\n1\n\nN\n2\n\nN\n3\n"


def test_refreshing_compares_the_data_not_the_rendering() -> None:
    """An age column moves on every read; only a change in the data prints again."""
    out, buffer = console()
    ages = iter(range(100))
    read = reads({"ack": 5}, {"ack": 5}, {"ack": 5})
    watch.refreshing(out, read, lambda data: f"acked {data['ack']}, {next(ages)}s ago", 1.0,
                     changed_on=lambda data: data["ack"], live=False, sleep=Sleeps(), max_iterations=3)
    assert buffer.getvalue() == "acked 5, 0s ago\n"


def test_refreshing_on_a_terminal_redraws_in_place() -> None:
    out, buffer = console(terminal=True)
    watch.refreshing(out, reads("one", "two"), lambda data: data, 1.0, sleep=Sleeps(), max_iterations=2)
    text = buffer.getvalue()
    assert "one" in text and "two" in text and "\x1b[" in text  # cursor movement: the table is drawn over


def test_one_read_without_waiting_when_bounded_to_one_iteration() -> None:
    sleep = Sleeps()
    watch.refreshing(console()[0], reads("x"), lambda data: data, 1.0, sleep=sleep, max_iterations=1)
    assert sleep.calls == []


# --- the CLI: --interval, Ctrl-C ----------------------------------------------------------------------------


@pytest.fixture
def cli(installed_home: Path) -> Callable[..., Any]:
    def invoke(*args: str) -> Any:
        out, buffer = console()
        ctx = Context(home=MeshHome(installed_home), out=out, err=console()[0])
        result = CliRunner().invoke(app, list(args), obj=ctx)
        result.printed = buffer.getvalue()
        return result

    return invoke


def test_ctrl_c_ends_a_watch_with_130_and_no_traceback(cli: Callable[..., Any],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    naps: list[float] = []

    def interrupted(seconds: float) -> None:
        naps.append(seconds)
        raise KeyboardInterrupt

    monkeypatch.setattr(watch.time, "sleep", interrupted)
    result = cli("get", "virtualservice", "-w", "--interval", "750ms")
    assert result.exit_code == ExitCode.INTERRUPTED, result.output
    assert naps == [0.75] and "Traceback" not in result.output and "Aborted" not in result.output
    assert result.printed.splitlines() == ["NAME  NAMESPACE  APPLIES TO"]


@pytest.mark.parametrize(("args", "message"), [(["get", "vs", "--interval", "2s"], "only with --watch"),
                                               (["get", "vs", "-w", "--interval", "0"], "too short"),
                                               (["proxy-status", "-w", "--wait"], "do not go together")])
def test_bad_watch_flags_are_usage_errors(installed_home: Path, args: list[str], message: str) -> None:
    err, buffer = console()
    code = run(args, Context(home=MeshHome(installed_home), out=console()[0], err=err))
    assert code == ExitCode.USAGE and message in buffer.getvalue() and len(buffer.getvalue().splitlines()) == 1


# --- `stat -w` and `proxy-status -w` in a pipe, on the fake engine ------------------------------------------------


class Interrupting:
    """watch's sleep: returns `naps` times, then raises KeyboardInterrupt as Ctrl-C does in a real sleep."""

    def __init__(self, naps: int) -> None:
        self.naps = naps
        self.calls: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)
        if len(self.calls) > self.naps:
            raise KeyboardInterrupt


def watched(home: Path, monkeypatch: pytest.MonkeyPatch, *argv: str, naps: int) -> tuple[int, str, str, list[float]]:
    """`meshctl ARGV` on one running sidecar (shop.details) with a sleep that Ctrl-Cs after `naps`: exit code,
    stdout, stderr and the sleeps asked for."""
    sleep = Interrupting(naps)
    monkeypatch.setattr(watch.time, "sleep", sleep)
    engine = FakeEngine(containers=[sidecar("shop", "details", [])])
    printed, errors = io.StringIO(), io.StringIO()
    out, err = (Console(file=buffer, width=200, color_system=None, soft_wrap=True) for buffer in (printed, errors))
    code = run(list(argv), Context(home=MeshHome(home), out=out, err=err, docker_factory=lambda: engine))
    return code, printed.getvalue(), errors.getvalue(), sleep.calls


def snapshots(text: str) -> list[str]:
    """A piped watch's output: its snapshots, a blank line between each."""
    assert "\x1b" not in text, repr(text)  # no control codes in a pipe
    return text.rstrip("\n").split("\n\n")


def counted(requests: float) -> lookback.History:
    """One sidecar's history answer: `requests` served to shop's details v1 in the last 5 s."""
    labels = {"reporter": "destination", "destination_service": "details", "destination_version": "v1",
              "destination_service_namespace": "shop", "response_code": "200"}
    return lookback.History([Sample("istio_requests_total", labels, requests)],
                            [Sample("istio_requests_total", labels, 0.0)], 5.0, 600.0)


def test_stat_watch_prints_the_table_then_each_change_and_ends_on_ctrl_c(installed_home: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    answers = iter([counted(50), counted(50), counted(75)])  # the second read is the first again: nothing new
    reads: list[str] = []

    def each(c: Context, proxies: list[Any], read: Callable[[str], Any]) -> dict[str, Any]:
        reads.append(",".join(p.name for p in proxies))
        return {p.name: next(answers) for p in proxies}

    monkeypatch.setattr(mesh, "each", each)
    code, out, err, naps = watched(installed_home, monkeypatch, "stat", "-w", "--interval", "1s", naps=2)
    assert code == ExitCode.INTERRUPTED and "Traceback" not in err and "Aborted" not in err, err
    assert naps == [1.0, 1.0, 1.0] and reads == ["shop.details"] * 3
    first, changed = snapshots(out)  # three reads, two tables: the unchanged read printed nothing
    assert first.splitlines()[0].split()[:4] == ["SERVICE", "VERSION", "PROJECT", "PODS"]
    assert first.splitlines()[1].split()[:7] == ["details", "v1", "shop", "1", "100.00%", "10.0", "-"]
    assert changed.splitlines()[0] == first.splitlines()[0]
    assert changed.splitlines()[1].split()[:6] == ["details", "v1", "shop", "1", "100.00%", "15.0"]


def test_proxy_status_watch_prints_the_table_then_each_change_and_ends_on_ctrl_c(
        installed_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    directory = proxy_dir(MeshHome(installed_home).proxies_dir, "shop", "details")
    directory.mkdir(parents=True)
    (directory / SNAPSHOT_JSON).write_text(json.dumps({"revision": 4, "hash": "h4"}))
    synced = {"revision": 4, "hash": "h4", "applied_at": 1_796_109_686.0, "proxy_version": "1.2"}
    # proxy-status reads once before it watches (the --wait loop's read), then the watch's first read
    acks = reads(synced, synced, synced, {**synced, "revision": 3, "hash": "h3"})  # then it is STALE
    monkeypatch.setattr(pilot_status, "fetch_status", lambda address, timeout=1.5: acks())
    code, out, err, naps = watched(installed_home, monkeypatch, "proxy-status", "-w", "--interval", "1s", naps=2)
    assert code == ExitCode.INTERRUPTED and "Traceback" not in err and "Aborted" not in err, err
    assert naps == [1.0, 1.0, 1.0]
    first, changed = snapshots(out)  # the second ack was the first again: nothing printed for it
    assert first.splitlines()[0].split()[:4] == ["NAME", "SERVICE", "VERSION", "STATUS"]
    assert first.splitlines()[1].split()[:5] == ["shop.details", "details", "v1", "SYNCED", "4"]
    assert changed.splitlines()[0].split() == first.splitlines()[0].split()  # the whole table again
    assert changed.splitlines()[1].split()[:4] == ["shop.details", "details", "v1", "STALE"]
    assert "  STALE (applied 3, current 4)  3  " in changed.splitlines()[1], changed
