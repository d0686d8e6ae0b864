"""gRPC at L7 through real sidecars, as Istio does it: per-method routing, metadata matches, retries on gRPC status,
deadlines and route timeouts, injected gRPC aborts, mirroring, header operations, authorization on method paths,
`grpc_response_status` in the metrics and the access log, multiplexed calls and large messages.

One meshed app serves every test (tests/e2e/grpc: Debian's python3-grpcio): `echo` in two versions (v1, v2) that
answer raw bytes and obey per-call metadata (x-fail-times, x-sleep-ms, x-key; see server.py), and a client whose
client.py makes a batch of calls on one channel and prints JSON. The subsets v1/v2 (a DestinationRule) stay for
the whole module; each test applies its own VirtualService or AuthorizationPolicy, removed after it.
"""

from __future__ import annotations

import json
import textwrap
import uuid
from collections import Counter
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import docker.errors
import pytest
from docker import DockerClient

from meshctl.runtime.compose import require_compose
from meshctl.telemetry.scrape import Sample, parse
from tests.conftest import meshctl
from tests.e2e.conftest import App, up_meshed
from tests.e2e.test_security_policies import apply, synced
from tests.e2e.test_server_first import deb_image

HERE = Path(__file__).parent / "grpc"
IMAGE = "meshctl/grpc:e2e"
PROJECT = "e2egrpc"
PACKAGES = ("python3-grpcio",)
CONTEXT = ("Dockerfile", "server.py", "client.py")
CLIENT_ID = f"spiffe://cluster.local/ns/{PROJECT}/sa/client"
CLIENT_TIMEOUT = 60  # seconds for one batch of calls: a hang fails its test, not the session
HELLO, SLOW, BLOB, RESET = "/demo.Echo/Hello", "/demo.Echo/Slow", "/demo.Echo/Blob", "/demo.Admin/Reset"
V1 = "[{destination: {host: echo, subset: v1}}]"
V2 = "[{destination: {host: echo, subset: v2}}]"
SUBSETS = f"""apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: echo, namespace: {PROJECT}}}
spec:
  host: echo
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
"""


# --- the app: its image, the meshed project, and how the tests call it --------------------------------------

@pytest.fixture(scope="module")
def grpc_image(engine: DockerClient, mesh_home: Path) -> str:
    return deb_image(engine, mesh_home, IMAGE, HERE, CONTEXT, PACKAGES, "grpc")


