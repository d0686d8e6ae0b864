"""The engine's capture listeners behind real nat REDIRECT rules, in a throwaway network namespace.

Two engine sidecars run as processes: the client pod's outbound (15001) and the server pod's inbound (15006).
One namespace stands in for both pods (10.0.0.2 is the server pod's address), so the owner match that
exempts the proxy (uid 1337 in a pod) is made on the group instead: each sidecar runs with its own gid
(they are root otherwise, which keeps the venv readable), and nat OUTPUT sends
  the app's connections to 10.0.0.2                      -> 15001 (the client pod's outbound capture)
  the outbound sidecar's (gid 1337) connections there    -> 15006 (the server pod's inbound capture)
  the inbound sidecar's (gid 1338) connections to the app: untouched
Every original destination is read with SO_ORIGINAL_DST. The apps and the client run in the test script.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.unit.engine.helpers import TD, make_pki
from tests.unit.engine.test_listeners import REVIEWS_ID

ON_CI = os.environ.get("CI", "").lower() == "true"
ROOT = Path(__file__).parents[3]
SNIFF_S = 1.0  # the sidecars' sniffing timeout in this test: "no wait" and "waited" differ by far

NS_SCRIPT = textwrap.dedent("""
    import asyncio, os, socket, subprocess, sys, time
    from sidecar.engine.listeners import original_destination

    client_dir, server_dir, client_snap, server_snap, sniff = sys.argv[1:6]
    SNIFF = float(sniff)
    GREETING = b"5.5.5-10.11.6-MariaDB greeting\\x00"
    for cmd in ["ip link set lo up", "ip addr add 10.0.0.2/32 dev lo", "ip addr add 10.0.0.3/32 dev lo",
                "iptables -t nat -A OUTPUT -p tcp -m owner --gid-owner 1338 -j RETURN",
                "iptables -t nat -A OUTPUT -p tcp -d 10.0.0.2 -m owner --gid-owner 1337 -j REDIRECT --to-ports 15006",
                "iptables -t nat -A OUTPUT -p tcp -d 10.0.0.2 -j REDIRECT --to-ports 15001",
                "iptables -t nat -A OUTPUT -p tcp -d 10.0.0.3 --dport 5555 -j REDIRECT --to-ports 15555"]:
        subprocess.run(cmd, shell=True, check=True)

    # SO_ORIGINAL_DST itself: a redirected connection, and one made to the listener directly
    lsock = socket.create_server(("0.0.0.0", 15555))
    for target, expected in ((("10.0.0.3", 5555), {("10.0.0.3", 5555)}),
                             (("127.0.0.1", 15555), {None, ("127.0.0.1", 15555)})):
        c = socket.create_connection(target)
        conn, _ = lsock.accept()
        try:
            got = original_destination(conn)
        except OSError:
            got = None
        assert got in expected, (target, got)
        conn.close(); c.close()
    lsock.close()

    async def greeter(reader, writer):  # a server that speaks first, as MySQL does, then echoes
        writer.write(GREETING)
        while data := await reader.read(65536):
            writer.write(data)
        writer.close()

    async def echo(reader, writer):
        while data := await reader.read(65536):
            writer.write(data)
        writer.close()

    seen = []

    async def http(reader, writer):
        while True:
            try:
                head = await reader.readuntil(b"\\r\\n\\r\\n")
            except asyncio.IncompleteReadError:
                break
            seen.append(head.split(b"\\r\\n")[0])
            writer.write(b"HTTP/1.1 200 OK\\r\\ncontent-length: 2\\r\\n\\r\\nok")
        writer.close()

    async def sidecar(role, directory, snap, gid):
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.unit.engine.netns_sidecar", role, directory, snap, group=gid,
            extra_groups=[], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            env={**os.environ, "SNIFF_TIMEOUT_S": sniff})
        line = await asyncio.wait_for(proc.stdout.readline(), 20)
        assert line == b"ready\\n", line
        return proc

    async def stop(proc):
        proc.stdin.close()
        out = await asyncio.wait_for(proc.stdout.read(), 10)
        await asyncio.wait_for(proc.wait(), 10)
        return out.decode().split()

    async def first_greeting(port):
        started = time.monotonic()
        reader, writer = await asyncio.open_connection("10.0.0.2", port)
        got = await asyncio.wait_for(reader.readexactly(len(GREETING)), 10)  # having sent nothing
        elapsed = time.monotonic() - started
        assert got == GREETING, got
        writer.write(b"select 1")
        assert await asyncio.wait_for(reader.readexactly(8), 5) == b"select 1"
        writer.close()
        return elapsed

    async def main():
        servers = [await asyncio.start_server(h, "10.0.0.2", p) for h, p in
                   ((greeter, 3306), (greeter, 7001), (greeter, 7002), (echo, 7000), (http, 9080))]
        inbound = await sidecar("inbound", server_dir, server_snap, 1338)
        outbound = await sidecar("outbound", client_dir, client_snap, 1337)
        mysql = await first_greeting(3306)  # well-known server-first port
        declared = await first_greeting(7002)  # declared tcp in the snapshot
        sniffed = await first_greeting(7001)  # nobody said: TCP after the sniffing timeout
        # the outbound waited once; the inbound relayed at once on the L4 marker (no second wait)
        assert mysql < SNIFF and declared < SNIFF <= sniffed < 2 * SNIFF, (mysql, declared, sniffed)
        reader, writer = await asyncio.open_connection("10.0.0.2", 7000)  # client-first binary echo
        payload = os.urandom(256 * 1024)
        writer.write(b"\\x00" + payload)
        assert await asyncio.wait_for(reader.readexactly(len(payload) + 1), 10) == b"\\x00" + payload
        writer.close()
        reader, writer = await asyncio.open_connection("10.0.0.2", 9080)  # HTTP/1: L7 both sides
        for path in (b"/a", b"/b"):
            writer.write(b"GET " + path + b" HTTP/1.1\\r\\nhost: reviews\\r\\n\\r\\n")
            head = await asyncio.wait_for(reader.readuntil(b"\\r\\n\\r\\n"), 10)
            assert head.startswith(b"HTTP/1.1 200") and await reader.readexactly(2) == b"ok", head
        writer.close()
        assert seen == [b"GET /a HTTP/1.1", b"GET /b HTTP/1.1"], seen
        out_plans, in_plans = await stop(outbound), await stop(inbound)
        assert out_plans == ["L4Tcp"] * 4 + ["L7Http"], out_plans
        assert in_plans == ["TerminateTls", "L4Tcp"] * 4 + ["TerminateTls", "L7Http"], in_plans
        for s in servers:
            s.close()
        print("ok")

    asyncio.run(main())
