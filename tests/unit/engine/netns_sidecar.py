"""One engine sidecar for test_netns.py: `python -m tests.unit.engine.netns_sidecar ROLE CERT_DIR SNAPSHOT`.

ROLE is "outbound" (listens on 15001, knows the mesh's endpoints through sidecar.endpoints) or "inbound"
(15006, terminates mutual TLS). It prints "ready" once listening, runs until its stdin closes, then prints
the kinds of plan it carried out, one line, and exits. Original destinations come from SO_ORIGINAL_DST.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from sidecar import snapshot
from sidecar.endpoints import Endpoint, Endpoints
from sidecar.engine import l4, plan
from sidecar.engine.listeners import CaptureListener, Sidecar
from sidecar.engine.plan import INBOUND_PORT, OUTBOUND_PORT
from sidecar.engine.pool import Pool
from sidecar.engine.proxy import Listener, Response
from sidecar.engine.tls import directory_contexts


async def main(role: str, cert_dir: Path, snapshot_path: Path) -> None:
    if "SNIFF_TIMEOUT_S" in os.environ:  # the test widens it, so "no wait" and "waited" differ by far
        plan.SNIFF_TIMEOUT_S = float(os.environ["SNIFF_TIMEOUT_S"])
    snap = snapshot.load(snapshot_path)
    endpoints = Endpoints(snap.services)
    l4_client, server = l4.contexts(cert_dir)
    http_client, _ = directory_contexts(cert_dir)

    async def lookup(ip: str) -> Endpoint | None:
        return (await endpoints.owner(ip))[0]

    inbound = role == "inbound"
    listener = CaptureListener(INBOUND_PORT if inbound else OUTBOUND_PORT, Sidecar(
        snapshot=lambda: snap, lookup=lookup, server_tls=lambda: server, l4_tls=lambda: l4_client,
        l7=Listener(lambda head: Response(500), Pool(None if inbound else http_client))))
    await listener.start("0.0.0.0")
    print("ready", flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)  # until the test closes our stdin
    print(" ".join(kind.__name__ for kind in listener.plans), flush=True)
    listener.close()


if __name__ == "__main__":
    import uvloop

    uvloop.run(main(sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])))
