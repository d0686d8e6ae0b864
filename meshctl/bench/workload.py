"""The bench's parts on the engine: its image, the direct pair, the nginx pair, the meshed project, and the
load runs (wrk for HTTP, the bench's own echo client for TCP, h2load for gRPC).

Everything it starts carries meshctl's labels and the `meshbench` names, and talks only to its own
containers; every load is bounded by its duration.
"""

from __future__ import annotations

import datetime as dt
import json
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
from meshctl.bench import grpc_server, h2load, nginx
from meshctl.context import Context
from meshctl.errors import MeshError, Timeout
from meshctl.extras.prometheus.image import engine_arch
from meshctl.runtime import images
from meshctl.runtime.compose import compose_down, require_compose, run_compose
from meshctl.runtime.engine import engine_errors
from meshctl.runtime.proxies import list_proxies

IMAGE = f"meshctl/bench:{__version__}"
COMPONENT = "bench"
HERE = Path(__file__).parent
# nginx's other libraries (libssl3, libpcre2, zlib, libcrypt) are in the base image already; its config is
# the bench's own, so nginx-common (Debian's default site, mime.types) is not needed. h2load's libnghttp2,
# libssl3 and libstdc++ are there too (curl, apt): it needs only libev and jemalloc besides.
PACKAGES = ("wrk", "libluajit-5.1-2", "libluajit-5.1-common", "nginx", "libnginx-mod-stream", "nghttp2-client",
            "libev4", "libjemalloc2")
MEMBERS = {"wrk": {"usr/bin/wrk": "usr/bin/wrk"}, "libluajit-5.1-2": {"usr/lib": "usr/lib"},
           "libluajit-5.1-common": {"usr/share/luajit-2.1": "usr/share/luajit-2.1"},
           "nginx": {"usr/sbin/nginx": "usr/sbin/nginx"},
           "libnginx-mod-stream": {nginx.MODULE.lstrip("/"): nginx.MODULE.lstrip("/")},
           "nghttp2-client": {"usr/bin/h2load": "usr/bin/h2load"}, "libev4": {"usr/lib": "usr/lib"},
           "libjemalloc2": {"usr/lib": "usr/lib"}}
# the build context's files besides the unpacked .debs
CONTEXT = ("Dockerfile", "server.py", "echo_client.py", "grpc_server.py")
PROJECT = "meshbench"
DIRECT_NETWORK = "meshbench-direct"
DIRECT_SERVER = f"{DIRECT_NETWORK}-server"
DIRECT_GRPC = f"{DIRECT_NETWORK}-grpc"  # the gRPC server (nginx speaking h2c)
GRPC = "grpc"  # the meshed gRPC service
NGINX_CLIENT = f"{DIRECT_NETWORK}-nginx-client"  # the caller's side of the nginx pair: the target of its loads
NGINX_SERVER = f"{DIRECT_NETWORK}-nginx-server"
PORT = nginx.HTTP_PORT
ECHO_PORT = nginx.ECHO_PORT
GRPC_PORT = grpc_server.PORT
SERVE_GRPC = ["python3", "/opt/bench/grpc_server.py"]
SIZES = {"1k": 1024, "64k": 65536}
ECHO_ROUNDS = 1_000_000  # per connection: the time cap ends a load first, the count bounds it anyway


def ensure_image(ctx: Context, progress: images.Progress) -> None:
    client = ctx.docker()
    settings = ctx.home.settings()
    base = images.find_image(client, settings.base_image)
    if base is None:
        raise MeshError(f"the base image {settings.base_image} is missing", "run `meshctl install`")
    debs = images.ensure_debs(ctx.cache_dir, list(PACKAGES), engine_arch(client), progress)
    build_hash = images.tree_hash([HERE / name for name in CONTEXT], extra=[base.id, *(d.name for d in debs)])
    current = images.find_image(client, IMAGE)
    if current and images.image_label(current, const.LABEL_BUILD_HASH) == build_hash:
        return
    with tempfile.TemporaryDirectory(prefix="meshctl-bench-") as tmp:
        build = Path(tmp)
        for name, deb in zip(PACKAGES, debs, strict=True):
            images.extract_deb(deb, MEMBERS[name], build, required=name != "libluajit-5.1-common")
        for name in CONTEXT:
            shutil.copy(HERE / name, build / name)
        images.build_image(client, IMAGE, build, COMPONENT, build_hash, {"BASE": settings.base_image}, progress)


