"""CLI habits of issue 18: exit codes as the README says, Ctrl-C is 130, one meaning per flag, Go-style durations,
tables in 80 columns, JSON timestamps in RFC 3339, analyze listing every problem, and `meshctl schema`.

Commands run in process through the CLI's own entry point (`meshctl.cli.run`) against a fake engine; Ctrl-C is a
real SIGINT to a child process that runs the same entry point on the same fake."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import typer
import yaml
from rich.console import Console

from meshctl import const
from meshctl.cli import app, run
from meshctl.cli.flags import duration, duration_field, parse_go_duration
from meshctl.config.json_schema import document
from meshctl.config.kinds import KINDS, find_kind
from meshctl.context import Context
from meshctl.errors import UsageError
from meshctl.home import MeshHome
from meshctl.output import rfc3339, simple_table
from meshctl.status import ExitCode
from tests.conftest import REPO, ctrl_c_reaches_it
from tests.unit.fakes import FakeContainer, FakeEngine
from tests.unit.fuzzing import Ran, make_home, one_line

ISTIO = REPO / "tests" / "data" / "istio"
L = const.LABEL_PREFIX
RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
ENTRY = {"direction": "inbound", "time": 1_796_109_686.123, "method": "GET", "path": "/", "status": 200,
         "duration_ms": 1.5, "source_workload": "client", "mtls": True, "flags": "-"}


# --- sidecars on the one fake engine (tests/unit/fakes.py), their output access-log lines ---------------------

def sidecar(project: str, service: str, lines: list[dict[str, Any]], marker: Path | None = None) -> FakeContainer:
    """A running sidecar container; followed, its log tells `marker` so (then stays quiet, as docker's does)."""
    def quiet() -> None:
        if marker is not None:  # the parent sends SIGINT once the command is following
            marker.write_text("following")
        threading.Event().wait()

    labels = {f"{L}.component": "sidecar", f"{L}.project": project, f"{L}.service": service, f"{L}.app": service,
              f"{L}.subset": "v1"}
    attrs = {"State": {"Status": "running"}, "NetworkSettings": {"Networks": {"meshctl": {"IPAddress": "192.0.2.10"}}}}
    return FakeContainer(f"{project}-{service}-proxy-1", labels, attrs=attrs,
                         logs=b"".join(json.dumps(e).encode() + b"\n" for e in lines), follow=quiet)


def context(home: Path, containers: list[FakeContainer] | None = None, width: int = 400) -> Context:
    def console() -> Console:
        return Console(file=io.StringIO(), width=width, soft_wrap=True, no_color=True, highlight=False)

    engine = FakeEngine(containers=containers or [])
    return Context(home=MeshHome(home), out=console(), err=console(), docker_factory=lambda: engine)  # type: ignore


def cli(home: Path, *argv: str, containers: list[FakeContainer] | None = None) -> Ran:
    ctx = context(home, containers)
    code = run(list(argv), obj=ctx)
    return Ran(code, ctx.out.file.getvalue(), ctx.err.file.getvalue())  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_home(tmp_path_factory.mktemp("habits") / "home")


# --- exit codes: 2 for a bad flag value or an unknown name, 3 only for a broken file ----------------------------

BAD_VS = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: web}\nspec: {hosts: [web], x: 1}\n"
GOOD_VS = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: web}\nspec: {hosts: [web]}\n"
USAGE = {  # argv -> what the one error line must name
    "stat-window": (["stat", "--time-window", "5x"], "--time-window '5x'"),
    "edges-window": (["edges", "-t", "soon"], "--time-window 'soon'"),
    "stat-unknown": (["stat", "nosuch"], "'nosuch'"),
    "logs-unknown": (["logs", "nosuch"], "'nosuch'"),
    "logs-since": (["logs", "web", "--since", "1y"], "--since '1y'"),
    "logs-status": (["logs", "web", "--status", "abc"], "--status 'abc'"),
    "top-duration": (["top", "-d", "later"], "--duration 'later'"),
    "tap-duration": (["tap", "web", "--duration", "x"], "--duration 'x'"),
    "trace-unknown": (["trace", "deadbeef"], "'deadbeef'"),
    "proxy-status-timeout": (["proxy-status", "--timeout", "soon"], "--timeout 'soon'"),
    "proxy-status-unknown": (["proxy-status", "nosuch"], "'nosuch'"),
    "proxy-config-unknown": (["proxy-config", "nosuch"], "'nosuch'"),
    "certs-timeout": (["certs", "rotate", "--all", "--timeout", "x"], "--timeout 'x'"),
    "certs-overlap": (["certs", "rotate", "--root", "--overlap", "x"], "--overlap 'x'"),
    "certs-unknown": (["certs", "rotate", "nosuch"], "'nosuch'"),
    "dashboard-interval": (["dashboard", "--no-browser", "--interval", "100ms"], "--interval '100ms'"),
    "route-unknown": (["route", "set", "nosuch", "--to", "v1"], "'nosuch'"),
    "route-timeout": (["route", "set", "web", "--timeout", "1x"], "--timeout '1x'"),
    "get-unknown": (["get", "vs", "nosuch"], "'nosuch'"),
    "get-kind": (["get", "nokind"], "'nokind'"),
    "delete-unknown": (["delete", "vs", "nosuch"], "'nosuch'"),
    "rollback-unknown": (["rollback", "99"], "revision 99"),
    "apply-missing": (["apply", "-f", "/nonexistent/vs.yaml"], "/nonexistent/vs.yaml"),
    "apply-project": (["apply", "-p", "Bad Name", "-f", "GOOD"], "--project 'Bad Name'"),
    "slo-window": (["slo", "set", "web", "--availability", "99.9", "--window", "7x"], "--window '7x'"),
    "rollout-unknown": (["rollout", "start", "nosuch", "--to", "v2"], "'nosuch'"),
    "rollout-status-unknown": (["rollout", "status", "nosuch"], "nosuch"),
    "mtls-unknown": (["mtls", "set", "nosuch", "--mode", "strict"], "'nosuch'"),
    "inject-missing": (["inject", "/nonexistent/compose.yaml"], "/nonexistent/compose.yaml"),
    "bench-duration": (["bench", "--duration", "2m"], "--duration '2m'"),
    "install-ttl": (["install", "--cert-ttl", "5x"], "--cert-ttl '5x'"),
    "telemetry-url": (["telemetry", "set", "--zipkin", "ftp://x"], "--zipkin 'ftp://x'"),
    "schema-unknown": (["schema", "nope"], "'nope'"),
}


