"""`meshctl analyze --files-only`: config problems found from files alone, no engine."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from tests.unit.cli import meshctl
from tests.unit.fakes import FakeContainer

DR = """apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]
"""


def vs(name: str, http: str, host: str = "reviews") -> str:
    return (f"---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: {name}}}\n"
            f"spec:\n  hosts: [{host}]\n  http:\n{http}")


SPLIT = """  - route:
    - {destination: {host: reviews, subset: v1}, weight: 90}
    - {destination: {host: reviews, subset: v2}, weight: 10}
"""
CASES = {
    "clean": (DR + vs("reviews", SPLIT), [], 0),
    "missing_subset": (DR + vs("reviews", SPLIT.replace("subset: v2", "subset: v3")), ["MSH0101"], 1),
    "weights": (DR + vs("reviews", SPLIT.replace("weight: 10", "weight: 20")), ["MSH0103"], 1),
    "unreachable": (DR + vs("reviews", "  - route: [{destination: {host: reviews}}]\n"
                                       "  - match: [{uri: {prefix: /v2}}]\n"
                                       "    route: [{destination: {host: reviews, subset: v2}}]\n"), ["MSH0108"], 0),
    "conflict": (DR + vs("reviews", SPLIT) + vs("reviews-too", SPLIT), ["MSH0109"], 1),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_files_alone(case: str, tmp_path: Path) -> None:
    text, codes, exit_code = CASES[case]
    (tmp_path / "config.yaml").write_text(text)
    done = meshctl("analyze", "--files-only", "-f", str(tmp_path / "config.yaml"), "-o", "json",
                   env={"DOCKER_HOST": "unix:///nonexistent.sock"})
    assert done.code == exit_code, done.err
    assert [m["code"] for m in json.loads(done.out)] == codes
    assert all(m["hint"] for m in json.loads(done.out))


def test_clean_files_say_so(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text(DR)
    done = meshctl("analyze", "--files-only", "-f", str(tmp_path / "config.yaml"))
    assert done.code == 0 and "No validation issues found" in done.out


def pod(cid: str, name: str, started: str, mode: str = "default") -> FakeContainer:
    """A compose service's container as `_stranded` reads it: when it started, whose network it joined."""
    return FakeContainer(name, {"com.docker.compose.service": name}, cid=cid,
                         attrs={"State": {"StartedAt": started}, "HostConfig": {"NetworkMode": mode}})


def test_an_app_whose_sidecar_container_started_after_it_is_stranded() -> None:
    from meshctl.config.analyze import Inventory, analyze_mesh
    from meshctl.pilot.inventory import _instant, _stranded

    assert _instant("2026-11-25T00:53:52.5Z") < _instant("2026-11-25T00:53:52.51Z")  # Docker trims zeros
    pods = [pod("s1", "api-proxy", "2026-11-25T01:00:00.1Z"),
            pod("a1", "api", "2026-11-25T01:00:00.25Z", "container:s1"),  # started after: fine
            pod("s2", "web-proxy", "2026-11-25T01:00:09.5Z"),  # restarted by Docker after its app
            pod("a2", "web", "2026-11-25T01:00:00.51Z", "container:s2")]
    stranded = _stranded(pods)  # type: ignore[arg-type]
    assert stranded == {"web": "web"}
    [message] = analyze_mesh(Inventory(stranded={"p": stranded}), dt.datetime.now(dt.UTC))
    assert (message.code, message.level, message.resource) == ("MSH0111", "Error", "service p/web")
    assert "docker restart web" in message.hint
