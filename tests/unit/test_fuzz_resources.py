"""Fuzzing resource YAML: every mutation of a valid resource is accepted whole or refused with the problem;
what is accepted compiles into a snapshot the data plane takes; a refused `apply` leaves the store as it was."""

from __future__ import annotations

import base64
import contextlib
import copy
import datetime as dt
import json
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given
from hypothesis import strategies as st

from meshctl.config import resources
from meshctl.config.analyze import analyze_resources
from meshctl.config.resources import check_document
from meshctl.config.store import Store
from meshctl.errors import InvalidInput
from meshctl.mesh import Pod, describe
from meshctl.pilot.changes import apply
from meshctl.pilot.snapshot import compile_snapshot
from meshctl.status import ExitCode
from meshctl.telemetry import slo
from meshctl.telemetry.golden import Golden
from sidecar import snapshot as contract
from sidecar.jwt import Jwks, JwtError, authenticate
from sidecar.policy import ClusterPolicy, RetryPolicy, merged_policy, seconds
from sidecar.rbac import Subject, decide
from sidecar.routes import request_matches
from tests.unit.cli import meshctl
from tests.unit.fuzzing import (
    BIG_YAML,
    CLI,
    FEW,
    FUZZ,
    JUNK_BYTES,
    SLOW_S,
    TEXT,
    context,
    json_roundtrips,
    make_home,
    mutants,
    one_line,
    run_cli,
    to_yaml_text,
    tree_state,
    values,
)


def _b64(n: int) -> str:
    return base64.urlsafe_b64encode(n.to_bytes(32, "big")).rstrip(b"=").decode()


_KEY = ec.generate_private_key(ec.SECP256R1()).public_key().public_numbers()
JWKS = json.dumps({"keys": [{"kty": "EC", "crv": "P-256", "kid": "k1", "x": _b64(_KEY.x), "y": _b64(_KEY.y)}]})
SELECTOR = {"matchLabels": {"app": "reviews", "version": "v1"}}
POLICY = {"loadBalancer": {"simple": "ROUND_ROBIN",
                           "consistentHash": {"httpCookie": {"name": "c", "ttl": "10s", "path": "/"}}},
          "connectionPool": {"tcp": {"maxConnections": 10, "connectTimeout": "1s"},
                             "http": {"http1MaxPendingRequests": 5, "maxRequestsPerConnection": 1, "maxRetries": 3,
                                      "idleTimeout": "30s"}},
          "outlierDetection": {"consecutive5xxErrors": 3, "consecutiveGatewayErrors": 2, "interval": "5s",
                               "baseEjectionTime": "30s", "maxEjectionPercent": 50}}
