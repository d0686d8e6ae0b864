"""The prometheus addon: a real Prometheus server scraping every sidecar.

    meshctl install --addons prometheus
        builds meshctl/prometheus:<version> from Debian's `prometheus` package (fetched by the host's apt,
        since containers cannot reach the mirror) on the base image, and runs `meshctl-prometheus` on the
        mesh network, its web UI and API published on 127.0.0.1 only (port 9090 unless told otherwise).

Targets come from Docker itself (docker_sd_configs over the engine's socket, refreshed every 5s): every
running container labelled as a sidecar, at its address on the mesh network, port 15090, path
/stats/prometheus, with its project, service, app, version and container as target labels. Prometheus
follows containers as they come and go; meshctl never rewrites the config for that.

Other code finds the server with `url(home)` and asks it with `query(base, promql)`.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import tempfile
import time
import urllib.error
import urllib.parse
from pathlib import Path
from typing import Any

import yaml
from docker import DockerClient
from docker.models.containers import Container

from meshctl import __version__, const
from meshctl.errors import Conflict, EngineError, MeshError, UsageError
from meshctl.fsutil import atomic_write, ensure_dir
from meshctl.home import MeshHome, MeshSettings
from meshctl.runtime import images
from meshctl.runtime.direct import OPENER
from meshctl.runtime.engine import engine_address, engine_errors

NAME = "prometheus"
COMPONENT = "addon-prometheus"
CONTAINER = const.PROMETHEUS_CONTAINER
IMAGE = const.PROMETHEUS_IMAGE
PACKAGE = "prometheus"  # Debian's
CONTAINER_PORT = 9090
JOB_SIDECARS = "sidecars"  # the scrape job of every sidecar; `up{job="sidecars"}` is one series per sidecar
JOB_SELF = "prometheus"
SCRAPE_INTERVAL = "5s"
DISCOVERY_REFRESH = "5s"
RETENTION = "7d"
CONFIG_FILE = "prometheus.yml"
CONFIG_IN_CONTAINER = "/etc/prometheus"
SOCKET_IN_CONTAINER = "/var/run/docker.sock"
READY_TIMEOUT_S = 60
DOCKERFILE = images.DOCKERFILES / "prometheus.Dockerfile"
# What the image takes from the .deb: the two binaries, and the web UI (Debian ships the classic one).
DEB_MEMBERS = {path: path for path in ("usr/bin/prometheus", "usr/bin/promtool", "usr/share/prometheus/web")}
# The UI's JavaScript and fonts come from the packages Debian's prometheus depends on for them.
UI_PACKAGES = ("libjs-jquery", "libjs-jquery-hotkeys", "libjs-bootstrap4", "libjs-popper.js", "libjs-d3",
               "libjs-rickshaw", "libjs-moment", "libjs-moment-timezone", "libjs-eonasdan-bootstrap-datetimepicker",
               "libjs-mustache", "fonts-glyphicons-halflings")
UI_MEMBERS = {path: path for path in ("usr/share/javascript", "usr/share/nodejs", "usr/share/fonts-glyphicons",
                                      "usr/share/fonts/truetype/glyphicons")}
UI_SKIP = ("usr/share/javascript/moment-timezone/data",)  # 212 MB of raw zone data; the UI loads the bundled file

# docker_sd_configs names a container label io.meshctl.project as __meta_docker_container_label_io_meshctl_project.
_META = "__meta_docker_container_label_"
TARGET_LABELS = {  # target label <- sidecar container label
    "project": f"{const.LABEL_PREFIX}.project",
    "service": f"{const.LABEL_PREFIX}.service",
    "app": f"{const.LABEL_PREFIX}.app",
    "version": f"{const.LABEL_PREFIX}.subset",
}


def _meta(label: str) -> str:
    return _META + re.sub(r"[^a-zA-Z0-9_]", "_", label)


# --- configuration (pure) ---------------------------------------------------------------------------------

def config(settings: MeshSettings) -> dict[str, Any]:
    """prometheus.yml: sidecars discovered from Docker, scraped at their address on the mesh network."""
    relabel: list[dict[str, Any]] = [
        # one discovered target per network and exposed port of each sidecar: keep the mesh network's :15090
        {"source_labels": ["__meta_docker_network_name"], "regex": re.escape(settings.network), "action": "keep"},
        {"source_labels": ["__meta_docker_port_private"], "regex": f"{const.PORT_METRICS}|", "action": "keep"},
        {"source_labels": ["__meta_docker_network_ip"], "regex": "(.+)", "target_label": "__address__",
         "replacement": f"${{1}}:{const.PORT_METRICS}"},
        {"source_labels": ["__meta_docker_container_name"], "regex": "/?(.+)", "target_label": "container",
         "replacement": "${1}"},
        {"source_labels": ["__meta_docker_container_name"], "regex": "/?(.+)", "target_label": "instance",
         "replacement": "${1}"},
    ]
    relabel += [{"source_labels": [_meta(label)], "regex": "(.+)", "target_label": target, "replacement": "${1}"}
                for target, label in TARGET_LABELS.items()]
    return {
        "global": {"scrape_interval": SCRAPE_INTERVAL, "scrape_timeout": "4s", "evaluation_interval": "5s"},
        "scrape_configs": [
            {
                "job_name": JOB_SIDECARS,
                "metrics_path": "/stats/prometheus",
                "docker_sd_configs": [{
                    "host": f"unix://{SOCKET_IN_CONTAINER}",
                    "refresh_interval": DISCOVERY_REFRESH,
                    "port": const.PORT_METRICS,  # for a sidecar whose image exposes no port
                    "filters": [{"name": "label", "values": [f"{const.LABEL_COMPONENT}=sidecar"]}],
                }],
                "relabel_configs": relabel,
            },
            {"job_name": JOB_SELF, "static_configs": [{"targets": [f"localhost:{CONTAINER_PORT}"]}]},
        ],
    }


def render_config(settings: MeshSettings) -> str:
    header = ("# Written by `meshctl install --addons prometheus`; edits are replaced on the next install.\n"
              f"# Sidecars (label {const.LABEL_COMPONENT}=sidecar) are discovered from Docker every "
              f"{DISCOVERY_REFRESH}.\n")
    return header + yaml.safe_dump(config(settings), sort_keys=False)


def command() -> list[str]:
    return [f"--config.file={CONFIG_IN_CONTAINER}/{CONFIG_FILE}", "--storage.tsdb.path=/prometheus",
            f"--storage.tsdb.retention.time={RETENTION}", f"--web.listen-address=0.0.0.0:{CONTAINER_PORT}"]


def config_dir(home: MeshHome) -> Path:
    return home.addons_dir / NAME


def engine_socket(address: str | None = None) -> str:
    """The engine's unix socket, which the container mounts for docker_sd_configs."""
    address = address or engine_address()
    if not address.startswith("unix://"):
        raise UsageError(f"the prometheus addon discovers sidecars through the engine's unix socket, and "
                         f"DOCKER_HOST is {address}", "run meshctl on the engine's host with its unix socket")
    return address.removeprefix("unix://")