@pytest.mark.parametrize("case", sorted(USAGE))
def test_bad_values_and_unknown_names_exit_2_with_one_line(case: str, home: Path, tmp_path: Path) -> None:
    argv, needle = USAGE[case]
    (tmp_path / "good.yaml").write_text(GOOD_VS)
    argv = [str(tmp_path / "good.yaml") if a == "GOOD" else a for a in argv]
    ran = cli(home, *argv, containers=[sidecar("shop", "web", [])])
    assert ran.code == ExitCode.USAGE, (ran.code, ran.err)
    assert needle in one_line(ran.err)


def test_only_a_broken_file_exits_3(home: Path, tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text(BAD_VS)
    (tmp_path / "compose.yaml").write_text("services: [1, 2]\n")
    for argv in (["apply", "-f", str(tmp_path / "bad.yaml")], ["inject", str(tmp_path / "compose.yaml")]):
        ran = cli(home, *argv)
        assert ran.code == ExitCode.INVALID_INPUT, (argv, ran.err)
        assert str(tmp_path) in one_line(ran.err)


# --- Ctrl-C: 130, no traceback, from the follow loops (a real SIGINT to a child process) -----------------------

CHILD = """
import sys
from pathlib import Path
from meshctl.cli import run
from tests.unit.test_cli_habits import ENTRY, context, sidecar
home, marker, argv = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]
ctx = context(home, [sidecar("shop", "web", [ENTRY], marker)])
ctx.out, ctx.err = Console(), Console(stderr=True)
sys.exit(run(argv, obj=ctx))
""".replace("import sys\n", "import sys\nfrom rich.console import Console\n", 1)


@pytest.mark.parametrize("argv", [["logs", "web", "-f"], ["logs", "web", "-f", "-o", "json"], ["top"]],
                         ids=" ".join)
def test_ctrl_c_exits_130_without_a_traceback(argv: list[str], home: Path, tmp_path: Path) -> None:
    marker = tmp_path / "following"
    env = {**os.environ, "PYTHONPATH": str(REPO), "NO_COLOR": "1", "MESHCTL_AGENT": "off"}
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(home), str(marker), *argv], cwd=REPO, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=ctrl_c_reaches_it)
    try:
        deadline = time.monotonic() + 30
        while not marker.exists() and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert marker.exists(), child.communicate(timeout=5)
        time.sleep(0.3)  # into the loop that waits for more
        child.send_signal(signal.SIGINT)
        out, err = child.communicate(timeout=15)
    finally:
        child.kill()
    assert child.returncode == ExitCode.INTERRUPTED, (out, err)
    assert "Traceback" not in err and len([line for line in err.splitlines() if line.strip()]) <= 1, err


