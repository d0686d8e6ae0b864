"""The bench's gRPC load: h2load's output read into the bench's figures (h2load 1.52, Debian bookworm's, recorded
against the bench's gRPC server and broken variants of it, in h2load_output/), the gRPC server's message and
config, the nginx pair's gRPC hop, and where the load sits in plans and the meshed project."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import pytest
import yaml

from meshctl.bench import grpc_server, h2load, nginx, workload
from meshctl.bench import run as bench_run
from meshctl.bench.run import GRPC_LOAD, LOADS, Plan
from meshctl.context import Context
from meshctl.errors import MeshError
from meshctl.home import MeshHome, MeshSettings
from meshctl.pilot import changes
from tests.unit.test_bench import Node, block, named, one, parse_conf, server

RECORDED = Path(__file__).parent / "h2load_output"


def _out(name: str) -> str:
    return (RECORDED / f"{name}.txt").read_text()


# --- h2load's output ------------------------------------------------------------------------------------------

def test_a_clean_run_gives_throughput_latency_and_no_failure() -> None:
    log = (RECORDED / "log.tsv").read_text()
    r = h2load.parse(_out("ok"), log)
    assert r["requests"] == 153809 and r["rps"] == round(153809 / 3.0, 2)
    assert r["errors"] == 0 and r["socket_errors"] == 0
    ordered = sorted(int(line.split("\t")[2]) / 1000 for line in log.splitlines())
    assert r["p50_ms"] == ordered[9] and r["p99_ms"] == ordered[-1] and r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"]


def test_without_a_log_there_are_no_percentiles_rather_than_made_up_ones() -> None:
    r = h2load.parse(_out("ok"))
    assert r["rps"] > 0 and not any(k.startswith("p") and k.endswith("_ms") for k in r)


def test_http_failures_are_errors_and_not_throughput() -> None:
    r = h2load.parse(_out("not_found"))  # h2load's own req/s counts them: 63011
    assert r["errors"] == 63011 and r["rps"] == 0 and r["requests"] == 63011 and r["socket_errors"] == 0


def test_a_trailers_only_grpc_error_is_an_error_though_h2load_counts_it_a_success() -> None:
    """200 with `grpc-status: 14` in the trailers and no message: h2load says 23852 succeeded."""
    r = h2load.parse(_out("trailers_only"))
    assert r["errors"] == 23852 and r["rps"] == 0


def test_answers_are_counted_whole_messages_only() -> None:
    text = _out("ok")
    # the same run, had 10 answers been trailers-only: 10 messages fewer in the DATA bytes
    short = text.replace("(158730888) data", f"({158730888 - 10 * h2load.ANSWER_BYTES}) data")
    r = h2load.parse(short)
    assert r["errors"] == 10 and r["rps"] == round((153809 - 10) / 3.0, 2)
    assert h2load.ANSWER_BYTES == len(grpc_server.message()) == 1032


def test_stream_failures_are_socket_errors() -> None:
    text = _out("ok").replace("153809 succeeded, 0 failed, 0 errored, 0 timeout",
                              "153800 succeeded, 9 failed, 7 errored, 3 timeout")
    r = h2load.parse(text)
    assert r["socket_errors"] == 7 and r["errors"] == 2  # 9 failed: 7 below HTTP, 2 with an HTTP status


@pytest.mark.parametrize(("name", "message"), [("refused", "0 started"), ("http1_server", "16 started")])
def test_no_completed_call_is_an_error_naming_what_was_started(name: str, message: str) -> None:
    with pytest.raises(MeshError, match=f"h2load completed no gRPC call \\({message}\\)") as caught:
        h2load.parse(_out(name))
    assert "h2c" in (caught.value.hint or "")


def test_a_server_that_goes_away_mid_run_leaves_fewer_calls_not_hidden_ones() -> None:
    """nginx stopped after 1 s of a 2 s run: h2load counts nothing failed, but the rate shows it."""
    r = h2load.parse(_out("server_gone"))
    assert r["requests"] == 49815 and r["rps"] == round(49815 / 2.0, 2)


@pytest.mark.parametrize("text", ["", "h2load: command not found", "progress: 6% of clients started\n",
                                  _out("ok").replace("traffic:", "trafic:")])
def test_output_without_a_result_is_an_error(text: str) -> None:
    with pytest.raises(MeshError, match="h2load printed no result"):
        h2load.parse(text)


def test_log_lines_that_are_not_a_request_are_skipped() -> None:
    assert h2load.latencies("1\t200\t1500\n\ngarbage\n2\t200\t500\n3\t-1\tx\n") == [0.5, 1.5]


def test_h2load_is_bounded_in_time_twice_and_sends_a_grpc_call() -> None:
    argv = h2load.argv("grpc", 16, 16, 5.0)
    assert argv[:4] == ["timeout", "-k", "5", str(5 + h2load.GRACE_S)] and argv[4] == "h2load"
    assert "-c16" in argv and "-m16" in argv and argv[argv.index("-D") + 1] == "5"
    assert argv[argv.index("-N") + 1] == str(h2load.INACTIVITY_S)  # a silent connection fails its calls
    headers = [argv[i + 1] for i, a in enumerate(argv) if a == "-H"]
    assert headers == ["content-type: application/grpc", "te: trailers"]
    assert argv[argv.index("-d") + 1] == h2load.REQUEST_FILE and argv[-1] == "http://grpc:50051/bench.Echo/Call"
    assert argv[argv.index("--log-file") + 1] == h2load.LOG_FILE
    warm = h2load.argv("grpc", 16, 16, h2load.WARM_UP_S, log=False)
    assert "--log-file" not in warm and warm[warm.index("-D") + 1] == "1"
    assert h2load.argv("h", 1, 1, 0.2)[h2load.argv("h", 1, 1, 0.2).index("-D") + 1] == "1"  # never 0 (unbounded)


class FakeCaller:
    """exec_run's answers in order: the warm-up, the measured run, the log."""

    def __init__(self, *answers: tuple[int, str]) -> None:
        self.answers = list(answers)
        self.calls: list[list[str]] = []

    def exec_run(self, argv: list[str]) -> tuple[int, bytes]:
        self.calls.append(argv)
        code, text = self.answers.pop(0)
        return code, text.encode()