VALID: list[dict[str, Any]] = [
    {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
     "metadata": {"name": "reviews", "namespace": "shop", "labels": {"team": "a"}, "annotations": {"note": "x"}},
     "spec": {"hosts": ["reviews"], "http": [
         {"name": "jason", "match": [{"uri": {"prefix": "/api"}, "headers": {"end-user": {"exact": "jason"}},
                                      "queryParams": {"v": {"regex": "[0-9]+"}}, "method": {"exact": "GET"},
                                      "ignoreUriCase": True}],
          "route": [{"destination": {"host": "reviews", "subset": "v1", "port": {"number": 9080}}, "weight": 90,
                     "headers": {"request": {"set": {"x-a": "1"}}}},
                    {"destination": {"host": "reviews", "subset": "v2"}, "weight": 10}],
          "timeout": "1.5s", "retries": {"attempts": 3, "perTryTimeout": "500ms", "retryOn": "5xx,503"},
          "fault": {"delay": {"fixedDelay": "1s", "percentage": {"value": 10}},
                    "abort": {"httpStatus": 503, "percentage": {"value": 5}}},
          "mirror": {"host": "reviews", "subset": "v2"}, "mirrorPercentage": {"value": 50},
          "headers": {"request": {"add": {"x-b": "2"}}, "response": {"remove": ["server"]}}},
         {"route": [{"destination": {"host": "reviews"}}]}]}},
    {"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule", "metadata": {"name": "reviews"},
     "spec": {"host": "reviews", "trafficPolicy": POLICY,
              "subsets": [{"name": "v1", "labels": {"version": "v1"}},
                          {"name": "v2", "labels": {"version": "v2"}, "trafficPolicy": POLICY}]}},
    {"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication", "metadata": {"name": "reviews"},
     "spec": {"selector": SELECTOR, "mtls": {"mode": "STRICT"}, "portLevelMtls": {"9080": {"mode": "DISABLE"}}}},
    {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy", "metadata": {"name": "reviews"},
     "spec": {"selector": SELECTOR, "action": "ALLOW", "rules": [
         {"from": [{"source": {"principals": ["cluster.local/ns/shop/sa/web"], "namespaces": ["shop"]}}],
          "to": [{"operation": {"methods": ["GET"], "paths": ["/api*"], "ports": ["9080"]}}],
          "when": [{"key": "request.headers[x-user]", "values": ["a"]},
                   {"key": "request.auth.claims[group]", "notValues": ["b"]}]}]}},
    {"apiVersion": "security.istio.io/v1", "kind": "RequestAuthentication", "metadata": {"name": "reviews"},
     "spec": {"selector": SELECTOR, "jwtRules": [
         {"issuer": "https://issuer.example", "audiences": ["reviews"], "jwks": JWKS,
          "fromHeaders": [{"name": "authorization", "prefix": "Bearer "}], "fromParams": ["token"],
          "forwardOriginalToken": True}]}},
    {"apiVersion": "telemetry.istio.io/v1", "kind": "Telemetry", "metadata": {"name": "reviews"},
     "spec": {"selector": SELECTOR, "tracing": [
         {"randomSamplingPercentage": 10, "disableSpanReporting": False,
          "providers": [{"name": "zipkin", "endpoint": "http://zipkin:9411/api/v2/spans"}]}]}},
    {"apiVersion": "meshctl.io/v1", "kind": "ServiceLevelObjective", "metadata": {"name": "reviews"},
     "spec": {"service": "reviews", "availability": 99.9, "window": "1h",
              "latency": {"percentile": 99, "threshold": "300ms"}}},
]
DR = VALID[1]

# Values that hit the parsers' edges: durations, weights, regexes, names, ports, enums, types.
EDGES = st.sampled_from([
    "1.5s", "250ms", "1e400s", "9" * 400 + "s", "-1s", "1.5", "1 s", "99999999999999h", "0s",
    -1, 0, 50, 50.5, 100, 101, 1e308, float("nan"), float("inf"), True, False, None, 2**64,
    "(", "a{99999999999}", "(" * 2000 + ")" * 2000, "[0-9]+", ".*",
    "reviews", "Reviews", "reviews\n", "re_views", "", "a" * 300,
    "9080", "²", "0", "65536", "9" * 5000, 9080, 0, 65536,
    "STRICT", "strict", "UNSET", "ALLOW", "DENY", "zipkin", "http://x", "http://zipkin:9411", "ftp://x",
    "source.principal", "source.principal\n", "request.headers[x]", "request.auth.claims[]",
    [], {}, [None], {"": None}, JWKS, '{"keys": []}', '{"keys": [{"kty": "RSA"}]}', "[" * 3000,
    dt.date(2001, 12, 14), b"\x00binary", {1: "a", "b": 2}, {"²": {"mode": "STRICT"}}, ["²"],
])
MUTANT = st.one_of(EDGES, EDGES, values(4), TEXT)


def resource_mutants() -> st.SearchStrategy[dict[str, Any]]:
    return mutants(st.sampled_from(VALID), MUTANT)


POD = Pod(service="reviews-v1", sidecar="reviews-v1-proxy", app="reviews", version="v1", mode="PERMISSIVE",
          exclude_inbound=(), exclude_outbound=(), published=())
