"""Property: inject changes nothing it does not own. For generated compose files written as people write
them (plain `NO`, `on`, `1:20`, `0o17`, `~`, unicode keys, flow and block style, comments), every field of
every app service that inject does not own reads the same in the meshed file as in the original, when
both are read the way compose v2 reads them (YAML 1.2); what moves to the sidecar moves unchanged."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from meshctl.inject import rewrite
from meshctl.inject.injector import inject
from tests.unit.composeyaml import read
from tests.unit.fuzzing import context, examples, make_home

# Scalars as they are typed: YAML 1.1 read most of these as something else than compose does.
RAW = st.sampled_from([
    "NO", "no", "No", "on", "On", "off", "OFF", "yes", "Y", "n", "true", "False", "1:20", "12:30:45", "0o17", "017",
    "0x1F", "1e3", "1_000", "-.5", "+1", ".inf", "~", "null", "Null", '""', "''", "'on'", '"NO"', "'it''s'",
    '"tab\\there"', "2001-12-14", "2001-12-14T21:59:43Z", "café", "日本語", "a=b", "x:y", "hello world",
    "'#not a comment'", "/data/x", "80", "-1", "0", "3.14", "v1.2.3", "=",
])
KEY = st.sampled_from(["COUNTRY", "FEATURE", "TIME", "Ünïcödé", "日本", "KEY_1", "a.b", "x-y", "_"])
OWNED = set(rewrite.MOVED_KEYS) | {"depends_on", "labels"}  # what inject rewrites on the app


def flow(items: list[str]) -> str:
    return "[" + ", ".join(items) + "]"


@st.composite
def seq(draw: st.DrawFn, items: st.SearchStrategy[str], indent: str) -> str:
    values = draw(st.lists(items, max_size=3))
    if draw(st.booleans()) or not values:
        return " " + flow(values) + "\n"
    return "\n" + "".join(f"{indent}  - {v}\n" for v in values)


@st.composite
def mapping(draw: st.DrawFn, indent: str, value: st.SearchStrategy[str] = RAW) -> str:
    keys = draw(st.lists(KEY, max_size=4, unique=True))
    if not keys:
        return " {}\n"
    comment = draw(st.sampled_from(["", "  # why"]))
    return "\n" + "".join(f"{indent}  {k}: {draw(value)}{comment}\n" for k in keys)


@st.composite
def service(draw: st.DrawFn) -> str:
    ind = "    "
    fields = {
        "environment": st.one_of(mapping(ind), seq(st.builds(lambda k, v: f"{k}={v}".replace("'", "").replace('"', ""),
                                                             KEY, RAW), ind)),
        "command": st.one_of(RAW.map(lambda v: " " + v + "\n"), seq(RAW, ind)),
        "entrypoint": st.one_of(st.just(' "/bin/sh -c"\n'), seq(RAW, ind)),
        "volumes": seq(st.sampled_from(["./data:/data", "named:/x:ro", '"/etc/a:/a"']), ind),
        "ports": seq(st.sampled_from(['"8080:80"', '"127.0.0.1:9090:90/tcp"', "80", '"1:20"']), ind),
        "healthcheck": st.just(f"\n{ind}  test: [CMD, curl, -f, http://localhost]\n{ind}  interval: 1:20\n"
                               f"{ind}  retries: 0o17\n"),
        "labels": st.one_of(mapping(ind), seq(st.sampled_from(["team=core", "on=off", "k=1:20"]), ind)),
        "working_dir": st.just(" /app\n"),
        "user": st.sampled_from([" 1000:1000\n", " '0'\n", " nobody\n"]),
        "hostname": RAW.map(lambda v: " " + v + "\n"),
        "extra_hosts": seq(st.just('"db:10.0.0.1"'), ind),
        "stop_grace_period": st.just(" 1:20\n"),
        "x-note": RAW.map(lambda v: " " + v + "\n"),
        "tty": st.sampled_from([" on\n", " true\n", " yes\n"]),
    }
    chosen = draw(st.lists(st.sampled_from(sorted(fields)), unique=True, max_size=len(fields)))
    body = f"{ind}image: nginx  # the image\n"
    for name in chosen:
        body += f"{ind}{name}:{draw(fields[name])}"
    return body


@st.composite
def compose_text(draw: st.DrawFn) -> str:
    names = draw(st.lists(st.sampled_from(["web", "api", "db", "web-2"]), min_size=1, max_size=3, unique=True))
    text = "# generated\nservices:\n"
    for name in names:
        text += f"  # {name}\n  {name}:\n{draw(service())}"
        if draw(st.integers(0, 4)) == 0:
            text += "    labels: {mesh.inject: 'false'}\n" if "    labels:" not in text.split(f"  {name}:")[-1] else ""
    return text + draw(st.sampled_from(["", "x-extra:\n  on: NO\n", "volumes:\n  named: {}\n"]))


def check_lossless(home: Path, workdir: Path, text: str) -> None:
    source = workdir / "compose.yaml"
    source.write_text(text)
    result = inject(context(home), str(source), "shop", "PERMISSIVE", workdir)
    before, after = read(text), read(result.text)
    for key, value in before.items():  # the top level: only `networks` gains the mesh's network
        if key != "services":
            assert after[key] == value, key
    meshed = {p.service: p for p in result.pods}
    for name, svc in before["services"].items():
        got = after["services"][name]
        if name not in meshed:
            assert got == svc, name  # opted out: untouched
            continue
        for field, value in svc.items():
            if field not in OWNED:
                assert got[field] == value, (name, field)
        sidecar = after["services"][meshed[name].sidecar]
        for field in rewrite.NAMESPACE_KEYS:
            if field in svc:
                assert sidecar[field] == svc[field], (name, field)
        labels = svc.get("labels")
        if labels is None:
            continue
        if isinstance(labels, dict):
            assert labels.items() <= got["labels"].items(), name
        else:
            assert got["labels"][:len(labels)] == labels, name


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_home(tmp_path_factory.mktemp("lossless") / "home")


@examples(100)
@given(text=compose_text())
@example(text="services:\n  web:\n    image: x\n    environment:\n      COUNTRY: NO\n      FEATURE: on\n"
              "      TIME: 1:20\n")
def test_inject_keeps_every_field_it_does_not_own(home: Path, tmp_path_factory: pytest.TempPathFactory,
                                                  text: str) -> None:
    check_lossless(home, tmp_path_factory.mktemp("case", numbered=True), text)


def test_the_property_catches_a_yaml_1_1_round_trip(home: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The check can fail: with the old path (PyYAML load, PyYAML dump) it sees NO turned into false."""
    from meshctl.config import safeyaml
    from meshctl.inject import injector, load, yamlrt
    from meshctl.output import to_yaml

    monkeypatch.setattr(load, "yamlrt", SimpleNamespace(load=safeyaml.load))
    monkeypatch.setattr(rewrite, "yamlrt", SimpleNamespace(load=safeyaml.load))
    monkeypatch.setattr(injector, "yamlrt", SimpleNamespace(
        dump=lambda data, like: to_yaml(json.loads(json.dumps(data, default=str)))))
    with pytest.raises(AssertionError, match="environment"):
        check_lossless(home, tmp_path, "services:\n  web:\n    image: x\n    environment:\n      COUNTRY: NO\n")
    assert yamlrt.load("a: NO\n") == {"a": "NO"}  # the real loader, untouched