def test_a_keyboard_interrupt_anywhere_is_130(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from meshctl.telemetry import mesh

    def interrupted(*_: Any, **__: Any) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(mesh, "running", interrupted)
    for argv in (["stat"], ["top", "-o", "json"], ["logs", "web", "-f"], ["tap", "web"]):
        ran = cli(home, *argv)
        assert ran.code == ExitCode.INTERRUPTED and "Traceback" not in ran.err, (argv, ran.err)


# --- one meaning per flag ---------------------------------------------------------------------------------------

def options() -> Iterator[tuple[str, Any]]:
    """(command path, option) for every option of every command (typer may vendor click: no isinstance)."""
    def walk(command: Any, path: str) -> Iterator[tuple[str, Any]]:
        for param in command.params:
            if param.param_type_name == "option":
                yield path, param
        for name, sub in getattr(command, "commands", {}).items():
            yield from walk(sub, f"{path} {name}".strip())

    yield from walk(typer.main.get_command(app), "")


def test_each_short_flag_means_one_thing() -> None:
    meaning = {"-w": "--watch", "-t": "--time-window", "-p": "--project", "-o": "--output", "-f": None}
    seen = list(options())
    assert any("-t" in o.opts for _, o in seen) and any("-p" in o.opts for _, o in seen)
    for path, option in seen:
        for short, long in meaning.items():
            if short in option.opts and long is not None:
                assert long in option.opts, f"meshctl {path}: {short} is {option.opts}, not {long}"
        if "--window" in option.opts or "--time-window" in option.opts:
            assert "-w" not in option.opts, path
        if "-n" in option.opts:  # a count: lines, entries, records
            assert option.type_descriptor.annotation is int, f"meshctl {path}: -n is {option.opts}"


@pytest.mark.parametrize("command", [["apply", "-f", "x.yaml"], ["get", "vs"], ["delete", "vs", "reviews"]])
def test_kubectls_n_for_a_namespace_is_refused_with_the_flag_to_use(command: list[str], tmp_path: Path) -> None:
    home = tmp_path / "home"
    err = io.StringIO()
    ctx = Context(home=MeshHome(home), err=Console(file=err, width=200))
    code = run([*command, "-n", "bookinfo"], obj=ctx)
    assert code == ExitCode.USAGE
    line = one_line(err.getvalue())
    assert "-n" in line and "-p/--project" in line, line


def test_a_project_is_chosen_with_p_everywhere() -> None:
    by_command: dict[str, list[Any]] = {}
    for path, option in options():
        by_command.setdefault(path, []).append(option)
    chooses = {path: opts for path, opts in by_command.items()
               if any(o.name in ("project", "namespace", "project_name") for o in opts)}
    assert {"apply", "get", "delete", "inject", "stat", "route set"} <= set(chooses)
    for path, opts in chooses.items():
        option = next(o for o in opts if o.name in ("project", "namespace", "project_name"))
        assert {"-p", "--project"} <= set(option.opts), f"meshctl {path}: {option.opts}"
    namespace = set(next(o for o in by_command["apply"] if o.name == "namespace").opts)
    assert "--namespace" in namespace and "-n" not in namespace  # -n is a count wherever it exists


DURATION_FLAGS = ("--timeout", "--time-window", "--window", "--interval", "--duration", "--since", "--overlap",
                  "--cert-ttl", "--per-try-timeout", "--delay", "--max-p99")


def takes_text(option: Any) -> bool:
    """Whether the option's value reaches the command as text (click's STRING; newer typer keeps the annotation)."""
    if getattr(option, "type", None) is not None:
        return bool(option.type.name == "text")
    annotation = option.type_descriptor.annotation
    return str in getattr(annotation, "__args__", (annotation,))


def test_every_duration_flag_takes_text() -> None:
    found = [(path, o) for path, o in options() if set(o.opts) & set(DURATION_FLAGS)]
    assert len(found) >= 15
    for path, option in found:
        assert takes_text(option), f"meshctl {path} {option.opts[0]} takes no duration text"


@pytest.mark.parametrize(("text", "seconds"), [("1m30s", 90), ("500ms", 0.5), ("7d", 604800), ("1h30m", 5400),
                                               ("2", 2), ("1.5s", 1.5), (" 10s ", 10), ("1d12h", 129600)])
def test_go_durations(text: str, seconds: float) -> None:
    assert parse_go_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "s", "1x", "1m30", "m1", "1 m", "-1s", "1e3s", "1.s", "10years"])
