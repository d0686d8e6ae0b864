"""The bench's parsing, plans, comparisons, the nginx pair's config and certificates, and the TCP echo client
(the runs themselves are in tests/e2e/test_bench.py)."""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import math
import re
import socket
import tarfile
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import DNSName
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError
from hypothesis import given
from hypothesis import strategies as st
from rich.console import Console

from meshctl.bench import echo_client, nginx, workload
from meshctl.bench import run as bench_run
from meshctl.bench.run import LOADS, MODES, Plan, compare
from meshctl.bench.workload import Load, compose_text, parse_echo, parse_wrk
from meshctl.cli.bench import render
from meshctl.context import Context
from meshctl.errors import EngineError, MeshError, UsageError
from meshctl.pilot import changes
from meshctl.status import ExitCode
from sidecar.engine.plan import classify
from tests.unit.fuzzing import FEW, TEXT, one_line, run_cli

WRK = """Running 5s test @ http://server:8080/1k
  2 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.20ms  300.00us   9.00ms   90.00%
  Latency Distribution
     50%  850.00us
     75%    1.10ms
     90%    1.50ms
     99%    2.00s
  12345 requests in 5.00s, 13.00MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 4
Requests/sec:   2469.00
Transfer/sec:      2.60MB
"""


def test_wrk_output_in_any_unit() -> None:
    r = parse_wrk(WRK)
    assert r["rps"] == 2469.0 and r["requests"] == 12345
    assert (r["p50_ms"], r["p90_ms"], r["p99_ms"]) == (0.85, 1.5, 2000.0)
    assert r["errors"] == 4 and r["socket_errors"] == 3
    with pytest.raises(MeshError, match="wrk printed no result"):
        parse_wrk("unable to connect to server:8080 Connection refused")


def test_meshed_figures_are_compared_with_direct_for_the_same_load() -> None:
    results = [{"mode": "direct", "load": "a", "rps": 1000.0, "p50_ms": 0.1, "p90_ms": 0.2, "p99_ms": 0.5},
               {"mode": "mesh-mtls", "load": "a", "rps": 250.0, "p50_ms": 1.1, "p90_ms": 1.2, "p99_ms": 3.5}]
    compare(results)
    assert results[1]["throughput_ratio"] == 0.25 and results[1]["added_p50_ms"] == 1.0
    assert "throughput_ratio" not in results[0]


def test_plans_and_workload() -> None:
    assert Plan.full().fleets == (10, 50)
    services = yaml.safe_load(compose_text())["services"]
    assert {s["labels"]["version"] for n, s in services.items() if n.startswith("server")} == {"v1", "v2"}
    assert yaml.safe_load(compose_text(fleet=50))["services"]["idle"]["deploy"] == {"replicas": 50}


# --- plans: --modes and --loads ---------------------------------------------------------------------------

def test_full_and_quick_plans_hold_every_mode_and_the_tcp_loads() -> None:
    full, quick = Plan.full(), Plan.quick()
    assert full.modes == quick.modes == ("direct", "nginx-mtls", "mesh-plaintext", "mesh-mtls", "mesh-mtls-l7")
    names = [ld.name for ld in full.loads]
    assert len(names) == len(set(names)) == 11
    assert {"tcp-echo 64k c1", "tcp-echo 64k c16", "grpc 1k c16 m16"} <= set(names)
    assert [ld.name for ld in quick.loads] == ["keep-alive 1k c1", "keep-alive 1k c16", "new-conn 1k c16",
                                               "tcp-echo 64k c1", "grpc 1k c16 m16"]
    assert quick.seconds == 1.0 and quick.fleets == (3,)


def test_modes_and_loads_pick_a_subset_in_the_json_order() -> None:
    plan = Plan.full(7).only(" nginx-mtls,direct ,nginx-mtls", "tcp-echo 64k c16,keep-alive 1k c1")
    assert plan.modes == ("direct", "nginx-mtls")
    assert [ld.name for ld in plan.loads] == ["keep-alive 1k c1", "tcp-echo 64k c16"]
    assert plan.seconds == 7 and plan.fleets == ()  # no mesh mode: no fleet to measure
    assert Plan.full().only("mesh-mtls-l7").fleets == (10, 50)
    quick = Plan.quick().only(None, "new-conn 64k c16")  # --quick keeps its short loads, --loads any known one
    assert quick.seconds == 1.0 and [ld.name for ld in quick.loads] == ["new-conn 64k c16"]
    assert Plan.quick().only() == Plan.quick()


