"""The bench's parts on the engine: its image, the direct pair, the meshed project, and wrk runs.

Everything it starts carries meshctl's labels and the `meshbench` names, and talks only to its own
containers; every load is bounded by wrk's duration.
"""

from __future__ import annotations

import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from docker.models.containers import Container

from meshctl import __version__, const
from meshctl.addons.prometheus import engine_arch
from meshctl.context import Context
from meshctl.errors import MeshError, Timeout
from meshctl.runtime import images
from meshctl.runtime.compose import compose_down, require_compose, run_compose
from meshctl.runtime.engine import engine_errors
from meshctl.runtime.proxies import list_proxies

IMAGE = f"meshctl/bench:{__version__}"
COMPONENT = "bench"
HERE = Path(__file__).parent
PACKAGES = ("wrk", "libluajit-5.1-2", "libluajit-5.1-common")
MEMBERS = {"wrk": {"usr/bin/wrk": "usr/bin/wrk"}, "libluajit-5.1-2": {"usr/lib": "usr/lib"},
           "libluajit-5.1-common": {"usr/share/luajit-2.1": "usr/share/luajit-2.1"}}
PROJECT = "meshbench"
DIRECT_NETWORK = "meshbench-direct"
PORT = 8080


def ensure_image(ctx: Context, progress: images.Progress) -> None:
    client = ctx.docker()
    settings = ctx.home.settings()
    base = images.find_image(client, settings.base_image)
    if base is None:
        raise MeshError(f"the base image {settings.base_image} is missing", "run `meshctl install`")
    debs = images.ensure_debs(ctx.cache_dir, list(PACKAGES), engine_arch(client), progress)
    build_hash = images.tree_hash([HERE / "Dockerfile", HERE / "server.py"], extra=[base.id, *(d.name for d in debs)])
    current = images.find_image(client, IMAGE)
    if current and images.image_label(current, const.LABEL_BUILD_HASH) == build_hash:
        return
    with tempfile.TemporaryDirectory(prefix="meshctl-bench-") as tmp:
        build = Path(tmp)
        for name, deb in zip(PACKAGES, debs, strict=True):
            images.extract_deb(deb, MEMBERS[name], build, required=name != "libluajit-5.1-common")
        for name in ("Dockerfile", "server.py"):
            shutil.copy(HERE / name, build / name)
        images.build_image(client, IMAGE, build, COMPONENT, build_hash, {"BASE": settings.base_image}, progress)


# --- direct: a client and a server container on their own network, no mesh ---------------------------------

def start_direct(ctx: Context) -> tuple[Container, Container]:
    client = ctx.docker()
    stop_direct(ctx)
    labels = images.labels(COMPONENT)
    with engine_errors("start the bench's direct pair"):
        client.networks.create(DIRECT_NETWORK, driver="bridge", labels=labels)
        server = client.containers.run(IMAGE, ["python3", "/opt/bench/server.py"], name=f"{DIRECT_NETWORK}-server",
                                       network=DIRECT_NETWORK, labels=labels, detach=True)
        caller = client.containers.run(IMAGE, name=f"{DIRECT_NETWORK}-client", network=DIRECT_NETWORK,
                                       labels=labels, detach=True)
    wait_serving(caller, f"{DIRECT_NETWORK}-server")
    return caller, server


def stop_direct(ctx: Context) -> None:
    client = ctx.docker()
    with engine_errors("remove the bench's direct pair"):
        for c in client.containers.list(all=True, filters={"label": f"{const.LABEL_COMPONENT}={COMPONENT}"}):
            c.remove(force=True)
        for n in client.networks.list(names=[DIRECT_NETWORK]):
            n.remove()


# --- meshed: the same pair as a compose project, injected -------------------------------------------------

def compose_text(fleet: int = 0) -> str:
    """client -> server (v1 and v2, for the routed mode); with `fleet`, that many idle pods instead."""
    def svc(app: str, version: str, command: list[str], replicas: int = 1) -> dict[str, Any]:
        out: dict[str, Any] = {"image": IMAGE, "command": command, "labels": {"app": app, "version": version}}
        if replicas > 1:
            out["deploy"] = {"replicas": replicas}
        return out

    if fleet:
        services = {"idle": svc("idle", "v1", ["sleep", "infinity"], fleet)}
    else:
        serve = ["python3", "/opt/bench/server.py"]
        services = {"client": svc("client", "v1", ["sleep", "infinity"]), "server-v1": svc("server", "v1", serve),
                    "server-v2": svc("server", "v2", serve)}
    return yaml.safe_dump({"services": services}, sort_keys=False)


