"""Fuzzing what users type on the command line: `route set` flags and `--match`, durations, `slo --latency`,
`logs --status`, `telemetry set`, `install` settings. Random text gets a clear error or a valid parse."""

from __future__ import annotations

import contextlib
import json
import math
import string
from pathlib import Path
from typing import Any

import pytest
from hypothesis import assume, example, given
from hypothesis import strategies as st

from meshctl.cli.flags import duration as flag_seconds
from meshctl.cli.rollout import _steps
from meshctl.cli.telemetry import telemetry_resource
from meshctl.config import routes
from meshctl.config.changes import undefined_subsets
from meshctl.config.kinds import HTTP_ROUTE
from meshctl.config.resources import check_document
from meshctl.config.schema import parse_duration, validate
from meshctl.config.store import Store
from meshctl.errors import MeshError, UsageError
from meshctl.extras import parse_addons
from meshctl.inject.injector import inject
from meshctl.lifecycle import install
from meshctl.mesh import MeshedPods
from meshctl.status import ExitCode
from meshctl.telemetry import slo
from meshctl.telemetry.logs import LogFilter
from sidecar import snapshot as contract
from sidecar.contract import DURATION_UNITS as UNITS
from sidecar.contract import MAX_DURATION_S
from sidecar.policy import RetryPolicy, seconds
from tests.unit.fuzzing import CLI, FUZZ, ODD_TEXT, TEXT, context, make_home, one_line, run_cli, tree_state
from tests.unit.test_inject import BOOKINFO

# --- durations -----------------------------------------------------------------------------------------------

NUMBERS = st.one_of(st.integers(0, 10**6).map(str), st.decimals(0, 10**6, places=3, allow_nan=False).map(str),
                    st.floats(0, 1e6, allow_nan=False).map(lambda f: f"{f:f}"))
DURATIONS = st.builds(lambda n, u: (n, u), NUMBERS, st.sampled_from(sorted(UNITS)))
DURATION_TEXT = st.one_of(st.builds("{}{}".format, NUMBERS, st.sampled_from([*UNITS, "d", "", " s", "S"])),
                          ODD_TEXT, st.text(max_size=12), st.text(string.digits + ".smh", max_size=8))


@FUZZ
@given(parts=DURATIONS)
def test_valid_durations_round_trip(parts: tuple[str, str]) -> None:
    number, unit = parts
    text = f"{number}{unit}"
    assert parse_duration(text) == pytest.approx(float(number) * UNITS[unit])
    assert seconds(text) == parse_duration(text)  # the data plane reads what the control plane validated
    assert parse_duration(f" {text}\n") == parse_duration(text)


@FUZZ
@given(text=DURATION_TEXT)
@example("9" * 400 + "s")
@example("99999999999999h")
def test_any_text_is_a_duration_or_a_value_error(text: str) -> None:
    try:
        value = parse_duration(text)
    except ValueError as exc:
        assert "duration" in str(exc)
        return
    assert math.isfinite(value) and 0 <= value <= MAX_DURATION_S
    assert seconds(text) == value
    assert flag_seconds("--since", text) == value


@FUZZ
@given(text=DURATION_TEXT)
def test_duration_flags_take_a_bare_number_or_a_duration(text: str) -> None:
    try:
        value = flag_seconds("--since", text)
    except UsageError as exc:
        assert exc.one_line().startswith("--since ") and "e.g. 30s" in exc.one_line()
        return
    assert math.isfinite(value) and value >= 0


@FUZZ
@given(text=st.one_of(DURATION_TEXT, st.lists(st.sampled_from(["5xx", "503", "²", "9" * 5000, "reset", " ", ""]))
                      .map(",".join)), attempts=st.integers(0, 5))
def test_retry_policy_reads_any_retry_on(text: str, attempts: int) -> None:
    policy = RetryPolicy.from_spec({"attempts": attempts, "retryOn": text, "perTryTimeout": text})
    assert all(100 <= s <= 599 for s in policy.statuses)


# --- route set -----------------------------------------------------------------------------------------------

VERSIONS = {"v1", "v2", "v3"}
FIELDS = st.sampled_from(["header", "query", "path", "uri", "method", "colour", ""])
OPS = st.sampled_from(["=", "^=", "~=", "==", ":", ""])
NAMES = st.one_of(st.sampled_from(["end-user", "X-Canary", "a.b_c", ""]), TEXT)
VALUES = st.one_of(st.sampled_from(["jason", "/api", "GET", "[0-9]+", "(", "a{99999999999}", "(" * 2000 + ")" * 2000,
                                    "a\nb", "x\n", ""]), TEXT)
