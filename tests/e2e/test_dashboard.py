"""`meshctl dashboard` in a real headless chromium, on meshed bookinfo with real traffic.

The page is loaded once; while it stays open, the load and the routes change underneath it, and the
test watches the same page follow. A screenshot is kept as a test artifact.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO, ctrl_c_reaches_it, meshctl
from tests.e2e.cdp import Browser, find_browser

PRODUCTPAGE = "http://127.0.0.1:9080/productpage"
ARTIFACTS = Path(os.environ.get("MESHCTL_ARTIFACTS") or REPO / "tests" / "artifacts")


def edge(target: str) -> str:
    """JS: the edge productpage -> target as {rps, error, mtls}, or null while the graph does not show it."""
    return (f"(() => {{ const e = document.querySelector('[data-edge=\"productpage:v1->{target}\"]'); "
            "return e && {rps: e.dataset.rps === '' ? null : +e.dataset.rps, error: e.dataset.errorRate, "
            "mtls: e.dataset.mtls}; })()")


def rps(target: str) -> str:
    return f"(({edge(target)}) || {{}}).rps"


@pytest.fixture
def chromium() -> str:
    found = find_browser()
    if found is None:
        message = "no chromium to test the dashboard in: apt-get install chromium (./install.sh --test does)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return found


@pytest.fixture
def dashboard_url(demo: dict, mesh_home: Path, tmp_path: Path) -> Iterator[str]:
    """`meshctl dashboard` as users run it, on any free port; stopped with Ctrl-C (SIGINT) at the end."""
    err = (tmp_path / "dashboard.err").open("w+")
    proc = subprocess.Popen([sys.executable, "-m", "meshctl", "dashboard", "--no-browser", "--port", "0",
                             "--interval", "1s", "-p", "bookinfo"],
                            env={**os.environ, "MESHCTL_HOME": str(mesh_home), "NO_COLOR": "1"}, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=err, text=True, preexec_fn=ctrl_c_reaches_it)
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 60)
        line = proc.stdout.readline().strip() if ready else ""
        err.seek(0)
        assert line.startswith("http://127.0.0.1:"), f"no URL from meshctl dashboard: {line!r} {err.read()}"
        yield line
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        err.seek(0)
        stderr = err.read()
        err.close()
    assert proc.returncode == 130, f"meshctl dashboard exited with {proc.returncode}: {stderr}"  # Ctrl-C, as everywhere
    assert "dashboard stopped" in stderr


class Load:
    """Steady page views of productpage from the host, in a background thread, for at most `limit` seconds."""

    def __init__(self, per_second: float = 15, limit: float = 180) -> None:
        self.stop = threading.Event()
        self.codes: dict[int, int] = {}
        self.thread = threading.Thread(target=self._run, args=(1 / per_second, time.monotonic() + limit), daemon=True)
        self.thread.start()

    def _run(self, pause: float, until: float) -> None:
        while not self.stop.is_set() and time.monotonic() < until:
            started = time.monotonic()
            try:
                with urllib.request.urlopen(PRODUCTPAGE, timeout=5) as resp:
                    resp.read()
                    code = resp.status
            except urllib.error.HTTPError as exc:
                code = exc.code
            except OSError:
                code = 0
            self.codes[code] = self.codes.get(code, 0) + 1
            self.stop.wait(max(0.0, pause - (time.monotonic() - started)))

    def end(self) -> None:
        self.stop.set()
        self.thread.join(10)


def test_dashboard_renders_the_live_graph_and_follows_traffic_changes(chromium: str, dashboard_url: str,
                                                                      mesh_home: Path) -> None:
    had_rule = meshctl("get", "destinationrule", "reviews", home=mesh_home).code == 0
    browser = Browser(chromium, width=1400, height=1100)
    load = Load()
    try:
        browser.navigate(dashboard_url)
        browser.evaluate("window.loadedOnce = true")  # gone if the page ever reloads

        # 1. the graph: services and versions as nodes, the calls productpage makes as edges with live numbers
        busy_reviews = " || ".join(f"{rps(f'reviews:{v}')} > 0" for v in ("v1", "v2", "v3"))
        browser.wait_for(f"{rps('details:v1')} > 0 && ({busy_reviews})",
                         "productpage's edges to details and reviews carry traffic", timeout=90)
        nodes = browser.evaluate("[...document.querySelectorAll('[data-node]')].map(n => n.dataset.node)")
        assert {"productpage:v1", "details:v1", "reviews:v1", "reviews:v2", "reviews:v3", "ratings:v1",
                "unknown"} <= set(nodes), nodes
        details = browser.evaluate(edge("details:v1"))
        assert details["mtls"] == "true" and float(details["error"]) == 0.0, details
        assert browser.evaluate("document.getElementById('graph-error').textContent") == ""
        browser.wait_for("document.querySelectorAll('[data-proxy][data-status=\"SYNCED\"]').length >= 8",
                         "the proxies table shows every bookinfo sidecar SYNCED", timeout=30)
        browser.wait_for("document.querySelector('[data-chart=\"reviews\"] polyline') !== null",
                         "the reviews chart draws a line", timeout=30)
        browser.wait_for("+document.getElementById('seq').textContent >= 12", "a few seconds of chart history",
                         timeout=30)
        seq = browser.evaluate("+document.getElementById('seq').textContent")
        shot = browser.screenshot(ARTIFACTS / "dashboard.png")
        assert shot.stat().st_size > 10_000

        # 2. all of reviews to v1: the same page shows v2 and v3 going quiet, and the new route weights
        done = meshctl("route", "set", "reviews", "--to", "v1", home=mesh_home)
        assert done.code == 0, done.err
        browser.wait_for("document.querySelector('[data-route=\"reviews\"][data-weights=\"v1=100\"]') !== null",
                         "the routes table shows reviews -> v1 100%", timeout=30)
        browser.wait_for(f"{rps('reviews:v1')} > 0 && {rps('reviews:v2')} === 0 && {rps('reviews:v3')} === 0",
                         "only the edge to reviews:v1 carries traffic", timeout=45)

        # 3. the load stops: every edge from productpage drops to 0 requests/s
        load.end()
        browser.wait_for(f"{rps('details:v1')} === 0 && {rps('reviews:v1')} === 0",
                         "productpage's edges show no traffic", timeout=45)
        assert browser.evaluate("window.loadedOnce === true"), "the page reloaded instead of updating"
        assert browser.evaluate("+document.getElementById('seq').textContent") > seq
        assert load.codes.get(200, 0) > 0 and set(load.codes) == {200}, load.codes
    finally:
        load.end()
        browser.close()
        meshctl("route", "delete", "reviews", home=mesh_home)
        if not had_rule:
            meshctl("delete", "destinationrule", "reviews", home=mesh_home)
        meshctl("proxy-status", "-p", "bookinfo", "--wait", "--timeout", "20", home=mesh_home)


def test_dashboard_state_api_reports_the_mesh(dashboard_url: str) -> None:
    """The JSON the page polls: graph, history, routes, proxies and SLOs, each with its own error slot."""
    deadline = time.monotonic() + 60
    state: dict = {}
    while time.monotonic() < deadline:
        with urllib.request.urlopen(dashboard_url + "api/state", timeout=5) as resp:
            state = json.loads(resp.read())
        if state["seq"] >= 3 and state["proxies"]["updated_at"]:
            break
        time.sleep(0.5)
    assert state["project"] == "bookinfo" and state["interval_s"] == 1.0
    assert {n["id"] for n in state["graph"]["nodes"]} >= {"productpage:v1", "details:v1", "reviews:v2", "ratings:v1"}
    assert all(state[s]["error"] is None for s in ("graph", "routes", "proxies", "slos")), state
    assert {p["name"] for p in state["proxies"]["rows"]} >= {"bookinfo.productpage", "bookinfo.details"}
