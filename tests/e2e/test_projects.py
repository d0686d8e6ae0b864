"""[9 Trust] item 10: two compose projects with the same service names and the same resource names run side
by side, and each project's routes and policies affect only that project (real engine, real sidecars).
Also item 11 on the real engine: values YAML 1.1 would change reach the app container as written."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from docker import DockerClient

from meshctl.runtime.compose import run_compose
from tests.conftest import meshctl
from tests.e2e.conftest import App, require_compose, up_meshed
from tests.e2e.test_security_policies import synced

TWIN = Path(__file__).parent / "twin" / "compose.yaml"
PROJECTS = ("e2etwina", "e2etwinb")
ROUTE = """apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: web}
spec:
  hosts: [web]
  http: [{route: [{destination: {host: web, subset: SUBSET}}]}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: web}
spec:
  host: web
  subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]
"""


@pytest.fixture(scope="module")
def twins(engine: DockerClient, mesh_home: Path, testbed_image: str,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, App]]:
    apps: dict[str, App] = {}
    try:
        for project in PROJECTS:
            apps[project] = up_meshed(engine, mesh_home, TWIN, project, tmp_path_factory.mktemp(project))
        for app in apps.values():
            app.wait_for(lambda a=app: a.exec("client", "curl", "-sf", "-o", "/dev/null",  # type: ignore[misc]
                                              "http://web:8080/echo")[0] == 0, "web answers")
        yield apps
    finally:
        for kind, name in (("vs", "web"), ("dr", "web"), ("vs", "web-fault"), ("ap", "web-deny")):
            for project in PROJECTS:
                meshctl("delete", kind, name, "-p", project, home=mesh_home)
        for project, app in apps.items():
            App(engine, require_compose(), project, app.file).down()


def answers(app: App, n: int = 12, path: str = "/echo") -> dict[str, int]:
    """Which backend answered, or the status when it was not a 200, over n requests from the project's client."""
    seen: dict[str, int] = {}
    for _ in range(n):
        _, out = app.exec("client", "curl", "-s", "--max-time", "10", "-w", "\n%{http_code}",
                          f"http://web:8080{path}")
        body, _, status = out.rpartition("\n")
        key = json.loads(body)["name"] if status == "200" else status
        seen[key] = seen.get(key, 0) + 1
    return seen


def sync_all(home: Path) -> None:
    for project in PROJECTS:
        synced(home, project)


def test_same_names_in_two_projects_stay_in_their_project(twins: dict[str, App], mesh_home: Path) -> None:
    a, b = (twins[p] for p in PROJECTS)
    for project, subset in zip(PROJECTS, ("v1", "v2"), strict=True):
        done = meshctl("apply", "-p", project, "-f", "-", home=mesh_home, stdin=ROUTE.replace("SUBSET", subset))
        assert done.code == 0, done.err
    listed = json.loads(meshctl("get", "vs", "-o", "json", home=mesh_home).out)
    assert sorted(r["metadata"].get("namespace") for r in listed if r["metadata"]["name"] == "web") == list(PROJECTS)
    sync_all(mesh_home)
    assert answers(a) == {"web-v1": 12} and answers(b) == {"web-v2": 12}

    # a CLI write with -p changes only its own project
    assert meshctl("route", "set", "web", "--to", "v2", "-p", PROJECTS[0], home=mesh_home).code == 0
    sync_all(mesh_home)
    assert answers(a) == {"web-v2": 12} and answers(b) == {"web-v2": 12}
    assert meshctl("route", "set", "web", "--to", "v1", "-p", PROJECTS[1], home=mesh_home).code == 0
    sync_all(mesh_home)
    assert answers(a) == {"web-v2": 12} and answers(b) == {"web-v1": 12}

    # the same policy name in both projects, each with its own rule
    for project, path in zip(PROJECTS, ("/status/418", "/status/419"), strict=True):
        policy = (f"apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: web-deny}}\n"
                  f"spec: {{selector: {{matchLabels: {{app: web}}}}, action: DENY, "
                  f"rules: [{{to: [{{operation: {{paths: ['{path}']}}}}]}}]}}\n")
        assert meshctl("apply", "-p", project, "-f", "-", home=mesh_home, stdin=policy).code == 0
    sync_all(mesh_home)
    assert answers(a, 3, "/status/418") == {"403": 3} and answers(a, 3, "/status/419") == {"419": 3}
    assert answers(b, 3, "/status/419") == {"403": 3} and answers(b, 3, "/status/418") == {"418": 3}

    # deleting needs the namespace once the name is ambiguous, and then touches one project only
    ambiguous = meshctl("delete", "vs", "web", home=mesh_home)
    assert ambiguous.code == 2 and PROJECTS[0] in ambiguous.err and PROJECTS[1] in ambiguous.err, ambiguous.err
    assert meshctl("delete", "vs", "web", "-p", PROJECTS[0], home=mesh_home).code == 0
    sync_all(mesh_home)
    assert answers(b) == {"web-v1": 12}  # b keeps its own route
    assert set(answers(a, 20)) <= {"web-v1", "web-v2"}

    # a resource in project b that names a's service in full reaches a only (a has no route of its own now)
    fault = (f"apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: web-fault}}\n"
             f"spec: {{hosts: [web.{PROJECTS[0]}], http: [{{match: [{{uri: {{prefix: /fault}}}}], fault: {{abort: "
             f"{{httpStatus: 503, percentage: {{value: 100}}}}}}, "
             f"route: [{{destination: {{host: web.{PROJECTS[0]}}}}}]}}, "
             f"{{route: [{{destination: {{host: web.{PROJECTS[0]}}}}}]}}]}}\n")
    done = meshctl("apply", "-p", PROJECTS[1], "-f", "-", home=mesh_home, stdin=fault)
    assert done.code == 0, done.err
    sync_all(mesh_home)
    assert answers(a, 4, "/fault") == {"503": 4} and answers(b, 4, "/fault") == {"404": 4}


def test_inject_keeps_the_apps_values_as_compose_reads_them(twins: dict[str, App]) -> None:
    app = twins[PROJECTS[0]]
    original = yaml.safe_load(run_compose(app.tool, PROJECTS[0], TWIN, "config"))["services"]["web-v1"]
    want = {f"{k}={'' if v is None else v}" for k, v in original["environment"].items()}
    env = set(app.container("web-v1").attrs["Config"]["Env"])
    assert want <= env, (want - env, app.tool)  # what this compose reads from the user's file, unchanged
    assert "sexagesimal in YAML 1.1" in app.file.read_text()  # the user's comments survive the rewrite