def test_a_bad_duration_names_the_flag_and_gives_an_example(text: str) -> None:
    with pytest.raises(UsageError) as caught:
        duration("--timeout", text)
    assert caught.value.one_line().startswith(f"--timeout {text!r} is not a duration")
    assert "e.g. 30s, 1m30s" in caught.value.one_line()


def test_durations_written_into_resources_stay_istios() -> None:
    assert [duration_field("--timeout", t) for t in ("1.5s", "250ms", "1m30s", "7d", "2")] == \
        ["1.5s", "250ms", "90s", "168h", "2s"]
    with pytest.raises(UsageError) as caught:
        duration("--interval", "100ms", minimum=1)
    assert caught.value.one_line() == "--interval '100ms' is too short; use at least 1s"


def test_route_and_slo_take_go_durations(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from meshctl.cli import route as cli_route

    monkeypatch.setattr(cli_route, "_versions", lambda *_: {"v1"})  # a meshed `web` without injecting one
    route = cli(home, "route", "set", "web", "--timeout", "1m30s", "--per-try-timeout", "1.5s", "--retries", "2",
                "--to", "v1", "--dry-run")
    assert route.code == 0 and "timeout: 90s" in route.out and "perTryTimeout: 1.5s" in route.out, route.err
    slo = cli(home, "slo", "set", "web", "--availability", "99.9", "--window", "7d", "--dry-run")
    assert slo.code == 0 and "window: 168h" in slo.out, slo.err


# --- tables in 80 columns, piped rows without padding -----------------------------------------------------------

def render(renderable: Any, width: int) -> str:
    console = Console(file=io.StringIO(), width=width, soft_wrap=True, no_color=True)
    console.print(renderable)
    return console.file.getvalue()  # type: ignore[attr-defined]


WORDS = "the quick brown fox jumps over the lazy dog while reviews-v2 answers slowly"


def test_a_table_in_80_columns_wraps_between_words() -> None:
    rows = [["reviews", "spiffe://cluster.local/ns/bookinfo/sa/bookinfo-reviews-with-a-long-account", WORDS],
            ["ratings", "x", "short"]]
    text = render(simple_table(["name", "identity", "message"], rows), 80)
    lines = text.splitlines()
    assert all(len(line) <= 80 for line in lines), text
    words = set(WORDS.split())
    cells = {c for line in lines for c in line.split()}
    assert {c for c in cells if c.rstrip("…") and c not in words and c.isalpha()} <= {"NAME", "IDENTITY",
                                                                                     "MESSAGE", "reviews",
                                                                                     "ratings", "x", "short"}
    assert "…" in text  # the identity, one word too long for its column, is cut with an ellipsis, not folded
    assert not any(line.lstrip().startswith(("cal/", "bookinfo")) for line in lines), text


def test_piped_rows_have_no_trailing_padding(home: Path) -> None:
    text = render(simple_table(["name", "namespace", "applies to"], [["a-long-name", "x", "y"], ["b", "-", ""]]),
                  400)
    assert text.splitlines() == ["NAME         NAMESPACE  APPLIES TO", "a-long-name  x          y", "b            -"]
    env = {**os.environ, "MESHCTL_HOME": str(home), "COLUMNS": "80", "NO_COLOR": "1"}
    piped = subprocess.run([sys.executable, "-m", "meshctl", "schema"], capture_output=True, text=True, env=env,
                           cwd=REPO, timeout=60)
    assert piped.returncode == 0 and piped.stdout.startswith("KIND"), piped.stderr
    assert all(line == line.rstrip() and len(line) <= 80 for line in piped.stdout.splitlines()), piped.stdout


# --- JSON: only JSON on stdout, moments in RFC 3339 UTC ---------------------------------------------------------

def test_rfc3339() -> None:
    assert rfc3339(1_796_109_686.1234) == "2026-12-01T07:21:26.123Z"
    assert rfc3339(None) is None


def test_json_outputs_are_json_with_rfc3339_moments(home: Path, tmp_path: Path) -> None:
    (tmp_path / "vs.yaml").write_text(GOOD_VS)
    proxy = [sidecar("shop", "web", [ENTRY])]
    assert cli(home, "apply", "-f", str(tmp_path / "vs.yaml")).code == 0
    outputs = {argv: cli(home, *argv.split(), "-o", "json", containers=proxy)
               for argv in ("history", "logs web", "get vs", "stat -t 0", "edges", "trace", "schema", "certs status",
                            "route list", f"analyze --files-only -f {tmp_path / 'vs.yaml'}")}
    for argv, ran in outputs.items():
        assert ran.code in (0, 1), (argv, ran.err)
        json.loads(ran.out)  # all of stdout is one JSON document
    history = json.loads(outputs["history"].out)
    assert history and all(RFC3339.match(r["time"]) for r in history)
    assert [e["time"] for e in json.loads(outputs["logs web"].out)] == ["2026-12-01T07:21:26.123Z"]


def test_the_tables_show_moments_as_before(home: Path) -> None:
    ran = cli(home, "history")
    assert ran.code == 0 and re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", ran.out), ran.out


# --- analyze: every problem ---------------------------------------------------------------------------------------

def test_analyze_lists_every_problem_of_a_broken_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD_VS.replace("x: 1", "x: 1, http: [{timeout: soon}]") + "---\n"
                   + "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: d}\n"
                   + "spec: {host: 5}\n")
    good = tmp_path / "good.yaml"
    good.write_text(GOOD_VS.replace("name: web", "name: other"))
    table = cli(tmp_path / "nohome", "analyze", "--files-only", "-f", str(bad), "-f", str(good))
    listed = cli(tmp_path / "nohome", "analyze", "--files-only", "-f", str(bad), "-f", str(good), "-o", "json")
    assert table.code == listed.code == ExitCode.FAILED, table.err
    found = json.loads(listed.out)
    assert [m["code"] for m in found].count("MSH0100") == 3, found
    assert {m["resource"] for m in found if m["code"] == "MSH0100"} == {f"VirtualService web {bad}[0]",
                                                                         f"DestinationRule d {bad}[1]"}
    assert "more" not in table.out + table.err and table.out.count("[MSH0100]") == 3, table.out


