"""`meshctl cluster init|join|status|leave` and the images on every node, on fake engines that form a fake swarm
(tests/unit/fakes.py): no Docker, no sockets. Contexts are turned into those engines by replacing
runtime.nodes.context_client, which every node lookup goes through."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from meshctl import const
from meshctl.context import Context
from meshctl.errors import EngineError
from meshctl.home import MeshHome
from meshctl.lifecycle import cluster
from meshctl.lifecycle import install as installer
from meshctl.lifecycle.check import State
from meshctl.lifecycle.check import _network as check_network
from meshctl.runtime import nodes, shipping, swarm
from meshctl.status import ExitCode
from tests.unit.cli import meshctl
from tests.unit.fakes import FakeContainer, FakeEngine, FakeImage, FakeNetwork, FakeSwarmCluster

BASE, PROXY = const.BASE_IMAGE, const.PROXY_IMAGE
MANAGED = {const.LABEL_MANAGED: "true", const.LABEL_COMPONENT: "network"}


def images(size: int = 3 << 20) -> dict[str, FakeImage]:
    return {BASE: FakeImage(BASE, {const.LABEL_BUILD_HASH: "b1"}, size=size),
            PROXY: FakeImage(PROXY, {const.LABEL_BUILD_HASH: "p1"}, size=size)}


@pytest.fixture
def lan() -> dict[str, FakeSwarmCluster]:
    return {}


@pytest.fixture
def manager(lan: dict[str, FakeSwarmCluster]) -> FakeEngine:
    """The CLI's engine after `meshctl install`: the images and the mesh's bridge, in no swarm."""
    engine = FakeEngine(images(), hostname="node1", addr="10.0.0.1", lan=lan)
    engine.networks.found.append(FakeNetwork(engine, const.NETWORK_NAME, "bridge", "172.30.0.0/24", MANAGED))
    return engine


@pytest.fixture
def contexts(monkeypatch: pytest.MonkeyPatch) -> dict[str, FakeEngine | None]:
    """Docker contexts by name: an engine, or None for one that does not answer."""
    found: dict[str, FakeEngine | None] = {}

    def client(name: str, timeout: int = 10) -> Any:
        engine = found.get(name)
        if engine is None:
            raise EngineError(f"cannot reach the Docker engine of context {name!r} at tcp://{name}:2375",
                              f"check that it runs and that `docker --context {name} info` works")
        return engine

    monkeypatch.setattr(nodes, "context_client", client)
    monkeypatch.setattr(nodes, "context_host", lambda name: f"tcp://{name}:2375")
    return found


def run(home: Path, engine: FakeEngine, *args: str) -> Any:
    return meshctl("cluster", *args, home=home, engine=lambda: engine)


def settings_of(home: Path) -> Any:
    return MeshHome(home).settings()


def worker(lan: dict[str, FakeSwarmCluster], name: str, addr: str, **kwargs: Any) -> FakeEngine:
    return FakeEngine(hostname=name, addr=addr, lan=lan, **kwargs)


# --- init ---------------------------------------------------------------------------------------------------------

def test_init_on_a_fresh_engine_makes_a_swarm_and_replaces_the_idle_bridge(installed_home: Path,
                                                                           manager: FakeEngine) -> None:
    done = run(installed_home, manager, "init")
    assert done.code == ExitCode.OK, done.err
    assert manager.is_manager
    (net,) = manager.networks.list(names=[const.NETWORK_NAME])
    assert net.attrs["Driver"] == "overlay" and net.attrs["Attachable"] is True
    assert net.attrs["Labels"][const.LABEL_MANAGED] == "true"
    assert settings_of(installed_home).cluster is True
    assert "created a swarm; nodes join at 10.0.0.1:2377" in done.err
    assert "replaced the bridge with an attachable overlay 'meshctl'" in done.err


def test_init_keeps_the_chosen_subnet(installed_home: Path, manager: FakeEngine) -> None:
    home = MeshHome(installed_home)
    settings = home.settings()
    settings.network_subnet = "172.30.0.0/24"
    home.save_settings(settings)
    assert run(installed_home, manager, "init").code == ExitCode.OK
    (net,) = manager.networks.list(names=[const.NETWORK_NAME])
    assert net.attrs["IPAM"]["Config"][0]["Subnet"] == "172.30.0.0/24"


def test_init_refuses_a_bridge_in_use_and_names_its_containers(installed_home: Path, manager: FakeEngine) -> None:
    on_bridge = {"NetworkSettings": {"Networks": {const.NETWORK_NAME: {"IPAddress": "172.30.0.5"}}}}
    manager.containers.found = [
        FakeContainer("bookinfo-web-proxy-1", {"com.docker.compose.project": "bookinfo"}, attrs=on_bridge),
        FakeContainer("stray", status="exited", attrs=on_bridge),
        FakeContainer("elsewhere")]
    done = run(installed_home, manager, "init")
    assert done.code == ExitCode.CONFLICT == 8
    assert "still used by 2 container(s): bookinfo-web-proxy-1, stray" in done.err
    assert "`docker compose -p bookinfo down`" in done.err and "elsewhere" not in done.err
    assert len(done.err.strip().splitlines()) == 1
    # nothing changed: no swarm, the bridge stays, the mesh is no cluster
    assert manager.cluster is None
    assert manager.networks.list(names=[const.NETWORK_NAME])[0].attrs["Driver"] == "bridge"
    assert settings_of(installed_home).cluster is False


def test_init_twice_changes_nothing_the_second_time(installed_home: Path, manager: FakeEngine) -> None:
    assert run(installed_home, manager, "init").code == ExitCode.OK
    cluster_id = manager.cluster.id if manager.cluster else None
    again = run(installed_home, manager, "init")
    assert again.code == ExitCode.OK, again.err
    assert "already a manager of swarm" in again.err and "'meshctl' is already an attachable overlay" in again.err
    assert "nothing changed" in again.err
    assert manager.cluster is not None and manager.cluster.id == cluster_id
    assert len(manager.networks.found) == 1


def test_init_on_a_swarm_worker_is_refused(installed_home: Path, manager: FakeEngine,
                                           lan: dict[str, FakeSwarmCluster]) -> None:
    other = worker(lan, "boss", "10.0.0.9")
    other.swarm.init()
    manager.swarm.join(["10.0.0.9:2377"], lan["10.0.0.9:2377"].token)
    done = run(installed_home, manager, "init")
    assert done.code == ExitCode.CONFLICT
    assert "is a swarm worker; the mesh's own engine must be a swarm manager" in done.err


def test_init_needs_an_installed_mesh(tmp_path: Path, manager: FakeEngine) -> None:
    done = run(tmp_path / "nohome", manager, "init")
    assert done.code == ExitCode.NOT_INSTALLED
    assert manager.cluster is None


# --- join ---------------------------------------------------------------------------------------------------------

@pytest.fixture
def initialised(installed_home: Path, manager: FakeEngine) -> Path:
    assert run(installed_home, manager, "init").code == ExitCode.OK
    return installed_home


def test_join_a_fresh_engine_joins_ships_the_images_and_records_it(
        initialised: Path, manager: FakeEngine, lan: dict[str, FakeSwarmCluster],
        contexts: dict[str, FakeEngine | None]) -> None:
    contexts["node2"] = node2 = worker(lan, "node2", "10.0.0.2")
    done = run(initialised, manager, "join", "node2")
    assert done.code == ExitCode.OK, done.err
    assert node2.cluster is manager.cluster and not node2.is_manager
    assert {ref: img.id for ref, img in node2.images.found.items()} == \
        {ref: img.id for ref, img in manager.images.found.items()}
    # a load is answered once the image is in place: the client waits longer than its 10 s, then not again
    assert [(ref, timeout) for ref, _, timeout in node2.api.loaded] == [(BASE, 900), (PROXY, 900)]
    assert node2.api.timeout == 10
    assert settings_of(initialised).nodes == ["node2"]
    assert "node2: joined the swarm at 10.0.0.1:2377; images: " in done.err and "(3 MB)" in done.err


def test_join_reports_megabytes_sent(initialised: Path, manager: FakeEngine, lan: dict[str, FakeSwarmCluster],
                                     contexts: dict[str, FakeEngine | None]) -> None:
    manager.images.found = images(size=40 << 20)
    contexts["node2"] = worker(lan, "node2", "10.0.0.2")
    lines: list[str] = []
    cluster.join(Context(home=MeshHome(initialised), docker_factory=lambda: manager), ["node2"], lines.append,
                 lines.append)
    sent = [line for line in lines if "MB sent" in line]
    assert f"{BASE} -> node2: 16 MB sent" in sent and f"{BASE} -> node2: 32 MB sent" in sent
    assert f"{PROXY} -> node2: 40 MB sent, loaded" in sent


def test_join_again_only_records_it(initialised: Path, manager: FakeEngine, lan: dict[str, FakeSwarmCluster],
                                    contexts: dict[str, FakeEngine | None]) -> None:
    contexts["node2"] = node2 = worker(lan, "node2", "10.0.0.2")
    assert run(initialised, manager, "join", "node2").code == ExitCode.OK
    again = run(initialised, manager, "join", "node2")
    assert again.code == ExitCode.OK, again.err
    assert "node2: already in this swarm; images: already there" in again.err
    assert len(node2.api.loaded) == 2 and settings_of(initialised).nodes == ["node2"]


def test_join_an_engine_of_another_swarm_is_refused(initialised: Path, manager: FakeEngine,
                                                    lan: dict[str, FakeSwarmCluster],
                                                    contexts: dict[str, FakeEngine | None]) -> None:
    contexts["node2"] = node2 = worker(lan, "node2", "10.0.0.2")
    node2.swarm.init()
    done = run(initialised, manager, "join", "node2")
    assert done.code == ExitCode.CONFLICT
    assert "the engine of context 'node2' is already in another swarm" in done.err
    assert "`docker --context node2 swarm leave`" in done.err
    assert node2.cluster is not manager.cluster and not node2.api.loaded
    assert settings_of(initialised).nodes == []


def test_join_an_unreachable_context_names_it_and_still_joins_the_others(
        initialised: Path, manager: FakeEngine, lan: dict[str, FakeSwarmCluster],
        contexts: dict[str, FakeEngine | None]) -> None:
    contexts["node2"] = node2 = worker(lan, "node2", "10.0.0.2")
    contexts["node3"] = None
    done = run(initialised, manager, "join", "node3", "node2")
    assert done.code == ExitCode.ENGINE
    assert "error: cannot reach the Docker engine of context 'node3'" in done.err
    assert node2.cluster is manager.cluster and settings_of(initialised).nodes == ["node2"]


def test_join_names_every_context_that_failed(initialised: Path, manager: FakeEngine, lan: dict[str, FakeSwarmCluster],
                                              contexts: dict[str, FakeEngine | None]) -> None:
    contexts["node2"] = worker(lan, "node2", "10.0.0.2")
    contexts["node2"].swarm.init()
    done = run(initialised, manager, "join", "node3", "node2", "node4")
    assert done.code == ExitCode.ENGINE  # the first failure's kind
    assert "error: 3 contexts did not join: cannot reach the Docker engine of context 'node3'" in done.err
    assert "context 'node2' is already in another swarm" in done.err and "context 'node4'" in done.err
    assert len(done.err.strip().splitlines()) == 1


def test_join_before_init_is_refused(installed_home: Path, manager: FakeEngine,
                                     contexts: dict[str, FakeEngine | None]) -> None:
    done = run(installed_home, manager, "join", "node2")
    assert done.code == ExitCode.CONFLICT and "run `meshctl cluster init` first" in done.err


# --- images on every node -----------------------------------------------------------------------------------------

def test_shipping_skips_a_node_with_the_same_image_id_or_build_hash(manager: FakeEngine) -> None:
    node = FakeEngine({BASE: FakeImage(BASE, iid=manager.images.found[BASE].id),  # same id
                       PROXY: FakeImage(PROXY, {const.LABEL_BUILD_HASH: "p1"}, iid="sha256:built-there")})
    assert shipping.ship(manager, node, "node2", [BASE, PROXY], lambda _: None) == []
    assert node.api.loaded == [] and all(img.saved == 0 for img in manager.images.found.values())


def test_shipping_sends_a_changed_image(manager: FakeEngine) -> None:
    node = FakeEngine({BASE: FakeImage(BASE, {const.LABEL_BUILD_HASH: "b1"}),
                       PROXY: FakeImage(PROXY, {const.LABEL_BUILD_HASH: "old"}, iid="sha256:old")})
    assert shipping.ship(manager, node, "node2", [BASE, PROXY], lambda _: None) == [f"{PROXY} (3 MB)"]
    assert node.images.found[PROXY].id == manager.images.found[PROXY].id


def test_shipping_an_image_named_without_a_tag(manager: FakeEngine) -> None:
    manager.images.found["me/base:latest"] = FakeImage("me/base", size=1 << 20)
    node = FakeEngine()
    assert shipping.ship(manager, node, "node2", ["me/base"], lambda _: None) == ["me/base (1 MB)"]
    assert node.images.get("me/base").id == manager.images.get("me/base").id
    assert shipping.ship(manager, node, "node2", ["me/base"], lambda _: None) == []


def test_install_ships_to_every_node_only_in_a_cluster(initialised: Path, manager: FakeEngine,
                                                       lan: dict[str, FakeSwarmCluster],
                                                       contexts: dict[str, FakeEngine | None]) -> None:
    ctx = Context(home=MeshHome(initialised), docker_factory=lambda: manager)
    settings = ctx.home.settings()
    nothing_to_build: list[installer.Step] = []
    step = installer.NodeImagesStep(ctx, settings, nothing_to_build)
    assert step.pending() is None  # no nodes yet
    contexts["node2"], contexts["node3"] = node2, _ = worker(lan, "node2", "10.0.0.2"), None
    settings.nodes = ["node2", "node3"]
    assert step.pending() == f"ship {BASE}, {PROXY} to node2, node3 (not answering now)"
    done = step.apply(lambda _: None)
    assert f"node2: {BASE} (3 MB), {PROXY} (3 MB)" in done and "not answering, not shipped: node3" in done
    assert PROXY in node2.images.found
    settings.cluster = False
    assert step.pending() is None


def test_install_network_is_an_overlay_in_a_cluster(initialised: Path, manager: FakeEngine) -> None:
    ctx = Context(home=MeshHome(initialised), docker_factory=lambda: manager)
    settings = ctx.home.settings()
    step = installer.NetworkStep(ctx, settings)
    assert step.pending() is None  # init made the overlay
    manager.networks.found.clear()
    assert step.pending() == "create attachable overlay network 'meshctl' on a subnet Docker picks"
    assert step.apply(lambda _: None).startswith("attachable overlay 'meshctl' on ")
    assert manager.networks.found[0].attrs["Attachable"] is True


def test_install_in_a_cluster_refuses_the_old_bridge(initialised: Path, manager: FakeEngine) -> None:
    ctx = Context(home=MeshHome(initialised), docker_factory=lambda: manager)
    manager.networks.found = [FakeNetwork(manager, const.NETWORK_NAME, "bridge", labels=MANAGED)]
    with pytest.raises(Exception, match="is a bridge network, not an overlay") as raised:
        installer.NetworkStep(ctx, ctx.home.settings()).pending()
    assert "meshctl cluster init" in str(getattr(raised.value, "hint", ""))


def test_check_fails_a_bridge_in_a_cluster(initialised: Path, manager: FakeEngine) -> None:
    ctx = Context(home=MeshHome(initialised), docker_factory=lambda: manager)
    assert check_network(ctx).state is State.OK
    assert check_network(ctx).detail.startswith("overlay 'meshctl' on ")
    manager.networks.found = [FakeNetwork(manager, const.NETWORK_NAME, "bridge", labels=MANAGED)]
    result = check_network(ctx)
    assert result.state is State.FAIL and "meshctl cluster init" in (result.hint or "")


def test_a_managers_address_is_its_raft_address() -> None:
    node = swarm._node({"ID": "n1", "Status": {"State": "ready", "Addr": "0.0.0.0"},
                        "ManagerStatus": {"Addr": "10.0.0.1:2377", "Leader": True}, "Spec": {"Role": "manager"}})
    assert node.addr == "10.0.0.1" and node.leader
    assert swarm._node({"ID": "n2", "Status": {"Addr": "10.0.0.2"}}).addr == "10.0.0.2"


# --- status -------------------------------------------------------------------------------------------------------

def sidecar(name: str, ip: str, answers: dict[str, bytes], calls: list[tuple[str, Any]]) -> FakeContainer:
    """A running sidecar on the overlay whose exec'd curl answers per target IP."""
    def on_exec(cmd: list[str]) -> tuple[int, bytes]:
        url = cmd[-1]
        calls.append((url, container.exec_kwargs[-1].get("user")))
        target = url.split("//")[1].split(":")[0]
        return (0, answers[target]) if target in answers else (28, b"000 2.001")
    container = FakeContainer(name, {const.LABEL_MANAGED: "true", const.LABEL_COMPONENT: "sidecar"}, on_exec=on_exec,
                              attrs={"NetworkSettings": {"Networks": {const.NETWORK_NAME: {"IPAddress": ip}}}})
    return container