@pytest.mark.parametrize(("modes", "loads", "option"), [
    ("nginx", None, "--modes"), ("direct,mesh", None, "--modes"), ("Direct", None, "--modes"), ("", None, "--modes"),
    (" , ", None, "--modes"), ("direct;nginx-mtls", None, "--modes"), (None, "keep-alive 1k c2", "--loads"),
    (None, "keep-alive  1k c1", "--loads"), (None, "tcp-echo 1k c1", "--loads"), (None, "keep-alive 1k c1;", "--loads"),
])
def test_an_unknown_name_is_a_usage_error_naming_the_valid_ones(modes: str | None, loads: str | None,
                                                                 option: str) -> None:
    with pytest.raises(UsageError) as caught:
        Plan.full().only(modes, loads)
    assert caught.value.code == ExitCode.USAGE and caught.value.message.startswith(f"{option}: ")
    valid = MODES if option == "--modes" else tuple(ld.name for ld in LOADS)
    assert all(name in caught.value.message for name in valid)


@FEW
@given(st.lists(st.sampled_from(MODES), min_size=1), st.lists(st.sampled_from([ld.name for ld in LOADS]), min_size=1),
       st.sampled_from(["", " ", "  "]))
def test_any_spelling_of_a_valid_subset_picks_exactly_it(modes: list[str], loads: list[str], pad: str) -> None:
    plan = Plan.full().only(",".join(pad + m + pad for m in modes), ",".join(pad + ld for ld in loads))
    assert set(plan.modes) == set(modes) and list(plan.modes) == [m for m in MODES if m in modes]
    assert {ld.name for ld in plan.loads} == set(loads)


@FEW
@given(TEXT)
def test_any_other_text_is_a_usage_error_or_a_valid_subset(text: str) -> None:
    for option in ("modes", "loads"):
        try:
            plan = Plan.full().only(**{option: text})
        except UsageError as exc:
            assert "valid: " in exc.message
            continue
        picked = plan.modes if option == "modes" else tuple(ld.name for ld in plan.loads)
        assert picked and set(picked) == {n.strip() for n in text.split(",") if n.strip()}


@pytest.mark.parametrize("argv", [("--modes", "direct,nginx"), ("--loads", "keep-alive 1k"), ("--modes", ""),
                                  ("--quick", "--modes", "mesh-tls")])
def test_the_cli_refuses_unknown_names_in_one_line_before_touching_anything(tmp_path: Path,
                                                                           argv: tuple[str, ...]) -> None:
    done = run_cli(tmp_path / "home", "bench", *argv)  # not even installed: the flags are checked first
    assert done.code == ExitCode.USAGE, done.err
    line = one_line(done.err)
    assert "valid: " in line and ("nginx-mtls" in line or "tcp-echo 64k c16" in line)
    assert not (tmp_path / "home").exists()


# --- the ratio table --------------------------------------------------------------------------------------

def _row(mode: str, load: str, rps: float, p50: float) -> dict[str, Any]:
    return {"mode": mode, "load": load, "rps": rps, "requests": rps, "p50_ms": p50, "p90_ms": p50 * 2,
            "p99_ms": p50 * 3, "errors": 0.0, "socket_errors": 0.0}


def test_mesh_figures_are_ratios_to_nginx_as_well_as_to_direct() -> None:
    results = [_row("direct", "a", 10000, 0.1), _row("nginx-mtls", "a", 2000, 0.3), _row("mesh-mtls", "a", 500, 2.1),
               _row("mesh-mtls-l7", "a", 1000, 1.1), _row("direct", "b", 100, 1.0), _row("mesh-mtls", "b", 50, 3.0)]
    compare(results)
    direct, ref, mesh, l7, _, other = results
    assert mesh["throughput_ratio"] == 0.05 and mesh["throughput_ratio_nginx"] == 0.25
    assert mesh["added_p50_ms"] == 2.0 and mesh["added_p50_ratio_nginx"] == 10.0
    assert mesh["added_p50_over_nginx_ms"] == 1.8
    assert l7["throughput_ratio_nginx"] == 0.5 and l7["added_p50_ratio_nginx"] == 5.0
    assert ref["throughput_ratio"] == 0.2 and ref["added_p50_ms"] == 0.2
    assert not any(k.endswith("_nginx") or k.endswith("_nginx_ms") for k in (*direct, *ref))
    assert "throughput_ratio_nginx" not in other and other["throughput_ratio"] == 0.5  # load b had no nginx run
    # today's shape is kept: nothing renamed
    assert {"mode", "load", "rps", "p50_ms", "throughput_ratio", "added_p50_ms", "added_p90_ms"} <= set(mesh)


