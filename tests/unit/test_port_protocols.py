"""Declared port protocols (issue 15, item 4): compose's `ports[].app_protocol` and the `mesh.port-protocols`
label, compiled into every workload's `port_protocols` in the snapshot, which the data plane's parser reads."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from meshctl.inject import injector, protocols
from meshctl.mesh import read_proxy_info
from meshctl.pilot.snapshot import compile_snapshot
from meshctl.runtime.compose import ComposeTool
from meshctl.status import ExitCode
from sidecar import snapshot as contract
from tests.unit.cli import meshctl
from tests.unit.test_cli_errors import one_error_line

COMPOSE = """\
services:
  db:
    image: mariadb
    ports:
      - target: 3306
        published: 13306
        app_protocol: mysql
      - target: 8080
        app_protocol: tcp
    labels:
      mesh.port-protocols: "8080=http, 3307=tcp"
  cache:
    image: redis
    labels: ["mesh.port-protocols=6380=redis"]
    deploy: {replicas: 2}
  client:
    image: curl
"""


@pytest.mark.parametrize(("name", "expected"), [
    ("tcp", "tcp"), ("TCP", "tcp"), (" mysql ", "tcp"), ("mariadb", "tcp"), ("redis", "tcp"), ("postgresql", "tcp"),
    ("postgres", "tcp"), ("mongo", "tcp"), ("tls", "tcp"), ("https", "tcp"),
    ("h2c", "http"), ("grpc", "http"), ("http2", "http"), ("kubernetes.io/h2c", "http"),  # HTTP/2: by its preface
    ("http", "http"), ("HTTP", "http"), ("http1.1", "http"), ("http/1.1", "http"), ("ws", "http"),
    ("udp", None), ("", None), ("http3", None), ("sql", None), (3306, None), (None, None), (True, None),
])
def test_protocol_names_map_to_what_the_sidecar_does(name: Any, expected: str | None) -> None:
    assert protocols.protocol_of(name) == expected


def test_every_name_maps_to_a_protocol_the_snapshot_accepts() -> None:
    assert set(protocols.PROTOCOL_NAMES.values()) == set(contract.PROTOCOLS)
    assert not set(protocols.HTTP_NAMES) & set(protocols.TCP_NAMES)
    assert all(name == name.lower() for name in protocols.PROTOCOL_NAMES)


def test_the_label_is_parsed_with_spaces_and_empty_parts() -> None:
    problems: list[str] = []
    assert protocols.from_label(" 3306=tcp, 8080 = http,,5432=postgresql ", "service 'x'", problems) == {
        3306: "tcp", 8080: "http", 5432: "tcp"}
    assert problems == []
    assert protocols.from_label("", "service 'x'", problems) == {} and problems == []


@pytest.mark.parametrize(("value", "says"), [
    ("3306", "'3306' must be PORT=PROTOCOL"),
    ("tcp=3306", "'tcp' is not a port"),
    ("0=tcp", "'0' is not a port"),
    ("70000=tcp", "is not a port"),
    ("15001=tcp", "sidecar's own ports"),
    ("3306=udp", "'udp' (for port 3306) is not a protocol meshctl knows; accepted: http (http1, "),
    ("3306=", "'' (for port 3306) is not a protocol"),
    ("8080=htp", "'htp' (for port 8080) is not a protocol meshctl knows (did you mean 'http'?); accepted: http ("),
    ("3306=tcp,3306=http", "port 3306 is declared both tcp and http"),
])
def test_a_bad_label_names_the_service_the_label_and_what_is_accepted(value: str, says: str) -> None:
    problems: list[str] = []
    protocols.from_label(value, "service 'db'", problems)
    assert len(problems) == 1, problems
    assert problems[0].startswith("service 'db': label `mesh.port-protocols`: ")
    assert says in problems[0]


def test_app_protocol_is_read_from_the_long_syntax_only() -> None:
    problems: list[str] = []
    ports = ["3306:3306", 9000, {"target": 5432, "app_protocol": "postgresql"}, {"target": "8080"},
             {"target": "8081", "app_protocol": "HTTP"}]
    assert protocols.from_ports(ports, "service 'db'", problems) == {5432: "tcp", 8081: "http"}
    assert problems == []
    assert protocols.from_ports(None, "service 'db'", problems) == {} and problems == []


@pytest.mark.parametrize(("entry", "says"), [
    ({"target": 3306, "app_protocol": "gopher"}, "`ports[0].app_protocol: gopher` is not a protocol meshctl knows; "
                                                 "accepted: http ("),
    ({"target": 3306, "app_protocol": 7}, "`ports[0].app_protocol: 7` is not a protocol"),
    ({"target": 15006, "app_protocol": "tcp"}, "its target 15006 is one of the sidecar's own ports"),
])
def test_a_bad_app_protocol_names_the_service_and_the_field(entry: dict[str, Any], says: str) -> None:
    problems: list[str] = []
    protocols.from_ports([entry], "service 'db'", problems)
    assert len(problems) == 1
    assert problems[0].startswith("service 'db': ") and says in problems[0]


def test_the_label_overrides_app_protocol_for_the_same_port() -> None:
    svc = yaml.safe_load(COMPOSE)["services"]["db"]
    problems: list[str] = []
    found = protocols.declared(svc, svc["labels"], "service 'db'", problems)
    assert found == ((3306, "tcp"), (3307, "tcp"), (8080, "http")) and problems == []


# --- inject: the declarations reach every sidecar's snapshot -----------------------------------------------

def _inject(home: Path, tmp_path: Path, text: str = COMPOSE) -> tuple[int, str, str]:
    source = tmp_path / "compose.yaml"
    source.write_text(text)
    done = meshctl("inject", str(source), "-p", "shop", "-o", str(tmp_path / "meshed.yaml"), home=home)
    return done.code, done.out, done.err


def _snapshot(home: Path, service: str) -> dict[str, Any]:
    return dict(json.loads((home / "proxies" / "shop" / service / "snapshot.json").read_text()))


def test_declarations_reach_the_callers_and_the_callees_snapshots(installed_home: Path, tmp_path: Path) -> None:
    code, _, err = _inject(installed_home, tmp_path)
    assert code == 0, err
    for proxy in ("client", "db", "cache", "cache-2"):  # every sidecar sees every workload's declarations
        raw = _snapshot(installed_home, proxy)
        snap = contract.parse(raw)  # the data plane's own parser accepts them
        by_app = {s.name: s for s in snap.services}
        (db,) = by_app["db"].workloads
        assert db.port_protocols == ((3306, "tcp"), (3307, "tcp"), (8080, "http"))
        assert (db.protocol(3306), db.protocol(8080), db.protocol(9999)) == ("tcp", "http", None)
        (cache,) = by_app["cache"].workloads  # two replicas, one workload entry
        assert cache.port_protocols == ((6380, "tcp"),)
        (client,) = by_app["client"].workloads
        assert client.port_protocols == ()
        assert next(s for s in raw["services"] if s["name"] == "client")["workloads"][0]["port_protocols"] == {}
    assert read_proxy_info(installed_home / "proxies" / "shop" / "cache-2").pod.port_protocols == ((6380, "tcp"),)


def test_a_recompiled_snapshot_keeps_the_declarations(installed_home: Path, tmp_path: Path) -> None:
    """`apply` and every push compile again from proxy.json: the declarations travel through it."""
    assert _inject(installed_home, tmp_path)[0] == 0
    directory = installed_home / "proxies" / "shop" / "client"
    again = compile_snapshot(read_proxy_info(directory), [], 1)
    assert again["services"] == _snapshot(installed_home, "client")["services"]
    assert meshctl("mtls", "set", "db", "--mode", "strict", "-p", "shop", home=installed_home).code == 0
    db = next(s for s in _snapshot(installed_home, "client")["services"] if s["name"] == "db")["workloads"][0]
    assert db["mode"] == "STRICT" and db["port_protocols"] == {"3306": "tcp", "3307": "tcp", "8080": "http"}


def test_a_proxy_json_from_before_declarations_compiles_with_none(installed_home: Path, tmp_path: Path) -> None:
    assert _inject(installed_home, tmp_path)[0] == 0
    info = json.loads((installed_home / "proxies" / "shop" / "client" / "proxy.json").read_text())
    for pod in [info["pod"], *info["pods"]]:
        del pod["port_protocols"]
    snap = contract.parse(compile_snapshot(info, [], 1))
    assert all(wl.port_protocols == () for svc in snap.services for wl in svc.workloads)


def test_the_meshed_file_keeps_app_protocol_as_written(installed_home: Path, tmp_path: Path) -> None:
    assert _inject(installed_home, tmp_path)[0] == 0
    meshed = yaml.safe_load((tmp_path / "meshed.yaml").read_text())
    assert meshed["services"]["db-proxy"]["ports"] == yaml.safe_load(COMPOSE)["services"]["db"]["ports"]
    assert meshed["services"]["db"]["labels"]["mesh.port-protocols"] == "8080=http, 3307=tcp"


@pytest.mark.parametrize(("fragment", "says"), [
    ("    ports: [{target: 3306, app_protocol: gopher}]\n",
     "compose.yaml: service 'db': `ports[0].app_protocol: gopher` is not a protocol meshctl knows; accepted: http ("),
    ("    ports: [{target: 3306, app_protocol: mysqlx}]\n",
     "`ports[0].app_protocol: mysqlx` is not a protocol meshctl knows (did you mean 'mysql'?); accepted: http ("),
    ("    labels: {mesh.port-protocols: '3306=udp'}\n",
     "compose.yaml: service 'db': label `mesh.port-protocols`: 'udp' (for port 3306) is not a protocol meshctl"),
    ("    labels: [mesh.port-protocols=3306]\n",
     "compose.yaml: service 'db': label `mesh.port-protocols`: '3306' must be PORT=PROTOCOL"),
])
def test_a_bad_declaration_is_one_line_and_exit_3_and_nothing_is_written(installed_home: Path, tmp_path: Path,
                                                                           fragment: str, says: str) -> None:
    code, _, err = _inject(installed_home, tmp_path, "services:\n  db:\n    image: mariadb\n" + fragment)
    assert code == ExitCode.INVALID_INPUT
    line = one_error_line(err)
    assert says in line and line.count("compose.yaml") == 1
    assert not (tmp_path / "meshed.yaml").exists() and not (installed_home / "proxies" / "shop").exists()


def test_docker_compose_v1_accepts_the_label_but_refuses_app_protocol(installed_home: Path, tmp_path: Path) -> None:
    """What the compose v1 note says, checked on docker-compose 1.x itself (`config` needs no engine)."""
    if shutil.which("docker-compose") is None:
        pytest.skip("docker-compose (v1) is not installed")
    labelled = COMPOSE.replace("        app_protocol: mysql\n", "").replace("        app_protocol: tcp\n", "")
    assert _inject(installed_home, tmp_path, labelled)[0] == 0
    seen = subprocess.run(["docker-compose", "-f", str(tmp_path / "meshed.yaml"), "config", "-q"],
                          capture_output=True, text=True, timeout=60)
    assert seen.returncode == 0, seen.stderr
    (tmp_path / "meshed.yaml").unlink()
    assert _inject(installed_home, tmp_path)[0] == 0
    seen = subprocess.run(["docker-compose", "-f", str(tmp_path / "meshed.yaml"), "config", "-q"],
                          capture_output=True, text=True, timeout=60)
    assert seen.returncode != 0 and "app_protocol" in seen.stderr


@pytest.mark.parametrize(("tool", "noted"), [
    (ComposeTool(("docker-compose",), "1.29.2"), True),
    (ComposeTool(("docker", "compose"), "2.26.1"), False),
    (None, False),
])
def test_inject_notes_app_protocol_only_where_compose_v1_would_refuse_it(monkeypatch: pytest.MonkeyPatch,
                                                                         tool: ComposeTool | None,
                                                                         noted: bool) -> None:
    monkeypatch.setattr(injector, "find_compose", lambda: tool)
    services = yaml.safe_load(COMPOSE)["services"]
    notes = injector.compose_v1_note("compose.yaml", ["db", "cache", "cache", "client"], services)
    assert bool(notes) is noted
    if noted:
        (note,) = notes
        assert note.startswith("compose.yaml: service 'db' declares `ports[].app_protocol`, which "
                               "docker-compose 1.29.2 refuses") and "`mesh.port-protocols: " in note


def test_no_app_protocol_no_look_for_compose(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom() -> None:
        raise AssertionError("looked for compose")

    monkeypatch.setattr(injector, "find_compose", boom)
    services = yaml.safe_load(COMPOSE)["services"]
    assert injector.compose_v1_note("compose.yaml", ["cache", "client"], services) == ()
