"""`meshctl tap` without Docker: the flow file (read back by mitmproxy's own FlowReader), the client against a
real tap stream on loopback, the printed rows and JSON lines, and bad flags."""

from __future__ import annotations

import asyncio
import io
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mitmproxy.http import HTTPFlow
from mitmproxy.io import FlowReader
from rich.console import Console

from meshctl.cli import tap as cli_tap
from meshctl.context import Context
from meshctl.errors import MeshError, UsageError
from meshctl.status import ExitCode
from meshctl.telemetry.flows import FlowFile
from meshctl.telemetry.tap import Target
from sidecar import admin
from sidecar.engine import tap as engine_tap
from sidecar.engine.tap import TapHub, TapSpec
from tests.unit.cli import meshctl
from tests.unit.engine.test_tap import SECRET, call

TD = "spiffe://cluster.local/ns/shop/sa"


def rec(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "type": "call", "time": 1_800_000_000.25, "direction": "inbound", "peer": f"{TD}/productpage",
        "peer_address": "172.18.0.5:41000", "client_address": "172.18.0.5:41000", "upstream": "127.0.0.1:9080",
        "protocol": "HTTP/1.1", "method": "POST", "authority": "reviews:9080", "path": "/reviews/1?x=1",
        "status": 201, "latency_ms": 12.5, "request_bytes": 5, "response_bytes": 2, "flags": "-", "error": None,
        "request_headers": [["Host", "reviews:9080"], ["Authorization", "<redacted>"], ["content-length", "5"]],
        "response_headers": [["content-length", "2"], ["Set-Cookie", "<redacted>"]],
        "request_body": {"encoding": "utf-8", "data": "hello", "truncated": False},
        "response_body": {"encoding": "base64", "data": "AP8=", "truncated": False}, "proxy": "shop.reviews-v1"}
    return {**base, **over}


def read_flows(path: Path) -> list[HTTPFlow]:
    with path.open("rb") as f:
        flows = list(FlowReader(f).stream())
    assert all(isinstance(f, HTTPFlow) for f in flows)
    return flows  # type: ignore[return-value]


# --- the flow file --------------------------------------------------------------------------------------------


def test_flows_round_trip_through_mitmproxys_reader(tmp_path: Path) -> None:
    target = tmp_path / "tap.mitm"
    out = FlowFile(target)
    out.add(rec())
    out.add(rec(direction="outbound", method="GET", path="/ratings/1", status=503, request_bytes=0,
                response_bytes=300, request_body=None, response_body=None, peer=f"{TD}/ratings",
                upstream="172.18.0.9:9080", authority="ratings:9080"))
    out.add(rec(status=0, error="upstream connection closed before a response", response_headers=None))
    out.add(rec(protocol="HTTP/2", grpc_status=14, authority="grpc:50051", path="/pkg.Svc/Call"))
    out.add(rec(request_body={"encoding": "utf-8", "data": "hel", "truncated": True}))
    assert not target.exists()  # nothing until the tap ends
    out.commit()
    assert target.stat().st_mode & 0o777 == 0o600
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    first, second, failed, h2, cut = read_flows(target)
    assert first.request.method == "POST" and first.request.path == "/reviews/1?x=1"
    assert first.request.host == "reviews" and first.request.port == 9080 and first.request.http_version == "HTTP/1.1"
    assert first.request.headers["authorization"] == "<redacted>" and first.request.content == b"hello"
    assert first.response is not None and first.response.status_code == 201 and first.response.reason == "Created"
    assert first.response.content == b"\x00\xff" and first.response.headers["set-cookie"] == "<redacted>"
    assert first.client_conn.peername == ("172.18.0.5", 41000)
    assert first.response.timestamp_start - first.request.timestamp_start == pytest.approx(0.0125, abs=1e-6)
    assert "inbound at shop.reviews-v1, peer " + f"{TD}/productpage" in first.comment
    assert second.request.method == "GET" and second.response is not None and second.response.status_code == 503
    assert second.request.content == b"" and second.response.raw_content is None  # not captured: "missing"
    assert second.server_conn.address == ("172.18.0.9", 9080)
    assert failed.response is None and failed.error is not None and "closed before" in failed.error.msg
    assert h2.request.http_version == "HTTP/2.0" and h2.request.authority == "grpc:50051"
    assert "grpc-status 14" in h2.comment
    assert "request body cut (5 bytes in all)" in cut.comment


