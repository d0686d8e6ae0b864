"""The sidecar's proxy process: a slim mitmproxy master with only the addons a sidecar needs.

Run as the proxy uid by addons.sidecar. mitmproxy's ~31 default addons are left out: they cost time on
every hook and none of them has a job here. Our Listeners addon decides every layer, MutualTLS provides
every TLS connection, so neither mitmproxy's NextLayer nor its TlsConfig (which would fail open to
its own defaults) is loaded.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from mitmproxy import options
from mitmproxy.addons import proxyserver
from mitmproxy.master import Master

from addons import capture, framing, snapshot
from addons.admin import Admin
from addons.authz import Authorization
from addons.endpoints import Endpoints
from addons.guard import RequestGuard
from addons.listeners import INBOUND_PORT, OUTBOUND_PORT, Listeners, local_networks
from addons.live import LiveSnapshot
from addons.mtls import CERT_DIR, MutualTLS
from addons.routing import Routing
from addons.telemetry import Telemetry
from addons.tracing import Tracing

log = logging.getLogger("meshctl.proxy")
SNAPSHOT_POLL_S = 0.1  # a stat() per tick: cheap, and config reaches the proxy in well under a second
DRAIN_TIMEOUT_S = float(os.environ.get("MESHCTL_DRAIN_TIMEOUT", "10"))
PROXY_VERSION = os.environ.get("MESHCTL_PROXY_VERSION", "dev")


class Connections:
    """Counts open client connections, so a stopping proxy can wait for in-flight work to finish."""

    def __init__(self) -> None:
        self.open = 0
        self.total = 0

    def client_connected(self, client: Any) -> None:
        self.open += 1
        self.total += 1

    def client_disconnected(self, client: Any) -> None:
        self.open -= 1


class ProxyState:
    def __init__(self, live: LiveSnapshot, mtls: MutualTLS, endpoints: Endpoints, telemetry: Telemetry,
                 connections: Connections, tracing: Tracing | None = None) -> None:
        self.live = live
        self.tracing = tracing
        self.mtls = mtls
        self.endpoints = endpoints
        self.telemetry = telemetry
        self.connections = connections
        self.listening = False
        self.draining = False
        self.started = time.time()
        self.capture_marker = capture.BROKEN_MARKER  # written by the supervisor (root) while it restores capture

    def readiness(self) -> tuple[bool, str]:
        if self.draining:
            return False, "draining"
        if not self.listening:
            return False, "starting"
        if self.capture_marker.exists():  # traffic may be bypassing the proxy: not ready until rules are back
            return False, "capture rules were changed; restoring"
        if self.mtls.contexts is None:
            return False, "no workload certificate"
        return True, "ready"

    @property
    def snap(self) -> snapshot.Snapshot:
        return self.live.current

    def status(self) -> dict[str, Any]:
        """The ack: which snapshot is in force, whether a newer one was rejected, and the certificate."""
        cert = self.mtls.contexts.cert_info if self.mtls.contexts else {}
        return {**self.live.status(), "proxy_version": PROXY_VERSION, "ready": self.readiness()[0], **cert}

    def config_dump(self) -> dict[str, Any]:
        return {
            "proxy_version": PROXY_VERSION,
            "status": self.status(),
            "snapshot": self.snap.raw,
            "listeners": [{"name": "virtualOutbound", "port": OUTBOUND_PORT, "direction": "outbound",
                           "excluded_ports": sorted(self.snap.exclude_outbound_ports)},
                          {"name": "virtualInbound", "port": INBOUND_PORT, "direction": "inbound",
                           "mode": self.snap.mode,
                           "excluded_ports": sorted(self.snap.exclude_inbound_ports),
                           "published_ports": sorted(self.snap.published_ports)}],
            "routes": list(self.snap.routes),
            "clusters": [{"name": s.name, "identity": s.identity,
                          "subsets": sorted({w.version for w in s.workloads}),
                          "policy": next((d for d in self.snap.destinations if d.get("host") == s.name), None)}
                         for s in self.snap.services],
            "secrets": {"identity": self.snap.identity,
                        **(self.mtls.contexts.cert_info if self.mtls.contexts else {})},
            "endpoints": {ip: {"service": e.service.name, "workload": e.workload.host, "version": e.workload.version}
                          for ip, e in sorted(self.endpoints.by_ip.items())},
        }

    def stats(self) -> dict[str, Any]:
        return {"uptime_s": round(time.time() - self.started, 1), "connections_open": self.connections.open,
                "connections_total": self.connections.total, "revision": self.snap.revision}


class Lifecycle:
    """Starts the admin endpoints and background tasks once mitmproxy's listeners are up."""

    def __init__(self, state: ProxyState, admin: Admin) -> None:
        self.state = state
        self.admin = admin
        self.tasks: list[asyncio.Task[None]] = []

    def running(self) -> None:
        loop = asyncio.get_running_loop()
        self.tasks.append(loop.create_task(self._start()))

    async def _start(self) -> None:
        loop = asyncio.get_running_loop()
        # Watchers first: whatever fails below, certificates and config keep being picked up.
        self.tasks += [loop.create_task(self._watch_certs()), loop.create_task(self._watch_snapshot()),
                       loop.create_task(self.state.endpoints.run_forever())]
        try:
            await self.admin.start()
        except OSError as exc:  # e.g. the app already listens on 15021: never report ready, say why
            log.error("cannot open the proxy's endpoints (15000/15021/15090): %s; this proxy stays unready", exc)
            return
        try:
            await asyncio.wait_for(self.state.endpoints.refresh(), 5)
        except Exception:  # the background refresh retries; ready now beats a stuck start
            log.exception("first endpoint refresh failed")
        self.state.listening = True
        log.info("proxy ready: %s (%s, mode %s)", self.state.snap.name, self.state.snap.identity, self.state.snap.mode)

    async def _watch_snapshot(self) -> None:
        while True:
            await asyncio.sleep(SNAPSHOT_POLL_S)
            try:
                self.state.live.poll()
            except Exception:  # the snapshot in force stays; the next change is tried again
                log.exception("applying a new snapshot failed")

    async def _watch_certs(self) -> None:
        while True:
            await asyncio.sleep(1)
            try:
                self.state.mtls.reload()
            except Exception:  # keep the certificate in force; a half-written pair loads on the next round
                log.exception("certificate reload failed; keeping the current one")