def test_a_run_warms_up_then_measures_then_reads_and_removes_the_log() -> None:
    caller = FakeCaller((0, "warm-up figures, dropped"), (0, _out("ok")), (0, (RECORDED / "log.tsv").read_text()))
    r = h2load.run(caller, "grpc", 16, 16, 5.0)  # type: ignore[arg-type]
    assert r["requests"] == 153809 and "p50_ms" in r
    warm, measured, log = caller.calls
    assert "--log-file" not in warm and "--log-file" in measured and log[-1].endswith(f"rm -f {h2load.LOG_FILE}")


@pytest.mark.parametrize(("code", "message"), [(124, "did not finish in time"), (137, "did not finish in time"),
                                               (1, r"failed \(exit 1\)")])
def test_h2load_killed_or_failing_is_an_error(code: int, message: str) -> None:
    caller = FakeCaller((0, ""), (code, "some last line"))
    with pytest.raises(MeshError, match=message):
        h2load.run(caller, "grpc", 16, 16, 5.0)  # type: ignore[arg-type]


# --- the gRPC server --------------------------------------------------------------------------------------------

def _decode(framed: bytes) -> bytes:
    """A gRPC message's protobuf field 1, checked byte by byte."""
    assert framed[0] == 0  # not compressed
    (length,) = struct.unpack(">I", framed[1:5])
    proto = framed[5:]
    assert len(proto) == length and proto[0] == 0x0A  # field 1, length-delimited
    size, shift, i = 0, 0, 1
    while True:
        byte = proto[i]
        size |= (byte & 0x7F) << shift
        i, shift = i + 1, shift + 7
        if not byte & 0x80:
            break
    assert len(proto) - i == size
    return proto[i:]