def test_no_ratio_over_an_added_latency_nginx_does_not_have() -> None:
    results = [_row("direct", "a", 1000, 0.5), _row("nginx-mtls", "a", 900, 0.4), _row("mesh-mtls", "a", 100, 2.0)]
    compare(results)
    assert results[2]["added_p50_ratio_nginx"] is None and results[2]["throughput_ratio_nginx"] == 0.1111
    only_nginx = [_row("nginx-mtls", "a", 900, 0.4), _row("mesh-mtls", "a", 100, 2.0)]  # --modes without direct
    compare(only_nginx)
    assert only_nginx[1]["throughput_ratio_nginx"] == 0.1111 and "added_p50_ratio_nginx" not in only_nginx[1]


def _report(results: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    compare(results)
    return {"machine": {"cpus": 2, "memory_gb": 23.5, "engine": "20.10"}, "plan": {"seconds": 1.0},
            "results": results, "sidecars": [], "propagation": [], "startup_s": None, **extra}


def _text(group: Any) -> str:
    console = Console(file=io.StringIO(), width=400, no_color=True)
    console.print(group)
    return console.file.getvalue()  # type: ignore[attr-defined,no-any-return]


def test_the_table_shows_throughput_and_added_p50_against_nginx() -> None:
    text = _text(render(_report([_row("direct", "keep-alive 1k c1", 10000, 0.1),
                                 _row("nginx-mtls", "keep-alive 1k c1", 2000, 0.3),
                                 _row("mesh-mtls-l7", "keep-alive 1k c1", 1000, 1.1)])))
    header = next(line for line in text.splitlines() if line.startswith("MODE"))
    assert header.split() == ["MODE", "LOAD", "REQ/S", "VS", "DIRECT", "VS", "NGINX", "P50", "P90", "P99", "+P50",
                              "+P50", "VS", "NGINX", "+P90", "ERRORS"]
    l7 = next(line for line in text.splitlines() if line.startswith("mesh-mtls-l7")).split()
    assert l7[4:7] == ["1000", "0.100", "0.500"] and "1.000ms" in l7 and "5.0x" in l7
    nginx_row = next(line for line in text.splitlines() if line.startswith("nginx-mtls")).split()
    assert nginx_row[6] == "-" and nginx_row[-3] == "-"  # nginx is not compared with itself
    assert "PROXIES" not in text and "start-up" not in text  # no mesh mode ran: no fleet, no start-up line


def test_the_table_still_reads_with_every_part() -> None:
    report = _report([_row("direct", "a", 100, 1.0)], startup_s=2.5,
                     sidecars=[{"sidecar": "meshbench-direct-nginx-client", "rss_idle_mb": 3.0, "rss_load_mb": 5.0,
                                "cores_per_1000_rps": 0.02, "cores_per_1000_rps_worst": None}],
                     propagation=[{"proxies": 3, "startup_s": 4.0, "propagation_s": 0.1, "propagation_max_s": 0.2}])
    text = _text(render(report))
    assert "meshbench-direct-nginx-client" in text and "0.020--" in text and "0.100 s, 0.200 s" in text
    assert "(3 pods): 2.5 s" in text


# --- the nginx pair's configuration ----------------------------------------------------------------------

Node = tuple[str, list[str], list[Any] | None]


def parse_conf(text: str) -> list[Node]:
    """nginx's syntax, enough for our files: directives `name args;`, blocks `name args { ... }`, quotes, comments."""
    tokens = re.findall(r'"[^"]*"|[{};]|[^\s{};"#]+|#[^\n]*', text)
    stack: list[list[Node]] = [[]]
    words: list[str] = []
    for tok in tokens:
        if tok.startswith("#"):
            continue
        if tok == ";":
            stack[-1].append((words[0], words[1:], None))
            words = []
        elif tok == "{":
            block: list[Node] = []
            stack[-1].append((words[0], words[1:], block))
            stack.append(block)
            words = []
        elif tok == "}":
            assert not words, words
            stack.pop()
        else:
            words.append(tok)
    assert len(stack) == 1 and not words, "unbalanced"
    return stack[0]


def block(nodes: list[Node], *path: str) -> list[Node]:
    """The children of the one block at `path` (e.g. "http", "server", "location")."""
    for name in path:
        found = [children for n, _, children in nodes if n == name and children is not None]
        assert len(found) == 1, (name, found)
        nodes = found[0]
    return nodes


def named(nodes: list[Node], name: str, first: str) -> list[Node]:
    """The children of the one block `name` whose first argument is `first` (an upstream's name, a port)."""
    [children] = [c for n, a, c in nodes if n == name and c is not None and a[:1] == [first]]
    return children


def server(http: list[Node], port: str) -> list[Node]:
    """The one `server` block listening on `port`."""
    [children] = [c for n, _, c in http if n == "server" and c is not None and one(c, "listen")[0] == port]
    return children


def args(nodes: list[Node], name: str) -> list[list[str]]:
    return [a for n, a, children in nodes if n == name and children is None]


def one(nodes: list[Node], name: str) -> list[str]:
    [found] = args(nodes, name)
    return found


def test_the_client_side_talks_plaintext_in_and_verified_mutual_tls_out_over_pooled_connections() -> None:
    conf = parse_conf(nginx.client_conf("srv-proxy", "srv.test"))
    http, stream = block(conf, "http"), block(conf, "stream")
    assert one(http, "proxy_http_version") == ["1.1"] and one(http, "proxy_set_header") == ["Connection", '""']
    assert [a for n, a, _ in http if n == "upstream"] == [["mtls_http"], ["mtls_grpc"]]
    upstream = named(http, "upstream", "mtls_http")
    assert one(upstream, "server") == ["srv-proxy:8443"]
    assert int(one(upstream, "keepalive")[0]) >= 16  # at least the bench's concurrency stays pooled
    web = server(http, "8080")
    assert "ssl" not in one(web, "listen")  # wrk speaks plaintext to it
    location = block(web, "location")
    assert one(location, "proxy_pass") == ["https://mtls_http"]
    tcp = block(stream, "server")
    assert one(tcp, "listen")[0] == "9000" and "ssl" not in one(tcp, "listen")
    assert one(tcp, "proxy_pass") == ["srv-proxy:9443"] and one(tcp, "proxy_ssl") == ["on"]
    for side in (location, tcp):
        assert one(side, "proxy_ssl_certificate") == ["/etc/meshbench/cert.pem"]
        assert one(side, "proxy_ssl_certificate_key") == ["/etc/meshbench/key.pem"]
        assert one(side, "proxy_ssl_trusted_certificate") == ["/etc/meshbench/ca.pem"]
        assert one(side, "proxy_ssl_verify") == ["on"] and one(side, "proxy_ssl_name") == ["srv.test"]
        assert one(side, "proxy_ssl_protocols") == ["TLSv1.3"]


def test_the_server_side_requires_a_certificate_from_the_ca_on_both_ports() -> None:
    conf = parse_conf(nginx.server_conf("app", "grpc-app"))
    http, stream = block(conf, "http"), block(conf, "stream")
    upstream = named(http, "upstream", "app_http")
    assert one(upstream, "server") == ["app:8080"] and int(one(upstream, "keepalive")[0]) >= 16
    web = server(http, "8443")
    assert one(web, "listen")[:2] == ["8443", "ssl"] and one(block(web, "location"), "proxy_pass") == [
        "http://app_http"]
    tcp = block(stream, "server")
    assert one(tcp, "listen")[:2] == ["9443", "ssl"] and one(tcp, "proxy_pass") == ["app:9000"]
    for side in (web, tcp):
        assert one(side, "ssl_verify_client") == ["on"]  # not optional, not optional_no_ca
        assert one(side, "ssl_client_certificate") == ["/etc/meshbench/ca.pem"]
        assert one(side, "ssl_protocols") == ["TLSv1.3"]
        assert one(side, "ssl_certificate_key") == ["/etc/meshbench/key.pem"]
    assert "optional" not in nginx.server_conf("app", "grpc-app")


@pytest.mark.parametrize("conf", [nginx.client_conf("s", "n"), nginx.server_conf("a", "g")])
def test_each_proxy_is_one_worker_with_the_stream_module_and_nothing_from_debians_defaults(conf: str) -> None:
    tree = parse_conf(conf)
    assert tree[0] == ("load_module", [nginx.MODULE], None)  # must come before the stream block
    assert one(tree, "worker_processes") == ["1"] and one(tree, "error_log") == ["stderr", "warn"]
    assert one(tree, "pid")[0].startswith("/tmp/")
    http = block(tree, "http")
    assert one(http, "access_log") == ["off"] and one(http, "proxy_max_temp_file_size") == ["0"]
    temp = [n for n, _, _ in http if n.endswith("_temp_path")]
    assert len(temp) == 5 and all(one(http, n)[0].startswith("/tmp/") for n in temp)
    assert "include" not in conf and "/var/" not in conf and "/etc/nginx" not in conf
    assert nginx.argv()[-2:] == ["-g", "daemon off;"] and "/etc/meshbench/nginx.conf" in nginx.argv()


# --- the nginx pair's certificates --------------------------------------------------------------------------

NOW = dt.datetime(2026, 11, 30, 12, tzinfo=dt.UTC)


def _cert(pem: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem)


def test_certificates_are_the_mesh_kind_and_verify_both_ways() -> None:
    certs = nginx.make_certs("nginx-server.test", NOW)
    ca, server, client = _cert(certs.ca_pem), _cert(certs.server.cert_pem), _cert(certs.client.cert_pem)
    store = Store([ca])
    PolicyBuilder().store(store).time(NOW).build_server_verifier(DNSName("nginx-server.test")).verify(server, [])
    PolicyBuilder().store(store).time(NOW).build_client_verifier().verify(client, [])
    uris = {c: c.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            .get_values_for_type(x509.UniformResourceIdentifier) for c in (server, client)}
    assert uris[server] == ["spiffe://meshbench.local/ns/meshbench/sa/server"]
    assert uris[client] == ["spiffe://meshbench.local/ns/meshbench/sa/client"]
    public = server.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey) and public.curve.name == "secp256r1"
    for leaf, cert in ((certs.server, server), (certs.client, client)):
        key = serialization.load_pem_private_key(leaf.key_pem, None)
        assert key.public_key().public_numbers() == cert.public_key().public_numbers()  # type: ignore[union-attr]
    assert server.not_valid_after_utc - NOW <= dt.timedelta(days=1)