def container_hash(home: MeshHome, config_text: str, image_id: str, settings: MeshSettings, socket: str) -> str:
    """Everything the running container depends on: same hash, the container stays as it is."""
    spec = json.dumps({"config": config_text, "config_dir": str(config_dir(home)), "image": image_id,
                       "command": command(), "socket": socket, "port": settings.prometheus_port,
                       "network": settings.network}, sort_keys=True)
    return hashlib.sha256(spec.encode()).hexdigest()[:16]


# --- image ------------------------------------------------------------------------------------------------

def engine_arch(client: DockerClient) -> str:
    with engine_errors("ask the engine's architecture"):
        arch = str(client.version().get("Arch") or "amd64")
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(arch, arch)


def packages() -> list[str]:
    return [PACKAGE, *UI_PACKAGES]


def image_hash(client: DockerClient, settings: MeshSettings, debs: list[Path | None]) -> str | None:
    """The build hash wanted for the image; None while the base image is missing."""
    base = images.find_image(client, settings.base_image)
    if base is None:
        return None
    names = [deb.name if deb else f"{name} (not downloaded)" for name, deb in zip(packages(), debs, strict=True)]
    return images.tree_hash([DOCKERFILE], extra=[base.id, *names])


def image_pending(client: DockerClient, settings: MeshSettings, cache_dir: Path) -> str | None:
    arch = engine_arch(client)
    debs = [images.cached_deb(cache_dir, name, arch) for name in packages()]
    wanted = image_hash(client, settings, debs)
    current = images.find_image(client, IMAGE)
    if wanted and current and images.image_label(current, const.LABEL_BUILD_HASH) == wanted:
        return None
    missing = [name for name, deb in zip(packages(), debs, strict=True) if deb is None]
    if missing:
        images.require_apt(cache_dir, missing[0], arch)  # fail before anything is written
    source = f"the cached {debs[0].name}" if debs[0] else f"Debian's {PACKAGE} package"
    if missing:
        source += f" (apt-get download on this host: {len(missing)} packages)"
    return f"{'rebuild' if current else 'build'} {IMAGE} from {source}"