@pytest.mark.parametrize("payload", [0, 1, 127, 128, 300, 1024, 16384, 2**21 + 3])
def test_the_message_is_a_framed_protobuf_bytes_field(payload: int) -> None:
    assert _decode(grpc_server.message(payload)) == b"x" * payload


def _location(srv: list[Node], *spec: str) -> list[Node]:
    [children] = [c for n, a, c in srv if n == "location" and c is not None and a == list(spec)]
    return children


def test_the_server_answers_the_method_only_after_reading_the_request() -> None:
    tree = parse_conf(grpc_server.conf(Path("/srv/g"), 50051))
    assert one(tree, "pid") == ["/srv/g/nginx.pid"] and one(tree, "worker_processes") == ["1"]
    http = block(tree, "http")
    assert one(http, "default_type") == ["application/grpc"] and one(http, "access_log") == ["off"]
    srv = block(http, "server")
    assert one(srv, "listen")[:2] == ["50051", "http2"]  # h2c, prior knowledge
    method = _location(srv, "=", "/bench.Echo/Call")
    assert one(method, "mirror_request_body") == ["on"] and one(method, "mirror") == ["/drained"]
    assert one(method, "error_page") == ["405", "=200", "/answer"] and one(method, "alias") == ["/srv/g/answer"]
    answer = _location(srv, "=", "/answer")
    assert one(answer, "add_trailer") == ["grpc-status", "0", "always"] and one(answer, "internal") == []
    assert one(_location(srv, "=", "/drained"), "return") == ["204"]
    assert one(_location(srv, "/"), "return") == ["404"]  # grpc clients read it as UNIMPLEMENTED


def test_the_server_writes_its_answer_and_config_readable_by_nginx_worker(tmp_path: Path) -> None:
    config = grpc_server.write(tmp_path / "g")
    assert config.read_text() == grpc_server.conf(tmp_path / "g")
    answer = tmp_path / "g" / "answer"
    assert answer.read_bytes() == grpc_server.message() and answer.stat().st_mode & 0o777 == 0o644
    request = tmp_path / "req.bin"
    grpc_server.main(["--request", str(request)])
    assert request.read_bytes() == grpc_server.message()


# --- the nginx pair's gRPC hop ------------------------------------------------------------------------------------

def test_the_nginx_pair_carries_grpc_over_verified_mutual_tls_with_pooled_connections() -> None:
    client = block(parse_conf(nginx.client_conf("srv-proxy", "srv.test")), "http")
    upstream = named(client, "upstream", "mtls_grpc")
    assert one(upstream, "server") == ["srv-proxy:50443"] and int(one(upstream, "keepalive")[0]) >= 16 * 16
    front = server(client, "50051")
    assert one(front, "listen")[1] == "http2" and "ssl" not in one(front, "listen")  # h2load speaks h2c to it
    location = block(front, "location")
    assert one(location, "grpc_pass") == ["grpcs://mtls_grpc"]
    assert one(location, "grpc_ssl_verify") == ["on"] and one(location, "grpc_ssl_name") == ["srv.test"]
    assert one(location, "grpc_ssl_certificate_key") == ["/etc/meshbench/key.pem"]
    assert one(location, "grpc_ssl_protocols") == ["TLSv1.3"]
    back = block(parse_conf(nginx.server_conf("app", "grpc-app")), "http")
    assert one(named(back, "upstream", "app_grpc"), "server") == ["grpc-app:50051"]
    tls = server(back, "50443")
    assert one(tls, "listen")[:3] == ["50443", "ssl", "http2"] and one(tls, "ssl_verify_client") == ["on"]
    assert one(block(tls, "location"), "grpc_pass") == ["grpc://app_grpc"]
    events = block(parse_conf(nginx.client_conf("s", "n")), "events")
    assert int(one(events, "worker_connections")[0]) >= 2 * (16 * 16 + 16)  # a connection per call, both ways


