"""Faults under steady load, with real containers, real sidecars and real traffic ([8 Reliability]).

The load runs inside a meshed pod (`testbed/steady.py`), so every request goes app -> its sidecar ->
the callee's sidecar -> the callee, and each request's time and status come back for the checks.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from docker import DockerClient

from meshctl.runtime.compose import require_compose
from tests.conftest import meshctl
from tests.e2e.conftest import App, up_meshed
from tests.soak import PROXY_PROC  # the sidecar's proxy process: pid, RSS in kB, open fds

PROJECT = "e2erel"
COMPOSE = """\
services:
  api:
    image: meshctl/testbed:e2e
    environment: {TESTBED_NAME: api}
    deploy: {replicas: 3}
  solo:
    image: meshctl/testbed:e2e
    environment: {TESTBED_NAME: solo}
  hang:
    image: meshctl/testbed:e2e
    environment: {TESTBED_NAME: hang}
  client:
    image: meshctl/testbed:e2e
    command: ["sleep", "infinity"]
    init: true
"""
UPSTREAMS = ("api", "solo", "hang")


def apply(home: Path, text: str) -> None:
    done = meshctl("apply", "-f", "-", home=home, stdin=text)
    assert done.code == 0, done.err
    synced(home)


def synced(home: Path, timeout: float = 20) -> None:
    done = meshctl("proxy-status", "-p", PROJECT, "--wait", "--timeout", str(timeout), home=home)
    assert done.code == 0, done.out + done.err


def delete(home: Path, *resources: tuple[str, str]) -> None:
    for kind, name in resources:
        meshctl("delete", kind, name, home=home)
    synced(home)


def answers(app: App, upstream: str) -> bool:
    code, _ = app.exec("client", "curl", "-sf", "-o", "/dev/null", "--max-time", "2", f"http://{upstream}:8080/echo")
    return code == 0


def proxy_status(home: Path, service: str) -> dict[str, Any]:
    done = meshctl("proxy-status", f"{PROJECT}.{service}", "-o", "json", home=home)
    assert done.code == 0, done.err
    found = json.loads(done.out)
    return found[0] if isinstance(found, list) else found


def proxy_proc(app: App, sidecar: str) -> tuple[int, int, int]:
    code, out = app.exec(sidecar, "python3", "-c", PROXY_PROC)
    assert code == 0 and out.strip(), out
    pid, rss_kb, fds = (int(v) for v in out.split())
    return pid, rss_kb, fds


class Load:
    """`steady.py` in the client's pod, in the background; `rows` are [seconds from start, status, error]."""

    def __init__(self, app: App, url: str, rate: float, seconds: float) -> None:
        self.result: dict[str, Any] = {}
        self._thread = threading.Thread(target=self._run, args=(app, url, rate, seconds))

    def _run(self, app: App, url: str, rate: float, seconds: float) -> None:
        code, out = app.exec("client", "python3", "/testbed/steady.py", url, str(rate), str(seconds))
        self.result = json.loads(out) if code == 0 else {"error": out}

    def __enter__(self) -> Load:
        self.started = time.monotonic()
        self._thread.start()
        return self

    def at(self, seconds: float) -> float:
        """Sleep until `seconds` into the load (approximately: the exec takes a moment to start)."""
        time.sleep(max(0.0, self.started + seconds - time.monotonic()))
        return time.monotonic() - self.started

    def __exit__(self, *exc: object) -> None:
        self._thread.join()

    @property
    def rows(self) -> list[list]:
        assert "rows" in self.result, self.result
        return self.result["rows"]

    def failed(self) -> list[list]:
        return [r for r in self.rows if not 200 <= r[1] < 400]


@pytest.fixture(scope="module")
def rel(engine: DockerClient, mesh_home: Path, testbed_image: str,
        tmp_path_factory: pytest.TempPathFactory) -> Iterator[App]:
    workdir = tmp_path_factory.mktemp("rel")
    (workdir / "compose.yaml").write_text(COMPOSE)
    try:
        app = up_meshed(engine, mesh_home, workdir / "compose.yaml", PROJECT, workdir)
        for upstream in UPSTREAMS:
            app.wait_for(lambda u=upstream: answers(app, u), f"{upstream} answers")  # type: ignore[misc]
        yield app
    finally:
        if (workdir / "meshed.yaml").is_file():
            App(engine, require_compose(), PROJECT, workdir / "meshed.yaml").down()


def restore(app: App, *stranded: str) -> None:
    """Every container of the project running again, and every upstream answering. A `stranded` app
    outlived its sidecar container: restarted, it joins the new sidecar's network namespace."""
    app.compose("up", "-d")
    app.wait_healthy()
    for service in stranded:
        app.container(service).restart(timeout=1)
    for upstream in UPSTREAMS:
        app.wait_for(lambda u=upstream: answers(app, u), f"{upstream} answers again")  # type: ignore[misc]


