"""The multi-host test bed itself: three Docker-in-Docker nodes start, each with its own Docker 26 engine, take
an image through the engine API, and leave nothing behind."""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from docker import DockerClient

from meshctl.home import default_cache
from tests.e2e import dind

pytestmark = [pytest.mark.e2e, pytest.mark.multihost]

# Apart from the names the multi-host tests use, so this test never touches their cluster.
NAMES = ("dind-smoke1", "dind-smoke2", "dind-smoke3")
NETWORK = "meshctl-dind-smoke"
SUBNET = "172.31.251.0/24"
PROBE = "meshctl/dind-probe:test"


@pytest.fixture(scope="module")
def nodes(engine: DockerClient, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[dind.Node]]:
    image = dind.node_image(engine, default_cache(), print)
    started = dind.start_nodes(engine, image, names=NAMES, network=NETWORK, subnet=SUBNET,
                               sock_root=tmp_path_factory.mktemp("dind"))
    yield started
    dind.remove_nodes(engine, started, network=NETWORK)
    left = [c.name for c in engine.containers.list(all=True) if c.name in NAMES]
    left += [v.name for v in engine.volumes.list() if v.name in {dind.volume_name(n) for n in NAMES}]
    left += [n.name for n in engine.networks.list(names=[NETWORK]) if n.name == NETWORK]
    left += [str(Path(n.socket.removeprefix("unix://")).parent) for n in started
             if Path(n.socket.removeprefix("unix://")).parent.exists()]
    assert not left, f"remove_nodes left {left}"


@pytest.fixture(scope="module")
def probe_image(engine: DockerClient) -> Iterator[str]:
    """A one-file image: loading it checks the path, not the disk's speed."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("probe")
        info.size = 6
        tar.addfile(info, io.BytesIO(b"probe\n"))
    repo, tag = PROBE.split(":")
    engine.api.import_image_from_data(buf.getvalue(), repository=repo, tag=tag)
    yield PROBE
    engine.images.remove(PROBE, force=True)


def test_each_node_runs_its_own_docker_26_engine(nodes: list[dind.Node]) -> None:
    infos = [node.client().info() for node in nodes]
    assert len({info["ID"] for info in infos}) == len(nodes)
    for node, info in zip(nodes, infos, strict=True):
        major = int(info["ServerVersion"].split(".")[0])
        assert major >= 26, f"{node.name} runs Docker {info['ServerVersion']}"
        assert info["Name"] == node.name


def test_images_reach_every_node_through_the_engine_api(engine: DockerClient, nodes: list[dind.Node],
                                                        probe_image: str) -> None:
    messages: list[str] = []
    dind.load_images(engine, nodes, [probe_image], messages.append)
    host_id = engine.images.get(probe_image).id
    assert [node.client().images.get(probe_image).id for node in nodes] == [host_id] * len(nodes)
    messages.clear()
    dind.load_images(engine, nodes, [probe_image], messages.append)
    assert messages == [], "a node that has the image is loaded again"
