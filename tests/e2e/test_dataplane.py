"""The data plane against the real engine: injected apps, real sidecars, real traffic."""

from __future__ import annotations

import datetime as dt
import io
import os
import tarfile
import threading
import time
from pathlib import Path

import yaml
from docker import DockerClient

from meshctl.pki import ca as pki
from meshctl.pki import workload
from meshctl.runtime.compose import require_compose
from tests.conftest import meshctl
from tests.e2e.conftest import App

TD = "spiffe://cluster.local/ns"


def curl(app: App, service: str, *args: str) -> str:
    code, out = app.exec(service, "curl", "-s", "--max-time", "30", *args)
    assert code == 0, f"curl {args} from {service} failed ({code}): {out}"
    return out


def inbound(app: App, sidecar: str) -> list[dict]:
    return [e for e in app.logs(sidecar) if e.get("direction") == "inbound"]


# --- bookinfo through `meshctl demo` -----------------------------------------------------------------------

def bookinfo(engine: DockerClient, mesh_home: Path) -> App:
    return App(engine, require_compose(), "bookinfo", mesh_home / "demo" / "bookinfo" / "compose.yaml")


def test_demo_meshes_bookinfo_and_answers_through_the_published_port(demo: dict) -> None:
    assert len(demo["proxies"]) == 8 and all(p["ready"] for p in demo["proxies"])  # ratings has 3 replicas
    assert demo["traffic"]["ok"] == demo["traffic"]["sent"] == 100
    internal = [e for e in demo["edges"] if e["destination"] != "productpage"]
    seen = {e["destination"] for e in internal}
    assert {"details", "reviews-v1", "reviews-v2", "reviews-v3"} <= seen
    assert seen & {"ratings", "ratings-2", "ratings-3"} and seen <= {"details", "reviews-v1", "reviews-v2",
                                                                      "reviews-v3", "ratings", "ratings-2", "ratings-3"}
    assert all(e["mtls"] and e["source"].startswith(f"{TD}/bookinfo/sa/bookinfo-") for e in internal)
    # each runs as its `mesh.service-account` label (Istio's bookinfo accounts), and demo shows that identity
    assert all(p["identity"] == f"{TD}/bookinfo/sa/bookinfo-{p['app']}" for p in demo["proxies"])


def test_receiving_sidecars_log_the_callers_spiffe_id(demo: dict, engine: DockerClient, mesh_home: Path) -> None:
    app = bookinfo(engine, mesh_home)
    for sidecar, caller in [("details-proxy", "productpage"), ("ratings-proxy", "reviews"),
                            ("reviews-v2-proxy", "productpage")]:
        entries = inbound(app, sidecar)
        assert entries, f"{sidecar} logged no inbound requests"
        assert all(e["mtls"] and e["source"] == f"{TD}/bookinfo/sa/bookinfo-{caller}" for e in entries), entries[:2]
        # a peer's connection that sent nothing for the sniffing window (a stalled CI machine) is relayed at L4 and
        # logged as TCP: the requests are the HTTP entries
        requests = [e for e in entries if e.get("protocol") != "tcp"]
        assert requests and all(e["status"] == 200 for e in requests), entries[:3]


# --- peer authentication ------------------------------------------------------------------------------------

def test_outsider_reaches_permissive_but_not_strict(testbed: App) -> None:
    assert curl(testbed, "outsider", "-o", "/dev/null", "-w", "%{http_code}", "http://web:8080/echo") == "200"
    refused = curl(testbed, "outsider", "-w", " %{http_code}", "http://web-strict:8080/echo")
    assert refused.endswith(" 403") and "requires mutual TLS" in refused
    code, out = testbed.exec("outsider", "python3", "/testbed/client.py", "redis", "web-strict", "6379")
    assert code != 0, out  # non-HTTP plaintext: the connection is closed
    # the same calls from inside the mesh succeed
    assert curl(testbed, "client", "-o", "/dev/null", "-w", "%{http_code}", "http://web-strict:8080/echo") == "200"
    code, out = testbed.exec("client", "python3", "/testbed/client.py", "redis", "web-strict", "6379")
    assert code == 0 and out.startswith("+PONG"), out


def test_strict_service_keeps_its_published_port_for_the_host(testbed: App) -> None:
    import urllib.request

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open("http://127.0.0.1:18080/echo", timeout=10) as resp:
        assert resp.status == 200


def _copy_pems(app: App, service: str, files: dict[str, bytes]) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    app.container(service).put_archive("/tmp", buf.getvalue())


