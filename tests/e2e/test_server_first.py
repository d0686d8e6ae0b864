"""Server-first and other non-HTTP protocols through real sidecars (issue 15, item 4): real MariaDB, Redis and
PostgreSQL servers, each called by its own command-line client from a meshed client, through both sidecars with
mutual TLS, in PERMISSIVE and STRICT, and on a port whose protocol only a `mesh.port-protocols` label declares.

MySQL's protocol has the server speak first: a sidecar that waits for the client's first bytes hangs it. Every
client command runs under `timeout`, so a hang fails its test in seconds with a message that says so.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tarfile
import tempfile
import time
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import pytest
from docker import DockerClient

from meshctl.home import MeshHome, default_cache
from meshctl.runtime import images
from meshctl.runtime.compose import require_compose
from tests.conftest import meshctl
from tests.e2e.conftest import App, up_meshed
from tests.e2e.test_security_policies import synced

HERE = Path(__file__).parent / "serverfirst"
IMAGE = "meshctl/serverfirst:e2e"
PROJECT = "serverfirst"
PACKAGES = ("mariadb-server", "mariadb-client", "redis-server", "redis-tools", "postgresql", "postgresql-client")
CONTEXT = ("Dockerfile", "serve.sh", "mariadb-init.sql", "pg_hba.conf")
CLIENT_TIMEOUT = 20  # seconds for one client command: a hang fails fast
CLIENT_ID = f"spiffe://cluster.local/ns/{PROJECT}/sa/client"
MARIADB = ("mariadb", "--protocol=tcp", "-u", "mesh", "-pmesh", "--connect-timeout=10", "-N", "-B")


# --- the image: Debian's servers and clients on the base image, from .debs the host's apt fetched ------------

def _image_status(engine: DockerClient, base: str) -> bytes:
    """The base image's dpkg status file, read from a created (never started) container."""
    container = engine.containers.create(base, ["true"], labels=images.labels("test-image"))
    try:
        stream, _ = container.get_archive("/var/lib/dpkg/status")
        with tarfile.open(fileobj=BytesIO(b"".join(stream))) as tar:
            member = tar.extractfile("status")
            assert member is not None
            return member.read()
    finally:
        container.remove(force=True)


def download_closure(status: bytes, packages: tuple[str, ...] = PACKAGES, name: str = "serverfirst") -> list[Path]:
    """The .debs of `packages` and of every dependency the base image lacks: the host's apt, told that the image's
    dpkg status is what is installed, downloads exactly those. Cached by that status and the package list."""
    key = hashlib.sha256(status + "\n".join(packages).encode()).hexdigest()[:12]
    cache = default_cache() / f"{name}-debs-{key}"
    done = cache / "complete"
    if not done.is_file():
        for old in default_cache().glob(f"{name}-debs-*"):
            shutil.rmtree(old, ignore_errors=True)
        (cache / "partial").mkdir(parents=True, exist_ok=True)
        (cache / "status").write_bytes(status)
        argv = ["apt-get", "-q", "-o", f"Dir::State::status={cache / 'status'}", "-o", f"Dir::Cache::archives={cache}",
                "-o", "Debug::NoLocking=1", "install", "--download-only", "-y", "--no-install-recommends", *packages]
        if os.geteuid() == 0:
            argv[2:2] = ["-o", "APT::Sandbox::User=root"]  # else apt warns that _apt cannot write to the cache
        failure = images._apt(argv, cache)  # None, or apt's last error line
        if failure:  # stale package lists: refresh once
            images._apt(["apt-get", "update", "-qq"], cache)
            failure = images._apt(argv, cache)
        assert failure is None, f"apt-get could not download {' '.join(packages)}: {failure}"
        done.write_text("\n".join(sorted(p.name for p in cache.glob("*.deb"))) + "\n")
    return [cache / deb for deb in done.read_text().split()]


def deb_image(engine: DockerClient, mesh_home: Path, image: str, here: Path, context: tuple[str, ...],
              packages: tuple[str, ...], name: str) -> str:
    """`image` built from `here`'s `context` files on the mesh's base image with `packages` (and what they need)
    as .debs in debs/; rebuilt only when a file, the base image or the .debs changed."""
    base = MeshHome(mesh_home).settings().base_image
    base_id = engine.images.get(base).id
    debs = download_closure(_image_status(engine, base), packages, name)
    build_hash = images.tree_hash([here / file for file in context], extra=[base_id, *(d.name for d in debs)])
    current = images.find_image(engine, image)
    if current is None or images.image_label(current, "io.meshctl.build-hash") != build_hash:
        with tempfile.TemporaryDirectory(prefix=f"meshctl-{name}-") as tmp:
            ctx = Path(tmp)
            (ctx / "debs").mkdir()
            for deb in debs:
                try:
                    os.link(deb, ctx / "debs" / deb.name)
                except OSError:  # another file system
                    shutil.copy(deb, ctx / "debs" / deb.name)
            for file in context:
                shutil.copy(here / file, ctx / file)
            images.build_image(engine, image, ctx, "test-image", build_hash, {"BASE": base}, lambda _: None)
    return image


@pytest.fixture(scope="module")
def serverfirst_image(engine: DockerClient, mesh_home: Path) -> str:
    return deb_image(engine, mesh_home, IMAGE, HERE, CONTEXT, PACKAGES, "serverfirst")


# --- the project: servers and clients, meshed ----------------------------------------------------------------

