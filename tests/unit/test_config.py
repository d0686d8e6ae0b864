"""Galley through the real CLI: validation, apply/get/delete/history/rollback, concurrent writers."""

from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from meshctl.config.schema import parse_duration
from meshctl.status import ExitCode
from tests.conftest import REPO
from tests.unit.cli import meshctl
from tests.unit.test_analyze import DR
from tests.unit.test_cli_errors import one_error_line

VS = """apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - match: [{headers: {end-user: {exact: jason}}}]
    route: [{destination: {host: reviews, subset: v2}}]
  - route:
    - {destination: {host: reviews, subset: v1}, weight: 90}
    - {destination: {host: reviews, subset: v2}, weight: 10}
    timeout: 1.5s
    retries: {attempts: 3, perTryTimeout: 500ms, retryOn: 5xx}
"""


@pytest.fixture
def subsets(installed_home: Path) -> Path:
    """The DestinationRule that VS's subsets need (revision 1)."""
    assert apply_text(installed_home, DR).code == 0  # type: ignore[attr-defined]
    return installed_home


def revision(home: Path) -> int:
    return int((home / "config" / "current").read_text())


def apply_text(home: Path, text: str) -> object:
    return meshctl("apply", "-f", "-", home=home, stdin=text)


BAD = {
    "bad_yaml": ("kind: [VirtualService\n", "invalid YAML at line"),
    "unknown_kind": ("apiVersion: v1\nkind: Frobnicator\nmetadata: {name: g}\nspec: {}\n",
                     "unknown kind 'Frobnicator'"),
    "refused_kind": ("apiVersion: v1\nkind: Gateway\nmetadata: {name: g}\nspec: {}\n",
                     "kind Gateway is not supported by meshctl: the edge of a compose mesh is a published port"),
    "unsupported_field": (VS.replace("  hosts: [reviews]", "  hosts: [reviews]\n  gateways: [mesh]"),
                          "spec.gateways is not supported by meshctl"),
    "misspelt_field": (VS.replace("timeout: 1.5s", "timeuot: 1.5s"), "spec.http[1].timeuot is not a known field "
                                                                      "(did you mean 'timeout'?)"),
    "bad_duration": (VS.replace("timeout: 1.5s", "timeout: soon"), "spec.http[1].timeout: 'soon' is not a duration"),
    "weights": (VS.replace("weight: 10", "weight: 20"), "spec.http[1].route: weights add up to 110, not 100"),
    "regex": (VS.replace("exact: jason", "regex: '(jason'"), "is not an RE2 regular expression"),
    "header_name": (VS.replace("end-user: {exact: jason}", "'end user': {exact: jason}"),
                    "spec.http[0].match[0].headers.end user: 'end user' is not an HTTP header name"),
    "header_value": (VS.replace("    timeout: 1.5s",
                                "    timeout: 1.5s\n    headers: {request: {set: {x-a: \"1\\r\\nx-b: 2\"}}}"),
                     "spec.http[1].headers.request.set.x-a: '1\\r\\nx-b: 2' holds the control character '\\r'"),
    "api_version": (VS.replace("networking.istio.io/v1", "networking.istio.io/v9"), "apiVersion"),
    "undefined_subset": (VS, "spec.http[0].route[0].destination.subset: 'v2' is not a subset of 'reviews'"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_resources_get_one_line_and_change_nothing(case: str, installed_home: Path) -> None:
    text, expected = BAD[case]
    done = apply_text(installed_home, text)
    assert done.code == ExitCode.INVALID_INPUT, done.err  # type: ignore[attr-defined]
    line = one_error_line(done.err)  # type: ignore[attr-defined]
    assert expected in line and "nothing was applied" in line
    assert revision(installed_home) == 0


def test_apply_get_delete_history_rollback(subsets: Path, tmp_path: Path) -> None:
    installed_home = subsets
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    (manifests / "vs.yaml").write_text(VS)
    done = meshctl("apply", "-f", str(manifests / "vs.yaml"), home=installed_home)
    assert done.code == 0 and done.out.strip() == "virtualservice.networking.istio.io/reviews created"
    again = meshctl("apply", "-f", str(manifests), home=installed_home)  # a directory works too
    assert "unchanged" in again.out and revision(installed_home) == 2
    got = meshctl("get", "vs", "reviews", "-o", "yaml", home=installed_home)
    assert yaml.safe_load(got.out) == yaml.safe_load(VS)  # what you get applies again unchanged
    listed = meshctl("get", "virtualservices", "-o", "json", home=installed_home)
    assert [r["metadata"]["name"] for r in json.loads(listed.out)] == ["reviews"]
    gone = meshctl("delete", "virtualservice", "reviews", home=installed_home)
    assert gone.code == 0 and revision(installed_home) == 3
    missing = meshctl("delete", "virtualservice", "reviews", home=installed_home)
    assert missing.code == ExitCode.USAGE and "not found" in one_error_line(missing.err)
    back = meshctl("rollback", "2", home=installed_home)
    assert back.code == 0 and revision(installed_home) == 4
    assert json.loads(meshctl("get", "vs", "-o", "json", home=installed_home).out)[0]["spec"]["hosts"] == ["reviews"]
    history = json.loads(meshctl("history", "-o", "json", home=installed_home).out)
    assert [h["revision"] for h in history] == [4, 3, 2, 1, 0] and history[0]["current"]


def test_unknown_kind_in_get_is_a_usage_error(installed_home: Path) -> None:
    done = meshctl("get", "gateway", home=installed_home)
    assert done.code == ExitCode.USAGE and "unknown kind" in one_error_line(done.err)


def test_twenty_parallel_applies_all_land(subsets: Path) -> None:
    installed_home = subsets
    def run(i: int) -> int:
        doc = VS.replace("name: reviews", f"name: vs-{i}")
        proc = subprocess.run([sys.executable, "-m", "meshctl", "apply", "-f", "-"], input=doc, text=True,
                              capture_output=True, cwd=REPO, env={"MESHCTL_HOME": str(installed_home),
                                                                   "PATH": "/usr/bin:/bin"})
        return proc.returncode

    with ThreadPoolExecutor(max_workers=20) as pool:
        codes = list(pool.map(run, range(20)))
    assert codes == [0] * 20
    assert revision(installed_home) == 21
    stored = json.loads(meshctl("get", "vs", "-o", "json", home=installed_home).out)
    assert sorted(r["metadata"]["name"] for r in stored) == sorted(f"vs-{i}" for i in range(20))
    messages = [h["change"] for h in json.loads(meshctl("history", "-o", "json", home=installed_home).out)]
    assert len(set(messages[:20])) == 20


def test_durations() -> None:
    assert parse_duration("250ms") == 0.25 and parse_duration("1.5s") == 1.5 and parse_duration("2m") == 120
    with pytest.raises(ValueError):
        parse_duration("10")


def test_debug_lists_every_problem(installed_home: Path) -> None:
    text = VS.replace("timeout: 1.5s", "timeout: soon").replace("weight: 10", "weight: 20")
    done = meshctl("--debug", "apply", "-f", "-", home=installed_home, stdin=text)
    assert done.code == ExitCode.INVALID_INPUT
    assert "'soon' is not a duration" in done.err and "timeout" in done.err