@pytest.fixture
def three_nodes(initialised: Path, manager: FakeEngine, lan: dict[str, FakeSwarmCluster],
                contexts: dict[str, FakeEngine | None]) -> dict[str, FakeEngine]:
    contexts["node2"] = worker(lan, "node2", "10.0.0.2")
    contexts["node3"] = worker(lan, "node3", "10.0.0.3")
    assert run(initialised, manager, "join", "node2", "node3").code == ExitCode.OK
    return {"node2": contexts["node2"], "node3": contexts["node3"]}


def test_status_all_well(initialised: Path, manager: FakeEngine, three_nodes: dict[str, FakeEngine]) -> None:
    calls: list[tuple[str, Any]] = []
    manager.containers.found = [sidecar("a-web-proxy-1", "10.0.1.2", {"10.0.1.3": b"200 0.003"}, calls)]
    three_nodes["node2"].containers.found = [sidecar("a-db-proxy-1", "10.0.1.3", {"10.0.1.2": b"200 0.0041"}, calls),
                                             sidecar("a-db-proxy-2", "10.0.1.4", {}, calls)]
    done = run(initialised, manager, "status")
    assert done.code == ExitCode.OK, done.err
    node_table, reach_table = done.out.split("\n\n")
    rows = {line.split()[0]: line.split() for line in node_table.splitlines()[1:]}
    assert rows["manager"][1:4] == ["node1", "manager", "Ready"] and rows["manager"][-1] == "1"
    assert rows["node2"][1:4] == ["node2", "worker", "Ready"] and rows["node2"][-1] == "2"
    assert rows["node3"][-1] == "0"
    assert "manager  node2    ok 3 ms" in reach_table and "node2    manager  ok 4.1 ms" in reach_table
    assert sorted(calls) == [("http://10.0.1.2:15021/healthz/ready", "1337"),
                             ("http://10.0.1.3:15021/healthz/ready", "1337")]