@dataclass
class Meshed:
    project: str
    file: Path
    started_s: float  # inject, up, until every sidecar is ready


def up_meshed(ctx: Context, project: str, text: str, timeout: float = 600) -> Meshed:
    from meshctl.inject.injector import inject  # the injector pulls in compose parsing: only when benching

    workdir = ctx.home.root / "bench" / project
    workdir.mkdir(parents=True, exist_ok=True)
    source = workdir / "source.yaml"
    source.write_text(text)
    started = time.monotonic()
    result = inject(ctx, str(source), project, "PERMISSIVE", workdir)
    file = workdir / "compose.yaml"
    file.write_text(result.text)
    run_compose(require_compose(), project, file, "up", "-d", "--remove-orphans")
    deadline = started + timeout
    while True:
        proxies = list_proxies(ctx.docker(), project)
        if proxies and len(proxies) == len(result.pods) and all(p.ready for p in proxies):
            return Meshed(project, file, time.monotonic() - started)
        if time.monotonic() > deadline:
            raise Timeout(f"the bench's {project} pods were not ready within {timeout:.0f}s",
                          f"see `docker compose -p {project} -f {file} ps`")
        time.sleep(0.2)


def down_meshed(ctx: Context, project: str) -> None:
    file = ctx.home.root / "bench" / project / "compose.yaml"
    if file.is_file():
        compose_down(require_compose(), project, file)


def container(ctx: Context, project: str, service: str) -> Container:
    with engine_errors(f"find {project}'s {service}"):
        found = ctx.docker().containers.list(filters={"label": [f"com.docker.compose.project={project}",
                                                                 f"com.docker.compose.service={service}"]})
    if not found:
        raise MeshError(f"the bench's {service} container is not running", f"see `docker compose -p {project} ps`")
    return found[0]


def wait_serving(caller: Container, host: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        code, _ = caller.exec_run(["curl", "-sf", "-o", "/dev/null", f"http://{host}:{PORT}/1k"])
        if code == 0:
            return
        time.sleep(0.2)
    raise Timeout(f"the bench server {host} did not answer within {timeout:.0f}s")


# --- wrk ----------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Load:
    size: str  # 1k or 64k
    concurrency: int
    new_connections: bool

    @property
    def name(self) -> str:
        return f"{'new-conn' if self.new_connections else 'keep-alive'} {self.size} c{self.concurrency}"


UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}
LATENCY_RE = re.compile(r"^\s*(50|75|90|99)%\s+([\d.]+)(us|ms|s)\s*$", re.M)


def parse_wrk(text: str) -> dict[str, float]:
    """Requests/sec and the latency percentiles (ms) from `wrk --latency` output."""
    rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
    total = re.search(r"^\s*(\d+) requests in", text, re.M)
    if not rps or not total:
        raise MeshError("wrk printed no result", text.strip().splitlines()[-1] if text.strip() else "no output")
    out = {"rps": float(rps.group(1)), "requests": float(total.group(1))}
    for pct, value, unit in LATENCY_RE.findall(text):
        out[f"p{pct}_ms"] = round(float(value) * UNITS[unit], 3)
    errors = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    sockets = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    out["errors"] = float(errors.group(1)) if errors else 0.0
    out["socket_errors"] = float(sum(int(x) for x in sockets.groups())) if sockets else 0.0
    return out


def run_wrk(caller: Container, host: str, load: Load, seconds: float) -> dict[str, float]:
    threads = min(2, load.concurrency)
    argv = ["wrk", f"-t{threads}", f"-c{load.concurrency}", f"-d{max(1, round(seconds))}s", "--latency",
            "--timeout", "5s"]
    if load.new_connections:
        argv += ["-H", "Connection: close"]
    code, out = caller.exec_run([*argv, f"http://{host}:{PORT}/{load.size}"])
    text = out.decode(errors="replace")
    if code != 0:
        raise MeshError(f"wrk failed (exit {code})", text.strip().splitlines()[-1] if text.strip() else "")
    return parse_wrk(text)