def test_certificates_from_another_ca_expired_or_missing_are_refused_and_a_mesh_one_accepted(
        testbed: App, mesh_home: Path) -> None:
    now = dt.datetime.now(dt.UTC)
    identity = f"{TD}/e2etestbed/sa/outsider"
    root = pki.load_root(mesh_home / "ca")
    certs = {"rogue": workload.issue(pki.create_root("cluster.local", now), identity, now),
             "expired": workload.issue(root, identity, now - dt.timedelta(days=2), dt.timedelta(hours=1)),
             "real": workload.issue(root, identity, now)}
    _copy_pems(testbed, "outsider", {f"{name}.{ext}": cert.cert_pem() if ext == "pem" else cert.key_pem()
                                     for name, cert in certs.items() for ext in ("pem", "key")})
    base = ["curl", "-sk", "--max-time", "10", "-o", "/dev/null", "-w", "%{http_code}"]
    for refused in ("rogue", "expired"):
        code, out = testbed.exec("outsider", *base, "--cert", f"/tmp/{refused}.pem", "--key", f"/tmp/{refused}.key",
                                 "https://web:8080/echo")
        assert code != 0 and out != "200", f"a certificate ({refused}) was accepted"
    code, out = testbed.exec("outsider", *base, "https://web:8080/echo")
    assert code != 0 and out != "200", "TLS without a client certificate was accepted"
    code, out = testbed.exec("outsider", *base, "--cert", "/tmp/real.pem", "--key", "/tmp/real.key",
                             "https://web:8080/echo")
    assert (code, out) == (0, "200")
    assert any(e.get("source") == identity and e["mtls"] for e in inbound(testbed, "web-proxy"))


# --- what passes through unchanged ----------------------------------------------------------------------------

def test_http11_keepalive_and_chunked_bodies(testbed: App) -> None:
    code, out = testbed.exec("client", "curl", "-sv", "http://web:8080/echo", "http://web:8080/echo")
    assert code == 0 and "Re-using existing connection" in out, out[-800:]
    body = curl(testbed, "client", "http://web:8080/chunked?parts=7")
    assert body == "".join(f"part {i}\n" for i in range(7))
    sent = curl(testbed, "client", "-X", "POST", "-H", "Transfer-Encoding: chunked", "--data-binary", "x" * 5000,
                "http://web:8080/upload")
    assert '"received": 5000' in sent
    echoed = [e for e in inbound(testbed, "web-proxy") if e.get("path", "").startswith("/chunked")]
    assert echoed and echoed[-1]["source"] == f"{TD}/e2etestbed/sa/client" and echoed[-1]["mtls"]


RSS_SCRIPT = ("import glob\nprint(max(int(l.split()[1]) for f in glob.glob('/proc/[0-9]*/status') "
              "for l in open(f) if l.startswith('VmRSS')))")


def rss_mb(app: App, sidecar: str) -> float:
    """The largest resident set among the sidecar's processes (the proxy), in MB."""
    code, out = app.exec(sidecar, "python3", "-c", RSS_SCRIPT)
    assert code == 0 and out.strip().isdigit(), out
    return int(out) / 1024


def watch_rss(app: App, sidecar: str, stop: threading.Event, samples: list[float]) -> None:
    while not stop.is_set():
        samples.append(rss_mb(app, sidecar))
        time.sleep(0.2)


def test_100mb_bodies_stream_both_ways_without_filling_sidecar_memory(testbed: App) -> None:
    n = 100 * 1024 * 1024
    sidecars = ("client-proxy", "web-proxy")
    idle = {s: rss_mb(testbed, s) for s in sidecars}
    stop, samples = threading.Event(), {s: [] for s in sidecars}  # type: ignore[var-annotated]
    watchers = [threading.Thread(target=watch_rss, args=(testbed, s, stop, samples[s])) for s in sidecars]
    for t in watchers:
        t.start()
    try:
        got = curl(testbed, "client", "-o", "/dev/null", "-w", "%{size_download}", f"http://web:8080/bytes?n={n}")
        code, up = testbed.exec("client", "sh", "-c", f"head -c {n} /dev/zero | curl -s --max-time 60 -X POST "
                                "-H 'content-type: application/octet-stream' --data-binary @- http://web:8080/upload")
    finally:
        stop.set()
        for t in watchers:
            t.join()
    assert int(got) == n
    assert code == 0 and f'"received": {n}' in up, up
    for sidecar in sidecars:
        assert samples[sidecar], f"no memory samples from {sidecar}"
        grew = max(samples[sidecar]) - idle[sidecar]
        print(f"{sidecar}: idle {idle[sidecar]:.0f} MB, peak {max(samples[sidecar]):.0f} MB while streaming")
        assert grew < 40, f"{sidecar} RSS grew {grew:.0f} MB while streaming 100 MB"