def test_status_shows_a_down_node_and_an_unreachable_context_and_exits_1(
        initialised: Path, manager: FakeEngine, three_nodes: dict[str, FakeEngine],
        contexts: dict[str, FakeEngine | None], monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, Any]] = []
    manager.containers.found = [sidecar("a-web-proxy-1", "10.0.1.2", {}, calls)]
    three_nodes["node2"].containers.found = [sidecar("a-db-proxy-1", "10.0.1.3", {"10.0.1.2": b"200 0.002"}, calls)]
    assert manager.cluster is not None
    manager.cluster.down.add(three_nodes["node3"].node_id)  # the swarm lost it ...
    contexts["node3"] = None  # ... and its engine does not answer (its host resolves to the node's address)
    monkeypatch.setattr(nodes, "context_host", lambda name: "tcp://10.0.0.3:2375")
    done = run(initialised, manager, "status", "-o", "json")
    assert done.code == ExitCode.FAILED == 1
    found = json.loads(done.out)
    assert found["healthy"] is False
    by_node = {n["node"]: n for n in found["nodes"]}
    assert set(by_node) == {"manager", "node2", "node3"}
    assert by_node["node3"]["status"] == "Down, UNREACHABLE (no answer from tcp://10.0.0.3:2375)"
    assert by_node["node3"]["sidecars"] is None and by_node["node3"]["hostname"] == "node3"
    reach = {(r["source"], r["target"]): r for r in found["reachability"]}
    assert reach[("node2", "manager")]["ok"] is True and reach[("node2", "manager")]["ms"] == 2.0
    assert reach[("manager", "node2")]["ok"] is False
    assert reach[("manager", "node2")]["detail"].startswith("FAILED (no answer from 10.0.1.3:15021")


