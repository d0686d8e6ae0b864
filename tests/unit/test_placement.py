"""A mesh across hosts, on files alone: placement at inject, the per-node split of `meshctl up`, delivery's archive."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from meshctl.home import MeshHome
from meshctl.lifecycle.deploy import split
from meshctl.runtime import delivery
from meshctl.status import ExitCode
from sidecar import supervisor
from sidecar.contract import PROXY_UID
from tests.unit.cli import meshctl
from tests.unit.test_cli_errors import one_error_line

SHOP = """\
services:
  web:
    image: nginx
    ports: ["8080:80"]
    depends_on: [api, db]
  api:
    image: api
    labels: {mesh.host: node2}
    deploy: {replicas: 3}
    depends_on: [db]
  db:
    image: postgres
    labels: {mesh.inject: "false", mesh.host: node3}
"""


@pytest.fixture
def cluster_home(installed_home: Path) -> Path:
    home = MeshHome(installed_home)
    settings = home.settings()
    settings.cluster, settings.nodes = True, ["node2", "node3"]
    home.save_settings(settings)
    return installed_home


def _inject(home: Path, tmp_path: Path, *flags: str, text: str = SHOP) -> tuple[int, str, dict[str, Any]]:
    source, out = tmp_path / "compose.yaml", tmp_path / "meshed.yaml"
    source.write_text(text)
    done = meshctl("inject", str(source), "-p", "shop", "-o", str(out), *flags, home=home)
    return done.code, done.err, yaml.safe_load(out.read_text()) if out.exists() else {}


def _node(data: dict[str, Any], sidecar: str) -> str:
    return str(data["services"][sidecar]["labels"]["io.meshctl.node"])


def test_label_and_flag_place_pods_and_spread_replicas(cluster_home: Path, tmp_path: Path) -> None:
    code, err, data = _inject(cluster_home, tmp_path, "--place", "api=node2,node3", "--place", "web=manager")
    assert code == 0, err
    assert [_node(data, s) for s in ("api-proxy", "api-2-proxy", "api-3-proxy")] == ["node2", "node3", "node2"]
    assert _node(data, "web-proxy") == ""  # the flag overrides nothing here: manager is the default too
    info = json.loads((cluster_home / "proxies/shop/api-2/proxy.json").read_text())
    assert info["pod"]["node"] == "node3"
    # each pod's files come in its own volume; the project's networks are overlays made by `meshctl up`
    assert data["services"]["api-2-proxy"]["volumes"] == ["meshctl-proxy-shop-api-2:/etc/meshctl:ro"]
    assert data["volumes"]["meshctl-proxy-shop-api-2"] == {"external": True, "name": "meshctl-proxy-shop-api-2"}
    assert data["networks"]["default"] == {"external": True, "name": "shop_default"}
    assert data["x-meshctl"]["overlays"] == ["shop_default"]
    assert "meshctl-sidecars" in data["services"]["web-proxy"]["networks"]["meshctl"]["aliases"]
    assert "meshctl up" in err


def test_single_host_output_has_no_trace_of_the_cluster(installed_home: Path, tmp_path: Path) -> None:
    code, err, data = _inject(installed_home, tmp_path, text=SHOP.replace("labels: {mesh.host: node2}", "labels: {}")
                              .replace(", mesh.host: node3", ""))
    assert code == 0, err
    assert "io.meshctl.node" not in data["services"]["api-proxy"]["labels"]
    assert data["services"]["api-proxy"]["volumes"][0].startswith(str(installed_home))
    assert "overlays" not in data["x-meshctl"] and "volumes" not in data


@pytest.mark.parametrize(("flags", "expected"), [
    (("--place", "api=node9"), "'node9' is not a node of this mesh (nodes: manager, node2, node3)"),
    (("--place", "nosuch=node2"), "there is no service 'nosuch'"),
    (("--place", "api"), "--place 'api': give SERVICE=CONTEXT"),
    (("--place", "api=node2,"), "an empty node name"),
])
def test_bad_placements_get_one_line_and_write_nothing(cluster_home: Path, tmp_path: Path, flags: tuple[str, ...],
                                                        expected: str) -> None:
    code, err, data = _inject(cluster_home, tmp_path, *flags)
    assert code == ExitCode.INVALID_INPUT, err
    assert expected in one_error_line(err)
    assert not data and list((cluster_home / "proxies").iterdir()) == []


def test_a_placement_on_one_host_says_how_to_make_a_cluster(installed_home: Path, tmp_path: Path) -> None:
    code, err, _ = _inject(installed_home, tmp_path)
    assert code == ExitCode.INVALID_INPUT
    line = one_error_line(err)
    assert "label `mesh.host` places it on 'node2'" in line and "meshctl cluster init" in line


def test_up_splits_the_file_per_node_keeping_pods_whole(cluster_home: Path, tmp_path: Path) -> None:
    code, err, data = _inject(cluster_home, tmp_path, "--place", "api=node2,node3")
    assert code == 0, err
    docs = split(data)
    assert sorted(docs) == ["", "node2", "node3"]
    assert sorted(docs["node2"]["services"]) == ["api", "api-3", "api-3-proxy", "api-proxy"]
    assert sorted(docs["node3"]["services"]) == ["api-2", "api-2-proxy", "db"]
    assert sorted(docs[""]["services"]) == ["web", "web-proxy"]
    # a dependency on another host is dropped (compose waits only for its own); the sidecar's stays
    assert docs[""]["services"]["web"]["depends_on"] == {"web-proxy": {"condition": "service_healthy"}}
    assert "depends_on" in docs["node2"]["services"]["api"]
    assert set(docs["node2"]["services"]["api"]["depends_on"]) == {"api-proxy"}
    # a node's file declares only its own pods' volumes: the others do not exist there
    assert sorted(k for k in docs["node3"]["volumes"]) == ["meshctl-proxy-shop-api-2"]


def test_the_archive_carries_owner_modes_and_a_manifest_last(tmp_path: Path) -> None:
    for name, text in (("cert.pem", "C"), ("key.pem", "K"), ("bundle.pem", "B"), ("snapshot.json", "{}")):
        (tmp_path / name).write_text(text)
    files = delivery.manifest(tmp_path)
    with tarfile.open(fileobj=io.BytesIO(delivery.pack(tmp_path, files))) as tar:
        members = tar.getmembers()
        assert [m.name for m in members][-1] == "manifest.json"
        assert all(m.uid == PROXY_UID and m.gid == PROXY_UID for m in members)
        modes = {m.name: m.mode for m in members}
        assert modes["key.pem"] == 0o600 and modes["cert.pem"] == 0o644
        assert json.loads(tar.extractfile("manifest.json").read())["files"] == files  # type: ignore[union-attr]


def _deliver_into(target: Path, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        (target / name).write_bytes(data)
    manifest = {name: __import__("hashlib").sha256(data).hexdigest() for name, data in files.items()}
    (target / "manifest.json").write_text(json.dumps({"files": manifest}))


def test_the_supervisor_hands_over_only_a_whole_verified_delivery(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sidecar.supervisor.os.chown", lambda *a: None)
    monkeypatch.setattr("sidecar.supervisor.os.fchown", lambda *a: None)
    source, target = tmp_path / "volume", tmp_path / "run"
    source.mkdir()
    target.mkdir()
    old = {"cert.pem": b"C1", "key.pem": b"K1", "bundle.pem": b"B1", "snapshot.json": b"S1"}
    _deliver_into(source, old)
    seen: dict[str, float] = {}
    supervisor.mirror(source, target, seen)
    assert {n: (target / n).read_bytes() for n in old} == old
    assert (target / "key.pem").stat().st_mode & 0o777 == 0o600
    # a new delivery caught half-way: the key is new, the certificate still the old one
    _deliver_into(source, {**old, "cert.pem": b"C2", "key.pem": b"K2"})
    (source / "cert.pem").write_bytes(b"C")  # the engine is still writing it
    supervisor.mirror(source, target, seen)
    assert (target / "key.pem").read_bytes() == b"K1" and (target / "cert.pem").read_bytes() == b"C1"
    (source / "cert.pem").write_bytes(b"C2")  # the write finished
    supervisor.mirror(source, target, seen)
    assert (target / "key.pem").read_bytes() == b"K2" and (target / "cert.pem").read_bytes() == b"C2"
    # a file the manifest names but the volume lacks, or a broken manifest: nothing is handed over
    (source / "snapshot.json").unlink()
    (source / "manifest.json").write_text(json.dumps({"files": {"snapshot.json": "0" * 64}}))
    supervisor.mirror(source, target, seen)
    (source / "manifest.json").write_text("{not json")
    supervisor.mirror(source, target, seen)
    assert (target / "snapshot.json").read_bytes() == b"S1"


def test_delivery_is_a_no_op_on_one_host(installed_home: Path) -> None:
    def no_client(node: str) -> Any:
        raise AssertionError("a single-host mesh must not reach any engine")
    report = delivery.deliver(MeshHome(installed_home), client_for=no_client)
    assert report.delivered == [] and report.failed == {}


class _Courier:
    def __init__(self, name: str) -> None:
        self.name, self.archives = name, []  # type: ignore[var-annotated]

    def put_archive(self, path: str, data: bytes) -> bool:
        self.archives.append((path, data))
        return True


class _Couriers:
    def __init__(self) -> None:
        self.made: dict[str, _Courier] = {}

    def get(self, name: str) -> _Courier:
        import docker.errors
        if name not in self.made:
            raise docker.errors.NotFound(name)
        return self.made[name]

    def create(self, image: str, name: str, **_: object) -> _Courier:
        self.made[name] = _Courier(name)
        return self.made[name]


class _Volumes:
    def __init__(self) -> None:
        self.made: list[str] = []

    def get(self, name: str) -> None:
        import docker.errors
        if name not in self.made:
            raise docker.errors.NotFound(name)

    def create(self, name: str, **_: object) -> None:
        self.made.append(name)


class _Engine:
    def __init__(self) -> None:
        self.containers, self.volumes = _Couriers(), _Volumes()


def test_delivery_sends_changed_files_to_each_pods_node_and_retries_a_node_that_was_down(
        cluster_home: Path, tmp_path: Path) -> None:
    from meshctl.errors import EngineError
    code, err, _ = _inject(cluster_home, tmp_path, "--place", "api=node2,node3")
    assert code == 0, err
    engines = {"": _Engine(), "node2": _Engine(), "node3": _Engine()}
    down = {"node3"}

    def client_for(node: str) -> Any:
        if node in down:
            raise EngineError(f"cannot reach the Docker engine of context {node!r}")
        return engines[node]

    home = MeshHome(cluster_home)
    first = delivery.deliver(home, create=True, client_for=client_for)
    assert sorted(first.delivered) == ["shop.api", "shop.api-3", "shop.web"]
    assert list(first.failed) == ["node3"] and "node node3 is unreachable" in first.warnings()[0]
    assert sorted(engines["node2"].volumes.made) == ["meshctl-proxy-shop-api", "meshctl-proxy-shop-api-3"]
    # nothing changed: nothing is sent again; the node that was down gets its pod's files once it is back
    down.clear()
    again = delivery.deliver(home, create=True, client_for=client_for)
    assert again.delivered == ["shop.api-2"] and again.unchanged == 3
    # a renewed certificate travels to its node only
    (cluster_home / "proxies/shop/api-2/cert.pem").write_text("renewed")
    courier = engines["node3"].containers.made["meshctl-courier-shop-api-2"]
    sent = len(courier.archives)
    assert delivery.deliver(home, client_for=client_for).delivered == ["shop.api-2"]
    assert len(courier.archives) == sent + 1 and courier.archives[-1][0] == "/etc/meshctl"
    # a pod that was never started (no courier) is not delivered to outside `meshctl up`
    (cluster_home / "proxies/shop/api-2/.delivered").unlink()
    del engines["node3"].containers.made["meshctl-courier-shop-api-2"]
    assert delivery.deliver(home, client_for=client_for).delivered == []


def test_demo_in_a_mesh_across_hosts_says_how_to_run_bookinfo_there(cluster_home: Path) -> None:
    done = meshctl("demo", home=cluster_home)
    assert done.code == ExitCode.CONFLICT, done.err
    line = one_error_line(done.err)
    assert "meshctl demo runs on one host" in line and "meshctl up" in line
