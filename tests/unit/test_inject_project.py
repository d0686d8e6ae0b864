"""[17] inject reads a project as compose does (inject.project): which projects stay a round trip, which are
read by compose itself (here a fake `docker compose config` that records its argv and answers a model), its
refusals as one line, compose v1's limits, and the resolved model meshed with every value as compose read it."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshctl.errors import InvalidInput, UsageError
from meshctl.inject import load, project, rewrite, yamlrt
from meshctl.inject.injector import inject
from meshctl.inject.project import Request, load_project
from meshctl.runtime.compose import ComposeTool
from meshctl.status import ExitCode
from tests.unit.composeyaml import read
from tests.unit.fuzzing import context, examples, make_home, one_line, run_cli

V2 = ComposeTool(("docker", "compose"), "2.26.1")
V1 = ComposeTool(("docker-compose",), "1.29.2")
SIMPLE = "# the app\nservices:\n  web:\n    image: nginx  # pinned later\n    environment: {A: NO}\n"


class FakeCompose:
    """`docker compose config`: records each argv and answers `model` (or fails with `stderr`), each `$` written
    `$$` as both compose generations write it."""

    def __init__(self, model: Any = None, stderr: str = "") -> None:
        self.model, self.stderr = model, stderr
        self.calls: list[list[str]] = []

    def __call__(self, argv: list[str], stdin: str | None) -> subprocess.CompletedProcess[str]:
        self.calls.append(argv)
        out = json.dumps(self.model) if argv[:2] == ["docker", "compose"] else yamlrt.dump(self.model, "")
        out = out.replace("$", "$$")
        return subprocess.CompletedProcess(argv, 1 if self.stderr else 0, out, self.stderr)


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeCompose:
    runner = FakeCompose({"name": "fromcompose", "services": {"web": {"image": "nginx", "deploy": {"replicas": 3}}}})
    monkeypatch.setattr(project, "_run", runner)
    monkeypatch.delenv("COMPOSE_PROJECT_NAME", raising=False)
    monkeypatch.delenv("COMPOSE_PROFILES", raising=False)
    return runner


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_home(tmp_path_factory.mktemp("project") / "home")


def write(directory: Path, **files: str) -> Path:
    for name, text in files.items():
        (directory / name.replace("_", ".")).write_text(text)
    return directory


# --- which projects are read as they are -----------------------------------------------------------------

@pytest.mark.parametrize("text", [SIMPLE, SIMPLE + "    command: echo $$HOME  # not $HOME\n",
                                  SIMPLE + "  dbg: {image: x, profiles: [debug]}\n"])
def test_a_plain_file_stays_a_round_trip_without_compose(fake: FakeCompose, tmp_path: Path, text: str) -> None:
    write(tmp_path, compose_yaml=text)
    loaded = load_project(Request((str(tmp_path / "compose.yaml"),), profiles=("debug",)), V2)
    assert loaded.compose.text == text and not loaded.compose.files and not loaded.note
    assert fake.calls == []


@pytest.mark.parametrize(("extra", "why"), [
    ("    command: echo ${HOME}\n", "interpolated"),
    ("    command: echo $HOME\n", "interpolated"),
    ("    extends: {service: base}\n  base: {image: x}\n", "`extends`"),
    ("include: [other.yaml]\n", "includes"),
    ("  dbg: {image: x, profiles: [debug]}\n", "inactive profiles"),
])
def test_a_file_compose_must_resolve_is_read_by_compose(fake: FakeCompose, tmp_path: Path, extra: str,
                                                        why: str) -> None:
    write(tmp_path, compose_yaml=SIMPLE + extra if not extra.startswith("include") else extra + SIMPLE)
    loaded = load_project(Request((str(tmp_path / "compose.yaml"),)), V2)
    assert why in loaded.note and "comments are not carried over" in loaded.note
    assert loaded.compose.data["services"]["web"]["deploy"]["replicas"] == 3  # what the planner sees
    assert loaded.compose.files == (str(tmp_path / "compose.yaml"),)
    assert fake.calls[0][-3:] == ["config", "--format", "json"]


def test_compose_gets_every_option_as_given(fake: FakeCompose, tmp_path: Path) -> None:
    write(tmp_path, a_yaml=SIMPLE, b_yaml=SIMPLE, x_env="A=1\n", y_env="B=2\n")
    request = Request((str(tmp_path / "a.yaml"), str(tmp_path / "b.yaml")), (str(tmp_path / "x.env"),
                      str(tmp_path / "y.env")), ("debug", "tools"), tmp_path, "shop")
    loaded = load_project(request, V2)
    assert fake.calls == [["docker", "compose", "--project-directory", str(tmp_path), "-p", "shop",
                           "--env-file", str(tmp_path / "x.env"), "--env-file", str(tmp_path / "y.env"),
                           "--profile", "debug", "--profile", "tools", "-f", str(tmp_path / "a.yaml"),
                           "-f", str(tmp_path / "b.yaml"), "config", "--format", "json"]]
    assert loaded.note == f"meshed the merged model of {tmp_path}/a.yaml + {tmp_path}/b.yaml (comments are not " \
                          "carried over)"


def test_stdin_alone_is_piped_to_compose(fake: FakeCompose, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(load, "read_stdin", lambda: "services:\n  web: {image: 'x:${TAG:-1}'}\n")
    loaded = load_project(Request(("-",)), V2)
    assert loaded.compose.source == "<stdin>" and fake.calls[0][-5:] == ["-f", "-", "config", "--format", "json"]
    with pytest.raises(UsageError, match="cannot be combined"):
        load_project(Request(("-", "b.yaml")), V2)


# --- the project's name and profiles, from .env too ----------------------------------------------------

def test_dotenv_syntax() -> None:
    text = "# c\nexport A=1\nB='two words'\nC=\"x # y\"\nD=plain # comment\nE=\nnot a line\n"
    assert project.dotenv(text) == {"A": "1", "B": "two words", "C": "x # y", "D": "plain", "E": ""}


def test_project_name_from_dotenv_then_environment_then_flag(fake: FakeCompose, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path, compose_yaml="name: fromfile\n" + SIMPLE, _env="COMPOSE_PROJECT_NAME=fromdotenv\n")
    files = (str(tmp_path / "compose.yaml"),)
    assert load_project(Request(files), V2).project_name == "fromdotenv"  # as compose: the variable beats name:
    monkeypatch.setenv("COMPOSE_PROJECT_NAME", "fromshell")
    assert load_project(Request(files), V2).project_name == "fromshell"
    named = load.parse("name: fromfile\n" + SIMPLE, "c.yaml", tmp_path)
    assert load.project_name(named, None) == "fromshell"  # inject of a path (demo, bench) follows the same rule
    assert load_project(Request(files, project_name="fromflag"), V2).project_name == "fromflag"
    (tmp_path / ".env").unlink()
    monkeypatch.delenv("COMPOSE_PROJECT_NAME")
    assert load_project(Request(files), V2).project_name is None  # the file's name: decides (load.project_name)


def test_an_env_file_replaces_dotenv_and_must_exist(fake: FakeCompose, tmp_path: Path) -> None:
    write(tmp_path, compose_yaml=SIMPLE, _env="COMPOSE_PROJECT_NAME=fromdotenv\n",
          other_env="COMPOSE_PROJECT_NAME=fromother\n")
    files = (str(tmp_path / "compose.yaml"),)
    assert load_project(Request(files, (str(tmp_path / "other.env"),)), V2).project_name == "fromother"
    with pytest.raises(UsageError, match=r"nope\.env: no such env file"):
        load_project(Request(files, (str(tmp_path / "nope.env"),)), V2)


def test_compose_profiles_from_dotenv_keeps_a_plain_file_plain(fake: FakeCompose, tmp_path: Path) -> None:
    write(tmp_path, compose_yaml=SIMPLE + "  dbg: {image: x, profiles: [debug]}\n", _env="COMPOSE_PROFILES=a,debug\n")
    assert not load_project(Request((str(tmp_path / "compose.yaml"),)), V2).note and fake.calls == []


def test_the_project_directory_holds_dotenv(fake: FakeCompose, tmp_path: Path) -> None:
    write(tmp_path, compose_yaml=SIMPLE)
    (tmp_path / "dir").mkdir()
    write(tmp_path / "dir", _env="COMPOSE_PROJECT_NAME=indir\n")
    loaded = load_project(Request((str(tmp_path / "compose.yaml"),), project_directory=tmp_path / "dir"), V2)
    assert loaded.project_name == "indir"


def test_a_plain_file_takes_its_name_and_paths_from_the_project_directory(fake: FakeCompose, tmp_path: Path) -> None:
    (tmp_path / "proj" / "sub").mkdir(parents=True)
    write(tmp_path / "proj" / "sub", compose_yaml=SIMPLE)
    loaded = load_project(Request((str(tmp_path / "proj" / "sub" / "compose.yaml"),),
                                  project_directory=tmp_path / "proj"), V2)
    assert fake.calls == [] and loaded.compose.directory == (tmp_path / "proj").resolve()
    assert load.project_name(loaded.compose, loaded.project_name) == "proj"  # compose's name, not "sub"


# --- refusals, one line each ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("stderr", "expected", "fix"), [
    ("error while interpolating services.web.image: required variable TAG is missing a value: must set TAG\n",
     "c.yaml: variable TAG is not set: must set TAG", "set TAG in the environment, in .env or"),
    ("required variable N is missing a value\n", "c.yaml: variable N is not set", "set N"),
    ("service \"web\" depends on undefined service \"db\": invalid compose project\n",
     "c.yaml: compose refuses the project: service \"web\" depends on undefined service \"db\": invalid compose",
     "docker compose config"),
])
def test_compose_refusals_become_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, stderr: str,
                                          expected: str, fix: str) -> None:
    monkeypatch.setattr(project, "_run", FakeCompose(stderr=stderr))
    write(tmp_path, c_yaml=SIMPLE + "    command: ${X}\n")
    with pytest.raises(InvalidInput) as caught:
        load_project(Request((str(tmp_path / "c.yaml"),)), V2)
    assert str(caught.value).startswith(f"{tmp_path}/{expected}") and "\n" not in str(caught.value)
    assert fix in (caught.value.hint or "")


def test_a_project_without_services_is_refused(fake: FakeCompose, tmp_path: Path) -> None:
    fake.model = {"name": "x", "services": {}}
    write(tmp_path, c_yaml="services:\n  dbg: {image: x, profiles: [debug]}\n")
    with pytest.raises(InvalidInput, match=r"no services \(with the profiles given\)"):
        load_project(Request((str(tmp_path / "c.yaml"),)), V2)


def test_a_meshed_file_is_not_merged_again(fake: FakeCompose, tmp_path: Path) -> None:
    write(tmp_path, a_yaml=SIMPLE + "x-meshctl: {project: x}\n", b_yaml=SIMPLE)
    with pytest.raises(InvalidInput, match=r"a\.yaml is already meshed"):
        load_project(Request((str(tmp_path / "a.yaml"), str(tmp_path / "b.yaml"))), V2)


# --- compose v1 only --------------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "field"), [
    ("include: [x.yaml]\n" + SIMPLE, "`include` needs compose v2"),
    ("name: shop\n" + SIMPLE + "    command: ${X}\n", "the top-level `name` needs compose v2"),
])
def test_v1_refuses_what_it_cannot_read_naming_file_and_field(fake: FakeCompose, tmp_path: Path, text: str,
                                                              field: str) -> None:
    write(tmp_path, c_yaml=text)
    with pytest.raises(InvalidInput) as caught:
        load_project(Request((str(tmp_path / "c.yaml"),)), V1)
    assert str(caught.value) == f"{tmp_path}/c.yaml: {field} (docker-compose 1.29.2 cannot read it)"
    assert "install compose v2 (./install.sh does)" in (caught.value.hint or "") and fake.calls == []


def test_v1_reads_interpolation_and_several_files_with_its_own_config(fake: FakeCompose, tmp_path: Path) -> None:
    fake.model = {"services": {"web": {"image": "nginx"}}}  # v1 writes no `name:`
    write(tmp_path, a_yaml=SIMPLE + "    command: ${X:-1}\n", b_yaml=SIMPLE, _env="COMPOSE_PROJECT_NAME=viaenv\n")
    loaded = load_project(Request((str(tmp_path / "a.yaml"), str(tmp_path / "b.yaml"))), V1)
    assert fake.calls[0][0] == "docker-compose" and fake.calls[0][-1] == "config"
    assert loaded.project_name == "viaenv" and "name" not in read(loaded.compose.text)  # v1 refuses `name:`
    with pytest.raises(UsageError, match="reads one --env-file"):
        load_project(Request((str(tmp_path / "a.yaml"),), (str(tmp_path / ".env"),) * 2), V1)


def test_without_any_compose_a_project_that_needs_one_says_install_v2(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(project, "find_compose", lambda: None)
    write(tmp_path, c_yaml=SIMPLE + "    command: ${X}\n")
    with pytest.raises(InvalidInput, match="needs compose") as caught:
        load_project(Request((str(tmp_path / "c.yaml"),)))
    assert "install compose v2" in (caught.value.hint or "")
    write(tmp_path, d_yaml=SIMPLE)
    assert load_project(Request((str(tmp_path / "d.yaml"),))).compose.text == SIMPLE  # no compose needed


# --- the resolved model, meshed ---------------------------------------------------------------------------

def mesh_model(home: Path, workdir: Path, monkeypatch: pytest.MonkeyPatch, model: dict[str, Any]) -> tuple[Any, Any]:
    runner = FakeCompose(model)
    monkeypatch.setattr(project, "_run", runner)
    write(workdir, c_yaml="services:\n  web: {image: 'x:${TAG}'}\n")
    loaded = load_project(Request((str(workdir / "c.yaml"),)), V2)
    return loaded, inject(context(home), loaded.compose, loaded.project_name, "PERMISSIVE", workdir)


def test_the_planner_sees_resolved_replicas_and_the_name(home: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    model = {"name": "resolved", "services": {"web": {"image": "x:1", "deploy": {"replicas": 2},
                                                      "environment": {"P": "costs $5"}}}}
    _, result = mesh_model(home, tmp_path, monkeypatch, model)
    assert result.project == "resolved" and [p.service for p in result.pods] == ["web", "web-2"]
    meshed = read(result.text)
    assert meshed["services"]["web-2"]["environment"] == {"P": "costs $$5"}  # compose reads `costs $5` back
    assert meshed[rewrite.MARKER]["original"]["files"] == [str(tmp_path / "c.yaml")]


# Values a YAML 1.1 writer or a second interpolation would change.
VALUE = st.one_of(st.sampled_from(["NO", "on", "1:20", "017", "0x1F", "1e3", "~", "null", "", "=", "2001-12-14",
                                   "$5", "$$", "${A}", "a $B c", "#x", "- x", "a: b", "'q'", '"q"', "café"]),
                  st.text(max_size=8), st.integers(-5, 5), st.booleans(), st.none())
KEYS = st.sampled_from(["A", "B_1", "x.y", "Ünï", "ON", "1"])


@examples(40)
@given(env=st.dictionaries(KEYS, VALUE, max_size=4), command=st.lists(st.text(max_size=6), max_size=3),
       x=st.dictionaries(KEYS, VALUE, max_size=3))
def test_every_resolved_value_reads_back_as_compose_resolved_it(home: Path, tmp_path_factory: pytest.TempPathFactory,
                                                              env: dict[str, Any], command: list[str],
                                                              x: dict[str, Any]) -> None:
    """[9]'s fidelity property for the resolved path: each app field inject does not own, read from the meshed
    file the way compose v2 reads it and interpolated again (`$$` → `$`), is the model's value."""
    web = {"image": "x", "environment": env, "command": command, "x-n": x}
    db = {"image": "y", "labels": {"mesh.inject": "false"}, "x-n": x}
    model: dict[str, Any] = {"name": "p", "x-top": x, "services": {"web": web, "db": db}}
    workdir = tmp_path_factory.mktemp("resolved", numbered=True)
    with pytest.MonkeyPatch.context() as patch:
        _, result = mesh_model(home, workdir, patch, model)
    meshed = unescape(read(result.text))
    assert meshed["x-top"] == model["x-top"] and meshed["services"]["db"] == model["services"]["db"]
    for field, value in web.items():
        assert meshed["services"]["web"][field] == value, field