def test_status_shows_an_unreachable_context_the_swarm_cannot_place(
        initialised: Path, manager: FakeEngine, three_nodes: dict[str, FakeEngine],
        contexts: dict[str, FakeEngine | None]) -> None:
    contexts["node3"] = None  # its host (tcp://node3:2375) resolves to nothing
    done = run(initialised, manager, "status")
    assert done.code == ExitCode.FAILED
    lines = [line for line in done.out.splitlines() if "UNREACHABLE" in line]
    assert lines and lines[0].startswith("node3") and "no answer from tcp://node3:2375" in lines[0]
    assert "fewer than two nodes run a sidecar" in done.out


# --- leave --------------------------------------------------------------------------------------------------------

def test_leave_refuses_while_pods_run_there(initialised: Path, manager: FakeEngine,
                                            three_nodes: dict[str, FakeEngine]) -> None:
    three_nodes["node2"].containers.found = [
        sidecar("a-db-proxy-1", "10.0.1.3", {}, []), FakeContainer("a-db-1", {"com.docker.compose.project": "a"}),
        FakeContainer("meshctl-anchor-a", {const.LABEL_MANAGED: "true", const.LABEL_COMPONENT: "anchor"})]
    done = run(initialised, manager, "leave", "node2")
    assert done.code == ExitCode.CONFLICT
    assert "meshctl pods still run on node2: a-db-proxy-1, meshctl-anchor-a;" in done.err
    assert three_nodes["node2"].cluster is manager.cluster
    assert "node2" in settings_of(initialised).nodes


