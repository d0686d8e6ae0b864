"""Fuzzing `meshctl inject`: any compose file ends meshed, or in one clear line naming it; nothing half-written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from meshctl.errors import MeshError
from meshctl.inject.injector import inject
from meshctl.status import ExitCode
from sidecar import snapshot as contract
from tests.conftest import REPO
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
    make_home,
    one_line,
    run_cli,
    to_yaml_text,
    tree_state,
    values,
)


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_home(tmp_path_factory.mktemp("fuzz-compose") / "home")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz-compose-files")


# --- a compose document: the right shape or any other, field by field ------------------------------------

GOOD_NAMES = st.sampled_from(["web", "api", "db", "reviews-v1", "reviews-v2", "web-2", "a_b", "a.b", "Web"])
SERVICE_NAMES = st.sampled_from([True] * 5 + [False]).flatmap(lambda ok: GOOD_NAMES if ok else st.one_of(
    st.sampled_from(["web-proxy", "-x", "web\n", ""]), TEXT, st.integers(0, 3), st.none(), st.booleans()))
KNOWN = st.sampled_from(["web", "api", "db"])
NETWORKS = st.sampled_from(["default", "back", "nope"])
LABEL_KEYS = st.sampled_from(["app", "version", "mesh.inject", "mesh.mtls-mode", "mesh.exclude-inbound-ports",
                              "mesh.exclude-outbound-ports", "other"])
LABEL_VALUES = st.one_of(st.sampled_from(["reviews", "v2", "false", "STRICT", "loose", "80,9000", "15001", "²",
                                          "9" * 5000, "80,http", "Upper", "v1\n"]), TEXT)
PORT = st.one_of(
    st.sampled_from(["80", "8080:80", "127.0.0.1:8080:80/tcp", "80-90", "1-999999999", "9" * 5000 + ":1", "x:y",
                     "²", "8080:80-"]),
    st.integers(-1, 70000),
    st.fixed_dictionaries({"target": st.one_of(st.integers(-1, 70000), TEXT, st.none())},
                          optional={"published": st.one_of(st.integers(0, 9000), TEXT)}),
    values(2),
)
REPLICAS = st.one_of(st.integers(-2, 4), st.integers(), values(1))


def either(right: st.SearchStrategy[Any], leaves: int = 2) -> st.SearchStrategy[Any]:
    """Mostly the right type, sometimes (one in six) anything."""
    return st.sampled_from([True] * 5 + [False]).flatmap(lambda ok: right if ok else values(leaves))


def merged(*parts: dict[str, Any]) -> dict[str, Any]:
    return {k: v for part in parts for k, v in part.items()}


SERVICE = st.builds(merged, st.sampled_from([True] * 5 + [False]).flatmap(
    lambda image: st.fixed_dictionaries({"image": either(st.just("nginx"), 1)} if image else {})),
    st.fixed_dictionaries({}, optional={
    "build": either(st.one_of(st.just("./app"), st.fixed_dictionaries({"context": either(st.just("."), 1)}))),
    "ports": either(st.lists(PORT, max_size=3)),
    "networks": either(st.one_of(
        st.lists(either(NETWORKS, 1), max_size=3),
        st.dictionaries(NETWORKS, either(st.one_of(st.none(), st.fixed_dictionaries(
            {}, optional={"aliases": either(st.lists(TEXT, max_size=2), 1)}))), max_size=2))),
    "deploy": either(st.one_of(st.none(), st.fixed_dictionaries({}, optional={"replicas": REPLICAS,
                                                                              "resources": values(2)}))),
    "scale": REPLICAS,
    "labels": either(st.one_of(
        st.dictionaries(LABEL_KEYS, either(LABEL_VALUES, 1), max_size=3),
        st.lists(either(st.builds(lambda k, v: f"{k}={v}", LABEL_KEYS, LABEL_VALUES), 1), max_size=3))),
    "depends_on": either(st.one_of(st.lists(either(KNOWN, 1), max_size=2),
                                   st.dictionaries(KNOWN, values(2), max_size=2))),
    "network_mode": either(st.sampled_from(["host", "bridge", "service:web", "container:x", "none", "default"]), 1),
    "container_name": either(TEXT, 1),
    "volumes": either(st.lists(either(st.one_of(
        st.sampled_from(["./data:/data", "named:/x", "../up:/up:ro"]),
        st.fixed_dictionaries({"type": st.sampled_from(["bind", "volume"]), "source": either(TEXT, 1)}))),
        max_size=2)),
    "env_file": either(st.one_of(TEXT, st.lists(either(TEXT, 1), max_size=2))),
    "extra_hosts": values(3),
    "hostname": values(1),
    "profiles": values(2),
    "healthcheck": values(3),
}))
COMPOSE = st.builds(merged, st.fixed_dictionaries(
    {"services": either(st.dictionaries(SERVICE_NAMES, either(SERVICE), min_size=1, max_size=4))},
    optional={"networks": either(st.dictionaries(st.sampled_from(["back", "front"]), either(st.none(), 1),
                                                 max_size=2)),
              "name": either(st.sampled_from(["shop", "!!!", ""]), 1),
              "version": values(1)}),
    st.sampled_from([False] * 9 + [True]).flatmap(
        lambda marked: st.fixed_dictionaries({"x-meshctl": values(2)} if marked else {})))


def write(path: Path, content: str | bytes) -> Path:
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, errors="surrogatepass")
    return path


def check_library(home: Path, source: Path) -> None:
    """inject() meshes the file, or raises InvalidInput naming it and writes nothing; never anything else."""
    proxies = home / "proxies"
    before = tree_state(proxies) if proxies.exists() else {}
    started = time.monotonic()
    try:
        result = inject(context(home), str(source), "shop", "PERMISSIVE", source.parent)
    except MeshError as exc:
        assert exc.code == ExitCode.INVALID_INPUT, exc.one_line()
        assert str(source) in exc.one_line()
        assert (tree_state(proxies) if proxies.exists() else {}) == before
    else:
        meshed = yaml.safe_load(result.text)
        if result.unchanged:
            assert result.text == source.read_text()
        else:
            services = meshed["services"]
            for pod in result.pods:
                assert services[pod.service]["network_mode"] == f"service:{pod.sidecar}"
                assert pod.sidecar in services
                snap = contract.load(proxies / "shop" / pod.service / "snapshot.json")  # the data plane accepts it
                assert snap.service == pod.service
            again = write(source.parent / "meshed.yaml", result.text)
            assert inject(context(home), str(again), "shop", "PERMISSIVE", source.parent).unchanged
    assert time.monotonic() - started < SLOW_S


@FUZZ
@given(doc=COMPOSE)
def test_random_compose_structures(home: Path, workdir: Path, doc: dict[str, Any]) -> None:
    check_library(home, write(workdir / "compose.yaml", to_yaml_text(doc)))


@FUZZ
@given(doc=values(20))
def test_random_yaml_documents(home: Path, workdir: Path, doc: Any) -> None:
    check_library(home, write(workdir / "compose.yaml", to_yaml_text(doc)))


@FEW
@given(text=st.one_of(st.text(max_size=200), st.binary(max_size=200), st.sampled_from(JUNK_BYTES)))
def test_random_text_and_bytes(home: Path, workdir: Path, text: str | bytes) -> None:
    check_library(home, write(workdir / "compose.yaml", text))


@pytest.mark.parametrize("case", sorted(BIG_YAML))
def test_huge_deep_and_hostile_documents(home: Path, workdir: Path, case: str) -> None:
    check_library(home, write(workdir / f"{case}.yaml", BIG_YAML[case]))


def test_valid_compose_with_odd_but_legal_values_is_meshed(home: Path, workdir: Path) -> None:
    """Dates, mixed key types and `deploy: null` with `scale` crashed the rewrite (sidecar hash, deploy copy)."""
    source = write(workdir / "odd.yaml", "services:\n  web:\n    image: nginx\n    extra_hosts: [2001-12-14]\n"
                   "    dns_opt: {0: a, b: 1}\n    deploy: null\n    scale: 2\n")
    result = inject(context(home), str(source), "shop", "PERMISSIVE", workdir)
    assert [p.service for p in result.pods] == ["web", "web-2"]


@CLI
@given(doc=st.one_of(COMPOSE, values(8)))
def test_cli_prints_one_line_naming_the_file(home: Path, workdir: Path, doc: Any) -> None:
    source, out = write(workdir / "cli.yaml", to_yaml_text(doc)), workdir / "cli-out.yaml"
    out.unlink(missing_ok=True)
    ran = run_cli(home, "inject", str(source), "-o", str(out), "-p", "shop")
    if ran.code == 0:
        assert out.is_file()
        return
    assert ran.code == ExitCode.INVALID_INPUT, ran.err
    assert str(source) in one_line(ran.err)
    assert not out.exists()


@pytest.mark.parametrize("case", ["deep", "billion_laughs", "junk"])
def test_real_command_on_hostile_files(home: Path, workdir: Path, case: str) -> None:
    source = write(workdir / f"real-{case}.yaml", JUNK_BYTES[0] if case == "junk" else BIG_YAML[case])
    done = meshctl("inject", str(source), "-p", "shop", home=home, timeout=60)
    assert done.code == ExitCode.INVALID_INPUT
    assert str(source) in one_line(done.err)
    assert done.out == ""


def test_real_command_on_binary_stdin(home: Path) -> None:
    env = {**os.environ, "MESHCTL_HOME": str(home), "NO_COLOR": "1", "MESHCTL_AGENT": "off"}
    proc = subprocess.run([sys.executable, "-m", "meshctl", "inject", "-"], input=JUNK_BYTES[2], capture_output=True,
                          env=env, cwd=REPO, timeout=60)
    assert proc.returncode == ExitCode.INVALID_INPUT
    assert "<stdin>" in one_line(proc.stderr.decode())


def test_project_name_error_names_the_file(home: Path, workdir: Path) -> None:
    source = write(workdir / "noname.yaml", json.dumps({"name": "!!!", "services": {"web": {"image": "x"}}}))
    with pytest.raises(MeshError) as caught:
        inject(context(home), str(source), None, "PERMISSIVE", workdir)
    assert str(source) in caught.value.one_line()