MATCHES = st.one_of(
    st.builds(lambda f, n, o, v: f"{f}{':' + n if n else ''}{o}{v}", FIELDS, NAMES, OPS, VALUES),
    ODD_TEXT, st.text(max_size=20))
TARGETS = st.one_of(st.builds(lambda s, w: f"{s}={w}" if w is not None else s, st.sampled_from(["v1", "v2", "v3", "v9",
                                                                                                  "", "V1"]),
                              st.one_of(st.none(), st.integers(-10, 110).map(str), st.floats().map(str),
                                        st.sampled_from(["", "x", "1e2", "1_0", "nan", "inf", "9" * 400]))),
                    ODD_TEXT)
PAIRS = st.one_of(st.builds("{}={}".format, NAMES, VALUES), ODD_TEXT)


@st.composite
def edits(draw: st.DrawFn) -> routes.RouteEdit:
    maybe = st.one_of(st.none(), DURATION_TEXT)
    return routes.RouteEdit(
        match=draw(st.lists(MATCHES, max_size=3)), to=draw(st.lists(TARGETS, max_size=3)), timeout=draw(maybe),
        retries=draw(st.one_of(st.none(), st.integers(0, 100))), per_try_timeout=draw(maybe),
        retry_on=draw(st.one_of(st.none(), st.sampled_from(["5xx", "5xx,503", "reset,²", "bogus", ",", "599"]), TEXT)),
        delay=draw(maybe), delay_percent=draw(st.floats()), abort=draw(st.one_of(st.none(), st.integers(-1, 1000))),
        abort_percent=draw(st.floats()), mirror=draw(st.one_of(st.none(), st.sampled_from(["v1", "v2", "v9"]))),
        mirror_percent=draw(st.floats()), set_headers=draw(st.lists(PAIRS, max_size=2)),
        add_headers=draw(st.lists(PAIRS, max_size=2)), remove_headers=draw(st.lists(NAMES, max_size=2)),
        set_response_headers=draw(st.lists(PAIRS, max_size=2)), reset=draw(st.booleans()))


def all_valid(resources: list[dict[str, Any]]) -> None:
    for r in resources:
        checked, problems = check_document(r, "route set")
        assert problems == [], problems
        assert checked == json.loads(json.dumps(r))
    assert undefined_subsets(resources, {(r["kind"], r["metadata"]["name"]) for r in resources}) == []


@FUZZ
@given(exprs=st.lists(MATCHES, max_size=4))
@example(exprs=["path~=a{99999999999}"])
@example(exprs=["header:x~=" + "(" * 2000 + ")" * 2000])
def test_match_expressions_parse_into_valid_istio_matches(exprs: list[str]) -> None:
    try:
        match = routes.parse_match(exprs)
    except UsageError as exc:
        assert exc.one_line().startswith("--match ")
        return
    assert validate(match, HTTP_ROUTE["match"][0], "match") == []


@FUZZ
@given(conditions=st.lists(st.tuples(st.sampled_from(["header", "query", "path", "method"]),
                                     st.text(string.ascii_lowercase + "-", min_size=1, max_size=6),
                                     st.sampled_from(["=", "^="]),
                                     st.text(string.ascii_letters + string.digits + "/-_.", max_size=8)), max_size=4))
def test_match_expressions_round_trip_through_the_table(conditions: list[tuple[str, str, str, str]]) -> None:
    exprs = [f"{f}:{n}{o}{v}" if f in ("header", "query") else f"{f}{o}{v}" for f, n, o, v in conditions]
    match = routes.parse_match(exprs)
    shown = routes.describe_match({"match": [match]} if match else {})
    assert routes.parse_match([] if shown == "*" else shown.split(" & ")) == match


@FUZZ
@given(values=st.lists(TARGETS, max_size=4))
@example(values=["v1=94", "v2=7", "v3"])
def test_targets_are_weights_adding_up_or_an_error(values: list[str]) -> None:
    try:
        parsed = routes.parse_targets(values)
    except UsageError as exc:
        assert exc.one_line().startswith("--to")
        return
    weights = [w for _, w in parsed if w is not None]
    assert all(0 <= w <= 100 for w in weights)
    if len(parsed) > 1:
        assert abs(sum(weights) - 100) <= 1e-9