# --- meshctl schema -----------------------------------------------------------------------------------------------

def istio_documents() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in sorted(ISTIO.rglob("*.yaml")):
        out += [(f"{path.name}[{i}]", d) for i, d in enumerate(yaml.safe_load_all(path.read_text())) if d]
    return out


GATEWAY_BOUND = {"bookinfo", "cert-manager"}  # VirtualServices with `gateways`, which apply refuses too


def test_schema_lists_the_kinds(tmp_path: Path) -> None:
    ran = cli(tmp_path, "schema", "-o", "json")
    assert ran.code == 0 and [r["kind"] for r in json.loads(ran.out)] == [k.name for k in KINDS]


@pytest.mark.parametrize("kind", [k.name for k in KINDS])
def test_each_kinds_schema_is_valid_json_schema_and_accepts_istios_samples(kind: str, tmp_path: Path) -> None:
    ran = cli(tmp_path, "schema", kind)
    assert ran.code == 0, ran.err
    schema = json.loads(ran.out)
    assert schema == document(find_kind(kind))  # type: ignore[arg-type]
    jsonschema.Draft202012Validator.check_schema(schema)
    check = jsonschema.Draft202012Validator(schema)
    samples = [(where, d) for where, d in istio_documents() if d.get("kind") == kind]
    for where, doc in samples:
        errors = [e.message for e in check.iter_errors(doc)]
        if kind == "VirtualService" and doc["metadata"]["name"] in GATEWAY_BOUND:
            assert any("gateways" in e for e in errors), where
        else:
            assert not errors, (where, errors)
    if kind in ("VirtualService", "DestinationRule", "PeerAuthentication", "AuthorizationPolicy",
                "RequestAuthentication", "ServiceEntry"):
        assert samples, f"tests/data/istio has no {kind}"