@pytest.mark.parametrize("name", ["evil.test", "nginx-server.test.evil", "x.nginx-server.test", "nginx-server",
                                  "meshbench-direct-server", "nginx-server.tes"])
def test_the_server_certificate_is_good_for_its_name_only(name: str) -> None:
    certs = nginx.make_certs("nginx-server.test", NOW)
    verifier = PolicyBuilder().store(Store([_cert(certs.ca_pem)])).time(NOW).build_server_verifier(DNSName(name))
    with pytest.raises(VerificationError):
        verifier.verify(_cert(certs.server.cert_pem), [])


def test_no_other_key_pair_passes_for_a_proxy() -> None:
    """The client's certificate cannot pose as the server (no DNS name), and another run's CA is not trusted."""
    certs, other = nginx.make_certs("nginx-server.test", NOW), nginx.make_certs("nginx-server.test", NOW)
    store = Store([_cert(certs.ca_pem)])
    with pytest.raises(VerificationError):
        PolicyBuilder().store(store).time(NOW).build_server_verifier(DNSName("nginx-server.test")).verify(
            _cert(certs.client.cert_pem), [])
    for leaf in (other.server, other.client):
        with pytest.raises(VerificationError):
            PolicyBuilder().store(store).time(NOW).build_client_verifier().verify(_cert(leaf.cert_pem), [])
    with pytest.raises(VerificationError):  # expired by the next day
        PolicyBuilder().store(store).time(NOW + dt.timedelta(days=2)).build_client_verifier().verify(
            _cert(certs.client.cert_pem), [])


