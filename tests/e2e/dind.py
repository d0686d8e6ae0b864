"""Docker-in-Docker nodes on this machine: several Docker engines for multi-host tests, without VMs.

Each node is a container of the host engine running its own `dockerd` (Docker 26 from Debian trixie's
`docker.io`), with its own `/var/lib/docker` volume and a fixed address on a user bridge, so the nodes can form a
swarm (an address that changed on restart would break the swarm's membership). The host reaches a node's engine
through the node's socket, bind-mounted from `<sock_root>/<name>/docker.sock`.

What works here (../shared/NOTES.md): `--privileged` fails on this machine (its bounding set lacks
CAP_SYS_RESOURCE), so a node gets every capability but that one, and no seccomp, AppArmor or masked /proc paths.
The node image carries no meshctl label: `meshctl uninstall` on the host must not remove it.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import docker
import docker.errors
import requests.exceptions
from docker import DockerClient
from docker.models.containers import Container

from meshctl import const
from meshctl.errors import MeshError
from meshctl.runtime import images

Progress = Callable[[str], None]

NODE_SUITE = "trixie"  # Docker 26.1 in Debian's docker.io; bookworm's is 20.10
NODE_PACKAGES = ("docker.io", "iptables", "iproute2", "ca-certificates", "procps", "curl")
NODE_REPO = "meshctl/dind-node"
ROOTFS_REPO = "meshctl/dind-rootfs"
LABEL_DIND = f"{const.LABEL_PREFIX}.dind"  # on everything this module makes (not LABEL_MANAGED: see above)
NODE_NETWORK = "meshctl-nodes"
NODE_SUBNET = "172.31.250.0/24"  # fixed node addresses; far from Docker's first pools and swarm's 10.0.0.0/8
SOCKET_DIR = "/run/dockersock"  # in the node; the host's <sock_root>/<name> is mounted here
COMPOSE_PLUGIN_DIRS = ("~/.docker/cli-plugins", "/usr/local/lib/docker/cli-plugins",
                       "/usr/local/libexec/docker/cli-plugins", "/usr/lib/docker/cli-plugins",
                       "/usr/libexec/docker/cli-plugins")

# The node's iptables must use the host kernel's backend (nf_tables here): rules written through the other one
# are invisible to the kernel's packet path in use, and the node's containers get no NAT.
ENTRYPOINT = f"""#!/bin/sh
set -e
backend="${{DIND_IPTABLES:-nft}}"
update-alternatives --quiet --set iptables "/usr/sbin/iptables-$backend"
update-alternatives --quiet --set ip6tables "/usr/sbin/ip6tables-$backend"
mkdir -p {SOCKET_DIR}
# also the default socket, so that `docker exec NODE docker ...` works without -H
exec dockerd --host=unix://{SOCKET_DIR}/docker.sock --host=unix:///run/docker.sock "$@"
"""

DOCKERFILE = """FROM {rootfs}
COPY docker /usr/local/bin/docker
COPY docker-compose /usr/local/lib/docker/cli-plugins/docker-compose
COPY entrypoint /usr/local/bin/dind-entrypoint
ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
VOLUME /var/lib/docker
ENTRYPOINT ["/usr/local/bin/dind-entrypoint"]
"""


# --- the node image -------------------------------------------------------------------------------------

def rootfs_hash() -> str:
    return hashlib.sha256(f"{NODE_SUITE}|{','.join(sorted(NODE_PACKAGES))}".encode()).hexdigest()[:16]


def rootfs_tarball(cache_dir: Path) -> Path:
    return cache_dir / f"dind-{NODE_SUITE}-{rootfs_hash()}.tar"


def host_binaries() -> dict[str, Path]:
    """The host's docker CLI and compose plugin: trixie's docker.io has neither, and the host's are known to
    work with the tests' commands."""
    cli = shutil.which("docker")
    if cli is None:
        raise MeshError("the dind node image needs the host's docker CLI, which is not on PATH",
                        "install docker's CLI (./install.sh does)")
    for folder in COMPOSE_PLUGIN_DIRS:
        plugin = Path(folder).expanduser() / "docker-compose"
        if plugin.is_file():
            return {"docker": Path(cli).resolve(), "docker-compose": plugin.resolve()}
    raise MeshError(f"the dind node image needs the host's compose plugin, found in none of "
                    f"{', '.join(COMPOSE_PLUGIN_DIRS)}", "install docker compose v2 (./install.sh does)")