async def drain_then_stop(master: Master, state: ProxyState) -> None:
    """Stop being ready, let in-flight connections finish (bounded), then shut down."""
    state.draining = True
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    while state.connections.open > 0 and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    master.shutdown()


async def main() -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("mitmproxy").setLevel(logging.WARNING)
    # Listeners replaces mitmproxy's NextLayer on purpose; its absence is not worth a warning.
    logging.getLogger("mitmproxy.addons.proxyserver").setLevel(logging.ERROR)
    live = LiveSnapshot(CERT_DIR / "snapshot.json", snapshot.load(CERT_DIR / "snapshot.json"))
    mtls = MutualTLS(CERT_DIR)
    mtls.reload()
    endpoints = Endpoints(live.current.services)
    live.on_apply.append(endpoints.replace_services)
    telemetry = Telemetry(live, endpoints)
    framing.install(telemetry.refused_head)  # request-head limits while reading, before mitmproxy buffers more
    tracing = Tracing(live, telemetry)
    connections = Connections()
    state = ProxyState(live, mtls, endpoints, telemetry, connections, tracing)
    try:
        networks = local_networks(Path("/proc/net/route").read_text())
    except OSError:
        networks = ([], set())

    opts = options.Options()
    master = Master(opts)
    authz = Authorization(live)
    # The guard comes first: every later hook sees the normalised request. Tracing comes before authz and
    # routing: a denied or routed request still gets its span and headers.
    master.addons.add(proxyserver.Proxyserver(), connections, Listeners(live, mtls, endpoints, networks, authz), mtls,
                      RequestGuard(live), tracing, authz, Routing(live, endpoints, mtls), telemetry,
                      Lifecycle(state, Admin(state, networks[1])))
    opts.update(
        mode=[f"transparent@{OUTBOUND_PORT}", f"transparent@{INBOUND_PORT}"],
        connection_strategy="lazy",  # connect upstream only once we know how (mTLS or not)
        stream_large_bodies="128k",  # larger bodies stream through instead of being held in memory
        confdir=os.environ.get("MESHCTL_MITM_CONFDIR", "/tmp/mitmproxy"),
    )
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, lambda: loop.create_task(drain_then_stop(master, state)))
    await master.run()


def run() -> None:
    try:
        import uvloop  # libuv's event loop: each event's trip through the loop is a good part of the cost
    except ImportError:  # the addon tests import this module without it
        asyncio.run(main())
        return
    uvloop.run(main())


if __name__ == "__main__":
    run()