def test_each_proxy_gets_its_own_key_only_readable_by_its_owner() -> None:
    certs = nginx.make_certs("srv", NOW)
    for conf, leaf, foreign in (("c", certs.client, certs.server), ("s", certs.server, certs.client)):
        blob = nginx.archive(nginx.files(conf, certs.ca_pem, leaf))
        with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
            members = {m.name: m for m in tar.getmembers()}
            assert set(members) == {"etc/meshbench", *(f"etc/meshbench/{n}" for n in ("nginx.conf", "ca.pem",
                                                                                       "cert.pem", "key.pem"))}
            assert members["etc/meshbench/key.pem"].mode == 0o600
            assert all(m.mode == 0o644 for n, m in members.items() if n.endswith((".conf", "ca.pem", "cert.pem")))
            assert all(m.uid == 0 and ".." not in m.name for m in members.values())
            key = tar.extractfile("etc/meshbench/key.pem")
            assert key is not None and key.read() == leaf.key_pem
            data = b"".join(f.read() for m in members.values() if m.isfile() and (f := tar.extractfile(m)))
        assert foreign.key_pem not in data and b"PRIVATE KEY" in leaf.key_pem
        assert data.count(b"PRIVATE KEY") == 2  # one key: its BEGIN and END lines


# --- the TCP load ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("size", [1, 3, 255, 1024, 65536, 65537])
def test_the_echo_payload_looks_like_neither_http_nor_tls(size: int) -> None:
    data = echo_client.payload(size)
    assert len(data) == size and classify(data) == "other"  # relayed at once, neither L7 nor passthrough