def test_leave_takes_the_node_out(initialised: Path, manager: FakeEngine, three_nodes: dict[str, FakeEngine]) -> None:
    done = run(initialised, manager, "leave", "node2")
    assert done.code == ExitCode.OK, done.err
    assert three_nodes["node2"].cluster is None and settings_of(initialised).nodes == ["node3"]
    assert manager.cluster is not None and three_nodes["node2"] not in manager.cluster.members


def test_leave_an_unreachable_node_needs_force(initialised: Path, manager: FakeEngine,
                                               three_nodes: dict[str, FakeEngine],
                                               contexts: dict[str, FakeEngine | None]) -> None:
    contexts["node3"] = None
    done = run(initialised, manager, "leave", "node3")
    assert done.code == ExitCode.ENGINE and "meshctl cluster leave --force node3" in done.err
    assert run(initialised, manager, "leave", "--force", "node3").code == ExitCode.OK
    assert settings_of(initialised).nodes == ["node2"]


def test_join_refuses_a_context_called_manager(initialised: Path, manager: FakeEngine,
                                               lan: dict[str, FakeSwarmCluster],
                                               contexts: dict[str, FakeEngine | None]) -> None:
    contexts["manager"] = node = worker(lan, "manager", "10.0.0.2")
    done = run(initialised, manager, "join", "manager")
    assert done.code == ExitCode.USAGE
    assert "a node cannot be called 'manager'" in done.err and "docker context create" in done.err
    assert node.cluster is None and settings_of(initialised).nodes == []
