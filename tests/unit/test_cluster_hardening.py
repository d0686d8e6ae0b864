"""#19's review: what a hand-edited or mismatched meshed file, a planted file in a pod's volume, or an odd URL
could make the multi-host code do (fakes only)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from meshctl.home import MeshHome
from meshctl.status import ExitCode
from tests.unit.cli import meshctl, no_engine
from tests.unit.test_cli_errors import one_error_line
from tests.unit.test_placement import SHOP, _inject, cluster_home  # noqa: F401  (a fixture)


@pytest.fixture
def no_docker(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every refusal here must come before compose or any engine is reached (an e2e run may share the engine)."""
    def refuse(*_: object, **__: object) -> Any:
        raise AssertionError("reached docker")
    for where in ("meshctl.lifecycle.deploy.require_compose", "meshctl.lifecycle.deploy.ensure_overlays",
                  "meshctl.runtime.delivery.deliver", "meshctl.runtime.nodes.connect"):
        monkeypatch.setattr(where, refuse)


def up_down(command: str, file: Path, home: Path) -> Any:
    return meshctl(command, str(file), home=home, engine=no_engine, nodes=lambda _: no_engine())


def _edited(tmp_path: Path, data: dict[str, Any], name: str = "edited.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.mark.usefixtures("no_docker")
@pytest.mark.parametrize("command", ["up", "down"])
@pytest.mark.parametrize("project", ["../ca", "..", "a/b", "/etc"])
def test_a_project_name_that_leaves_the_home_is_refused_before_anything_is_removed(
        cluster_home: Path, tmp_path: Path, command: str, project: str) -> None:  # noqa: F811
    code, err, data = _inject(cluster_home, tmp_path, "--place", "api=node2,node3")
    assert code == 0, err
    data["x-meshctl"]["project"] = project
    ca_files = sorted(p.name for p in (cluster_home / "ca").iterdir())
    done = up_down(command, _edited(tmp_path, data), cluster_home)
    assert done.code == ExitCode.INVALID_INPUT, done.err
    assert "is not a compose project name" in one_error_line(done.err)
    assert sorted(p.name for p in (cluster_home / "ca").iterdir()) == ca_files  # `down` used to empty home/ca


@pytest.mark.usefixtures("no_docker")
def test_a_node_name_that_leaves_the_home_is_refused(cluster_home: Path, tmp_path: Path) -> None:  # noqa: F811
    code, err, data = _inject(cluster_home, tmp_path)
    assert code == 0, err
    data["services"]["db"]["labels"]["mesh.host"] = "../../../../tmp/planted"  # an unmeshed service's own label
    done = up_down("up", _edited(tmp_path, data), cluster_home)
    assert done.code == ExitCode.INVALID_INPUT, done.err
    line = one_error_line(done.err)
    assert "service 'db' is placed on '../../../../tmp/planted', which is not a node of this mesh" in line
    assert "meshctl cluster join" in line
    assert not list((cluster_home / "cluster").glob("**/*.yaml")) if (cluster_home / "cluster").exists() else True


@pytest.mark.usefixtures("no_docker")
def test_a_service_name_with_a_slash_is_refused(cluster_home: Path, tmp_path: Path) -> None:  # noqa: F811
    code, err, data = _inject(cluster_home, tmp_path)
    assert code == 0, err
    data["services"]["../../ca"] = data["services"].pop("web")
    done = up_down("up", _edited(tmp_path, data), cluster_home)
    assert done.code == ExitCode.INVALID_INPUT and "service '../../ca' is not a valid" in one_error_line(done.err)


@pytest.mark.usefixtures("no_docker")
def test_a_file_meshed_for_one_host_is_refused_in_a_cluster_and_vice_versa(
        installed_home: Path, tmp_path: Path) -> None:
    one_host = SHOP.replace("labels: {mesh.host: node2}", "labels: {}").replace(", mesh.host: node3", "")
    code, err, _ = _inject(installed_home, tmp_path, text=one_host)
    assert code == 0, err
    meshed = tmp_path / "meshed.yaml"
    home = MeshHome(installed_home)
    settings = home.settings()
    settings.cluster, settings.nodes = True, ["node2"]
    home.save_settings(settings)
    done = up_down("up", meshed, installed_home)
    assert done.code == ExitCode.INVALID_INPUT, done.err
    line = one_error_line(done.err)
    assert "was meshed for one host, but this mesh is a cluster" in line and "meshctl inject SOURCE -o" in line
    code, err, _ = _inject(installed_home, tmp_path, text=one_host)  # meshed again, now for the cluster
    assert code == 0, err
    settings.cluster, settings.nodes = False, []
    home.save_settings(settings)
    done = up_down("up", meshed, installed_home)
    assert done.code == ExitCode.INVALID_INPUT, done.err
    assert "was meshed for a cluster, but this mesh runs on one host" in one_error_line(done.err)


@pytest.mark.usefixtures("no_docker")
@pytest.mark.parametrize("command", ["up", "down"])
def test_up_and_down_of_a_missing_or_plain_file_say_so_in_one_line(
        cluster_home: Path, tmp_path: Path, command: str) -> None:  # noqa: F811
    done = up_down(command, tmp_path / "nope.yaml", cluster_home)
    assert done.code != 0 and "nope.yaml" in one_error_line(done.err)
    plain = tmp_path / "compose.yaml"
    plain.write_text(SHOP)
    done = up_down(command, plain, cluster_home)
    assert done.code == ExitCode.INVALID_INPUT and "meshctl inject" in one_error_line(done.err)


def test_down_removes_only_the_overlays_up_made_for_the_project() -> None:
    from types import SimpleNamespace

    from meshctl.lifecycle.deploy import _remove_overlays
    from tests.unit.fakes import FakeEngine, FakeNetwork

    engine = FakeEngine()
    ours = {"io.meshctl.component": "project-network", "com.docker.compose.project": "shop"}
    engine.networks.found += [FakeNetwork(engine, "meshctl", "overlay"), FakeNetwork(engine, "shop_default", "overlay",
                                                                                      labels=ours),
                              FakeNetwork(engine, "users_net", "overlay")]
    # a hand-edited list naming the mesh's own network and a user's: only the project's own goes
    _remove_overlays(SimpleNamespace(docker=lambda: engine), ["meshctl", "shop_default", "users_net"],  # type: ignore[arg-type]
                     "shop")
    assert sorted(n.name for n in engine.networks.found) == ["meshctl", "users_net"]


def _delivered_shop(root: Path, tmp_path: Path) -> tuple[dict[str, Any], MeshHome]:
    """The shop meshed across the manager, node2 and node3, every pod's files delivered once to fake engines."""
    from meshctl.runtime import delivery
    from tests.unit.test_placement import _Engine

    code, err, _ = _inject(root, tmp_path)
    assert code == 0, err
    engines = {"": _Engine(), "node2": _Engine(), "node3": _Engine()}
    home = MeshHome(root)
    assert "shop.api" in delivery.deliver(home, create=True, client_for=engines.__getitem__).delivered
    return engines, home


def test_a_pod_placed_on_another_node_gets_its_unchanged_files_there(cluster_home: Path,  # noqa: F811
                                                                      tmp_path: Path) -> None:
    import json

    from meshctl.mesh import read_proxy_info
    from meshctl.runtime import delivery

    engines, home = _delivered_shop(cluster_home, tmp_path)
    assert (cluster_home / "proxies/shop/api/.delivered").read_text().split()[1] == "node2"
    # the same files, the pod now on node3 (whose courier is there from an earlier `up`)
    delivery.ensure_courier(engines["node3"], read_proxy_info(cluster_home / "proxies/shop/api"),  # type: ignore[arg-type]
                            "proxy")
    info_path = cluster_home / "proxies/shop/api/proxy.json"
    info = json.loads(info_path.read_text())
    info["pod"]["node"] = "node3"
    info_path.write_text(json.dumps(info))
    again = delivery.deliver(home, client_for=engines.__getitem__)
    assert again.delivered == ["shop.api"]
    assert engines["node3"].containers.made["meshctl-courier-shop-api"].archives


def _delivered(source: Path, files: dict[str, bytes]) -> None:
    import hashlib
    import json

    for name, data in files.items():
        (source / name).write_bytes(data)
    digests = {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}
    (source / "manifest.json").write_text(json.dumps({"files": digests}))


def test_the_supervisor_never_reads_through_a_planted_symlink_or_fifo(tmp_path: Path) -> None:
    import hashlib
    import json
    import os

    from sidecar import supervisor

    source = tmp_path / "volume"
    source.mkdir()
    secret = tmp_path / "elsewhere"
    secret.write_bytes(b"not for the proxy")
    _delivered(source, {"cert.pem": b"C", "key.pem": b"K"})
    assert supervisor.verified_set(source) == {"cert.pem": b"C", "key.pem": b"K"}
    # a key that is a link to another file, even one the manifest vouches for: not read
    (source / "key.pem").unlink()
    (source / "key.pem").symlink_to(secret)
    manifest = {"cert.pem": hashlib.sha256(b"C").hexdigest(),
                "key.pem": hashlib.sha256(secret.read_bytes()).hexdigest()}
    (source / "manifest.json").write_text(json.dumps({"files": manifest}))
    assert supervisor.verified_set(source) is None
    # a FIFO would block PID 1 forever on open
    (source / "key.pem").unlink()
    os.mkfifo(source / "key.pem")
    assert supervisor.verified_set(source) is None
    # a manifest that is a link, and one naming a file outside the set
    (source / "key.pem").unlink()
    _delivered(source, {"cert.pem": b"C", "key.pem": b"K"})
    (source / "manifest.json").write_text(json.dumps({"files": {**manifest, "../../etc/shadow": "0" * 64}}))
    assert supervisor.verified_set(source) is None


def test_the_supervisor_writes_the_proxys_copy_without_following_a_link_the_proxy_planted(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    if os.geteuid() != 0:  # giving the file to uid 1337 needs root: the rest is what is checked
        monkeypatch.setattr("sidecar.supervisor.os.fchown", lambda *a: None)
        monkeypatch.setattr("sidecar.supervisor.os.chown", lambda *a: None)

    from sidecar import supervisor

    source, target = tmp_path / "volume", tmp_path / "run"
    source.mkdir()
    target.mkdir()
    victim = tmp_path / "victim"
    victim.write_bytes(b"root's file")
    os.chmod(victim, 0o644)
    # the proxy (uid 1337) owns the copy's directory: it plants links at the temporary and the final name
    (target / ".key.pem.tmp").symlink_to(victim)
    (target / "cert.pem").symlink_to(victim)
    _delivered(source, {"cert.pem": b"C", "key.pem": b"K"})
    supervisor.mirror(source, target, {})
    assert victim.read_bytes() == b"root's file" and victim.stat().st_uid == os.geteuid()
    assert victim.stat().st_mode & 0o777 == 0o644
    assert (target / "key.pem").read_bytes() == b"K" and not (target / "cert.pem").is_symlink()
    assert (target / "key.pem").stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize(("path", "headers", "method"), [
    ("/stats\r\nX-Evil: 1", {}, "GET"),  # a line break in the path
    ("/a b", {}, "GET"),
    ("@evil.example/x", {}, "GET"),  # http://127.0.0.1:15000@evil.example/x would reach another host
    ("/x", {"X-A": "1\r\nX-B: 2"}, "GET"),
    ("/x", {"X A": "1"}, "GET"),
    ("/x", {}, "GET -o /etc/passwd"),
])
def test_the_exec_route_refuses_what_curl_would_read_as_more_than_one_request(
        path: str, headers: dict[str, str], method: str) -> None:
    import urllib.error

    from meshctl.runtime import reach

    with pytest.raises(urllib.error.URLError):
        reach.curl_command(15000, path, 3, method, headers)


def test_the_exec_route_reads_no_curlrc_no_proxy_and_no_globs() -> None:
    from meshctl.runtime import reach

    cmd = reach.curl_command(15000, "/stats?filter={a,b}[1-2]", 3)
    assert cmd[:2] == ["curl", "-q"]  # -q only works as the first option
    assert "--globoff" in cmd and cmd[cmd.index("--noproxy") + 1] == "*"
    assert cmd[-1] == "http://127.0.0.1:15000/stats?filter={a,b}[1-2]"


def test_revive_tries_a_dead_node_once_per_round_and_skips_a_missing_part_file(
        cluster_home: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:  # noqa: F811
    from types import SimpleNamespace

    from meshctl.errors import EngineError
    from meshctl.runtime import deployments

    home = MeshHome(cluster_home)
    monkeypatch.setattr(deployments, "_last_try", {})
    monkeypatch.setattr(deployments, "_missing", set())
    started: list[tuple[str, str]] = []
    monkeypatch.setattr(deployments, "start_part", lambda h, d, node, **_: started.append((d.project, node)))
    for project in ("a", "b", "c"):
        (deployments.deployments_dir(home) / project).mkdir(parents=True)
        deployments.save(home, deployments.Deployment(project, "/src", (), ("node2", "node3")))
        for node in ("node2", "node3"):
            if project != "c" or node != "node3":  # c's part on node3 went missing
                path = deployments.part_file(home, project, node)
                path.write_text("services: {}\n")
    stopped = SimpleNamespace(name="x-1", status="exited")
    node3 = SimpleNamespace(containers=SimpleNamespace(list=lambda **_: [stopped]))
    asked: list[str] = []

    def client_for(node: str) -> Any:
        asked.append(node)
        if node == "node2":
            raise EngineError("cannot reach the Docker engine of context 'node2'")
        return node3

    with caplog.at_level("WARNING", logger="meshctl.runtime.deployments"):
        revived = deployments.revive(home, client_for)
    assert asked.count("node2") == 1  # not once per project: each try waits on the connect timeout
    assert started == [("a", "node3"), ("b", "node3")] and len(revived) == 2
    assert "c/node3.yaml is missing" in caplog.text
    # within REVIVE_EVERY_S nothing is tried again, the dead node included; the missing file is said once
    caplog.clear()
    asked.clear()
    assert deployments.revive(home, client_for) == [] and asked == []
    monkeypatch.setattr(deployments, "_last_try", {})
    deployments.revive(home, client_for)
    assert "missing" not in caplog.text


def test_a_symlink_in_a_proxy_directory_never_puts_the_ca_key_in_an_archive(cluster_home: Path,  # noqa: F811
                                                                            tmp_path: Path) -> None:
    import io
    import tarfile

    from meshctl.runtime import delivery

    code, err, _ = _inject(cluster_home, tmp_path)
    assert code == 0, err
    directory = cluster_home / "proxies/shop/web"
    ca_key = next(p for p in (cluster_home / "ca").iterdir() if "key" in p.name)
    (directory / "key.pem").unlink()
    (directory / "key.pem").symlink_to(ca_key)
    files = delivery.manifest(directory)
    assert "key.pem" not in files
    with tarfile.open(fileobj=io.BytesIO(delivery.pack(directory, files))) as tar:
        assert all(ca_key.read_bytes() not in tar.extractfile(m).read() for m in tar.getmembers())  # type: ignore[union-attr]


def test_a_place_flag_for_a_service_without_a_sidecar_reaches_up(cluster_home: Path,  # noqa: F811
                                                                  tmp_path: Path) -> None:
    from meshctl.lifecycle.deploy import split

    text = SHOP.replace(", mesh.host: node3", "")  # db: no sidecar, placed by the flag alone
    code, err, data = _inject(cluster_home, tmp_path, "--place", "db=node3", text=text)
    assert code == 0, err
    assert data["x-meshctl"]["place"] == {"db": "node3"}
    assert "db" in split(data)["node3"]["services"]


@pytest.mark.usefixtures("no_docker")
@pytest.mark.parametrize(("key", "value"), [("volumes_from", ["web"]), ("links", ["web:front"]),
                                            ("extends", {"service": "web"})])
def test_up_refuses_a_same_host_reference_across_nodes(cluster_home: Path, tmp_path: Path,  # noqa: F811
                                                       key: str, value: Any) -> None:
    code, err, data = _inject(cluster_home, tmp_path)
    assert code == 0, err
    data["services"]["db"][key] = value  # db (no sidecar) runs on node3, web on the manager
    done = up_down("up", _edited(tmp_path, data), cluster_home)
    assert done.code == ExitCode.INVALID_INPUT, done.err
    line = one_error_line(done.err)
    assert f"service 'db' (on node3) has `{key}: web`, which runs on manager" in line and "same node" in line


def test_split_keeps_compose_forms_whole(cluster_home: Path, tmp_path: Path) -> None:  # noqa: F811
    from meshctl.lifecycle.deploy import split

    code, err, data = _inject(cluster_home, tmp_path)
    assert code == 0, err
    data["services"]["cache"] = {
        "image": "redis", "labels": {"mesh.inject": "false", "mesh.host": "node3"}, "networks": ["back"],
        "profiles": ["extra"], "volumes": [{"type": "volume", "source": "cachedata", "target": "/data"}],
        "depends_on": {"db": {"condition": "service_healthy"}, "web": {"condition": "service_started"}}}
    data["networks"]["back"] = {"external": True, "name": "shop_back"}
    data["volumes"]["cachedata"] = {}
    node3 = split(data)["node3"]
    cache = node3["services"]["cache"]
    assert cache["depends_on"] == {"db": {"condition": "service_healthy"}}  # web runs on the manager
    assert cache["networks"] == ["back"] and cache["profiles"] == ["extra"]
    assert "cachedata" in node3["volumes"] and "meshctl-proxy-shop-web" not in node3["volumes"]


def test_certificates_are_delivered_outside_the_cas_lock(installed_home: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import datetime as dt
    import fcntl
    import os

    from meshctl.mesh import MeshedPods
    from meshctl.pki import citadel
    from meshctl.runtime import delivery

    code, err, _ = _inject(installed_home, tmp_path, text=SHOP.replace("labels: {mesh.host: node2}", "labels: {}")
                           .replace(", mesh.host: node3", ""))
    assert code == 0, err
    home = MeshHome(installed_home)
    held: list[bool] = []

    def deliver(home_: MeshHome, directories: Any = None, **_: Any) -> delivery.Report:
        fd = os.open(home.ca_dir / ".lock", os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            held.append(False)
        except BlockingIOError:
            held.append(True)  # a node's connect timeout would hold every issuance on this host
        finally:
            os.close(fd)
        return delivery.Report()

    monkeypatch.setattr(delivery, "deliver", deliver)
    now = dt.datetime.now(dt.UTC)
    citadel.reissue(home, MeshedPods.of(home).directories(), now)
    citadel.renew_due(home, now + dt.timedelta(days=3650))
    for stage in citadel.STAGES:
        citadel.root_stage(home, stage, now)
    assert held == [False] * 5


def test_the_agents_delivery_round_asks_no_node_that_has_nothing_new(cluster_home: Path,  # noqa: F811
                                                                     tmp_path: Path) -> None:
    from meshctl.runtime import delivery

    engines, home = _delivered_shop(cluster_home, tmp_path)
    asked: list[str] = []

    def client_for(node: str) -> Any:
        asked.append(node)
        return engines[node]

    assert delivery.deliver(home, client_for=client_for).delivered == [] and asked == []  # a dead node: no timeout
    (cluster_home / "proxies/shop/web/cert.pem").write_text("renewed")
    assert delivery.deliver(home, client_for=client_for).delivered == ["shop.web"] and asked == [""]
    # a pod with no courier (its project is not up) is not asked about again until its files change
    del engines[""].containers.made["meshctl-courier-shop-web"]
    (cluster_home / "proxies/shop/web/cert.pem").write_text("renewed again")
    delivery.deliver(home, client_for=client_for)
    delivery.deliver(home, client_for=client_for)
    assert asked == ["", ""]


def test_down_of_a_file_meshed_for_one_host_runs_compose_down_with_it_in_a_cluster(
        installed_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from meshctl.lifecycle import deploy

    code, err, _ = _inject(installed_home, tmp_path, text=SHOP.replace("labels: {mesh.host: node2}", "labels: {}")
                           .replace(", mesh.host: node3", ""))
    assert code == 0, err
    home = MeshHome(installed_home)
    settings = home.settings()
    settings.cluster, settings.nodes = True, ["node2"]
    home.save_settings(settings)
    downs: list[tuple[str, Path]] = []
    monkeypatch.setattr(deploy, "require_compose", lambda: "compose")
    monkeypatch.setattr(deploy, "compose_down", lambda tool, project, file, **_: downs.append((project, file)))
    done = up_down("down", tmp_path / "meshed.yaml", installed_home)
    assert done.code == 0, done.err
    assert downs == [("shop", tmp_path / "meshed.yaml")]  # its networks and volumes go too, as before the cluster


def test_up_warns_of_a_bind_mount_on_another_node(cluster_home: Path, tmp_path: Path) -> None:  # noqa: F811
    from meshctl.lifecycle.deploy import bind_mount_warnings, split

    code, err, data = _inject(cluster_home, tmp_path)
    assert code == 0, err
    data["services"]["db"]["volumes"] = ["./init:/docker-entrypoint-initdb.d:ro", "pgdata:/var/lib/postgresql",
                                         {"type": "bind", "source": "/srv/pg", "target": "/x"}]
    data["services"]["web"]["volumes"] = ["./html:/usr/share/nginx/html"]  # on the manager: its own path
    warnings = bind_mount_warnings(split(data))
    assert len(warnings) == 2 and all("service 'db' runs on node3 and bind-mounts" in w for w in warnings)
    assert "./init" in warnings[0] and "/srv/pg" in warnings[1]