def build_image(client: DockerClient, settings: MeshSettings, cache_dir: Path, progress: images.Progress) -> str:
    debs = images.ensure_debs(cache_dir, packages(), engine_arch(client), progress)
    build_hash = image_hash(client, settings, list(debs))
    assert build_hash is not None, "the base image step runs first"
    current = images.find_image(client, IMAGE)
    if current and images.image_label(current, const.LABEL_BUILD_HASH) == build_hash:
        return f"{IMAGE} is up to date"
    with tempfile.TemporaryDirectory(prefix="meshctl-build-") as tmp:
        build_ctx = Path(tmp)
        progress(f"unpacking {debs[0].name} and the web UI's {len(debs) - 1} JavaScript and font packages")
        images.extract_deb(debs[0], DEB_MEMBERS, build_ctx)
        found: set[str] = set()
        for deb in debs[1:]:
            found |= images.extract_deb(deb, UI_MEMBERS, build_ctx, required=False, skip=UI_SKIP)
        if not found:
            raise MeshError("the web UI's packages hold none of " + ", ".join(UI_MEMBERS),
                            f"delete the libjs-*.deb files in {cache_dir} and let meshctl download them again")
        shutil.copy(DOCKERFILE, build_ctx / "Dockerfile")
        images.build_image(client, IMAGE, build_ctx, COMPONENT, build_hash, {"BASE": settings.base_image}, progress)
    return f"{IMAGE} built on {settings.base_image} from {debs[0].name}"


# --- container --------------------------------------------------------------------------------------------

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
    socket = engine_socket()
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
    socket = engine_socket()
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
    wait_ready(client, base_url(settings.prometheus_port), progress)
    return (f"{CONTAINER} at {base_url(settings.prometheus_port)}, scraping sidecars on network "
            f"{settings.network!r} every {SCRAPE_INTERVAL}")


def _create(client: DockerClient, home: MeshHome, settings: MeshSettings, image_id: str, socket: str,
            config_hash: str) -> Container:
    labels = {const.LABEL_MANAGED: "true", const.LABEL_COMPONENT: COMPONENT, const.LABEL_VERSION: __version__,
              const.LABEL_CONFIG_HASH: config_hash, const.LABEL_HOME: str(home.root)}
    with engine_errors(f"create container {CONTAINER}"):
        return client.containers.create(
            image_id, command(), name=CONTAINER, labels=labels, detach=True,
            user="0",  # docker_sd_configs reads the engine's socket, which only root and the docker group may
            network=settings.network,
            ports={f"{CONTAINER_PORT}/tcp": ("127.0.0.1", settings.prometheus_port)},
            volumes={str(config_dir(home)): {"bind": CONFIG_IN_CONTAINER, "mode": "ro"},
                     socket: {"bind": SOCKET_IN_CONTAINER, "mode": "ro"}},
            restart_policy={"Name": "unless-stopped"},
        )


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


# --- for other code: where is it, and ask it --------------------------------------------------------------

def url(home: MeshHome, client: DockerClient | None = None) -> str | None:
    """Prometheus's base URL (http://127.0.0.1:PORT) while the addon's container runs; None when the addon is
    not installed in this mesh home or its container is not running."""
    if not home.is_installed():
        return None
    settings = home.settings()
    if NAME not in settings.addons:
        return None
    if client is None:
        from meshctl.runtime.engine import connect

        client = connect()
    container = find_container(client)
    if container is None or container.status != "running":
        return None
    return base_url(host_port(container) or settings.prometheus_port)


def api(base: str, endpoint: str, params: dict[str, str] | None = None, timeout: float = 5) -> Any:
    """GET /api/v1/<endpoint>; returns its `data`, or raises one clear MeshError."""
    address = f"{base}/api/v1/{endpoint}" + (f"?{urllib.parse.urlencode(params)}" if params else "")
    try:
        with OPENER.open(address, timeout=timeout) as resp:
            body = json.loads(resp.read())
    except urllib.error.HTTPError as exc:  # Prometheus explains a bad query in a JSON body with a 4xx
        try:
            body = json.loads(exc.read())
        except ValueError:
            raise MeshError(f"Prometheus at {base} answered {exc.code} to /api/v1/{endpoint}") from exc
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise MeshError(f"Prometheus at {base} does not answer: {reason}", "see `meshctl check`") from exc
    if body.get("status") != "success":
        raise MeshError(f"Prometheus refused /api/v1/{endpoint} {params or ''}: {body.get('error', body)}")
    return body.get("data")


def query(base: str, promql: str, timeout: float = 5) -> list[dict[str, Any]]:
    """An instant query: [{"metric": {labels}, "value": [time, "value"]}, ...]."""
    data = api(base, "query", {"query": promql}, timeout)
    result = data.get("result") if isinstance(data, dict) else None
    return result if isinstance(result, list) else []


def targets(base: str, job: str | None = JOB_SIDECARS, timeout: float = 5) -> list[dict[str, Any]]:
    """The active targets (of one job, by default the sidecars'), each with `labels`, `health`, `lastError`."""
    data = api(base, "targets", {"state": "active"}, timeout)
    active = data.get("activeTargets") or [] if isinstance(data, dict) else []
    return [t for t in active if job is None or (t.get("labels") or {}).get("job") == job]
