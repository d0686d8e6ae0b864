"""`meshctl uninject`: the exact original back from a file inject wrote, a refusal when it was edited since,
and with --force only what meshctl added removed. Property: for generated compose files written as people
write them (comments, odd whitespace, CRLF, no final newline, unicode), uninject(inject(f)) == f, byte for byte."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from meshctl.errors import Conflict, InvalidInput, UsageError
from meshctl.inject import load
from meshctl.inject.injector import inject
from meshctl.inject.uninject import uninject
from meshctl.status import ExitCode
from tests.unit.composeyaml import read
from tests.unit.fuzzing import context, examples, make_home, one_line, run_cli
from tests.unit.test_fuzz_inject_lossless import compose_text


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_home(tmp_path_factory.mktemp("uninject") / "home")


def meshed(home: Path, workdir: Path, original: bytes, name: str = "compose.yaml") -> Path:
    source, out = workdir / name, workdir / "meshed.yaml"
    source.write_bytes(original)
    out.write_text(inject(context(home), str(source), "shop", "PERMISSIVE", workdir).text)
    return out


@st.composite
def as_typed(draw: st.DrawFn) -> bytes:
    """A compose file with the habits of real ones: CRLF, stray spaces, blank lines, unicode, no final newline."""
    lines = draw(compose_text()).split("\n")
    if draw(st.booleans()):
        lines = [line + draw(st.sampled_from(["", " ", "   "])) if line.strip() else line for line in lines]
    if draw(st.booleans()):
        at = draw(st.integers(0, len(lines)))
        lines.insert(at, draw(st.sampled_from(["", "   ", "# Ünïcödé — 日本語 ✓", "#\tcolumns\t1"])))
    text = draw(st.sampled_from(["\n", "\r\n"])).join(lines)
    if draw(st.booleans()):
        text = text.rstrip("\r\n")
    return (draw(st.sampled_from(["", "\ufeff"])) + text).encode()


@examples(60)
@given(original=as_typed())
@example(original=b"services:\r\n  web:  # caf\xc3\xa9\r\n    image: nginx\r\n    ports: ['80:80']\r\n# end")
@example(original=b"services:\n  web:\n    image: x\n    deploy: {replicas: 3}\n\n\n# trailing\n\n")
def test_uninject_gives_back_the_original_byte_for_byte(home: Path, tmp_path_factory: pytest.TempPathFactory,
                                                         original: bytes) -> None:
    workdir = tmp_path_factory.mktemp("case", numbered=True)
    result = uninject(str(meshed(home, workdir, original)))
    assert result.exact and result.data == original


@examples(25)
@given(original=as_typed())
def test_force_removes_what_inject_added_and_keeps_the_rest(home: Path, tmp_path_factory: pytest.TempPathFactory,
                                                            original: bytes) -> None:
    """On an unedited file --force gives what compose reads from the original (its text may differ)."""
    workdir = tmp_path_factory.mktemp("force", numbered=True)
    result = uninject(str(meshed(home, workdir, original)), force=True)
    assert not result.exact
    assert without_empty_labels(read(result.data.decode())) == without_empty_labels(read(original.decode()))


def without_empty_labels(doc: dict[str, Any]) -> dict[str, Any]:
    """`labels: {}` and no labels read the same to compose; --force drops the mapping it emptied."""
    for svc in doc["services"].values():
        if svc.get("labels") in ({}, []):
            del svc["labels"]
    return doc


def test_an_edit_after_inject_is_refused_and_force_keeps_it(home: Path, tmp_path: Path) -> None:
    source = (b"# the shop\nservices:\n  web:  # front\n    image: nginx\n    ports: ['8080:80']\n"
              b"    networks: [front]\n  db:\n    image: redis\n    deploy: {replicas: 2}\n"
              b"    labels: [team=data]\n    depends_on: [web]\nnetworks:\n  front: {}\n# the end\n")
    path = meshed(home, tmp_path, source)
    edited = path.read_text().replace("image: redis", "image: redis:7  # pinned")
    path.write_text(edited)
    with pytest.raises(Conflict, match="edited after `meshctl inject`"):
        uninject(str(path))
    forced = uninject(str(path), force=True).data.decode()
    assert "image: redis:7  # pinned" in forced and "# front" in forced and "# the shop" in forced
    assert forced.rstrip().endswith("# the end")
    assert "x-meshctl" not in forced and "-proxy" not in forced and "io.meshctl" not in forced
    doc = read(forced)
    assert doc["services"]["web"] == {"image": "nginx", "ports": ["8080:80"], "networks": {"front": None}}
    assert doc["services"]["db"] == {"image": "redis:7", "deploy": {"replicas": 2}, "labels": ["team=data"],
                                     "depends_on": {"web": {"condition": "service_started"}}}
    assert doc["networks"] == {"front": {}}


def test_a_line_added_after_the_marker_is_an_edit_and_crlf_line_ends_are_not(home: Path, tmp_path: Path) -> None:
    path = meshed(home, tmp_path, b"services:\n  web:\n    image: nginx\n")
    text = path.read_text()
    path.write_bytes(text.replace("\n", "\r\n").encode())  # a checkout with autocrlf
    assert uninject(str(path)).data == b"services:\n  web:\n    image: nginx\n"
    path.write_text(text + "volumes:\n  data: {}\n")
    with pytest.raises(Conflict):
        uninject(str(path))


def test_old_and_damaged_markers_and_unmeshed_files(home: Path, tmp_path: Path) -> None:
    path = meshed(home, tmp_path, b"services:\n  web:\n    image: nginx\n")
    text = path.read_text()
    head, _, _ = text.partition("  original:\n")
    old = tmp_path / "old.yaml"
    old.write_text(head)  # as meshctl wrote it before it kept the original
    with pytest.raises(Conflict, match="kept no copy"):
        uninject(str(old))
    assert read(uninject(str(old), force=True).data.decode()) == {"services": {"web": {"image": "nginx"}}}
    damaged = tmp_path / "damaged.yaml"
    damaged.write_text(text.replace("gzip_base64: |-\n      H4sI", "gzip_base64: |-\n      H5sI"))
    with pytest.raises(InvalidInput, match="original is damaged"):
        uninject(str(damaged))
    plain = tmp_path / "plain.yaml"
    plain.write_text("services:\n  web:\n    image: nginx\n")
    with pytest.raises(InvalidInput, match="not meshed by meshctl"):
        uninject(str(plain))
    broken = tmp_path / "broken.yaml"
    broken.write_text("services: [\n")
    with pytest.raises(InvalidInput, match=r"broken.yaml: invalid YAML at line \d+"):  # as inject says it
        uninject(str(broken))
    with pytest.raises(UsageError, match="no such file") as missing:
        uninject(str(tmp_path / "missing.yaml"))
    assert "meshctl inject` wrote" in str(missing.value.hint)


def test_cli_writes_stdout_or_output_and_never_the_input_unless_named(home: Path, tmp_path: Path) -> None:
    original = b"services:\r\n  web:\r\n    image: nginx"
    path = meshed(home, tmp_path, original)
    meshed_text = path.read_bytes()
    ran = run_cli(home, "uninject", str(path))
    assert ran.code == 0 and ran.out.encode() == original and path.read_bytes() == meshed_text
    assert "byte for byte" in ran.err
    assert run_cli(home, "uninject", str(path), "-o", str(tmp_path / "back.yaml")).code == 0
    assert (tmp_path / "back.yaml").read_bytes() == original
    assert run_cli(home, "uninject", str(path), "-o", str(path)).code == 0  # named explicitly: replaced
    assert path.read_bytes() == original
    ran = run_cli(home, "uninject", str(path))
    assert ran.code == ExitCode.INVALID_INPUT and str(path) in one_line(ran.err)


def test_cli_refusal_is_one_line_with_the_conflict_code(home: Path, tmp_path: Path) -> None:
    path = meshed(home, tmp_path, b"services:\n  web:\n    image: nginx\n")
    path.write_text(path.read_text().replace("image: nginx", "image: httpd"))
    out = tmp_path / "out.yaml"
    ran = run_cli(home, "uninject", str(path), "-o", str(out))
    assert ran.code == ExitCode.CONFLICT and "--force" in one_line(ran.err) and not out.exists()
    ran = run_cli(home, "uninject", str(path), "--force", "-o", str(out))
    assert ran.code == 0 and "kept as they are" in ran.err
    assert read(out.read_text()) == {"services": {"web": {"image": "httpd"}}}


def test_several_source_files_give_their_merged_model_and_say_the_originals_are_unchanged(home: Path,
                                                                                          tmp_path: Path) -> None:
    model = "services:\n  web:\n    image: nginx:1.27\n"  # as compose resolved a.yaml + b.yaml
    merged = load.parse(model, "a.yaml + b.yaml", tmp_path)
    path = tmp_path / "meshed.yaml"
    path.write_text(inject(context(home), replace(merged, files=("a.yaml", "b.yaml")), "shop", "PERMISSIVE",
                           tmp_path).text)
    result = uninject(str(path))
    assert result.exact and result.model and result.files == ["a.yaml", "b.yaml"] and result.data == model.encode()
    ran = run_cli(home, "uninject", str(path))
    assert ran.code == 0 and ran.out == model
    assert "compose's merged model of a.yaml, b.yaml" in ran.err and "never changed" in ran.err


def test_the_merged_model_never_replaces_a_file_it_was_read_from(home: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.yaml").write_text("services:\n  web:\n    image: ${IMAGE}\n")
    merged = load.parse("services:\n  web:\n    image: nginx:1.27\n", "a.yaml + b.yaml", tmp_path)
    path = tmp_path / "meshed.yaml"
    path.write_text(inject(context(home), replace(merged, files=("a.yaml", "b.yaml")), "shop", "PERMISSIVE",
                           tmp_path).text)
    for named in ("a.yaml", str(tmp_path / "a.yaml")):
        ran = run_cli(home, "uninject", str(path), "-o", named)
        assert ran.code == ExitCode.USAGE and "a.yaml" in one_line(ran.err) and "-o" in one_line(ran.err)
    assert (tmp_path / "a.yaml").read_text() == "services:\n  web:\n    image: ${IMAGE}\n"
    assert run_cli(home, "uninject", str(path), "-o", "model.yaml").code == 0


def test_outputs_keep_the_mode_of_the_file_they_replace_or_of_their_source(home: Path, tmp_path: Path) -> None:
    source = tmp_path / "compose.yaml"
    source.write_text("services:\n  web:\n    image: nginx\n    environment: {TOKEN: s3cret}\n")
    source.chmod(0o600)  # private: what inject and uninject write from it must not be readable by others
    meshed, back, existing = tmp_path / "meshed.yaml", tmp_path / "back.yaml", tmp_path / "existing.yaml"
    assert run_cli(home, "inject", str(source), "-o", str(meshed), "-p", "shop").code == 0
    assert meshed.stat().st_mode & 0o777 == 0o600
    assert run_cli(home, "uninject", str(meshed), "-o", str(back)).code == 0
    assert back.stat().st_mode & 0o777 == 0o600 and back.read_bytes() == source.read_bytes()
    existing.write_text("old\n")
    existing.chmod(0o640)  # a file that is replaced keeps its own mode
    assert run_cli(home, "uninject", str(meshed), "-o", str(existing)).code == 0
    assert existing.stat().st_mode & 0o777 == 0o640 and existing.read_bytes() == source.read_bytes()
