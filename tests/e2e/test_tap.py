"""`meshctl tap` on the shared bookinfo demo: live records both ways with real statuses, a flow file that
mitmproxy's FlowReader reads back with the same requests, redaction (and --no-redact), and /tap refused to a
container that is not the host."""

from __future__ import annotations

import http.client
import json
import os
import re
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from docker import DockerClient
from mitmproxy.http import HTTPFlow
from mitmproxy.io import FlowReader

from meshctl.home import MeshHome
from tests.conftest import REPO
from tests.e2e.conftest import App
from tests.e2e.test_dataplane import bookinfo

SIDECAR = "productpage-proxy"


class TapRun:
    """`meshctl tap …` as a user runs it, its output read as it comes."""

    def __init__(self, home: Path, *args: str) -> None:
        env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "200", "MESHCTL_HOME": str(home)}
        self.proc = subprocess.Popen([sys.executable, "-m", "meshctl", "tap", *args], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
        self.out: list[str] = []
        self.err: list[str] = []
        self.readers = [threading.Thread(target=self._read, args=(stream, sink), daemon=True)
                        for stream, sink in ((self.proc.stdout, self.out), (self.proc.stderr, self.err))]
        for reader in self.readers:
            reader.start()

    @staticmethod
    def _read(stream: Any, sink: list[str]) -> None:
        for line in iter(stream.readline, ""):
            sink.append(line)

    def wait_open(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not any(line.startswith("tapping ") for line in self.err):
            assert self.proc.poll() is None, "".join(self.err)
            assert time.monotonic() < deadline, f"tap did not open within {timeout}s: {''.join(self.err)}"
            time.sleep(0.1)

    def running(self) -> bool:
        return self.proc.poll() is None

    def finish(self, timeout: float = 60) -> tuple[int, list[dict[str, Any]]]:
        try:
            code = self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
        for reader in self.readers:
            reader.join(5)
        return code, [json.loads(line) for line in self.out if line.startswith("{")]

    @property
    def text(self) -> str:
        return "".join(self.out + self.err)


def get(path: str, headers: dict[str, str] | None = None) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", 9080, timeout=30)
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def drive(tap: TapRun, path: str, headers: dict[str, str] | None = None, limit: int = 40) -> None:
    """Requests to productpage until the tap has seen enough and exits (bounded)."""
    tap.wait_open()
    for _ in range(limit):
        if not tap.running():
            return
        assert get(path, headers) == 200
        time.sleep(0.1)


def flows(path: Path) -> list[HTTPFlow]:
    with path.open("rb") as f:
        return [f for f in FlowReader(f).stream() if isinstance(f, HTTPFlow)]


def sidecar_log(app: App) -> str:
    return app.container(SIDECAR).logs(stdout=False, stderr=True).decode(errors="replace")


def test_tap_streams_live_bookinfo_traffic_both_ways_and_saves_it_for_mitmproxy(
        demo: dict, engine: DockerClient, mesh_home: Path, tmp_path: Path) -> None:
    app = bookinfo(engine, mesh_home)
    saved = tmp_path / "productpage.mitm"
    tag = uuid.uuid4().hex[:12]
    tap = TapRun(mesh_home, "productpage", "-p", "bookinfo", "--max", "12", "-o", "json", "--save", str(saved))
    drive(tap, f"/productpage?tap={tag}")
    code, records = tap.finish()
    assert code == 0, tap.text
    assert len(records) == 12 and all(r["proxy"] == "bookinfo.productpage" for r in records), records
    inbound = [r for r in records if r["direction"] == "inbound"]
    outbound = [r for r in records if r["direction"] == "outbound"]
    assert inbound and all(r["path"] == f"/productpage?tap={tag}" and r["status"] == 200 and r["method"] == "GET"
                           and r["peer"] == "" and r["protocol"] == "HTTP/1.1" for r in inbound), inbound
    assert {r["path"] for r in outbound} == {"/details/0", "/reviews/0"}, outbound
    assert all(r["status"] == 200 and r["latency_ms"] > 0 and r["response_bytes"] > 0 for r in outbound)
    peers = {r["peer"].rsplit("/", 1)[-1] for r in outbound}
    # the SPIFFE ID names its account: bookinfo runs as Istio's (`mesh.service-account: bookinfo-*`)
    assert peers == {"bookinfo-details", "bookinfo-reviews"}
    assert all(r["peer"].startswith("spiffe://") for r in outbound)
    # the flow file holds the same exchanges, in the same order
    read = flows(saved)
    assert [(f.request.method, f.request.path, f.response.status_code if f.response else 0) for f in read] == [
        (r["method"], r["path"], r["status"]) for r in records]
    assert "saved 12 flows" in tap.text
    # the sidecar logged the session: who asked, how long, how many
    gateway = engine.networks.get(MeshHome(mesh_home).settings().network).attrs["IPAM"]["Config"][0]["Gateway"]
    assert re.search(rf"tap session \d+ opened by {re.escape(gateway)}: path=\* method=\* status=\* bodies=off "
                     r"redact=on max=12", sidecar_log(app))
    assert re.search(rf"tap session \d+ closed \([a-z ]+\) after [\d.]+s: 12 records, 0 dropped; opened by "
                     rf"{re.escape(gateway)}", sidecar_log(app)), sidecar_log(app)[-2000:]


def test_tap_redacts_credentials_in_its_output_and_file_unless_told_not_to(
        demo: dict, engine: DockerClient, mesh_home: Path, tmp_path: Path) -> None:
    token, cookie = f"tok-{uuid.uuid4().hex}", f"ck-{uuid.uuid4().hex}"
    secrets = {"Authorization": f"Bearer {token}", "cookie": f"session={cookie}; theme=dark"}
    for redact in (True, False):
        saved = tmp_path / f"redact-{redact}.mitm"
        tag = uuid.uuid4().hex[:12]
        tap = TapRun(mesh_home, "productpage", "-p", "bookinfo", "--path", "/productpage", "--method", "GET",
                     "--max", "1", "--bodies", "-o", "json", "--save", str(saved), *([] if redact else ["--no-redact"]))
        drive(tap, f"/productpage?redact={tag}", secrets)
        code, records = tap.finish()
        assert code == 0, tap.text
        [record] = records
        assert record["direction"] == "inbound" and record["path"] == f"/productpage?redact={tag}"
        assert "The Comedy of Errors" in record["response_body"]["data"]  # --bodies: the real page
        headers = {k.lower(): v for k, v in record["request_headers"]}
        [flow] = flows(saved)
        assert flow.response is not None and b"The Comedy of Errors" in flow.response.content
        blob = saved.read_bytes()
        if redact:
            assert headers["authorization"] == headers["cookie"] == "<redacted>"
            assert flow.request.headers["authorization"] == "<redacted>"
            assert token not in tap.text and cookie not in tap.text
            assert token.encode() not in blob and cookie.encode() not in blob
        else:
            assert headers["authorization"] == f"Bearer {token}" and cookie in headers["cookie"]
            assert flow.request.headers["authorization"] == f"Bearer {token}" and cookie.encode() in blob
    assert "redact=OFF" in sidecar_log(bookinfo(engine, mesh_home))


PROBE = r"""
import sys, urllib.request, urllib.error
for path in ("/tap", "/spans"):
    try:
        with urllib.request.urlopen(f"http://{sys.argv[1]}:15090{path}", timeout=10) as r:
            print(path, r.status, r.read(200))
    except urllib.error.HTTPError as e:
        print(path, e.code, e.read().decode().strip())
"""


def test_tap_is_refused_to_a_container_that_is_not_the_host(demo: dict, engine: DockerClient,
                                                             mesh_home: Path) -> None:
    app = bookinfo(engine, mesh_home)
    network = MeshHome(mesh_home).settings().network
    address = app.container(SIDECAR).attrs["NetworkSettings"]["Networks"][network]["IPAddress"]
    out = engine.containers.run("meshctl/base:bookworm", ["python3", "-c", PROBE, address], network=network,
                                remove=True, labels={"io.meshctl.managed": "true"}).decode()
    assert "/tap 403 only the host may read this" in out and "/spans 403" in out, out
    assert re.search(r"refused /tap to [\d.]+: only the host may read it", sidecar_log(app))
    # nor to the pod's own app, over the pod's loopback (it would see requests its sidecar refused)
    code, out = app.exec("productpage", "python3", "-c", PROBE, "127.0.0.1")
    assert code == 0 and "/tap 403 only the host may read this" in out, out
    assert "refused /tap to 127.0.0.1" in sidecar_log(app)