def test_mitmdump_reads_the_file(tmp_path: Path) -> None:
    target = tmp_path / "tap.mitm"
    out = FlowFile(target)
    out.add(rec())
    out.add(rec(status=0, error="upstream reset", response_headers=None))
    out.commit()
    mitmdump = Path(sys.executable).parent / "mitmdump"
    done = subprocess.run([str(mitmdump), "-n", "-r", str(target), "--flow-detail", "2"], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "POST http://reviews:9080/reviews/1?x=1" in done.stdout and "<< 201 Created" in done.stdout
    assert "Authorization: <redacted>" in done.stdout and "<< upstream reset" in done.stdout


def test_a_bad_save_path_fails_before_anything_runs(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="does not exist"):
        FlowFile(tmp_path / "missing" / "tap.mitm")
    with pytest.raises(UsageError, match="directory"):
        FlowFile(tmp_path)
    out = FlowFile(tmp_path / "tap.mitm")
    out.add(rec())
    out.discard()
    assert list(tmp_path.iterdir()) == []


# --- the client and the command's output, against a real stream -----------------------------------------------


class Sidecar:
    """A tap hub behind the admin server on loopback, on a loop in a thread."""

    def __init__(self) -> None:
        self.hub = TapHub(lambda: ("shop.web", f"{TD}/web"))
        self.loop = asyncio.new_event_loop()
        self.port = 0
        self.server: asyncio.Server | None = None
        ready = threading.Event()

        async def start() -> None:
            async def stream(q: str, peer: str, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
                await engine_tap.serve(self.hub, q, peer, r, w)

            self.server = await admin.serve("127.0.0.1", 0, {}, frozenset({"127.0.0.1"}), {"/tap": stream})
            self.port = self.server.sockets[0].getsockname()[1]
            ready.set()

        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        asyncio.run_coroutine_threadsafe(start(), self.loop)
        ready.wait(5)

    def offer_when_open(self, calls: list[Any]) -> None:
        def feed() -> None:
            if not self.hub.sessions:
                self.loop.call_later(0.01, feed)
                return
            for c in calls:
                self.hub.offer(c)

        self.loop.call_soon_threadsafe(feed)

    def close(self) -> None:
        async def shutdown() -> None:
            assert self.server is not None
            self.server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture
def sidecar() -> Iterator[Sidecar]:
    s = Sidecar()
    yield s
    s.close()


def context() -> tuple[Context, io.StringIO, io.StringIO]:
    out, err = io.StringIO(), io.StringIO()
    return Context(out=Console(file=out, width=300), err=Console(file=err, width=300)), out, err


def test_json_lines_and_the_saved_file_carry_the_same_requests(sidecar: Sidecar, tmp_path: Path) -> None:
    c, out, err = context()
    calls = [call(f"/p/{i}", status=200 + i, headers=[("host", "web"), ("authorization", f"Bearer {SECRET}")])
             for i in range(4)]
    sidecar.offer_when_open(calls)
    flows = FlowFile(tmp_path / "t.mitm")
    code = cli_tap.run(c, "web", [Target("shop.web", "127.0.0.1", sidecar.port)], TapSpec.parse(max_records=3),
                       0, cli_tap.TapOutput.json, flows)
    flows.commit()
    assert code == 0
    lines = [json.loads(x) for x in out.getvalue().splitlines()]
    assert [(x["method"], x["path"], x["status"], x["proxy"]) for x in lines] == [
        ("GET", f"/p/{i}", 200 + i, "shop.web") for i in range(3)]
    assert "tapping 1 sidecar of web: shop.web" in err.getvalue() and "3 requests tapped" in err.getvalue()
    saved = read_flows(tmp_path / "t.mitm")
    assert [(f.request.method, f.request.path, f.response and f.response.status_code) for f in saved] == [
        ("GET", f"/p/{i}", 200 + i) for i in range(3)]
    assert SECRET not in out.getvalue() and SECRET.encode() not in (tmp_path / "t.mitm").read_bytes()


def test_table_rows(sidecar: Sidecar) -> None:
    c, out, _ = context()
    sidecar.offer_when_open([call("/api/books", status=503)])
    code = cli_tap.run(c, "web", [Target("shop.web", "127.0.0.1", sidecar.port)], TapSpec.parse(max_records=1), 0,
                       cli_tap.TapOutput.table, None)
    assert code == 0
    header, line = out.getvalue().splitlines()
    assert header.split() == ["TIME", "PROXY", "DIR", "PEER", "METHOD", "PATH", "STATUS", "LATENCY", "SIZES"]
    assert line.split()[1:7] == ["web", "in", "productpage", "GET", "/api/books", "503"]


def test_duration_ends_the_tap(sidecar: Sidecar) -> None:
    c, _, err = context()
    code = cli_tap.run(c, "web", [Target("shop.web", "127.0.0.1", sidecar.port)], TapSpec.parse(duration=0.5), 0.5,
                       cli_tap.TapOutput.json, None)
    assert code == 0 and "0 requests tapped" in err.getvalue()


def test_a_sidecar_that_cannot_be_reached_is_an_error_when_it_is_the_only_one(sidecar: Sidecar) -> None:
    c, _, err = context()
    with pytest.raises(MeshError, match=r"cannot reach shop\.gone"):
        cli_tap.run(c, "web", [Target("shop.gone", "127.0.0.1", 1)], TapSpec(), 1, cli_tap.TapOutput.json, None)
    code = cli_tap.run(c, "web", [Target("shop.gone", "127.0.0.1", 1), Target("shop.web", "127.0.0.1", sidecar.port)],
                       TapSpec.parse(duration=0.3), 0.3, cli_tap.TapOutput.json, None)
    assert code == 0 and "warning: cannot reach shop.gone" in err.getvalue()


def test_short_peer_names() -> None:
    assert cli_tap.short_peer(rec()) == "productpage"
    assert cli_tap.short_peer(rec(peer="spiffe://td/ns/other/sa/api")) == "other/api"
    assert cli_tap.short_peer(rec(peer="")) == "172.18.0.5 (plain)"


# --- flags ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("flags", "named"), [
    (["--status", "6xx"], "--status"), (["--method", "GET POST"], "--method"), (["--path", "api"], "--path"),
    (["--duration", "soon"], "--duration"), (["--body-limit", "100000"], "--body-limit"), (["-o", "yaml"], "yaml"),
])
def test_bad_flags_are_one_line_and_exit_2(flags: list[str], named: str, tmp_path: Path) -> None:
    done = meshctl("tap", "web", *flags, home=tmp_path / "home", env={"DOCKER_HOST": "unix:///nonexistent.sock"})
    assert done.code == ExitCode.USAGE, done.err
    lines = [x for x in done.err.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and named in lines[0], done.err


def test_save_into_a_missing_directory_is_refused_before_docker_is_asked(tmp_path: Path) -> None:
    done = meshctl("tap", "web", "--save", str(tmp_path / "nope" / "x.mitm"), home=tmp_path / "home",
                   env={"DOCKER_HOST": "unix:///nonexistent.sock"})
    assert done.code == ExitCode.USAGE and "does not exist" in done.err, done.err
    assert not (tmp_path / "nope").exists() and os.listdir(tmp_path) in ([], ["home"])