@FUZZ
@given(edit=edits(), first=st.one_of(st.none(), edits()))
def test_route_set_writes_valid_resources_or_refuses(edit: routes.RouteEdit, first: routes.RouteEdit | None) -> None:
    current: list[dict[str, Any]] = []
    if first is not None:
        try:
            current = routes.set_route([], "reviews", first, VERSIONS)
        except UsageError:
            current = []
    try:
        out = routes.set_route(current, "reviews", edit, VERSIONS)
    except UsageError as exc:
        assert exc.one_line()
        return
    all_valid(out)
    routes.describe_destinations(routes.find_virtual_service(out, "reviews")["spec"]["http"][0])  # type: ignore[index]
    with contextlib.suppress(UsageError):
        all_valid(routes.delete_route(out, "reviews", edit.match))


def test_route_set_bugs_stay_fixed() -> None:
    for bad in (["path~=(?:a{1000}){1000}"], ["path~=" + "(" * 2000 + ")" * 2000], ["path=/a\n"]):
        with pytest.raises(UsageError):
            routes.parse_match(bad)
    with pytest.raises(UsageError, match="more than 100"):  # the open subset would have weight -1
        routes.parse_targets(["v1=94", "v2=7", "v3"])
    with pytest.raises(UsageError, match="retry condition"):
        routes.set_route([], "reviews", routes.RouteEdit(retry_on="5xx,²"), VERSIONS)


# --- route set through the CLI, on a home with bookinfo meshed ------------------------------------------------

@pytest.fixture(scope="module")
def meshed_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = make_home(tmp_path_factory.mktemp("fuzz-route") / "home")
    with pytest.MonkeyPatch.context() as patch:  # module scope: before the autouse fixture that does this per test
        patch.setenv("MESHCTL_AGENT", "off")
        inject(context(home), str(BOOKINFO), "shop", "PERMISSIVE", home)
    return home


FLAGS = st.one_of(
    st.tuples(st.just("--to"), TARGETS), st.tuples(st.just("--match"), MATCHES),
    st.tuples(st.sampled_from(["--timeout", "--per-try-timeout", "--delay"]), DURATION_TEXT),
    st.tuples(st.sampled_from(["--retries", "--abort"]), st.one_of(st.integers(-5, 1000).map(str), TEXT)),
    st.tuples(st.sampled_from(["--delay-percent", "--abort-percent", "--mirror-percent"]),
              st.one_of(st.floats().map(str), TEXT)),
    st.tuples(st.just("--retry-on"), st.one_of(st.sampled_from(["5xx", "reset,503", "²"]), TEXT)),
    st.tuples(st.just("--mirror"), st.sampled_from(["v1", "v2", "v9", ""])),
    st.tuples(st.sampled_from(["--set-header", "--add-header", "--set-response-header"]), PAIRS),
    st.tuples(st.just("--remove-header"), NAMES),
    st.tuples(st.sampled_from(["--reset", "--dry-run", "--bogus"])),
)


@CLI
@given(service=st.sampled_from(["reviews", "reviews", "ratings", "nope", "", "Reviews"]),
       flags=st.lists(FLAGS, max_size=5))
def test_route_set_cli_is_one_line_or_a_valid_store(meshed_home: Path, service: str,
                                                    flags: list[tuple[str, ...]]) -> None:
    assume(all("\x00" not in part for flag in flags for part in flag))  # argv cannot hold NUL
    config = meshed_home / "config"
    before = tree_state(config)
    ran = run_cli(meshed_home, "route", "set", service, *[part for flag in flags for part in flag])
    if ran.code != 0:
        assert ran.code == ExitCode.USAGE, ran.err
        one_line(ran.err)
        assert tree_state(config) == before
        return
    all_valid(Store(config).read().resources)
    for directory in MeshedPods.of(context(meshed_home).home).directories():
        contract.load(directory / "snapshot.json")


@CLI
@given(port=st.one_of(st.sampled_from(["8080=disable", "²=strict", "9" * 5000 + "=strict", "0=strict", "8080",
                                       "65536=permissive", "8080=bogus", "=strict"]), TEXT),
       mode=st.one_of(st.sampled_from(["STRICT", "permissive", "bogus"]), TEXT))
def test_mtls_set_port_flags(meshed_home: Path, port: str, mode: str) -> None:
    assume("\x00" not in port + mode)
    ran = run_cli(meshed_home, "mtls", "set", "reviews", "--mode", mode, "--port", port, "--dry-run")
    if ran.code != 0:
        assert ran.code == ExitCode.USAGE, ran.err
        one_line(ran.err)


# --- slo, telemetry, logs, rollout and install settings --------------------------------------------------------

