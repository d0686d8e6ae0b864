"""[9 Trust] item 9: a container with NET_ADMIN in a pod removes or bypasses the capture rules; the sidecar
notices within seconds, restores them, logs it, and plaintext to its STRICT app is refused again.

The tamperer is a real container sharing web-strict's network namespace (`--network container:SIDECAR`)
with NET_ADMIN, running the image's real iptables.
"""

from __future__ import annotations

import time

import pytest

from tests.e2e.conftest import App

TAMPERING = {
    "chain flushed": ["iptables", "-t", "nat", "-F", "MESH_INBOUND"],
    "jump removed": ["iptables", "-t", "nat", "-D", "PREROUTING", "-p", "tcp", "-j", "MESH_INBOUND"],
    "bypass inserted first": ["iptables", "-t", "nat", "-I", "PREROUTING", "1", "-p", "tcp", "--dport", "8080",
                              "-j", "ACCEPT"],
}


def plaintext_status(app: App) -> str:
    _, out = app.exec("outsider", "curl", "-s", "--max-time", "3", "-o", "/dev/null", "-w", "%{http_code}",
                         "http://web-strict:8080/echo")
    return out


@pytest.mark.parametrize("how", sorted(TAMPERING))
def test_tampered_capture_rules_are_restored(testbed: App, how: str) -> None:
    t = testbed
    sidecar = t.container("web-strict-proxy")
    assert plaintext_status(t) == "403"  # STRICT: plaintext is refused by the sidecar
    since = int(time.time()) - 1
    out = t.engine.containers.run(t.container("outsider").image.id, TAMPERING[how], remove=True,
                                  network_mode=f"container:{sidecar.id}", cap_add=["NET_ADMIN"],
                                  entrypoint=[], user="0")
    del out
    # Within a few seconds the sidecar has put its rules back, and says so.
    t.wait_for(lambda: "capture rules" in sidecar.logs(stdout=False, stderr=True, since=since).decode(errors="replace")
               and "restored" in sidecar.logs(stdout=False, stderr=True, since=since).decode(errors="replace"),
               f"the sidecar restores its capture rules ({how})", timeout=15)
    t.wait_for(lambda: plaintext_status(t) == "403", "plaintext is refused again", timeout=10)
    code, rules = sidecar.exec_run(["iptables-save", "-t", "nat"])
    text = rules.decode()
    assert code == 0 and "-A PREROUTING -p tcp -j MESH_INBOUND" in text and "--dport 8080 -j ACCEPT" not in text, text
    # and the sidecar is ready again (healthy), still serving the mesh
    t.wait_for(lambda: t.exec("client", "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                              "http://web-strict:8080/echo")[1] == "200", "the mesh still reaches web-strict")