def node_image(engine: DockerClient, cache_dir: Path, progress: Progress) -> str:
    """`meshctl/dind-node:<hash>`, built once: the hash covers the Debian packages, the host's binaries copied in
    and the entrypoint, so a new CLI on the host makes a new image. The trixie rootfs tarball is cached in
    `cache_dir`: a rebuild after the image is removed is an import and a COPY, not a debootstrap."""
    binaries = host_binaries()
    build_hash = images.tree_hash(list(binaries.values()), [rootfs_hash(), ENTRYPOINT, DOCKERFILE])
    ref = f"{NODE_REPO}:{build_hash}"
    found = images.find_image(engine, ref)
    if found is not None and images.image_label(found, const.LABEL_BUILD_HASH) == build_hash:
        return ref
    rootfs = _rootfs_image(engine, cache_dir, progress)
    with tempfile.TemporaryDirectory(prefix="dind-context-") as tmp:
        context = Path(tmp)
        for name, path in binaries.items():
            shutil.copy2(path, context / name)
        (context / "entrypoint").write_text(ENTRYPOINT)
        (context / "entrypoint").chmod(0o755)
        (context / "Dockerfile").write_text(DOCKERFILE.format(rootfs=rootfs))
        progress(f"building {ref}")
        for chunk in engine.api.build(path=str(context), tag=ref, pull=False, rm=True, forcerm=True,
                                      labels=_labels("dind-node", build_hash), decode=True):
            if "error" in chunk:
                raise MeshError(f"building {ref} failed: {chunk['error'].strip()}")
    return ref


def _rootfs_image(engine: DockerClient, cache_dir: Path, progress: Progress) -> str:
    ref = f"{ROOTFS_REPO}:{rootfs_hash()}"
    if images.find_image(engine, ref) is not None:
        return ref
    tarball = rootfs_tarball(cache_dir)
    if not tarball.is_file():
        images._debootstrap_tarball(tarball, progress, suite=NODE_SUITE, packages=NODE_PACKAGES)
    progress(f"importing {tarball.name} as {ref}")
    changes = [f"LABEL {k}={v}" for k, v in _labels("dind-rootfs", rootfs_hash()).items()]
    with tarball.open("rb") as src:
        engine.api.import_image(src=src, repository=ROOTFS_REPO, tag=rootfs_hash(), changes=changes)
    return ref


def _labels(component: str, build_hash: str | None = None) -> dict[str, str]:
    out = {LABEL_DIND: "true", const.LABEL_COMPONENT: component}
    if build_hash:
        out[const.LABEL_BUILD_HASH] = build_hash
    return out


# --- nodes ----------------------------------------------------------------------------------------------

@dataclass
class Node:
    name: str
    container: Container
    socket: str  # unix:///.../<name>/docker.sock, the node's engine as the host reaches it
    address: str  # on the node network; the swarm's advertise address
    _client: DockerClient | None = field(default=None, repr=False, compare=False)

    def client(self) -> DockerClient:
        if self._client is None:
            self._client = docker.DockerClient(base_url=self.socket, timeout=120)
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


def host_iptables_backend() -> str:
    """`nft` or `legacy`, as the host's iptables says; nft when the host has no iptables binary."""
    try:
        out = subprocess.run(["iptables", "--version"], capture_output=True, text=True, check=False).stdout
    except OSError:
        return "nft"
    return "legacy" if "legacy" in out else "nft"