@pytest.fixture(scope="module")
def echo_app(engine: DockerClient, mesh_home: Path, grpc_image: str,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[App]:
    workdir = tmp_path_factory.mktemp("grpc")
    try:
        app = up_meshed(engine, mesh_home, HERE / "compose.yaml", PROJECT, workdir)
        for version in ("v1", "v2"):  # healthy sidecars; now each server on its pod's loopback (never captured)
            app.wait_for(partial(server_answers, app, version), f"echo {version} serves gRPC", timeout=60)
        apply(mesh_home, SUBSETS, PROJECT)
        yield app
    finally:
        meshctl("delete", "dr", "echo", "-p", PROJECT, home=mesh_home)
        if (workdir / "meshed.yaml").is_file():
            App(engine, require_compose(), PROJECT, workdir / "meshed.yaml").down()


@pytest.fixture
def mesh(echo_app: App, mesh_home: Path) -> Iterator[App]:
    """The shared app with only the subsets in force, after each test too."""
    yield echo_app
    for kind, name in (("vs", "echo"), ("ap", "echo-methods")):
        meshctl("delete", kind, name, "-p", PROJECT, home=mesh_home)  # fails harmlessly if the test made none
    synced(mesh_home, PROJECT)


def grpc(app: App, *args: str, caller: str = "client") -> dict[str, Any]:
    """One batch of calls by client.py in `caller`'s container (see its doc for the arguments and the JSON)."""
    container = app.container(caller)
    code, (out, err) = container.exec_run(["timeout", str(CLIENT_TIMEOUT), "python3", "/grpc/client.py", *args],
                                          demux=True)
    stdout, stderr = (out or b"").decode(errors="replace"), (err or b"").decode(errors="replace")
    assert code == 0, f"client.py {' '.join(args)} in {caller} exited {code}" + \
        (" (hung: killed by timeout)" if code == 124 else "") + f": {stdout[-1000:]} {stderr[-2000:]}"
    result: dict[str, Any] = json.loads(stdout.strip().splitlines()[-1])
    return result


def server_answers(app: App, version: str) -> bool:
    try:
        return bool(grpc(app, "--target", "127.0.0.1:50051", "--deadline", "2", caller=f"echo-{version}")["codes"]
                    == {"OK": 1})
    except (AssertionError, docker.errors.APIError, ValueError, IndexError):  # not up yet
        return False


def server_saw(app: App, version: str, key: str) -> dict[str, Any]:
    """What echo `version` counted for `key` before this probe, asked on its own loopback (not through the mesh):
    `attempt` = calls of the key it had seen, `cancelled` = those its caller gave up on."""
    done = grpc(app, "--target", "127.0.0.1:50051", "-m", f"x-key={key}", "--replies", caller=f"echo-{version}")
    reply = done["replies"][0]["reply"]
    return {"attempt": reply["attempt"] - 1, "cancelled": reply["cancelled"]}


def fresh(what: str) -> str:
    """A key no other call has used: per-key counts in the servers start at zero."""
    return f"{what}-{uuid.uuid4().hex[:10]}"


def routes(home: Path, http: str) -> None:
    """Apply echo's VirtualService with these `http` rules (a YAML list) and wait until every proxy runs it."""
    rules = textwrap.indent(textwrap.dedent(http).strip("\n"), "  ")
    apply(home, f"""apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: echo, namespace: {PROJECT}}}
spec:
  hosts: [echo]
  http:
{rules}
""", PROJECT)


def metrics(app: App, sidecar: str) -> list[Sample]:
    code, text = app.exec(sidecar, "curl", "-s", "--max-time", "5", "127.0.0.1:15090/stats/prometheus")
    assert code == 0, text
    return parse(text)


def grpc_requests(app: App, sidecar: str, **labels: str) -> Counter[tuple[str, str]]:
    """istio_requests_total of the sidecar's gRPC series with these labels, by (grpc_response_status,
    response_flags)."""
    out: Counter[tuple[str, str]] = Counter()
    for s in metrics(app, sidecar):
        if s.name == "istio_requests_total" and s.labels.get("request_protocol") == "grpc" \
                and all(s.labels.get(k) == v for k, v in labels.items()):
            out[(s.labels.get("grpc_response_status", "absent"), s.labels.get("response_flags", ""))] += int(s.value)
    return out


def by_status(counts: Counter[tuple[str, str]]) -> Counter[str]:
    out: Counter[str] = Counter()
    for (status, _), n in counts.items():
        out[status] += n
    return out


def minus(after: Counter[Any], before: Counter[Any]) -> Counter[Any]:
    return Counter({k: after[k] - before[k] for k in after if after[k] != before[k]})


def from_client_with_mtls(app: App, sidecar: str) -> float:
    """What a server's sidecar accepted from the client with verified mutual TLS: connections relayed at L4 and
    requests handled at L7, so the baseline holds whichever path the port takes."""
    return sum(s.value for s in metrics(app, sidecar)
               if s.name in ("istio_tcp_connections_opened_total", "istio_requests_total")
               and s.labels.get("reporter") == "destination" and s.labels.get("source_principal") == CLIENT_ID
               and s.labels.get("connection_security_policy") == "mutual_tls")


def grpc_log(app: App, sidecar: str, direction: str, path: str = HELLO) -> list[dict[str, Any]]:
    return [e for e in app.logs(sidecar) if e.get("direction") == direction and e.get("path") == path]


def statuses(entries: list[dict[str, Any]]) -> Counter[str]:
    return Counter(str(e.get("grpc_status")) for e in entries)


# --- the baseline: plain calls through the mesh, with mutual TLS ---------------------------------------------

def test_plain_calls_pass_through_both_sidecars_with_mutual_tls(mesh: App) -> None:
    before = sum(from_client_with_mtls(mesh, f"echo-{v}-proxy") for v in ("v1", "v2"))
    done = grpc(mesh, "-n", "50", "-m", "x-hello=world", "--replies")
    assert done["codes"] == {"OK": 50}, done["first_error"]
    assert set(done["versions"]) <= {"v1", "v2"}
    reply = done["replies"][0]["reply"]
    assert reply["method"] == HELLO and reply["metadata"]["x-hello"] == "world"
    blob = grpc(mesh, "--method", BLOB, "--size", "70000", "--replies")
    assert blob["codes"] == {"OK": 1} and blob["replies"][0]["reply"] == {"intact": True, "bytes": 70000}
    mesh.wait_for(lambda: sum(from_client_with_mtls(mesh, f"echo-{v}-proxy") for v in ("v1", "v2")) > before,
                  "echo's sidecars counted the client's calls as mutual TLS from its SPIFFE identity", timeout=10)


# --- routing -------------------------------------------------------------------------------------------------

def test_a_method_splits_90_10_while_another_goes_all_to_v1(mesh: App, mesh_home: Path) -> None:
    routes(mesh_home, f"""
        - match: [{{uri: {{exact: {HELLO}}}}}]
          route:
          - {{destination: {{host: echo, subset: v1}}, weight: 90}}
          - {{destination: {{host: echo, subset: v2}}, weight: 10}}
        - match: [{{uri: {{prefix: /demo.Echo/}}}}]
          route: {V1}
        """)
    hello = grpc(mesh, "-n", "400", "-c", "8")
    assert hello["codes"] == {"OK": 400}, hello["first_error"]
    share = 100 * hello["versions"].get("v2", 0) / 400
    print(f"gRPC 90/10 split of {HELLO} over 400 calls on one channel: {hello['versions']} (v2 {share:.1f}%)")
    assert set(hello["versions"]) == {"v1", "v2"} and 4 <= share <= 16, hello["versions"]  # 10% +-6 (4 sigma)
    blob = grpc(mesh, "--method", BLOB, "-n", "100", "-c", "8")
    assert blob["codes"] == {"OK": 100} and blob["versions"] == {"v1": 100}, blob
    # A method no rule matches: Envoy's 404 (no route) is UNIMPLEMENTED to a gRPC client, and the server never sees it.
    unrouted = grpc(mesh, "--method", RESET, "-n", "3")
    assert unrouted["codes"] == {"UNIMPLEMENTED": 3} and unrouted["versions"] == {"none": 3}, unrouted


def test_metadata_header_match_and_regex_on_the_path(mesh: App, mesh_home: Path) -> None:
    routes(mesh_home, f"""
        - match: [{{headers: {{x-canary: {{exact: "yes"}}}}}}]
          route: {V2}
        - match: [{{uri: {{regex: "/demo\\\\.Echo/(Blob|Sl.w)"}}}}]
          route: {V2}
        - route: {V1}
        """)
    canary = grpc(mesh, "-n", "40", "-c", "4", "-m", "x-canary=yes")
    assert canary["codes"] == {"OK": 40} and canary["versions"] == {"v2": 40}, canary
    for others in (grpc(mesh, "-n", "40", "-c", "4", "-m", "x-canary=no"), grpc(mesh, "-n", "40", "-c", "4")):
        assert others["codes"] == {"OK": 40} and others["versions"] == {"v1": 40}, others
    by_regex = grpc(mesh, "--method", BLOB, "-n", "20", "-c", "4")
    slow = grpc(mesh, "--method", SLOW, "-m", "x-sleep-ms=0", "-n", "5")
    assert by_regex["versions"] == {"v2": 20} and slow["versions"] == {"v2": 5}, (by_regex, slow)
    assert by_regex["codes"] == {"OK": 20} and slow["codes"] == {"OK": 5}


# --- resilience: retries, deadlines, timeouts, faults --------------------------------------------------------

def test_retries_on_unavailable_and_only_on_the_statuses_in_retry_on(mesh: App, mesh_home: Path) -> None:
    routes(mesh_home, f"""
        - route: {V1}
          retries: {{attempts: 3, retryOn: unavailable}}
        """)
    twice = fresh("retry-ok")
    done = grpc(mesh, "-m", f"x-key={twice}", "-m", "x-fail-times=2", "--replies")
    assert done["codes"] == {"OK": 1}, done["first_error"]
    assert done["replies"][0]["reply"]["attempt"] == 3  # two UNAVAILABLE answers retried by the sidecar, then OK
    always = fresh("retry-exhausted")
    done = grpc(mesh, "-m", f"x-key={always}", "-m", "x-fail-times=100")
    assert done["codes"] == {"UNAVAILABLE": 1} and done["versions"] == {"v1": 1}, done
    assert server_saw(mesh, "v1", always)["attempt"] == 4  # Istio's attempts are retries: 1 try + 3 retries

    routes(mesh_home, f"""
        - route: {V1}
          retries: {{attempts: 3, retryOn: "cancelled,resource-exhausted"}}
        """)
    not_retried = fresh("retry-not-on")
    done = grpc(mesh, "-m", f"x-key={not_retried}", "-m", "x-fail-times=2")
    assert done["codes"] == {"UNAVAILABLE": 1}, done  # UNAVAILABLE is not in retryOn: the client sees it
    assert server_saw(mesh, "v1", not_retried)["attempt"] == 1
    exhausted = fresh("retry-resource-exhausted")
    done = grpc(mesh, "-m", f"x-key={exhausted}", "-m", "x-fail-times=1", "-m", "x-fail-code=RESOURCE_EXHAUSTED",
                "--replies")
    assert done["codes"] == {"OK": 1} and done["replies"][0]["reply"]["attempt"] == 2, done


def test_client_deadline_and_route_timeout(mesh: App, mesh_home: Path) -> None:
    routes(mesh_home, f"""
        - match: [{{headers: {{x-timeout: {{exact: route}}}}}}]
          route: {V1}
          timeout: 0.5s
        - route: {V1}
        """)
    key = fresh("deadline")
    done = grpc(mesh, "--method", SLOW, "--deadline", "0.3", "-m", f"x-key={key}")  # the server sleeps 2 s
    assert done["codes"] == {"DEADLINE_EXCEEDED": 1}, done
    assert done["max_ms"] < 1000, done["rows"]
    # The call's end reached the server: it stopped working for a caller that had gone.
    mesh.wait_for(lambda: server_saw(mesh, "v1", key)["cancelled"] == 1, "echo v1 saw the call cancelled", timeout=5)

    timed_out = grpc(mesh, "--method", SLOW, "-m", "x-timeout=route", "-n", "3")  # no client deadline at all
    (code,) = timed_out["codes"]
    assert code in ("DEADLINE_EXCEEDED", "UNAVAILABLE"), timed_out  # Envoy's route timeout, as gRPC statuses go
    assert all(0.4 <= row[2] / 1000 < 1.5 for row in timed_out["rows"]), timed_out["rows"]
    fast = grpc(mesh, "-m", "x-timeout=route", "-n", "5")  # the timeout bounds the call, it does not fail it
    assert fast["codes"] == {"OK": 5}, fast["first_error"]


def test_injected_grpc_aborts(mesh: App, mesh_home: Path) -> None:
    routes(mesh_home, f"""
        - match: [{{headers: {{x-abort: {{exact: unavailable}}}}}}]
          fault: {{abort: {{grpcStatus: UNAVAILABLE, percentage: {{value: 100}}}}}}
          route: {V1}
        - match: [{{headers: {{x-abort: {{exact: half}}}}}}]
          fault: {{abort: {{grpcStatus: RESOURCE_EXHAUSTED, percentage: {{value: 50}}}}}}
          route: {V1}
        - match: [{{headers: {{x-abort: {{exact: http}}}}}}]
          fault: {{abort: {{httpStatus: 503, percentage: {{value: 100}}}}}}
          route: {V1}
        - route: {V1}
        """)
    key = fresh("aborted")
    aborted = grpc(mesh, "-n", "20", "-c", "4", "-m", "x-abort=unavailable", "-m", f"x-key={key}")
    assert aborted["codes"] == {"UNAVAILABLE": 20} and aborted["versions"] == {"none": 20}, aborted
    assert server_saw(mesh, "v1", key)["attempt"] == 0  # the caller's sidecar answered: nothing went upstream
    half = grpc(mesh, "-n", "200", "-c", "8", "-m", "x-abort=half")
    print(f"gRPC abort RESOURCE_EXHAUSTED at 50% over 200 calls: {half['codes']}")
    assert set(half["codes"]) == {"OK", "RESOURCE_EXHAUSTED"} and 70 <= half["codes"]["RESOURCE_EXHAUSTED"] <= 130
    http = grpc(mesh, "-n", "5", "-m", "x-abort=http")
    assert http["codes"] == {"UNAVAILABLE": 5}, http  # an HTTP 503 abort is UNAVAILABLE to a gRPC client
    clean = grpc(mesh, "-n", "20", "-c", "4")
    assert clean["codes"] == {"OK": 20} and clean["versions"] == {"v1": 20}, clean


def test_mirroring_and_header_operations(mesh: App, mesh_home: Path) -> None:
    routes(mesh_home, f"""
        - route: {V1}
          mirror: {{host: echo, subset: v2}}
          mirrorPercentage: {{value: 100}}
          headers:
            request:
              set: {{x-mesh-set: set-by-mesh}}
              add: {{x-mesh-added: added-by-mesh}}
              remove: [x-drop-me]
            response:
              add: {{x-mesh-response: from-the-mesh}}
              remove: [x-version]
        """)
    key = fresh("mirror")
    done = grpc(mesh, "-n", "20", "-c", "4", "-m", f"x-key={key}", "-m", "x-mesh-set=from-client",
                "-m", "x-drop-me=secret", "--replies")
    assert done["codes"] == {"OK": 20}, done["first_error"]
    for call in done["replies"]:
        received = call["reply"]["metadata"]
        assert call["reply"]["version"] == "v1", call  # the caller gets only the primary's answers
        assert received["x-mesh-set"] == "set-by-mesh" and received["x-mesh-added"] == "added-by-mesh", received
        assert "x-drop-me" not in received, received
        assert call["initial"].get("x-mesh-response") == "from-the-mesh", call["initial"]
        # Response header removal acts on the headers (initial metadata), not the trailers, as in Envoy.
        assert "x-version" not in call["initial"] and call["trailing"].get("x-version") == "v1", call
    mesh.wait_for(lambda: server_saw(mesh, "v2", key)["attempt"] == 20, "echo v2 received the 20 mirrored calls",
                  timeout=10)
    shadows = [e for e in grpc_log(mesh, "echo-v2-proxy", "inbound")
               if str(e.get("authority")).startswith("echo-shadow")]
    assert len(shadows) >= 20, "the mirrored calls reach v2 with Istio's -shadow authority"


# --- security: authorization on gRPC method paths ------------------------------------------------------------

def test_authorization_policy_on_method_paths(mesh: App, mesh_home: Path) -> None:
    policy = f"""apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: echo-methods, namespace: {PROJECT}}}
spec:
  selector: {{matchLabels: {{app: echo}}}}
"""
    apply(mesh_home, policy + '  action: DENY\n  rules: [{to: [{operation: {paths: ["/demo.Admin/*"]}}]}]\n', PROJECT)
    denied = grpc(mesh, "--method", RESET, "-n", "5")
    assert denied["codes"] == {"PERMISSION_DENIED": 5}, denied  # Envoy's RBAC 403, as a gRPC status
    allowed = grpc(mesh, "-n", "10")
    assert allowed["codes"] == {"OK": 10}, allowed["first_error"]

    apply(mesh_home, policy + '  action: ALLOW\n  rules: [{to: [{operation: {paths: ["/demo.Echo/*"]}}]}]\n', PROJECT)
    denied = grpc(mesh, "--method", RESET, "-n", "5")
    assert denied["codes"] == {"PERMISSION_DENIED": 5}, denied  # not allowed: denied
    for method in (HELLO, BLOB):
        allowed = grpc(mesh, "--method", method, "-n", "10")
        assert allowed["codes"] == {"OK": 10}, (method, allowed["first_error"])


# --- observability ------------------------------------------------------------------------------------------

def test_metrics_and_access_log_carry_the_grpc_status(mesh: App, mesh_home: Path) -> None:
    routes(mesh_home, f"""
        - match: [{{headers: {{x-abort: {{exact: "yes"}}}}}}]
          fault: {{abort: {{grpcStatus: UNAVAILABLE, percentage: {{value: 100}}}}}}
          route: {V1}
        - route: {V1}
          retries: {{attempts: 0}}
        """)
    source = {"reporter": "source", "destination_service_name": "echo", "source_principal": CLIENT_ID}
    destination = {"reporter": "destination", "source_principal": CLIENT_ID}
    out_before, in_before = grpc_requests(mesh, "client-proxy", **source), grpc_requests(mesh, "echo-v1-proxy",
                                                                                         **destination)
    log_before = len(grpc_log(mesh, "echo-v1-proxy", "inbound"))
    assert grpc(mesh, "-n", "10")["codes"] == {"OK": 10}
    failing = grpc(mesh, "-n", "5", "-m", f"x-key={fresh('metrics')}", "-m", "x-fail-times=5")
    assert failing["codes"] == {"UNAVAILABLE": 5}, failing  # the server's own UNAVAILABLE, not retried
    assert grpc(mesh, "-n", "5", "-m", "x-abort=yes")["codes"] == {"UNAVAILABLE": 5}  # the caller's sidecar's

    def outbound() -> Counter[tuple[str, str]]:
        return minus(grpc_requests(mesh, "client-proxy", **source), out_before)
    mesh.wait_for(lambda: sum(outbound().values()) >= 20, "the client's sidecar counted 20 gRPC calls", timeout=10)
    print(f"client's sidecar, gRPC calls to echo by (grpc_response_status, response_flags): {dict(outbound())}")
    assert by_status(outbound()) == Counter({"0": 10, "14": 10}), outbound()
    assert outbound()[("14", "FI")] == 5, outbound()  # the injected aborts, flagged as Envoy flags them

    # The server's sidecar reports them too (reporter="destination"), as both of Istio's proxies do.
    def inbound() -> Counter[str]:
        return by_status(minus(grpc_requests(mesh, "echo-v1-proxy", **destination), in_before))
    mesh.wait_for(lambda: sum(inbound().values()) >= 15, "echo v1's sidecar counted 15 gRPC calls", timeout=10)
    assert inbound() == Counter({"0": 10, "14": 5}), inbound()
    served = [s for s in metrics(mesh, "echo-v1-proxy") if s.name == "istio_requests_total"  # the app's answers
              and s.labels.get("request_protocol") == "grpc" and s.labels.get("grpc_response_status") == "14"
              and s.labels.get("response_flags") == "-"]
    assert served and {s.labels.get("response_code") for s in served} == {"200"}  # gRPC errors ride on HTTP 200

    mesh.wait_for(lambda: len(grpc_log(mesh, "echo-v1-proxy", "inbound")) - log_before >= 15,
                  "echo v1's sidecar logged the 15 calls it served", timeout=10)
    logged = grpc_log(mesh, "echo-v1-proxy", "inbound")[log_before:]
    assert statuses(logged) == Counter({"0": 10, "14": 5}), [(e.get("grpc_status"), e.get("status")) for e in logged]
    assert all(e.get("protocol") == "HTTP/2" and e.get("mtls") for e in logged), logged[-1]
    aborted = [e for e in grpc_log(mesh, "client-proxy", "outbound") if e.get("flags") == "FI"]
    assert len(aborted) >= 5 and statuses(aborted[-5:]) == Counter({"14": 5}), aborted[-5:]


def echo_stat(home: Path) -> dict[str, dict[str, Any]]:
    """`meshctl stat echo -t 0` (totals since each proxy started), by version."""
    done = meshctl("stat", "echo", "-t", "0", "-p", PROJECT, "-o", "json", home=home)
    assert done.code == 0, done.err
    return {r["version"]: r for r in json.loads(done.out) if r["service"] == "echo"}


def test_stat_and_edges_show_the_grpc_service(mesh: App, mesh_home: Path) -> None:
    routes(mesh_home, """
        - route:
          - {destination: {host: echo, subset: v1}, weight: 50}
          - {destination: {host: echo, subset: v2}, weight: 50}
        """)
    before = echo_stat(mesh_home)
    done = grpc(mesh, "-n", "100", "-c", "4")
    assert done["codes"] == {"OK": 100} and set(done["versions"]) == {"v1", "v2"}, done
    after = echo_stat(mesh_home)
    for version, calls in done["versions"].items():
        row = after[version]
        assert row["requests"] - before[version]["requests"] == calls, (version, calls, before[version], row)
        assert row["success_rate"] is not None and row["p50_ms"] is not None, row
    edges = meshctl("edges", "-t", "0", "-p", PROJECT, "-o", "json", home=mesh_home)
    assert edges.code == 0, edges.err
    for version in ("v1", "v2"):
        edge = next((e for e in json.loads(edges.out)
                     if (e["source"], e["destination"]) == ("client", f"echo-{version}")), None)
        assert edge is not None, edges.out
        assert edge["secured"] and edge["source_identity"] == CLIENT_ID and edge["requests"] > 0, edge
        assert edge["destination_identity"] == f"spiffe://cluster.local/ns/{PROJECT}/sa/echo", edge


def test_stat_counts_a_non_ok_grpc_status_as_a_failure(mesh: App, mesh_home: Path) -> None:
    """A gRPC error rides on HTTP 200: `stat`'s success rate reads `grpc_response_status` for gRPC calls, as
    Kiali and `linkerd viz stat` do, or a service failing every call would show 100%."""
    routes(mesh_home, f"""
        - route: {V1}
          retries: {{attempts: 0}}
        """)
    before = echo_stat(mesh_home)["v1"]
    assert grpc(mesh, "-n", "90", "-c", "4")["codes"] == {"OK": 90}
    failing = grpc(mesh, "-n", "10", "-m", f"x-key={fresh('stat')}", "-m", "x-fail-times=10")
    assert failing["codes"] == {"UNAVAILABLE": 10}, failing
    after = echo_stat(mesh_home)["v1"]

    def successes(row: dict[str, Any]) -> float:
        return float(row["requests"] * (row["success_rate"] or 0) / 100)
    calls, ok = after["requests"] - before["requests"], successes(after) - successes(before)
    print(f"stat, echo v1: {calls} more calls, {ok:.1f} more successes; now {after}")
    assert calls == 100 and abs(ok - 90) < 1, (before, after)


# --- HTTP/2 itself: multiplexing and flow control -----------------------------------------------------------

def test_concurrent_calls_share_a_connection_and_large_messages_pass_intact(mesh: App, mesh_home: Path) -> None:
    routes(mesh_home, f"- route: {V1}")
    many = grpc(mesh, "-n", "200", "-c", "200", "-m", "x-sleep-ms=200", "--replies")
    assert many["codes"] == {"OK": 200}, many["first_error"]
    overlap = max(r["reply"]["inflight"] for r in many["replies"])
    print(f"200 concurrent calls on one channel: {many['wall_ms']} ms, the server served up to {overlap} at once, "
          f"at most {many['peak_connections']} connections to :50051 open in the client's pod")
    assert overlap >= 50 and many["wall_ms"] < 15_000, (overlap, many["wall_ms"])  # multiplexed, not one by one
    assert many["peak_connections"] <= 8, many["peak_connections"]  # the app's one, and a few pooled upstream

    size = 4 * 1024 * 1024 + 1
    big = grpc(mesh, "--method", BLOB, "--size", str(size), "-n", "3", "-c", "3", "--replies")
    assert big["codes"] == {"OK": 3}, big["first_error"]
    assert [r["reply"] for r in big["replies"]] == [{"intact": True, "bytes": size}] * 3