def unescape(node: Any) -> Any:
    """What compose's interpolation makes of the meshed file's text: `$$` is `$`, anything else interpolated."""
    if isinstance(node, str):
        return re.sub(r"\$\$|\$(?=[{A-Za-z_])", lambda m: "$" if m.group() == "$$" else "<interpolated>", node)
    if isinstance(node, dict):
        return {k: unescape(v) for k, v in node.items()}
    return [unescape(v) for v in node] if isinstance(node, list) else node


def test_the_property_catches_a_dollar_left_to_interpolation(home: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(project, "escape_dollars", lambda node: node)
    model = {"name": "p", "services": {"web": {"image": "x", "environment": {"A": "${HOME}"}}}}
    _, result = mesh_model(home, tmp_path, monkeypatch, model)
    assert unescape(read(result.text))["services"]["web"]["environment"] == {"A": "<interpolated>{HOME}"}


# --- the command line ---------------------------------------------------------------------------------------

def test_the_cli_merges_files_and_says_so_in_one_line(home: Path, tmp_path: Path, fake: FakeCompose,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(project, "find_compose", lambda: V2)
    write(tmp_path, a_yaml=SIMPLE, b_yaml=SIMPLE, _env="WEB=1\n")
    out = tmp_path / "meshed.yaml"
    done = run_cli(home, "inject", str(tmp_path / "a.yaml"), "-f", str(tmp_path / "b.yaml"), "--profile", "p",
                   "--env-file", str(tmp_path / ".env"), "-o", str(out))
    assert done.code == 0, done.err
    assert done.err.splitlines()[0] == f"meshed the merged model of {tmp_path}/a.yaml + {tmp_path}/b.yaml " \
                                       "(comments are not carried over)"
    assert "in project 'fromcompose'" in done.err and set(read(out.read_text())["services"]) == {
        "web", "web-proxy", "web-2", "web-2-proxy", "web-3", "web-3-proxy"}
    assert fake.calls[0][4:6] == ["--profile", "p"]
    fake.stderr = "required variable TAG is missing a value: must set TAG"
    failed = run_cli(home, "inject", "-f", str(tmp_path / "a.yaml"), "-f", str(tmp_path / "b.yaml"))
    assert failed.code == ExitCode.INVALID_INPUT
    assert one_line(failed.err) == f"error: {tmp_path}/a.yaml + {tmp_path}/b.yaml: variable TAG is not set: must " \
                                   "set TAG; set TAG in the environment, in .env or in a file given with --env-file"
    assert one_line(run_cli(home, "inject").err).startswith("error: no compose file given")