def test_http2_cleartext(testbed: App) -> None:
    out = curl(testbed, "client", "--http2-prior-knowledge", "-w", "%{http_version}", "http://web:8081/hello")
    assert out == "h2 ok /hello\n2"


def test_grpc(testbed: App) -> None:
    code, out = testbed.exec("client", "python3", "/testbed/client.py", "grpc", "web", "8082")
    assert (code, out.strip()) == (0, "grpc echo: hello")


def test_websocket(testbed: App) -> None:
    code, out = testbed.exec("client", "python3", "/testbed/client.py", "ws", "web", "8080")
    assert (code, out.strip()) == (0, "echo: one | echo: two")


def test_plain_tcp_gets_mtls_at_l4(testbed: App) -> None:
    code, out = testbed.exec("client", "python3", "/testbed/client.py", "redis", "web", "6379")
    assert (code, out.strip()) == (0, "+PONG | +OK | $6 meshed")
    time.sleep(0.5)
    tcp = [e for e in inbound(testbed, "web-proxy") if e.get("protocol") == "tcp"]
    assert any(e["mtls"] and e["source"] == f"{TD}/e2etestbed/sa/client" for e in tcp), tcp[-3:]


HOLD = """
import socket, sys, time
s = socket.create_connection(("web", 6379), 5)
s.sendall(b"*1\\r\\n$4\\r\\nPING\\r\\n")
assert s.recv(64).startswith(b"+PONG"), "no PONG"
print("open", flush=True)
s.settimeout(1)
started = time.monotonic()
while time.monotonic() - started < 25:
    try:
        if not s.recv(64):
            print("closed"); sys.exit(0)
    except socket.timeout:
        continue
    except OSError:
        print("closed"); sys.exit(0)
print("still open")
"""


def test_a_plaintext_tcp_connection_does_not_outlive_a_change_to_strict(testbed: App, mesh_home: Path) -> None:
    """An outsider's plaintext TCP connection, let in while web was PERMISSIVE, is closed when web turns STRICT
    (as Envoy drains a changed listener), not kept until it ends by itself."""
    result: list[tuple[int, str]] = []
    holder = threading.Thread(target=lambda: result.append(testbed.exec("outsider", "python3", "-c", HOLD)))
    holder.start()
    try:
        deadline = time.monotonic() + 15
        while not established_to_6379(testbed):
            assert time.monotonic() < deadline and holder.is_alive(), result
            time.sleep(0.2)
        done = meshctl("mtls", "set", "web", "--mode", "STRICT", "-p", "e2etestbed", home=mesh_home)
        assert done.code == 0, done.err
        holder.join(30)
        assert result and result[0][1].split() == ["open", "closed"], result
        code, out = testbed.exec("outsider", "python3", "-c", HOLD)  # a new one is refused outright
        assert code != 0 and "open" not in out.split(), out
    finally:
        meshctl("delete", "peerauthentication", "web", "-p", "e2etestbed", home=mesh_home)
        assert meshctl("proxy-status", "-p", "e2etestbed", "--wait", "--timeout", "10", home=mesh_home).code == 0
        holder.join(30)


def established_to_6379(app: App) -> bool:
    """The outsider holds an established TCP connection to port 6379 (its /proc/net/tcp: port 18EB, state 01)."""
    code, out = app.exec("outsider", "cat", "/proc/net/tcp")
    return code == 0 and any(f[2].endswith(":18EB") and f[3] == "01" for f in (line.split() for line in
                                                                              out.splitlines()[1:]) if len(f) > 3)


# --- lifecycle -------------------------------------------------------------------------------------------------

def test_app_starts_only_after_its_sidecar_is_ready(testbed: App) -> None:
    started = testbed.container("web").attrs["State"]["StartedAt"]
    logs = testbed.container("web-proxy").logs(timestamps=True, stdout=False).decode().splitlines()
    ready = next(line.split(" ", 1)[0] for line in logs if "proxy ready" in line)
    assert started[:26] > ready[:26], f"app started at {started}, its proxy was ready at {ready}"


