"""[9 Trust] item 9: a container with NET_ADMIN in a pod removes or bypasses the capture rules (iptables,
native nftables, the legacy iptables backend); the sidecar
notices within seconds, restores them, logs it, and plaintext to its STRICT app is refused again.

The tamperer is a real container sharing web-strict's network namespace (`--network container:SIDECAR`)
with NET_ADMIN, running the image's real iptables.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.e2e.conftest import App

TAMPERING = {  # what the tamperer runs, and a rule text that must be gone once the sidecar restored capture
    "chain flushed": (["iptables", "-t", "nat", "-F", "MESH_INBOUND"], None),
    "jump removed": (["iptables", "-t", "nat", "-D", "PREROUTING", "-p", "tcp", "-j", "MESH_INBOUND"], None),
    "bypass inserted first": (["iptables", "-t", "nat", "-I", "PREROUTING", "1", "-p", "tcp", "--dport", "8080",
                               "-j", "ACCEPT"], "--dport 8080 -j ACCEPT"),
    "health port redirected to the app": (["iptables", "-t", "nat", "-A", "PREROUTING", "-p", "tcp", "--dport",
                                           "15021", "-j", "REDIRECT", "--to-ports", "8080"], "--to-ports 8080"),
    "raw NOTRACK": (["iptables", "-t", "raw", "-I", "PREROUTING", "-p", "tcp", "--dport", "8080", "-j", "CT",
                     "--notrack"], "--notrack"),
    # a native nftables nat chain ahead of iptables' (priority -101): the kernel NATs a connection once
    "nft chain ahead of capture": (["sh", "-c", "nft add table ip evil && nft 'add chain ip evil pre { type nat "
                                    "hook prerouting priority -101 ; }' && nft add rule ip evil pre tcp dport 8080 "
                                    "dnat to {ip}"], "table ip evil"),
    "legacy iptables backend": (["iptables-legacy", "-t", "nat", "-I", "PREROUTING", "-p", "tcp", "--dport", "8080",
                                 "-j", "ACCEPT"], "--dport 8080 -j ACCEPT"),
}


def plaintext_status(app: App) -> str:
    _, out = app.exec("outsider", "curl", "-s", "--max-time", "3", "-o", "/dev/null", "-w", "%{http_code}",
                         "http://web-strict:8080/echo")
    return out


def restored(sidecar: Any, leftover: str | None) -> bool:
    """Our rules in place and the tampering gone, in every place the kernel keeps rules."""
    code, rules = sidecar.exec_run(["sh", "-c", "iptables-save && nft list ruleset && iptables-legacy-save"])
    text = rules.decode()
    return code == 0 and "-A PREROUTING -p tcp -j MESH_INBOUND" in text and "-A MESH_INBOUND -p tcp -j REDIRECT" in \
        text and (leftover is None or leftover not in text)


@pytest.mark.parametrize("how", sorted(TAMPERING))
def test_tampered_capture_rules_are_restored(testbed: App, how: str) -> None:
    t = testbed
    sidecar = t.container("web-strict-proxy")
    assert plaintext_status(t) == "403"  # STRICT: plaintext is refused by the sidecar
    command, leftover = TAMPERING[how]
    ip = next(n["IPAddress"] for n in sidecar.attrs["NetworkSettings"]["Networks"].values() if n["IPAddress"])
    command = [part.replace("{ip}", ip) for part in command]
    since = time.time()
    t.engine.containers.run(t.container("outsider").image.id, command, remove=True,
                            network_mode=f"container:{sidecar.id}", cap_add=["NET_ADMIN"], entrypoint=[], user="0")
    assert not restored(sidecar, leftover), "the tampering did not take"
    # Within a few seconds the sidecar has put its rules back, and says so.
    t.wait_for(lambda: restored(sidecar, leftover), f"the sidecar restores its capture rules ({how})", timeout=15)
    t.wait_for(lambda: "capture rules were changed" in sidecar.logs(stdout=False, stderr=True, since=since).decode(
        errors="replace"), "the sidecar logs the change", timeout=5)
    assert plaintext_status(t) == "403"
    # and the sidecar is ready again, still serving the mesh
    t.wait_for(lambda: "capture rules verified intact again" in sidecar.logs(stdout=False, stderr=True, since=since)
               .decode(errors="replace"), "the sidecar reports ready again", timeout=10)
    assert t.exec("client", "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "http://web-strict:8080/echo")[1] \
        == "200"