# --- plans, the meshed project, the mode's config ---------------------------------------------------------------

def test_the_grpc_load_is_named_like_the_others_and_selectable_alone() -> None:
    assert GRPC_LOAD.name == "grpc 1k c16 m16" and GRPC_LOAD in LOADS
    plan = Plan.full().only("direct,nginx-mtls,mesh-mtls,mesh-mtls-l7", "grpc 1k c16 m16")
    assert plan.loads == (GRPC_LOAD,) and plan.grpc and plan.modes == ("direct", "nginx-mtls", "mesh-mtls",
                                                                       "mesh-mtls-l7")
    assert not Plan.full().only(None, "keep-alive 1k c1").grpc and Plan.quick().grpc


def test_the_meshed_project_has_a_grpc_pod_only_when_a_grpc_load_runs() -> None:
    assert "grpc" not in yaml.safe_load(compose_text := workload.compose_text())["services"], compose_text
    grpc = yaml.safe_load(workload.compose_text(grpc=True))["services"]["grpc"]
    assert grpc["command"] == workload.SERVE_GRPC and grpc["labels"] == {"app": "grpc", "version": "v1"}
    assert "grpc" not in yaml.safe_load(workload.compose_text(fleet=3, grpc=True))["services"]


def _configured(monkeypatch: pytest.MonkeyPatch, mode: str) -> list[dict[str, Any]]:
    applied: list[dict[str, Any]] = []

    def edit(ctx: Context, change: Any, why: str) -> None:
        current = [{"kind": "VirtualService", "metadata": {"name": n}} for n in ("bench-server", "bench-grpc", "mine")]
        applied.extend(change(current))

    monkeypatch.setattr(changes, "edit", edit)
    monkeypatch.setattr(bench_run, "wait_synced", lambda ctx, project: 0.0)
    monkeypatch.setattr(MeshHome, "settings", lambda self: MeshSettings())
    bench_run._mode_config(Context(), mode)
    return applied


def test_mesh_mtls_l7_routes_the_grpc_service_by_its_method_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    applied = _configured(monkeypatch, "mesh-mtls-l7")
    [route] = [r for r in applied if r["kind"] == "VirtualService" and r["metadata"]["name"] == "bench-grpc"]
    assert route["spec"]["hosts"] == ["grpc"]
    [rule] = route["spec"]["http"]
    assert rule["match"] == [{"uri": {"prefix": "/bench.Echo/"}}] and rule["route"] == [
        {"destination": {"host": "grpc"}}]
    assert [r["metadata"]["name"] for r in applied].count("mine") == 1  # the user's own config stays


@pytest.mark.parametrize("mode", ["mesh-mtls", "mesh-plaintext"])
def test_the_other_mesh_modes_leave_the_grpc_service_unrouted(monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    applied = _configured(monkeypatch, mode)
    assert not [r for r in applied if r["kind"] == "VirtualService" and r["metadata"]["name"].startswith("bench-")]
    disabled = {r["spec"]["selector"]["matchLabels"]["app"] for r in applied if r["kind"] == "PeerAuthentication"}
    assert disabled == ({"server", "grpc"} if mode == "mesh-plaintext" else set())


def test_clean_up_removes_the_grpc_route_too(monkeypatch: pytest.MonkeyPatch) -> None:
    kept: list[str] = []

    def edit(ctx: Context, change: Any, why: str) -> None:
        kept.extend(r["metadata"]["name"] for r in change([{"metadata": {"name": n}} for n in
                                                           ("bench-server", "bench-grpc", "bench-fleet", "mine")]))

    monkeypatch.setattr(workload, "stop_direct", lambda ctx: None)
    monkeypatch.setattr(workload, "down_meshed", lambda ctx, project: None)
    monkeypatch.setattr(changes, "edit", edit)
    assert bench_run.clean_up(Context(), lambda _: None) is None and kept == ["mine"]

