"""Security against the real engine: certificate rotation under load, renewal by itself, key handling, and
no way in without a mesh certificate. (Expired and foreign certificates: test_dataplane.)"""

from __future__ import annotations

import json
import stat
import threading
import time
from pathlib import Path

from docker import DockerClient

from meshctl.pki import ca as pki
from tests.conftest import meshctl
from tests.e2e.conftest import App
from tests.e2e.test_dataplane import bookinfo

# Runs in productpage: paced load for DURATION seconds at RATE req/s in total over nine callers: four keep-alive
# to ratings (three replicas), four to details, and one opening a new connection (a new mTLS handshake) per
# request. Services that call no further service, so the load is the mesh's, not the sample's.
LOAD = r"""
import http.client, json, sys, threading, time
rate, duration = float(sys.argv[1]), float(sys.argv[2])
kinds = [("ratings", "/ratings/0", True), ("details", "/details/0", True)] * 4 + [("details", "/details/0", False)]
stats = {"sent": 0, "failed": 0, "errors": []}
lock = threading.Lock()
def run(host, path, keep):
    conn, gap, end = None, len(kinds) / rate, time.time() + duration
    nxt = time.time()
    while time.time() < end:
        try:
            if conn is None:
                conn = http.client.HTTPConnection(host, 9080, timeout=10)
            conn.request("GET", path)
            r = conn.getresponse(); r.read(); ok = r.status == 200; why = r.status
        except Exception as e:
            ok, why, conn = False, repr(e), None
        if not keep and conn is not None:
            conn.close(); conn = None
        with lock:
            stats["sent"] += 1
            if not ok:
                stats["failed"] += 1; stats["errors"].append([time.time(), host, keep, str(why)])
        nxt += gap
        time.sleep(max(0, nxt - time.time()))
threads = [threading.Thread(target=run, args=k) for k in kinds]
[t.start() for t in threads]; [t.join() for t in threads]
stats["errors"] = stats["errors"][:20]
print(json.dumps(stats))
"""


def under_load(app: App, rate: float, seconds: float) -> tuple[threading.Thread, dict]:
    result: dict = {}

    def go() -> None:
        code, out = app.exec("productpage", "python3", "-c", LOAD, str(rate), str(seconds))
        result.update(json.loads(out) if code == 0 else {"error": out})

    thread = threading.Thread(target=go)
    thread.start()
    return thread, result


def acks(home: Path) -> dict[str, dict]:
    rows = json.loads(meshctl("proxy-status", "-p", "bookinfo", "-o", "json", home=home).out)
    return {r["name"]: r for r in rows}


def started_at(app: App) -> dict[str, str]:
    return {c.name: c.attrs["State"]["StartedAt"] for c in app.engine.containers.list(
        filters={"label": "com.docker.compose.project=bookinfo"})}


def test_rotating_every_certificate_under_load_fails_no_request(demo: dict, engine: DockerClient,
                                                                  mesh_home: Path) -> None:
    app = bookinfo(engine, mesh_home)
    before = {n: r["cert_serial"] for n, r in acks(mesh_home).items()}
    load, result = under_load(app, 260, 30)
    time.sleep(8)
    done = meshctl("certs", "rotate", "--all", home=mesh_home)
    load.join()
    assert done.code == 0, done.err
    print(f"certs rotate --all under load: {result}")
    assert result["sent"] >= 200 * 30 and result["failed"] == 0, result
    after = acks(mesh_home)
    assert len(after) == 8 and all(r["cert_serial"] not in (None, before[n]) for n, r in after.items())


def test_root_rotation_in_stages_under_load_fails_no_request(demo: dict, engine: DockerClient,
                                                             mesh_home: Path) -> None:
    app = bookinfo(engine, mesh_home)
    old_root = pki.load_root(mesh_home / "ca").cert.serial_number
    load, result = under_load(app, 260, 30)
    time.sleep(3)
    done = meshctl("certs", "rotate", "--root", "--overlap", "3s", home=mesh_home)
    load.join()
    assert done.code == 0, done.err
    print(f"certs rotate --root under load: {result}; stages: {done.err.strip()}")
    assert result["sent"] >= 200 * 30 and result["failed"] == 0, result
    new_root = pki.load_root(mesh_home / "ca").cert.serial_number
    assert new_root != old_root
    status = json.loads(meshctl("certs", "status", "-o", "json", home=mesh_home).out)
    assert status and all(r["issuer"] == f"{new_root:x}" and r["state"] == "VALID" for r in status), status
    assert all(r["trusted_roots"] == [f"{new_root:x}"] for r in acks(mesh_home).values())