BAD_DOCS = {
    "VirtualService": {"spec": {"hosts": ["reviews"], "http": [{"timeout": "soon"}]}},
    "DestinationRule": {"spec": {"host": "reviews", "trafficPolicy": {"loadBalancer": {"simple": "FASTEST"}}}},
    "PeerAuthentication": {"spec": {"mtls": {"mode": "strict"}}},
    "AuthorizationPolicy": {"spec": {"action": "ALLOW", "rules": [{"from": [{"source": {"principal": ["x"]}}]}]}},
    "RequestAuthentication": {"spec": {"jwtRules": [{"issuer": "x", "forwardOriginalToken": "yes"}]}},
    "Telemetry": {"spec": {"tracing": [{"randomSamplingPercentage": 101}]}},
    "ServiceLevelObjective": {"spec": {"service": "reviews", "window": "1 hour", "availability": 99.9}},
    "ServiceEntry": {"spec": {"hosts": ["api.example.com"], "ports": [{"number": 70000}]}},
}


@pytest.mark.parametrize("kind", [k.name for k in KINDS])
def test_each_kinds_schema_refuses_what_apply_refuses(kind: str, home: Path, tmp_path: Path) -> None:
    k = find_kind(kind)
    assert k is not None
    doc = {"apiVersion": k.api_versions[0], "kind": kind, "metadata": {"name": "x"}, **BAD_DOCS[kind]}
    assert list(jsonschema.Draft202012Validator(document(k)).iter_errors(doc))
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(doc))
    assert cli(home, "apply", "-f", str(tmp_path / "bad.yaml")).code == ExitCode.INVALID_INPUT
    fine = {**doc, "spec": {}}
    assert not list(jsonschema.Draft202012Validator(document(k)).iter_errors(fine))
    for broken in ({**doc, "extra": 1}, {**fine, "apiVersion": "v1"}, {**fine, "metadata": {"name": "Bad"}}):
        assert list(jsonschema.Draft202012Validator(document(k)).iter_errors(broken)), broken


def test_schema_of_a_refused_kind_says_why(tmp_path: Path) -> None:
    ran = cli(tmp_path, "schema", "Sidecar")
    assert ran.code == ExitCode.USAGE
    line = one_line(ran.err)
    assert "Sidecar" in line and "VirtualService" in line and "ServiceEntry" in line