# --- direct: a client and a server container on their own network, no mesh ---------------------------------

def start_direct(ctx: Context) -> tuple[Container, Container]:
    client = ctx.docker()
    stop_direct(ctx)
    labels = images.labels(COMPONENT)
    with engine_errors("start the bench's direct pair"):
        client.networks.create(DIRECT_NETWORK, driver="bridge", labels=labels)
        server = client.containers.run(IMAGE, ["python3", "/opt/bench/server.py"], name=DIRECT_SERVER,
                                       network=DIRECT_NETWORK, labels=labels, detach=True)
        client.containers.run(IMAGE, SERVE_GRPC, name=DIRECT_GRPC, network=DIRECT_NETWORK, labels=labels,
                              detach=True)
        caller = client.containers.run(IMAGE, name=f"{DIRECT_NETWORK}-client", network=DIRECT_NETWORK,
                                       labels=labels, detach=True)
    wait_serving(caller, DIRECT_SERVER)
    wait_grpc(caller, DIRECT_GRPC)
    return caller, server


def start_nginx(ctx: Context, caller: Container) -> list[Container]:
    """The nginx pair on the direct network, in front of the direct server; [client side, server side].

    Each container gets its config, the run's CA and its own key pair through the engine (put_archive), so no
    key is written to the host's disk."""
    client = ctx.docker()
    certs = nginx.make_certs(NGINX_SERVER, dt.datetime.fromtimestamp(ctx.clock(), dt.UTC))
    labels = images.labels(COMPONENT)
    # the server side first: the client side resolves its name at start
    sides = ((NGINX_SERVER, nginx.server_conf(DIRECT_SERVER, DIRECT_GRPC), certs.server),
             (NGINX_CLIENT, nginx.client_conf(NGINX_SERVER, certs.server_name), certs.client))
    started: list[Container] = []
    with engine_errors("start the bench's nginx pair"):
        for name, conf, leaf in sides:
            proxy = client.containers.create(IMAGE, nginx.argv(), name=name, network=DIRECT_NETWORK, labels=labels)
            proxy.put_archive("/", nginx.archive(nginx.files(conf, certs.ca_pem, leaf)))
            proxy.start()
            started.append(proxy)
    try:
        wait_serving(caller, NGINX_CLIENT)
        wait_grpc(caller, NGINX_CLIENT)
    except Timeout as exc:
        for proxy in started:
            proxy.reload()
            lines = proxy.logs(tail=3).decode(errors="replace").strip().splitlines()
            if proxy.status != "running" and lines:  # nginx refused its config or a certificate
                raise MeshError(f"the bench's nginx pair does not serve: {proxy.name} says {lines[-1][:300]}",
                                f"see `docker logs {proxy.name}`") from exc
        raise
    return started[::-1]


def stop_direct(ctx: Context) -> None:
    client = ctx.docker()
    with engine_errors("remove the bench's direct pair"):
        for c in client.containers.list(all=True, filters={"label": f"{const.LABEL_COMPONENT}={COMPONENT}"}):
            c.remove(force=True)
        for n in client.networks.list(names=[DIRECT_NETWORK]):
            n.remove()


# --- meshed: the same pair as a compose project, injected -------------------------------------------------

