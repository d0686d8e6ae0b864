"""The prometheus addon's container: create, replace or start `meshctl-prometheus` so it matches the mesh's
settings and its config on disk, and remove it when the addon is dropped. A hash label over everything the
container depends on makes re-installing a no-op."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import time
import urllib.error

from docker import DockerClient
from docker.models.containers import Container

from meshctl import __version__, const
from meshctl.errors import Conflict, EngineError, MeshError, UsageError
from meshctl.extras.prometheus import COMPONENT, CONTAINER, IMAGE, NAME
from meshctl.extras.prometheus.config import (
    CONFIG_FILE,
    CONFIG_IN_CONTAINER,
    CONTAINER_PORT,
    SCRAPE_INTERVAL,
    SOCKET_IN_CONTAINER,
    command,
    config_dir,
    render_config,
)
from meshctl.fsutil import atomic_write, ensure_dir
from meshctl.home import MeshHome, MeshSettings
from meshctl.runtime import images, reach
from meshctl.runtime.direct import OPENER
from meshctl.runtime.engine import engine_address, engine_errors

READY_TIMEOUT_S = 60


def engine_socket(address: str | None = None) -> str:
    """The engine's unix socket, which the container mounts for docker_sd_configs."""
    address = address or engine_address()
    if not address.startswith("unix://"):
        raise UsageError(f"the prometheus addon discovers sidecars through the engine's unix socket, and "
                         f"DOCKER_HOST is {address}", "run meshctl on the engine's host with its unix socket")
    return address.removeprefix("unix://")


def discovery_socket(settings: MeshSettings) -> str:
    """The socket docker_sd_configs reads on one host; "" in a cluster, where the overlay's DNS finds sidecars
    (prometheus.config) and no engine socket is mounted (it would show the manager's containers only)."""
    return "" if settings.cluster else engine_socket()


def container_hash(home: MeshHome, config_text: str, image_id: str, settings: MeshSettings, socket: str) -> str:
    """Everything the running container depends on: same hash, the container stays as it is."""
    spec = json.dumps({"config": config_text, "config_dir": str(config_dir(home)), "image": image_id,
                       "command": command(), "socket": socket, "port": settings.prometheus_port,
                       "network": settings.network}, sort_keys=True)
    return hashlib.sha256(spec.encode()).hexdigest()[:16]


def find_container(client: DockerClient) -> Container | None:
    with engine_errors(f"look up container {CONTAINER}"):
        found = client.containers.list(all=True, filters={"name": CONTAINER,
                                                           "label": f"{const.LABEL_COMPONENT}={COMPONENT}"})
    return next((c for c in found if c.name == CONTAINER), None)  # name= matches substrings


def owned_by(container: Container, home: MeshHome) -> bool:
    """Whether this mesh home's install made the container (one engine may serve several homes, e.g. tests')."""
    return bool(container.labels.get(const.LABEL_HOME) == str(home.root))


def host_port(container: Container) -> int | None:
    ports = ((container.attrs.get("NetworkSettings") or {}).get("Ports") or {}).get(f"{CONTAINER_PORT}/tcp") or []
    for binding in ports:
        if str(binding.get("HostPort", "")).isdigit():
            return int(binding["HostPort"])
    return None


def web_url(container: Container, settings: MeshSettings) -> str:
    """Where the CLI reaches Prometheus's web port. On one host: the port published on its loopback. Across hosts,
    through the manager's engine, as the sidecars are read (runtime.reach): the manager need not be this machine."""
    if settings.cluster:
        return f"http://{reach.route(container)}:{CONTAINER_PORT}"
    return base_url(host_port(container) or settings.prometheus_port)


def base_url(port: int) -> str:
    return f"http://127.0.0.1:{port}"


def container_pending(client: DockerClient, home: MeshHome, settings: MeshSettings,
                      new_image: bool = False) -> str | None:
    """What the container step would do; `new_image` when the image step is about to (re)build the image."""
    current = find_container(client)
    where = f"{CONTAINER} on {base_url(settings.prometheus_port)}"
    if NAME not in settings.addons:
        mine = current is not None and owned_by(current, home)
        return f"remove {CONTAINER} (the prometheus addon is no longer selected)" if mine else None
    socket = discovery_socket(settings)
    if current is None:
        return f"start {where}"
    image = images.find_image(client, IMAGE)
    text = render_config(settings)
    on_disk = config_dir(home) / CONFIG_FILE
    if (new_image or image is None or not on_disk.is_file() or on_disk.read_text() != text
            or current.labels.get(const.LABEL_CONFIG_HASH) != container_hash(home, text, image.id, settings, socket)):
        return f"recreate {where}"
    if current.status != "running":
        return f"start {where} (it is {current.status})"
    return None