def test_crashed_proxy_restarts_and_serves_again_at_once(testbed: App) -> None:
    """The supervisor starts a killed proxy again after 0.2 s, and it serves within about a second. The bound is
    looser than that: each probe is a `docker exec`, and a loaded 2-core CI machine stretches both (speed is
    `meshctl bench`'s to measure; this checks the restart happens, and soon)."""
    kill = ("import os, signal\nfor p in os.listdir('/proc'):\n if p.isdigit() and int(p) != os.getpid() and "
            "b'sidecar.main' in open(f'/proc/{p}/cmdline','rb').read(): os.kill(int(p), signal.SIGKILL)")
    code, out = testbed.exec("web-proxy", "python3", "-c", kill)
    assert code == 0, out
    killed_at = time.monotonic()
    while time.monotonic() - killed_at < 10:
        code, out = testbed.exec("client", "curl", "-s", "--max-time", "1", "-o", "/dev/null", "-w", "%{http_code}",
                                 "http://web:8080/echo")
        if out == "200":
            break
        time.sleep(0.05)
    took = time.monotonic() - killed_at
    print(f"killed proxy serving again after {took:.2f}s")
    assert out == "200"
    assert took < 5.0


def test_stopping_sidecar_drains_in_flight_requests(testbed: App) -> None:
    result: dict[str, str] = {}

    def slow_call() -> None:
        result["out"] = curl(testbed, "client", "-o", "/dev/null", "-w", "%{http_code}", "http://slow:8080/slow?ms=2500")

    caller = threading.Thread(target=slow_call)
    caller.start()
    time.sleep(0.8)
    try:
        testbed.container("slow-proxy").stop(timeout=15)
        caller.join(30)
        assert result.get("out") == "200"
    finally:  # the testbed is shared: bring the pod back for the tests after this one
        testbed.compose("up", "-d")
        testbed.wait_healthy()
        testbed.container("slow").restart(timeout=5)  # into the new namespace of its restarted sidecar (MSH0111)
        testbed.wait_for(lambda: testbed.exec("client", "curl", "-sf", "-o", "/dev/null",
                                              "http://slow:8080/echo")[0] == 0, "slow answers again")


def test_traffic_aimed_at_the_proxy_port_is_refused_not_looped(testbed: App) -> None:
    probe = ("import socket, time\ns = socket.create_connection(('web', 15001), timeout=5)\n"
             "s.sendall(b'\\x16\\x03\\x01\\x00\\x05hello')\nstart = time.time()\n"
             "print('closed' if s.recv(100) == b'' else 'answered', round(time.time() - start, 2))")
    code, out = testbed.exec("outsider", "python3", "-c", probe)
    assert code == 0 and out.startswith("closed"), out
    assert float(out.split()[1]) < 2
    assert curl(testbed, "client", "-o", "/dev/null", "-w", "%{http_code}", "http://web:8080/echo") == "200"
    assert any("refused a connection to the proxy's own port 15001" in line
               for line in testbed.container("web-proxy").logs(stdout=False).decode().splitlines())


def test_proxy_runs_as_1337_when_the_mesh_home_belongs_to_another_user(
        engine: DockerClient, mesh_home: Path, tmp_path: Path) -> None:



    (tmp_path / "compose.yaml").write_text(yaml.safe_dump({"services": {"solo": {
        "image": "meshctl/testbed:e2e", "environment": {"TESTBED_NAME": "solo"}}}}))
    out = tmp_path / "meshed.yaml"
    assert meshctl("inject", str(tmp_path / "compose.yaml"), "-p", "e2euser", "-o", str(out), home=mesh_home).code == 0
    proxy_dir = mesh_home / "proxies" / "e2euser" / "solo"
    for path in [proxy_dir, *proxy_dir.iterdir()]:
        os.chown(path, 4242, 4242)  # as if a non-root user in the docker group had run meshctl
    app = App(engine, require_compose(), "e2euser", out)
    try:
        app.compose("up", "-d")
        app.wait_healthy()
        uids = ("import glob\nfor f in glob.glob('/proc/[0-9]*/cmdline'):\n"
                " c = open(f, 'rb').read()\n if b'sidecar.main' in c and b'glob' not in c:\n"
                "  print([l.split()[1] for l in open(f[:-7] + 'status') if l.startswith('Uid')][0])")
        code, uid = app.exec("solo-proxy", "python3", "-c", uids)
        assert (code, uid.strip()) == (0, "1337")
        code, mode = app.exec("solo-proxy", "stat", "-c", "%u %a", "/run/meshctl/key.pem")
        assert (code, mode.strip()) == (0, "1337 600")
    finally:
        app.down()