def compose_text(fleet: int = 0, grpc: bool = False) -> str:
    """client -> server (v1 and v2, for the routed mode), and with `grpc` a gRPC server; with `fleet`, that many
    idle pods instead."""
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
        if grpc:
            services[GRPC] = svc(GRPC, "v1", SERVE_GRPC)
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
    """Until `host` answers on both ports: an HTTP GET, and one TCP echo round trip."""
    deadline = time.monotonic() + timeout
    checks = [["curl", "-sf", "-o", "/dev/null", f"http://{host}:{PORT}/1k"],
              echo_argv(host, Load("1k", 1, False, "tcp"), rounds=1, seconds=2)]
    while checks and time.monotonic() < deadline:
        code, _ = caller.exec_run(checks[0])
        if code == 0:
            checks.pop(0)
        else:
            time.sleep(0.2)
    if checks:
        port = PORT if len(checks) == 2 else ECHO_PORT
        raise Timeout(f"the bench server {host} did not answer on port {port} within {timeout:.0f}s")


def wait_grpc(caller: Container, host: str, timeout: float = 30) -> None:
    """Until `host` answers one gRPC call over h2c with the bench's message."""
    deadline = time.monotonic() + timeout
    check = ["curl", "-sf", "--http2-prior-knowledge", "-m", "2", "-H", "content-type: application/grpc",
             "-H", "te: trailers", "--data-binary", f"@{h2load.REQUEST_FILE}", "-o", "/dev/null",
             f"http://{host}:{GRPC_PORT}{grpc_server.METHOD}"]
    while caller.exec_run(check)[0] != 0:
        if time.monotonic() > deadline:
            raise Timeout(f"the bench's gRPC server {host} did not answer on port {GRPC_PORT} within {timeout:.0f}s")
        time.sleep(0.2)


# --- wrk ----------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Load:
    size: str  # 1k or 64k
    concurrency: int
    new_connections: bool
    protocol: str = "http"  # "tcp": a raw TCP echo of `size` bytes per round trip, on ECHO_PORT; "grpc": h2load
    streams: int = 1  # gRPC: concurrent calls per connection

    @property
    def name(self) -> str:
        if self.protocol == "tcp":
            return f"tcp-echo {self.size} c{self.concurrency}"
        if self.protocol == "grpc":
            return f"grpc {self.size} c{self.concurrency} m{self.streams}"
        return f"{'new-conn' if self.new_connections else 'keep-alive'} {self.size} c{self.concurrency}"


def run_load(caller: Container, host: str, load: Load, seconds: float) -> dict[str, float]:
    if load.protocol == "grpc":
        return h2load.run(caller, host, load.concurrency, load.streams, seconds)
    return (run_echo if load.protocol == "tcp" else run_wrk)(caller, host, load, seconds)


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


# --- the TCP echo client ----------------------------------------------------------------------------------

def echo_argv(host: str, load: Load, seconds: float, rounds: int = ECHO_ROUNDS) -> list[str]:
    return ["python3", "/opt/bench/echo_client.py", host, str(ECHO_PORT), "--connections", str(load.concurrency),
            "--rounds", str(rounds), "--seconds", f"{seconds:g}", "--size", str(SIZES[load.size])]


def parse_echo(text: str) -> dict[str, float]:
    """The echo client's one JSON line, held to the keys and types the report needs."""
    lines = text.strip().splitlines()
    try:
        raw = json.loads(lines[-1]) if lines else None
    except ValueError:
        raw = None
    keys = ("rps", "requests", "errors", "socket_errors")
    if not isinstance(raw, dict) or not all(isinstance(raw.get(k), (int, float)) for k in keys):
        raise MeshError("the TCP echo client printed no result", lines[-1][:300] if lines else "no output")
    if not raw["requests"]:
        raise MeshError(f"the TCP echo client completed no round trip ({raw['socket_errors']:g} socket errors)",
                        "the echo port did not answer through this mode's proxies")
    return {k: float(v) for k, v in raw.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def run_echo(caller: Container, host: str, load: Load, seconds: float) -> dict[str, float]:
    _, out = caller.exec_run(echo_argv(host, load, seconds))
    return parse_echo(out.decode(errors="replace"))