def remove(client: DockerClient) -> bool:
    current = find_container(client)
    if current is None:
        return False
    with engine_errors(f"remove container {CONTAINER}"):
        current.remove(force=True, v=True)
    return True


def ensure_running(client: DockerClient, home: MeshHome, settings: MeshSettings,
                   progress: images.Progress) -> str:
    """Write the config and (re)create or start the container so it matches; wait until Prometheus is ready."""
    socket = discovery_socket(settings)
    image = images.find_image(client, IMAGE)
    if image is None:
        raise MeshError(f"image {IMAGE} is missing", "run `meshctl install --addons prometheus`")
    text = render_config(settings)
    ensure_dir(home.addons_dir, 0o700)
    ensure_dir(config_dir(home), 0o755)
    atomic_write(config_dir(home) / CONFIG_FILE, text)
    wanted = container_hash(home, text, image.id, settings, socket)
    current = find_container(client)
    if current is not None and current.labels.get(const.LABEL_CONFIG_HASH) != wanted:
        progress(f"removing the old {CONTAINER}")
        remove(client)
        current = None
    if current is None:
        progress(f"creating {CONTAINER}")
        current = _create(client, home, settings, image.id, socket, wanted)
    if current.status != "running":
        _start(current, settings.prometheus_port)
    current.reload()
    wait_ready(client, web_url(current, settings), progress)
    return (f"{CONTAINER} at {base_url(settings.prometheus_port)}, scraping sidecars on network "
            f"{settings.network!r} every {SCRAPE_INTERVAL}")


def _create(client: DockerClient, home: MeshHome, settings: MeshSettings, image_id: str, socket: str,
            config_hash: str) -> Container:
    labels = {const.LABEL_MANAGED: "true", const.LABEL_COMPONENT: COMPONENT, const.LABEL_VERSION: __version__,
              const.LABEL_CONFIG_HASH: config_hash, const.LABEL_HOME: str(home.root)}
    # Across hosts the manager's engine need not be this machine, so the config cannot be a bind mount of the
    # home: it is copied into the container before it starts (a new config makes a new container).
    config = {} if settings.cluster else {str(config_dir(home)): {"bind": CONFIG_IN_CONTAINER, "mode": "ro"}}
    with engine_errors(f"create container {CONTAINER}"):
        container = client.containers.create(
            image_id, command(), name=CONTAINER, labels=labels, detach=True,
            user="0",  # docker_sd_configs reads the engine's socket, which only root and the docker group may
            network=settings.network,
            ports={f"{CONTAINER_PORT}/tcp": ("127.0.0.1", settings.prometheus_port)},
            volumes={**config, **({socket: {"bind": SOCKET_IN_CONTAINER, "mode": "ro"}} if socket else {})},
            restart_policy={"Name": "unless-stopped"},
        )
        if settings.cluster:
            container.put_archive("/", _config_archive((config_dir(home) / CONFIG_FILE).read_bytes()))
    return container


def _config_archive(text: bytes) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        member = tarfile.TarInfo(f"{CONFIG_IN_CONTAINER.strip('/')}/{CONFIG_FILE}")
        member.size, member.mode, member.mtime = len(text), 0o644, int(time.time())
        tar.addfile(member, io.BytesIO(text))
    return buf.getvalue()


def _start(container: Container, port: int) -> None:
    try:
        with engine_errors(f"start container {CONTAINER}"):
            container.start()
    except EngineError as exc:
        taken = any(s in exc.message for s in ("port is already allocated", "address already in use"))
        with engine_errors(f"remove container {CONTAINER}"):
            container.remove(force=True, v=True)  # nothing half-made: the next install starts clean
        if taken:
            raise Conflict(f"port {port} on 127.0.0.1 is already in use, so {CONTAINER} cannot publish its web port",
                           f"pick another: `meshctl install --addons prometheus --prometheus-port {port + 1}`"
                           ) from exc
        raise


def wait_ready(client: DockerClient, base: str, progress: images.Progress, timeout: float = READY_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with OPENER.open(f"{base}/-/ready", timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        container = find_container(client)
        if container is None or container.status in ("exited", "dead"):
            state = container.status if container else "gone"
            raise MeshError(f"{CONTAINER} stopped ({state}) before it was ready: {_last_log_line(container)}",
                            f"see `docker logs {CONTAINER}`")
        if time.monotonic() > deadline:
            raise MeshError(f"{CONTAINER} did not answer on {base}/-/ready within {timeout:g}s",
                            f"see `docker logs {CONTAINER}`")
        progress(f"waiting for {base}/-/ready")
        time.sleep(0.5)


def _last_log_line(container: Container | None) -> str:
    if container is None:
        return "no container"
    try:
        lines = container.logs(tail=5).decode(errors="replace").strip().splitlines()
    except Exception:  # the logs are a courtesy in an error message; never hide the error itself
        return "no logs"
    return lines[-1] if lines else "no logs"