READY = {  # each server, asked on its own pod's loopback (never captured): up, and its users in place
    "mariadb": ("mariadb-admin", "-h", "127.0.0.1", "-P", "3306", "-u", "mesh", "-pmesh", "ping"),
    "mariadb-alt": ("mariadb-admin", "-h", "127.0.0.1", "-P", "3307", "-u", "mesh", "-pmesh", "ping"),
    "redis": ("redis-cli", "-h", "127.0.0.1", "ping"),
    "postgres": ("pg_isready", "-h", "127.0.0.1", "-p", "5432"),
}


@pytest.fixture(scope="module")
def servers(engine: DockerClient, mesh_home: Path, serverfirst_image: str,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[App]:
    workdir = tmp_path_factory.mktemp("serverfirst")
    try:
        app = up_meshed(engine, mesh_home, HERE / "compose.yaml", PROJECT, workdir)
        for service, probe in READY.items():
            app.wait_for(lambda s=service, p=probe: app.exec(s, "timeout", "5", *p)[0] == 0,  # type: ignore[misc]
                         f"{service} serves on its pod's loopback", timeout=90)
        yield app
    finally:
        if (workdir / "meshed.yaml").is_file():
            App(engine, require_compose(), PROJECT, workdir / "meshed.yaml").down()


def run(app: App, service: str, *cmd: str, limit: int = CLIENT_TIMEOUT) -> tuple[int, str]:
    """One client command in `service`'s container, killed after `limit` seconds (exit 124: it hung)."""
    started = time.monotonic()
    code, out = app.exec(service, "timeout", str(limit), *cmd)
    if code == 124:
        out += (f"\n[{' '.join(cmd[:3])} … from {service} hung: no answer within {limit}s "
                f"({time.monotonic() - started:.1f}s); a server-first protocol waiting for its client's bytes?]")
    return code, out.strip()


def tcp_opened(app: App, sidecar: str, source: str = CLIENT_ID) -> float:
    """Connections the server's sidecar accepted with verified mutual TLS from `source` (its Istio metric)."""
    code, metrics = app.exec(sidecar, "curl", "-s", "--max-time", "5", "127.0.0.1:15090/stats/prometheus")
    assert code == 0, metrics
    return sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
               if line.startswith("istio_tcp_connections_opened") and 'reporter="destination"' in line
               and 'connection_security_policy="mutual_tls"' in line and f'source_principal="{source}"' in line)


def assert_through_mtls(app: App, sidecar: str, before: float) -> None:
    app.wait_for(lambda: tcp_opened(app, sidecar) > before,
                 f"{sidecar} counted a mutual-TLS connection from the client", timeout=10)


def select_one(app: App, host: str, port: int = 3306, caller: str = "client") -> tuple[int, str]:
    return run(app, caller, *MARIADB, "-h", host, "-P", str(port), "-e", "select 1")


# --- MariaDB: the server speaks first -------------------------------------------------------------------------

def test_mariadb_select_1_through_the_mesh_permissive(servers: App) -> None:
    before = tcp_opened(servers, "mariadb-proxy")
    assert select_one(servers, "mariadb") == (0, "1")
    assert_through_mtls(servers, "mariadb-proxy", before)


def test_mariadb_select_1_through_the_mesh_strict(servers: App, mesh_home: Path) -> None:
    assert meshctl("mtls", "set", "mariadb", "--mode", "strict", "-p", PROJECT, home=mesh_home).code == 0
    try:
        synced(mesh_home, PROJECT)
        before = tcp_opened(servers, "mariadb-proxy")
        assert select_one(servers, "mariadb") == (0, "1")
        assert_through_mtls(servers, "mariadb-proxy", before)
        code, out = select_one(servers, "mariadb", caller="outsider")  # plaintext from outside the mesh
        assert code != 0 and out.strip() != "1", out
    finally:
        assert meshctl("delete", "pa", "mariadb", "-p", PROJECT, home=mesh_home).code == 0
        synced(mesh_home, PROJECT)


def test_mariadb_on_a_port_declared_by_label(servers: App, mesh_home: Path) -> None:
    """3307 is no well-known port: `mesh.port-protocols: "3307=tcp"` reaches both sidecars' snapshots."""
    for sidecar in ("client-proxy", "mariadb-alt-proxy"):  # what each running sidecar applied (its admin dump)
        code, dump = servers.exec(sidecar, "curl", "-s", "--max-time", "5", "127.0.0.1:15000/config_dump")
        assert code == 0, dump
        services = json.loads(dump)["snapshot"]["services"]
        (alt,) = next(s for s in services if s["name"] == "mariadb-alt")["workloads"]
        assert alt.get("port_protocols") == {"3307": "tcp"}, (sidecar, alt)
    before = tcp_opened(servers, "mariadb-alt-proxy")
    assert select_one(servers, "mariadb-alt", 3307) == (0, "1")
    assert_through_mtls(servers, "mariadb-alt-proxy", before)


# --- Redis and PostgreSQL: the client speaks first, in protocols that are not HTTP --------------------------

def test_redis_set_get_and_ping(servers: App) -> None:
    before = tcp_opened(servers, "redis-proxy")
    assert run(servers, "client", "redis-cli", "-h", "redis", "PING") == (0, "PONG")
    assert run(servers, "client", "redis-cli", "-h", "redis", "SET", "k", "meshed") == (0, "OK")
    assert run(servers, "client", "redis-cli", "-h", "redis", "GET", "k") == (0, "meshed")
    assert_through_mtls(servers, "redis-proxy", before)


def test_postgresql_select_1(servers: App) -> None:
    before = tcp_opened(servers, "postgres-proxy")
    assert run(servers, "client", "psql", "-h", "postgres", "-U", "postgres", "-At", "-c", "select 1") == (0, "1")
    assert_through_mtls(servers, "postgres-proxy", before)