@FEW
@given(st.lists(st.floats(0, 10, allow_nan=False), min_size=1, max_size=200), st.sampled_from([50, 75, 90, 99, 100]))
def test_percentiles_are_nearest_rank(values: list[float], pct: int) -> None:
    ordered = sorted(values)
    got = echo_client.percentile(ordered, pct)
    rank = math.ceil(pct * len(ordered) / 100)
    assert sum(v <= got for v in ordered) >= rank and sum(v < got for v in ordered) < rank


class EchoServer:
    """A loopback echo server for the client's tests: echo, corrupt one byte, hang up, or never answer."""

    def __init__(self, behaviour: str) -> None:
        self.behaviour = behaviour
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = self.sock.accept()
                threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            while data := conn.recv(65536):
                if self.behaviour == "close":
                    return
                if self.behaviour == "silent":
                    continue
                if self.behaviour == "corrupt":
                    data = b"\xff" + data[1:]
                conn.sendall(data)

    def close(self) -> None:
        self.sock.close()


def test_the_echo_client_counts_round_trips_and_is_bounded_by_its_count() -> None:
    server = EchoServer("echo")
    try:
        result = echo_client.run("127.0.0.1", server.port, 3, 7, 10.0, 65536)
    finally:
        server.close()
    assert result["requests"] == 21 and result["errors"] == 0 and result["socket_errors"] == 0
    assert 0 < result["p50_ms"] <= result["p90_ms"] <= result["p99_ms"] and result["rps"] > 0


@pytest.mark.parametrize(("behaviour", "key"), [("corrupt", "errors"), ("close", "socket_errors"),
                                                ("silent", "socket_errors"), ("refused", "socket_errors")])
def test_the_echo_client_counts_failures_and_ends_in_bounded_time(monkeypatch: pytest.MonkeyPatch, behaviour: str,
                                                                  key: str) -> None:
    monkeypatch.setattr(echo_client, "TIMEOUT_S", 0.5)
    server = EchoServer(behaviour)
    port = server.port
    if behaviour == "refused":  # bound, never listening: refused, and no other process can take the port meanwhile
        server.close()
        server.sock = socket.socket()
        server.sock.bind(("127.0.0.1", 0))
        port = server.sock.getsockname()[1]
    started = time.monotonic()
    try:
        result = echo_client.run("127.0.0.1", port, 2, 1_000_000, 0.3, 4096)
    finally:
        server.close()
    assert time.monotonic() - started < 3
    assert result[key] == 2 and result["requests"] <= 2


def test_the_echo_client_stops_at_its_time_cap() -> None:
    server = EchoServer("echo")
    started = time.monotonic()
    try:
        result = echo_client.run("127.0.0.1", server.port, 2, 10_000_000, 0.3, 1024)
    finally:
        server.close()
    assert time.monotonic() - started < 2 and 0 < result["requests"] < 20_000_000 and result["socket_errors"] == 0


@pytest.mark.parametrize("argv", [["h"], ["h", "0"], ["h", "70000"], ["h", "1", "-c", "0"], ["h", "1", "-c", "257"],
                                  ["h", "1", "-n", "0"], ["h", "1", "-d", "0"], ["h", "1", "-d", "121"],
                                  ["h", "1", "-d", "nan"], ["h", "1", "--size", "0"], ["h", "1", "-c", "x"]])