def start_nodes(engine: DockerClient, image: str, names: Sequence[str] = ("node1", "node2", "node3"),
                network: str = NODE_NETWORK, sock_root: Path = Path("/tmp/meshctl-dind"),
                subnet: str = NODE_SUBNET, timeout: float = 90) -> list[Node]:
    """One running node per name, each answering on its socket. An existing node container of that name and image
    is reused (started if stopped). The nodes get the subnet's addresses .11, .12, ... in order."""
    net = _ensure_network(engine, network, subnet)
    hosts = list(ipaddress.ip_network(net.attrs["IPAM"]["Config"][0]["Subnet"]).hosts())
    backend = host_iptables_backend()
    nodes = []
    for index, name in enumerate(names):
        sock_dir = sock_root / name
        sock_dir.mkdir(parents=True, exist_ok=True)
        address = str(hosts[10 + index])
        container = _find_container(engine, name)
        if container is not None and container.image is not None and image not in container.image.tags:
            container.remove(force=True)  # a node of an older image: its volume (engine state) is kept
            container = None
        if container is None:
            container = _create_node(engine, image, name, network, address, sock_dir, backend)
        if container.status != "running":
            container.start()
        nodes.append(Node(name, container, f"unix://{sock_dir}/docker.sock", address))
    for node in nodes:
        wait_engine(node, timeout)
    return nodes


def _ensure_network(engine: DockerClient, network: str, subnet: str) -> docker.models.networks.Network:
    found = engine.networks.list(names=[network])
    for net in found:
        if net.name == network:
            return net
    ipam = docker.types.IPAMConfig(pool_configs=[docker.types.IPAMPool(subnet=subnet)])
    return engine.networks.create(network, driver="bridge", ipam=ipam, labels=_labels("dind-network"))


def _find_container(engine: DockerClient, name: str) -> Container | None:
    try:
        return engine.containers.get(name)
    except docker.errors.NotFound:
        return None


def _create_node(engine: DockerClient, image: str, name: str, network: str, address: str, sock_dir: Path,
                 backend: str) -> Container:
    api = engine.api
    volume = volume_name(name)
    engine.volumes.create(volume, labels=_labels("dind-volume"))
    host_config = api.create_host_config(
        cap_add=["ALL"], cap_drop=["SYS_RESOURCE"],
        security_opt=["seccomp=unconfined", "apparmor=unconfined"],
        tmpfs={"/run": ""},
        binds={"/sys/fs/cgroup": {"bind": "/sys/fs/cgroup", "mode": "rw"},
               volume: {"bind": "/var/lib/docker", "mode": "rw"},
               str(sock_dir): {"bind": SOCKET_DIR, "mode": "rw"}},
        network_mode=network,
    )
    # the CLI's `--security-opt systempaths=unconfined`: the engine's API takes the lists, not the option
    host_config["MaskedPaths"] = []
    host_config["ReadonlyPaths"] = []
    networking = api.create_networking_config({network: api.create_endpoint_config(ipv4_address=address)})
    created = api.create_container(image, name=name, hostname=name, detach=True, host_config=host_config,
                                   networking_config=networking, environment={"DIND_IPTABLES": backend},
                                   labels=_labels("dind-node"))
    return engine.containers.get(created["Id"])


def volume_name(name: str) -> str:
    return f"meshctl-dind-{name}"


def wait_engine(node: Node, timeout: float = 90) -> None:
    """Until the node's engine answers a ping; a node container that exits fails at once, with its log."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            node.client().ping()
            return
        except (docker.errors.DockerException, requests.exceptions.RequestException):
            pass  # with a fixed API version the SDK lets a refused connection through unwrapped
        node.container.reload()
        if node.container.status not in ("running", "created", "restarting"):
            tail = node.container.logs(tail=5).decode(errors="replace").strip().replace("\n", " | ")
            raise MeshError(f"dind node {node.name} exited ({node.container.status}) before its engine answered: "
                            f"{tail}")
        if time.monotonic() > deadline:
            raise MeshError(f"dind node {node.name}'s engine did not answer on {node.socket} within {timeout:.0f}s")
        node.close()  # a client made before the socket existed keeps failing
        time.sleep(0.2)


def restart_node(engine: DockerClient, node: Node, stop_timeout: int = 30, timeout: float = 90) -> None:
    """`docker stop` + `docker start` of the node container (its engine, swarm state and volume kept)."""
    node.close()
    node.container.stop(timeout=stop_timeout)
    node.container.start()
    wait_engine(node, timeout)


def stop_nodes(engine: DockerClient, nodes: Iterable[Node], stop_timeout: int = 30) -> None:
    """All at once: each node's engine waits up to 10 s for every container of its own that ignores SIGTERM."""
    def stop(node: Node) -> None:
        node.close()
        node.container.reload()
        if node.container.status == "running":
            node.container.stop(timeout=stop_timeout)

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(stop, nodes))