def test_short_lived_certificates_renew_by_themselves(demo: dict, engine: DockerClient, mesh_home: Path) -> None:
    app = bookinfo(engine, mesh_home)
    containers = started_at(app)
    assert meshctl("install", "--cert-ttl", "12s", home=mesh_home).code == 0
    try:
        assert meshctl("certs", "rotate", "--all", home=mesh_home).code == 0  # now every certificate lives 12 s
        seen: dict[str, set[str]] = {}
        load, result = under_load(app, 60, 40)
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            for name, row in acks(mesh_home).items():
                seen.setdefault(name, set()).add(row["cert_serial"])
            time.sleep(1)
        load.join()
        print(f"12 s certificates over 40 s, no command run: serials per proxy {[len(s) for s in seen.values()]};"
              f" load {result}")
        assert all(len(s) >= 4 for s in seen.values()), seen  # renewed at ~6 s: several generations each
        assert result["failed"] == 0, result
        assert started_at(app) == containers  # no container restarted
        status = json.loads(meshctl("certs", "status", "-o", "json", home=mesh_home).out)
        assert all(r["state"] == "VALID" for r in status)
    finally:
        assert meshctl("install", "--cert-ttl", "24h", home=mesh_home).code == 0
        assert meshctl("certs", "rotate", "--all", home=mesh_home).code == 0


def test_keys_stay_in_their_own_directory_and_the_ca_key_in_no_container(demo: dict, engine: DockerClient,
                                                                         mesh_home: Path) -> None:
    app = bookinfo(engine, mesh_home)
    for key in (mesh_home / "proxies").glob("*/*/key.pem"):
        st = key.stat()
        assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == 1337, key
        assert stat.S_IMODE(key.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE((mesh_home / "ca" / "root-key.pem").stat().st_mode) == 0o600
    ca_dir = str((mesh_home / "ca").resolve())
    sidecars = 0
    for container in engine.containers.list(filters={"label": "com.docker.compose.project=bookinfo"}):
        sources = [m["Source"] for m in container.attrs["Mounts"]]
        assert not any(s.startswith(ca_dir) for s in sources), (container.name, sources)
        if container.labels.get("io.meshctl.component") == "sidecar":  # by label: v1 and v2 name containers apart
            service = container.labels["io.meshctl.service"]
            assert sources == [str(mesh_home / "proxies" / "bookinfo" / service)], sources  # its own, nothing else
            sidecars += 1
    assert sidecars == len(demo["proxies"]), sidecars
    # inside a sidecar: only its own key, 0600, owned by the proxy uid; no CA key anywhere
    code, out = app.exec("details-proxy", "sh", "-c", "ls /etc/meshctl; stat -c '%a %u' /etc/meshctl/key.pem; "
                         "find / -xdev -name 'root-key.pem' -o -xdev -name 'next-key.pem' 2>/dev/null | wc -l")
    lines = out.split()
    assert code == 0 and lines[-3:] == ["600", "1337", "0"], out
    code, out = app.exec("details-proxy", "setpriv", "--reuid", "1337", "--regid", "1337", "--clear-groups",
                         "cat", "/etc/meshctl/key.pem")
    assert code == 0 and "PRIVATE KEY" in out  # the proxy uid reads its own key


# Runs in the outsider: a plaintext HTTP request to each port; prints what came back (b"" when closed).
PROBE = r"""
import json, socket, sys
out = {}
for port in map(int, sys.argv[2].split(",")):
    try:
        s = socket.create_connection((sys.argv[1], port), timeout=3)
        s.sendall(b"GET /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while len(data) < 4096:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        out[port] = data[:200].decode(errors="replace")
    except OSError as e:
        out[port] = "error: " + type(e).__name__
print(json.dumps(out))
"""
# Everything but the proxy's own health (15021) and metrics (15090) ports, which answer the engine's health
# check and Prometheus like Istio's; they serve no application data.
PORTS = [8080, 6379, 22, 80, 443, 3306, 5432, 8443, 9000, 12345, 15000, 15001, 15006, 15020, 65000]


def test_a_container_without_a_mesh_certificate_reaches_no_port_of_a_strict_service(testbed: App) -> None:
    code, out = testbed.exec("outsider", "python3", "-c", PROBE, "web-strict", ",".join(map(str, PORTS)))
    assert code == 0, out
    answers = json.loads(out)
    for port, answer in answers.items():
        reached = answer.startswith("HTTP/1.1 2") or ("web-strict" in answer and "requires mutual TLS" not in answer)
        assert not reached, f"port {port} answered without mutual TLS: {answer!r}"
    assert "requires mutual TLS" in answers["8080"]  # refused by the sidecar, and told why