def test_the_echo_client_refuses_unbounded_or_bad_arguments(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        echo_client.parse(argv)
    assert caught.value.code == 2


def test_the_bench_runs_the_echo_client_bounded_and_reads_its_result() -> None:
    argv = workload.echo_argv("server", Load("64k", 16, False, "tcp"), 5.0)
    assert echo_client.parse(argv[2:]).connections == 16  # what the bench passes, the client accepts
    assert argv[argv.index("--seconds") + 1] == "5" and argv[argv.index("--size") + 1] == "65536"
    assert argv[argv.index("--rounds") + 1] == str(workload.ECHO_ROUNDS)
    good = '{"rps": 10.5, "requests": 21, "p50_ms": 0.2, "errors": 0, "socket_errors": 1}'
    assert parse_echo("warming up\n" + good) == {"rps": 10.5, "requests": 21.0, "p50_ms": 0.2, "errors": 0.0,
                                                  "socket_errors": 1.0}
    for bad in ("", "Traceback ...", "[1, 2]", '{"rps": 1}', '{"rps": "1", "requests": 1, "errors": 0, '
                '"socket_errors": 0}'):
        with pytest.raises(MeshError, match="printed no result"):
            parse_echo(bad)
    with pytest.raises(MeshError, match="no round trip"):
        parse_echo('{"rps": 0, "requests": 0, "errors": 0, "socket_errors": 16}')


# --- clean-up -------------------------------------------------------------------------------------------------

def _fake_cleanup(monkeypatch: pytest.MonkeyPatch, fail: set[str]) -> list[str]:
    calls: list[str] = []

    def step(name: str) -> Any:
        def do(*args: Any, **kwargs: Any) -> None:
            calls.append(name if name != "down" else f"down {args[1]}")
            if name in fail or calls[-1] in fail:
                raise EngineError(f"{calls[-1]} failed")
        return do

    monkeypatch.setattr(workload, "stop_direct", step("stop"))
    monkeypatch.setattr(workload, "down_meshed", step("down"))
    monkeypatch.setattr(changes, "edit", step("edit"))
    return calls


def test_clean_up_tries_every_step_and_returns_the_first_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _fake_cleanup(monkeypatch, {"down meshbench", "edit"})
    error = bench_run.clean_up(Context(), lambda _: None)
    assert calls == ["stop", "down meshbench", "down meshbench-fleet", "edit"]
    assert error is not None and error.message == "down meshbench failed"
    _fake_cleanup(monkeypatch, set())
    assert bench_run.clean_up(Context(), lambda _: None) is None


def _fake_run(monkeypatch: pytest.MonkeyPatch, measure: Any) -> None:
    monkeypatch.setattr(bench_run, "machine", lambda ctx: {"cpus": 2})
    monkeypatch.setattr(workload, "ensure_image", lambda ctx, progress: None)
    monkeypatch.setattr(bench_run, "_unmeshed", measure)


def test_a_failed_clean_up_keeps_the_figures_and_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    def measure(ctx: Context, plan: Plan, report: Any, costs: Any, progress: Any) -> None:
        report.results.append(_row("direct", "keep-alive 1k c1", 100, 1.0))

    _fake_run(monkeypatch, measure)
    _fake_cleanup(monkeypatch, {"down meshbench-fleet"})
    report = bench_run.run(Context(), Plan.quick().only("direct"), lambda _: None)
    assert report.results and report.cleanup_error is not None
    assert report.as_dict()["cleanup_error"] == "down meshbench-fleet failed"
    _fake_cleanup(monkeypatch, set())
    assert "cleanup_error" not in bench_run.run(Context(), Plan.quick().only("direct"), lambda _: None).as_dict()


def test_a_failed_measurement_is_the_error_shown_even_when_clean_up_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    def measure(*args: Any) -> None:
        raise MeshError("wrk failed (exit 1)")

    _fake_run(monkeypatch, measure)
    calls = _fake_cleanup(monkeypatch, {"stop", "down meshbench"})
    with pytest.raises(MeshError, match="wrk failed"):
        bench_run.run(Context(), Plan.quick().only("direct"), lambda _: None)
    assert calls == ["stop", "down meshbench", "down meshbench-fleet", "edit"]