# --- a sidecar's proxy killed --------------------------------------------------------------------------------

def test_a_killed_proxy_is_back_within_2s_with_its_config_under_load(rel: App, mesh_home: Path) -> None:
    apply(mesh_home, f"""apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: solo-deny, namespace: {PROJECT}}}
spec:
  selector: {{matchLabels: {{app: solo}}}}
  action: DENY
  rules: [{{to: [{{operation: {{paths: ["/status/*"]}}}}]}}]
""")
    try:
        before = proxy_status(mesh_home, "solo")
        pid, _, _ = proxy_proc(rel, "solo-proxy")
        with Load(rel, "http://solo:8080/echo", 40, 10) as load:
            killed_at = load.at(4)
            code, out = rel.exec("solo-proxy", "python3", "-c", f"import os; os.kill({pid}, 9)")
        assert code == 0, out
        assert proxy_proc(rel, "solo-proxy")[0] != pid, "the proxy was not killed"
        failed = load.failed()
        # Failures only right after the kill, and none from 2 s after it: the service is back.
        assert all(killed_at - 1 <= r[0] <= killed_at + 2 for r in failed), failed
        recovered = [r for r in load.rows if r[0] > killed_at and 200 <= r[1] < 400]
        assert recovered and recovered[0][0] - killed_at < 2.0, (killed_at, failed[:5])
        assert sum(1 for r in load.rows if r[0] > killed_at + 2 and r[1] == 200) > 100
        # With its config: the same revision acknowledged, and the policy in force.
        after = proxy_status(mesh_home, "solo")
        assert after["status"] == "SYNCED" and after["revision"] == before["revision"]
        _, out = rel.exec("client", "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                          "http://solo:8080/status/200")
        assert out == "403", out
    finally:
        delete(mesh_home, ("authorizationpolicy", "solo-deny"))


# --- one replica of three killed ------------------------------------------------------------------------------

def test_killed_replicas_cost_no_idempotent_request_with_retries(rel: App, mesh_home: Path,
                                                                  engine: DockerClient) -> None:
    apply(mesh_home, """apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: api}
spec:
  hosts: [api]
  http:
  - route: [{destination: {host: api}}]
    retries: {attempts: 3, perTryTimeout: 2s, retryOn: "connect-failure,reset,gateway-error"}
""")
    try:
        with Load(rel, "http://api:8080/echo", 40, 12) as load:
            load.at(3)
            rel.container("api-2").kill()  # the app: its sidecar stays and finds nobody behind it
            load.at(7)
            rel.container("api-3-proxy").kill()  # the whole pod's network: its address goes dark
        assert load.result["sent"] >= 400
        assert load.failed() == [], load.failed()[:10]
        rel.compose("up", "-d")  # the killed sidecar runs again, in a namespace its app is not in
        rel.wait_healthy()
        assert stranded(mesh_home) == ["service e2erel/api-3"], "analyze did not find the stranded app"
    finally:
        restore(rel, "api-3")
        delete(mesh_home, ("vs", "api"))
    assert stranded(mesh_home) == []


def stranded(home: Path) -> list[str]:
    """The apps `meshctl analyze` finds cut off from their restarted sidecar (MSH0111)."""
    found = json.loads(meshctl("analyze", "-p", PROJECT, "-o", "json", home=home).out)
    return sorted(m["resource"] for m in found if m["code"] == "MSH0111")


# --- the app container restarted ------------------------------------------------------------------------------

def test_a_restarted_app_container_recovers_by_itself(rel: App, mesh_home: Path) -> None:
    pid, _, _ = proxy_proc(rel, "solo-proxy")
    with Load(rel, "http://solo:8080/echo", 30, 12) as load:
        load.at(3)
        rel.container("solo").restart(timeout=1)
        back_at = time.monotonic() - load.started  # restart() returns once the app runs again
    failed = load.failed()
    assert all(r[0] <= back_at + 1 for r in failed), (back_at, failed)
    assert sum(1 for r in load.rows if r[0] > back_at + 1 and r[1] == 200) > 100
    assert proxy_proc(rel, "solo-proxy")[0] == pid, "the sidecar should not have restarted"
    synced(mesh_home)


# --- slow and hung upstreams -----------------------------------------------------------------------------------

HANG_CALLS = r"""
import http.client, json, sys, threading, time
rows = []
def call():
    t = time.time()
    try:
        c = http.client.HTTPConnection('hang', 8080, timeout=20)
        c.request('GET', '/slow?ms=30000'); r = c.getresponse(); r.read()
        rows.append([r.status, time.time() - t])
    except Exception as e:
        rows.append([0, time.time() - t])
for _ in range(int(sys.argv[1])):
    ts = [threading.Thread(target=call) for _ in range(int(sys.argv[2]))]
    [t.start() for t in ts]; [t.join() for t in ts]
print(json.dumps(rows))
"""


def test_slow_and_hung_upstreams_time_out_and_leak_nothing(rel: App, mesh_home: Path) -> None:
    apply(mesh_home, """apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: hang}
spec:
  hosts: [hang]
  http: [{timeout: 500ms, route: [{destination: {host: hang}}]}]
""")
    try:
        baseline = {s: proxy_proc(rel, s) for s in ("client-proxy", "hang-proxy")}
        code, out = rel.exec("client", "python3", "-c", HANG_CALLS, "10", "20")  # 200 calls, 20 at a time
        assert code == 0, out
        rows = json.loads(out)
        assert len(rows) == 200 and all(status == 504 for status, _ in rows), rows[:5]
        assert max(took for _, took in rows) < 3.0, "a timeout fired late"

        def settled() -> bool:
            now = {s: proxy_proc(rel, s) for s in baseline}
            return all(now[s][2] <= baseline[s][2] + 4 for s in baseline)
        rel.wait_for(settled, "the sidecars' file descriptors are back to their baseline", timeout=15)
        for sidecar, (pid, rss_kb, _) in baseline.items():
            now_pid, now_rss, _ = proxy_proc(rel, sidecar)
            assert now_pid == pid and now_rss < rss_kb + 20_000, (sidecar, rss_kb, now_rss)
        assert answers(rel, "hang")
    finally:
        delete(mesh_home, ("vs", "hang"))


# --- the Docker engine restarted (sorted last but one: every other project's apps stop with it) ---------------

def _restart_engine(engine: DockerClient) -> None:
    """Stop dockerd and start it again the way install.sh does (or through systemd where it runs it)."""
    if subprocess.run(["systemctl", "is-active", "--quiet", "docker"], capture_output=True).returncode == 0:
        subprocess.run(["systemctl", "restart", "docker"], check=True, timeout=180)
    else:
        pid = int(Path("/var/run/docker.pid").read_text())
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 90
        while _running(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _running(pid), "dockerd did not stop within 90 s"
        with open("/var/log/meshctl-dockerd.log", "ab") as log:
            subprocess.Popen(["dockerd"], stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            engine.ping()
            return
        except Exception:  # the socket is missing or refuses while dockerd starts
            time.sleep(0.5)
    raise AssertionError("dockerd did not answer within 90 s of its restart")


def _running(pid: int) -> bool:
    """True while `pid` lives. An exited dockerd whose parent never reaps it (say a shell that exec'd this very
    pytest after starting it) stays a zombie: it has stopped, so reap it if it is ours and count it as gone."""
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    except ChildProcessError:  # not our child: its parent or init reaps it
        pass
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in ("Z", "X")


@pytest.mark.engine_restart
def test_after_an_engine_restart_compose_up_brings_the_mesh_back(rel: App, mesh_home: Path,
                                                                 engine: DockerClient) -> None:
    if os.geteuid() != 0:
        pytest.skip("restarting the Docker engine needs root")
    synced(mesh_home)
    _restart_engine(engine)
    # The sidecars come back by their restart policy, with their config: proxy-status says so.
    rel.wait_for(lambda: _statuses(mesh_home) == {"SYNCED"}, "every proxy SYNCED after the restart", 90)
    rel.compose("up", "-d")  # the apps, which have no restart policy of their own
    rel.wait_healthy()
    for upstream in UPSTREAMS:
        rel.wait_for(lambda u=upstream: answers(rel, u), f"{upstream} answers after the restart")  # type: ignore[misc]
    synced(mesh_home)
    code, out = rel.exec("client", "curl", "-sf", "http://solo:8080/echo")
    assert code == 0, out
    assert any(e.get("mtls") and e.get("direction") == "inbound" for e in rel.logs("solo-proxy")[-5:])
    # Stopping a sidecar shows at once, as it did before the restart.
    rel.container("hang-proxy").stop(timeout=15)
    assert _statuses(mesh_home, "hang") == {"NOT RUNNING"}
    rel.compose("up", "-d")
    rel.wait_healthy()
    synced(mesh_home)


def _statuses(home: Path, service: str | None = None) -> set[str]:
    rows = json.loads(meshctl("proxy-status", "-p", PROJECT, "-o", "json", home=home).out or "[]")
    return {r["status"] for r in rows if service is None or r["service"] == service}