@FUZZ
@given(text=st.one_of(st.builds("p{}<{}".format, st.one_of(st.integers(-5, 120), st.floats(0, 100), TEXT),
                                DURATION_TEXT), ODD_TEXT, st.text(max_size=15)))
@example("p99<" + "9" * 400 + "ms")
def test_slo_latency(text: str) -> None:
    try:
        percentile, threshold = slo.parse_latency(text)
    except UsageError as exc:
        assert exc.one_line().startswith("--latency")
        return
    assert 0 < percentile < 100
    assert 0 <= parse_duration(threshold) <= MAX_DURATION_S


@FUZZ
@given(availability=st.one_of(st.none(), st.floats()), latency=st.one_of(st.none(), st.builds(
    "p{}<{}".format, st.integers(0, 100), DURATION_TEXT)), window=DURATION_TEXT,
       project=st.one_of(st.none(), st.sampled_from(["shop", "my_project"])))
def test_slo_set_makes_a_valid_resource_or_refuses(availability: float | None, latency: str | None, window: str,
                                                   project: str | None) -> None:
    try:
        resource = slo.resource("reviews", availability, latency, window, project)
    except UsageError:
        return
    assert check_document(resource, "slo set")[1] == []


@FUZZ
@given(sampling=st.one_of(st.none(), st.floats(0, 100)),
       zipkin=st.one_of(st.none(), st.sampled_from(["none", "http://", "http://zipkin:9411/api/v2/spans", "ftp://x"]),
                        TEXT),
       otlp=st.one_of(st.none(), TEXT), service=st.one_of(st.none(), st.sampled_from(["reviews", "Reviews", "a\n"])))
def test_telemetry_set(sampling: float | None, zipkin: str | None, otlp: str | None, service: str | None) -> None:
    try:
        resource = telemetry_resource(service, None, sampling, zipkin, otlp)
    except UsageError as exc:
        assert exc.one_line()
        return
    assert check_document(resource, "telemetry set")[1] == []


@FUZZ
@given(status=st.one_of(st.none(), st.lists(st.one_of(st.sampled_from(["503", "5xx", "4XX", " 200 ", "600", "5x",
                                                                         "²00", "503\n"]), TEXT)).map(",".join)),
       direction=st.one_of(st.none(), st.sampled_from(["inbound", "outbound", "both"]), TEXT),
       entry=st.fixed_dictionaries({}, optional={
           "status": st.one_of(st.integers(0, 999), st.text(max_size=4)), "direction": st.sampled_from(
               ["inbound", "outbound"]), "path": st.text(max_size=5), "source_workload": st.text(max_size=5),
           "destination_service": st.text(max_size=5)}))
def test_log_filters(status: str | None, direction: str | None, entry: dict[str, Any]) -> None:
    try:
        wanted = LogFilter.parse(status, "/a", "reviews", direction)
    except UsageError as exc:
        assert exc.one_line().startswith(("--status", "--direction"))
        return
    assert all(s[:1] in "12345" and len(s) == 3 for s in wanted.statuses)
    wanted.matches(entry)


@FUZZ
@given(text=st.one_of(st.lists(st.one_of(st.integers(-5, 120).map(str), TEXT), max_size=5).map(",".join), TEXT))
def test_rollout_steps(text: str) -> None:
    try:
        steps = _steps(text)
    except UsageError:
        return
    assert steps == sorted(set(steps)) and steps[-1] == 100 and all(0 < s <= 100 for s in steps)


@FUZZ
@given(domain=st.one_of(st.sampled_from(["cluster.local", "cluster.local\n", "a..b", "-a", "A.b", "a" * 300]), TEXT),
       subnet=st.one_of(st.none(), st.sampled_from(["10.0.0.0/24", "10.0.0.0/33", "10.0.0.1/24", "::/64"]), TEXT),
       ttl=DURATION_TEXT, addons=st.one_of(st.sampled_from(["prometheus", "none", "none,prometheus"]), TEXT))
def test_install_settings(domain: str, subnet: str | None, ttl: str, addons: str) -> None:
    for parse, value in ((install.validate_trust_domain, domain), (install.validate_subnet, subnet),
                         (install.validate_cert_ttl, ttl), (parse_addons, addons)):
        try:
            parse(value)  # type: ignore[operator]
        except UsageError as exc:
            assert "--" in exc.one_line()
    try:
        install.validate_trust_domain(domain)
    except MeshError:
        return
    assert set(domain) <= set(string.ascii_lowercase + string.digits + ".-")