POD2 = Pod(service="reviews-v2", sidecar="reviews-v2-proxy", app="reviews", version="v2", mode="STRICT",
           exclude_inbound=(), exclude_outbound=(), published=())
INFO = describe(POD, [POD, POD2], "shop", "cluster.local")


def data_plane_takes(accepted: list[dict[str, Any]]) -> None:
    """The proxy's snapshot compiles, parses, and every policy in it evaluates without an exception."""
    body = json.loads(json.dumps(compile_snapshot(INFO, accepted, 7)))
    snap = contract.parse(body)
    for vs in snap.routes:
        for rule in vs.get("http", []):
            RetryPolicy.from_spec(rule.get("retries"))
            for key in ("timeout",):
                if key in rule:
                    assert seconds(rule[key]) is not None
            for match in rule.get("match") or []:
                request_matches(match, "GET", "/api/x?v=1", {"end-user": "jason"}, {"v": "1"})
    for dr in snap.destinations:
        for subset in [None, *(s["name"] for s in dr.get("subsets", []))]:
            ClusterPolicy.from_spec(merged_policy(dr, subset))
    decide(snap.authorization, Subject(principal="cluster.local/ns/shop/sa/web", method="GET", path="/api",
                                       host="reviews", port=9080, headers={"x-user": "a"}))
    decide(snap.authorization, Subject(principal=None, port=9080))  # a TCP connection
    with contextlib.suppress(JwtError):
        authenticate(snap.jwt, Jwks(), [("authorization", "Bearer e30.e30.AA")], [("token", "x.y.z")], time.time())
    for r in accepted:
        if r["kind"] == "ServiceLevelObjective":
            slo.evaluate(r, lambda *_: Golden(), 1.0)


def check(doc: Any) -> dict[str, Any] | None:
    resource, problems = check_document(doc, "fuzz.yaml")
    assert (resource is None) == bool(problems)
    assert all(isinstance(p, str) and p for p in problems)
    if resource is None:
        return None
    assert json_roundtrips(resource)  # the store and the snapshots are JSON
    again, more = check_document(resource, "fuzz.yaml")
    assert more == [] and again == resource  # what was accepted is accepted again, unchanged
    return resource


@FUZZ
@given(doc=resource_mutants())
def test_mutated_resources_are_accepted_whole_or_refused(doc: dict[str, Any]) -> None:
    resource = check(doc)
    if resource is not None:
        data_plane_takes([resource, DR] if resource["kind"] == "VirtualService" else [resource])
        analyze_resources([resource, DR], None)


@FUZZ
@given(doc=values(16))
def test_random_documents_are_refused_cleanly(doc: Any) -> None:
    check(doc)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz-resources")


@FUZZ
@given(doc=resource_mutants(), semantic=st.booleans())
def test_loading_files_with_mutations(workdir: Path, doc: dict[str, Any], semantic: bool) -> None:
    path = workdir / "load.yaml"
    path.write_text(to_yaml_text(doc) + "---\n" + to_yaml_text(DR))
    try:
        loaded = resources.load([str(path)], semantic=semantic)
    except InvalidInput as exc:
        assert str(path) in exc.one_line() or "given twice" in exc.one_line()
    else:
        analyze_resources(loaded, None)  # analyze takes what --files-only loads without the semantic checks


def test_valid_resources_are_accepted_and_taken_by_the_data_plane() -> None:
    accepted = [check(doc) for doc in VALID]
    assert all(accepted)
    data_plane_takes(accepted)  # type: ignore[arg-type]