def remove_nodes(engine: DockerClient, nodes: Iterable[Node], network: str = NODE_NETWORK) -> None:
    """The node containers, their /var/lib/docker volumes, their socket folders and the node network (when no
    other container uses it): nothing left behind."""
    for node in nodes:
        node.close()
        with contextlib.suppress(docker.errors.NotFound):
            node.container.remove(force=True, v=True)
        with contextlib.suppress(docker.errors.NotFound):
            engine.volumes.get(volume_name(node.name)).remove(force=True)
        sock = Path(node.socket.removeprefix("unix://"))
        shutil.rmtree(sock.parent, ignore_errors=True)
    for net in engine.networks.list(names=[network]):
        net.reload()
        if net.name == network and not net.attrs.get("Containers"):
            net.remove()


# --- docker contexts ------------------------------------------------------------------------------------

def create_contexts(nodes: Iterable[Node]) -> None:
    """A docker context per node, named after it; an existing context of that name is replaced."""
    for node in nodes:
        subprocess.run(["docker", "context", "rm", "--force", node.name], capture_output=True, check=False)
        _docker_cli(["context", "create", node.name, "--description", f"meshctl dind node {node.name}",
                     "--docker", f"host={node.socket}"])


def remove_contexts(nodes: Iterable[Node]) -> None:
    for node in nodes:
        subprocess.run(["docker", "context", "rm", "--force", node.name], capture_output=True, check=False)


def _docker_cli(args: list[str]) -> None:
    proc = subprocess.run(["docker", *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise MeshError(f"`docker {' '.join(args)}` failed: {proc.stderr.strip()}")


# --- images ---------------------------------------------------------------------------------------------

def load_images(engine: DockerClient, nodes: Sequence[Node], refs: Iterable[str], progress: Progress) -> None:
    """Ship images from the host engine into every node through the engine API (save -> load). A node that
    already has the image id is skipped (only tagged if the tag is missing); the image is saved once, spooled
    to a temporary file, and loaded from it into the nodes that lack it at once."""
    for ref in refs:
        image = engine.images.get(ref)
        needing = []
        for node in nodes:
            have = images.find_image(node.client(), image.id)
            if have is None:
                needing.append(node)
            elif ref not in have.tags:
                repo, _, tag = ref.rpartition(":") if ":" in ref.split("/")[-1] else (ref, "", "latest")
                have.tag(repo, tag)
        if not needing:
            continue
        size = image.attrs.get("Size", 0) / 1e6
        with tempfile.NamedTemporaryFile(prefix="dind-image-", suffix=".tar") as spool:
            progress(f"saving {ref} ({size:.0f} MB)")
            for chunk in engine.api.get_image(ref):
                spool.write(chunk)
            spool.flush()
            progress(f"loading {ref} into {', '.join(node.name for node in needing)}")
            # in parallel: each engine unpacks on its own, and the machine's cores are shared anyway
            with ThreadPoolExecutor(max_workers=len(needing)) as pool:
                for future in [pool.submit(_load, node, Path(spool.name), ref) for node in needing]:
                    future.result()


def _load(node: Node, tarball: Path, ref: str) -> None:
    with tarball.open("rb") as src:
        for line in node.client().api.load_image(src):
            if "error" in line:
                raise MeshError(f"{node.name} could not load {ref}: {line['error']}")