""")


def snapshot(app: str, host_protocols: dict[str, str]) -> dict[str, object]:
    return {
        "format": 1, "revision": 1, "hash": "h", "trust_domain": "cluster.local",
        "proxy": {"name": f"shop.{app}", "service": app, "app": app, "version": "v1", "identity": f"{TD}/{app}"},
        "inbound": {"mode": "PERMISSIVE"}, "outbound": {},
        "services": [{"name": "reviews", "identity": REVIEWS_ID, "workloads": [
            {"host": "10.0.0.2", "version": "v1", "port_protocols": host_protocols}]}],
    }


def test_server_first_client_first_and_http_through_real_nat_rules(tmp_path: Path) -> None:
    unshare = shutil.which("unshare")
    missing = [tool for tool in ("iptables", "ip") if shutil.which(tool) is None]
    if os.geteuid() != 0 or unshare is None or missing or subprocess.run(
            [unshare, "--net", "true"], capture_output=True).returncode != 0:
        reason = "needs root, unshare --net (a private network namespace), iptables and ip"
        if ON_CI:
            pytest.fail(f"{reason}; missing here: {missing or 'root or unshare --net'}")
        pytest.skip(reason)
    pki = make_pki(tmp_path)
    snaps = {}
    for app in ("productpage", "reviews"):
        snaps[app] = tmp_path / f"{app}.json"
        snaps[app].write_text(json.dumps(snapshot(app, {"7002": "tcp"})))
    done = subprocess.run([unshare, "--net", sys.executable, "-c", NS_SCRIPT, str(pki.dirs["client"]),
                           str(pki.dirs["reviews"]), str(snaps["productpage"]), str(snaps["reviews"]), str(SNIFF_S)],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stdout + done.stderr