@pytest.mark.parametrize(("field", "value", "message"), [
    (("spec", "http", 0, "route", 0, "destination"), {"subset": "v1"}, "destination.host: required"),
    (("spec", "http", 0, "fault", "abort"), {"percentage": {"value": 5}}, "give one of httpStatus or grpcStatus"),
    (("spec", "http", 0, "match", 0, "uri"), {"regex": "(?:a{1000}){1000}"}, "not an RE2 regular expression"),
    (("spec", "http", 0, "timeout"), "9" * 400 + "s", "longer than a duration can be"),
    (("metadata", "name"), "reviews\n", "metadata.name must be"),
    (("metadata", "labels"), {"date": __import__("datetime").date(2001, 12, 14)}, "metadata.labels.date: must be"),
])
def test_bugs_found_by_fuzzing_stay_fixed(field: tuple[Any, ...], value: Any, message: str) -> None:
    doc = copy.deepcopy(VALID[0])
    target = doc
    for step in field[:-1]:
        target = target[step]
    target[field[-1]] = value
    resource, problems = check_document(doc, "f")
    assert resource is None and any(message in p for p in problems), problems


def test_mixed_key_types_and_non_json_values() -> None:
    doc = {**copy.deepcopy(DR), 1: "x", None: "y"}
    assert any("top-level field 1" in p for p in check_document(doc, "f")[1])
    pa = copy.deepcopy(VALID[2])
    pa["spec"]["portLevelMtls"] = {"²": {"mode": "STRICT"}}
    assert any("must be a port number" in p for p in check_document(pa, "f")[1])
    pa["spec"]["portLevelMtls"] = {9080: {"mode": "STRICT"}}  # a YAML int key: stored as JSON's string key
    assert check(pa) == {**pa, "spec": {**pa["spec"], "portLevelMtls": {"9080": {"mode": "STRICT"}}}}


# --- apply: all or nothing, through the library and the CLI ----------------------------------------------

@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_home(tmp_path_factory.mktemp("fuzz-apply") / "home")


def apply_file(home: Path, path: Path) -> None:
    """`meshctl apply -f PATH`: exit 0 and the resources stored, or exit 3, one line, and the store untouched."""
    config = home / "config"
    before, number = tree_state(config), Store(config).current_number()
    started = time.monotonic()
    ran = run_cli(home, "apply", "-f", str(path))
    assert time.monotonic() - started < SLOW_S
    if ran.code == 0:
        assert Store(config).current_number() in (number, number + 1)
        return
    assert ran.code == ExitCode.INVALID_INPUT, ran.err
    one_line(ran.err)
    assert tree_state(config) == before


@FEW
@given(doc=resource_mutants())
def test_apply_is_all_or_nothing(home: Path, workdir: Path, doc: dict[str, Any]) -> None:
    path = workdir / "apply.yaml"
    path.write_text(to_yaml_text(DR) + "---\n" + to_yaml_text(doc))
    apply_file(home, path)


@CLI
@given(text=st.one_of(st.text(max_size=300), st.binary(max_size=100), st.sampled_from(JUNK_BYTES)))
def test_apply_random_text(home: Path, workdir: Path, text: str | bytes) -> None:
    path = workdir / "apply-text.yaml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    apply_file(home, path)


def test_library_apply_refusal_changes_nothing(home: Path) -> None:
    vs = copy.deepcopy(VALID[0])
    vs["metadata"]["name"] = "orphan"
    vs["spec"]["http"][0]["route"][0]["destination"]["subset"] = "nowhere"
    checked = check(vs)
    assert checked is not None
    before = tree_state(home / "config")
    with pytest.raises(InvalidInput):
        apply(context(home), [checked])
    assert tree_state(home / "config") == before


@pytest.mark.parametrize("case", ["billion_laughs", "self_reference"])
def test_real_command_refuses_hostile_yaml(home: Path, tmp_path: Path, case: str) -> None:
    path = tmp_path / f"{case}.yaml"
    path.write_text(BIG_YAML[case])
    before = tree_state(home / "config")
    done = meshctl("apply", "-f", str(path), home=home, timeout=60)
    assert done.code == ExitCode.INVALID_INPUT
    assert str(path) in one_line(done.err)
    assert tree_state(home / "config") == before


def test_yaml_documents_dump_back() -> None:
    """The mutants are plain YAML: a test that fails names a document anyone can paste into a file."""
    for doc in VALID:
        assert yaml.safe_load(to_yaml_text(doc)) == doc
