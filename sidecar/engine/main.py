"""The sidecar's proxy process on the engine: capture listeners, the hooks, the admin endpoints, live reloads.

Run as the proxy uid by sidecar.supervisor (through sidecar.main). What it wires together:
- 15001 (outbound) and 15006 (inbound) capture listeners (sidecar.engine.listeners), with plan.py's rules;
- the L7 path: per request, tracing, then inbound authorization (sidecar.engine.authorize) or outbound routing
  (sidecar.engine.route); once over, telemetry (sidecar.engine.observe) and the span (sidecar.engine.trace);
- the workload certificate (sidecar.engine.certs), the snapshot (sidecar.live) and the endpoint table, watched
  and swapped whole: new connections and requests see the new one, open connections are not dropped;
- Istio's ports for readiness, the ack, metrics and spans (sidecar.admin);
- SIGTERM: not ready at once, in-flight connections finish (bounded by MESHCTL_DRAIN_TIMEOUT), then exit.
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

from sidecar import capture, snapshot
from sidecar.admin import Admin
from sidecar.contract import PORT_INBOUND as INBOUND_PORT
from sidecar.contract import PORT_OUTBOUND as OUTBOUND_PORT
from sidecar.egress import Resolver
from sidecar.endpoints import Endpoint, Endpoints
from sidecar.engine.authorize import Authorizer
from sidecar.engine.call import Call
from sidecar.engine.certs import Certificates
from sidecar.engine.egress import Egress
from sidecar.engine.h2pool import H2Pool
from sidecar.engine.h2proxy import H2Decide, H2Downstream, H2Proxy
from sidecar.engine.listeners import CaptureListener, Sidecar
from sidecar.engine.observe import Observer
from sidecar.engine.plan import (
    L7H2,
    ConnectionInfo,
    L7Http,
    LocalNetworks,
    inbound_wants_l7,
    local_networks,
    routed,
)
from sidecar.engine.pool import Pool
from sidecar.engine.proxy import Decide, Listener, Response, Route, Routed, tune_malloc
from sidecar.engine.route import Router
from sidecar.engine.tap import TapHub
from sidecar.engine.trace import Tracer
from sidecar.history import FINE, CounterHistory
from sidecar.live import LiveSnapshot
from sidecar.meters import Meters
from sidecar.spans import SpanStore

log = logging.getLogger("meshctl.proxy")
CERT_DIR = snapshot.PROXY_DIR
SNAPSHOT_POLL_S = 0.1  # a stat() per tick: config reaches the proxy in well under a second
DRAIN_TIMEOUT_S = float(os.environ.get("MESHCTL_DRAIN_TIMEOUT", "10"))
PROXY_VERSION = os.environ.get("MESHCTL_PROXY_VERSION", "dev")
MAX_L7_CONNECTIONS = 4096  # client connections on the L7 path; past it, 503 and close
MAX_CAPTURED = 4096  # per capture listener: connections being decided or relayed at L4
ENGINE = "uvloop+llhttp"


class Mesh:
    """The hooks, in order, for each request; and what the admin endpoints read."""

    def __init__(self, live: LiveSnapshot, certs: Certificates, endpoints: Endpoints, networks: LocalNetworks) -> None:
        self.live = live
        self.certs = certs
        self.endpoints = endpoints
        self.networks = networks
        self.meters = Meters()
        self.history = CounterHistory(self.meters.counted)  # `meshctl stat -t 30s` looks back through it
        self.observer = Observer(live, endpoints, self.meters)
        self.spans = SpanStore(live)
        self.tracer = Tracer(live, self.observer, self.spans)
        self.authorizer = Authorizer(live)
        self.router = Router(live, endpoints, certs.l7_client)
        self.egress = Egress(lambda: live.current)  # HTTP to hosts outside the mesh: ServiceEntry, REGISTRY_ONLY
        self.registry = Resolver()  # the addresses of ServiceEntry hosts, for connections that are not HTTP
        self.registry.replace(live.current.egress)
        live.on_apply.append(lambda snap: self.registry.replace(snap.egress))
        self.tap = TapHub(lambda: (live.current.name, live.current.identity))  # `meshctl tap` sessions
        self.l7 = Listener(self._unbound, Pool(certs.l7_client), max_connections=MAX_L7_CONNECTIONS,
                           path_mode=lambda: live.current.mesh.path_normalization, on_done=self.done)
        self.h2 = H2Proxy(H2Pool(certs.h2_client), path_mode=lambda: live.current.mesh.path_normalization,
                          on_done=self.done, on_start=self._h2_started)
        sidecar = Sidecar(snapshot=lambda: live.current, lookup=self.owner, external=self.registry.target,
                          external_known=self.registry.known,
                          networks=networks,
                          server_tls=certs.server, l4_tls=certs.l4_client, h2_tls=certs.h2_client, l7=self.l7,
                          l7_decide=self.decide_for, tcp_gate=self.authorizer.tcp_gate, tcp=self.observer,
                          h2=self.h2_for)
        self.listeners = [CaptureListener(OUTBOUND_PORT, sidecar, max_connections=MAX_CAPTURED),
                          CaptureListener(INBOUND_PORT, sidecar, max_connections=MAX_CAPTURED)]
        live.on_apply.append(self.replan_h2)
        self.listening = False
        self.draining = False
        self.started = time.time()
        self.connections_total = 0
        self.capture_marker = capture.BROKEN_MARKER  # written by the supervisor (root) while it restores capture

    # --- per connection and per request --------------------------------------------------------------------

    async def owner(self, ip: str) -> Endpoint | None:
        """The meshed workload at `ip`, including one whose pod has just gone (its requests are re-routed)."""
        endpoint, _ = await self.endpoints.owner(ip)
        return endpoint

    @staticmethod
    def _unbound(call: Call) -> Response:
        return Response(500, b"meshctl: no decision bound to this connection\n")

    def decide_for(self, plan: L7Http, info: ConnectionInfo) -> Decide:
        self.connections_total += 1
        if info.listener == INBOUND_PORT:
            target = Route(plan.address)

            def inbound(call: Call) -> Route | Response | Routed:
                if self.tap.sessions:
                    self.tap.begin(call)
                self.tracer.request(call)
                refusal = self.authorizer.request(call)
                if refusal is not None:
                    return refusal
                return target

            return inbound

        def outbound(call: Call) -> Route | Response | Routed:
            if self.tap.sessions:
                self.tap.begin(call)
            self.tracer.request(call)
            if info.endpoint is None:  # outside the mesh: the registry decides
                return self.egress.decide(call, plan)
            return self.router.decide(call, plan)

        return outbound

    def _h2_started(self, call: Call) -> None:
        if self.tap.sessions:
            self.tap.begin(call)  # before the body is read: a --bodies session asks for a copy of it

    def h2_for(self, plan: L7H2, info: ConnectionInfo) -> H2Downstream:
        """An HTTP/2 connection's streams: the same hooks as decide_for, per stream."""
        self.connections_total += 1
        decide: H2Decide
        if info.listener == INBOUND_PORT:
            target = Route(plan.address)

            def inbound(call: Call) -> Route | Response:
                self.tracer.request(call)
                return self.authorizer.request(call) or target

            decide = inbound
        else:
            def outbound(call: Call) -> Any:
                self.tracer.request(call)
                return self.router.decide_h2(call, plan)

            decide = outbound
        return self.h2.connection(decide, info)

    def replan_h2(self, snap: snapshot.Snapshot) -> None:
        """A new snapshot: connections relayed at L4 that it refuses, and HTTP/2 ones it wants at L7, are closed
        (clients reconnect, and are judged by the new config)."""
        wants = inbound_wants_l7(snap)
        for listener in self.listeners:
            if refused := listener.close_refused_relays(snap):
                log.warning("closed %d connection(s) relayed on %d that the new config refuses", refused,
                            listener.port)
            if listener.port == INBOUND_PORT:
                closed = listener.close_h2_relays(lambda info: wants)
            else:
                closed = listener.close_h2_relays(
                    lambda info: info.endpoint is not None and routed(snap, info.endpoint.service.name))
            if closed:
                log.info("closed %d HTTP/2 connection(s) relayed at L4 on %d: config now asks for L7; their clients "
                         "reconnect", closed, listener.port)

    def done(self, call: Call) -> None:
        self.observer.request_done(call)
        self.tracer.done(call)
        if self.tap.sessions or call.capture:
            self.tap.offer(call)

    # --- what the admin endpoints read ---------------------------------------------------------------------

    @property
    def telemetry(self) -> Meters:
        return self.meters

    @property
    def tracing(self) -> SpanStore:
        return self.spans

    @property
    def snap(self) -> snapshot.Snapshot:
        return self.live.current

    @property
    def open_connections(self) -> int:
        return self.l7.open + self.h2.open + sum(listener.open for listener in self.listeners)

    def readiness(self) -> tuple[bool, str]:
        if self.draining:
            return False, "draining"
        if not self.listening:
            return False, "starting"
        if self.capture_marker.exists():  # traffic may be bypassing the proxy: not ready until rules are back
            return False, "capture rules were changed; restoring"
        if self.certs.contexts is None:
            return False, "no workload certificate"
        return True, "ready"

    def status(self) -> dict[str, Any]:
        """The ack: which snapshot is in force, whether a newer one was rejected, and the certificate."""
        return {**self.live.status(), "proxy_version": PROXY_VERSION, "engine": ENGINE,
                "ready": self.readiness()[0], **self.certs.cert_info}

    def config_dump(self) -> dict[str, Any]:
        snap = self.snap
        return {
            "proxy_version": PROXY_VERSION,
            "engine": ENGINE,
            "status": self.status(),
            "snapshot": snap.raw,
            "listeners": [{"name": "virtualOutbound", "port": OUTBOUND_PORT, "direction": "outbound",
                           "excluded_ports": sorted(snap.exclude_outbound_ports)},
                          {"name": "virtualInbound", "port": INBOUND_PORT, "direction": "inbound", "mode": snap.mode,
                           "excluded_ports": sorted(snap.exclude_inbound_ports),
                           "published_ports": sorted(snap.published_ports)}],
            "routes": list(snap.routes),
            "clusters": [{"name": s.name, "identity": s.identity,
                          "subsets": sorted({w.version for w in s.workloads}),
                          "policy": next((d for d in snap.destinations if d.get("host") == s.name), None)}
                         for s in snap.services],
            "secrets": {"identity": snap.identity, **self.certs.cert_info},
            "endpoints": {ip: {"service": e.service.name, "workload": e.workload.host, "version": e.workload.version}
                          for ip, e in sorted(self.endpoints.by_ip.items())},
        }

    def stats(self) -> dict[str, Any]:
        return {"uptime_s": round(time.time() - self.started, 1), "connections_open": self.open_connections,
                "connections_total": self.connections_total, "revision": self.snap.revision, "engine": ENGINE,
                "l7_connections_refused": self.l7.refused, "h2_connections": self.h2.open,
                "h2_connections_refused": self.h2.refused,
                "captured_refused": sum(listener.refused for listener in self.listeners)}


async def watch(what: str, every: float, step: Any) -> None:
    while True:
        await asyncio.sleep(every)
        try:
            step()
        except Exception:  # what is in force stays; the next change is tried again
            log.exception("%s failed; keeping the current one", what)


async def drain(mesh: Mesh) -> None:
    """Stop being ready, let in-flight connections finish (bounded)."""
    mesh.draining = True
    mesh.h2.drain()
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    while mesh.open_connections > 0 and time.monotonic() < deadline:
        await asyncio.sleep(0.1)


async def main() -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    tune_malloc()
    live = LiveSnapshot(CERT_DIR / "snapshot.json", snapshot.load(CERT_DIR / "snapshot.json"))
    certs = Certificates(CERT_DIR)
    certs.reload()
    endpoints = Endpoints(live.current.services)
    live.on_apply.append(endpoints.replace_services)
    try:
        networks = local_networks(Path("/proc/net/route").read_text())
    except OSError:
        networks = LocalNetworks()
    mesh = Mesh(live, certs, endpoints, networks)
    loop = asyncio.get_running_loop()
    tasks = [loop.create_task(watch("certificate reload", 1.0, certs.reload)),
             loop.create_task(watch("applying a new snapshot", SNAPSHOT_POLL_S, live.poll)),
             loop.create_task(endpoints.run_forever()), loop.create_task(mesh.spans.export_forever()),
             loop.create_task(mesh.registry.run_forever()),
             loop.create_task(watch("counter history", FINE[0], mesh.history.tick))]
    mesh.authorizer.start()
    for listener in mesh.listeners:
        await listener.start()
    admin = Admin(mesh, set(networks.gateways))
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    try:
        await admin.start()
    except OSError as exc:  # e.g. the app already listens on 15021: never report ready, say why
        log.error("cannot open the proxy's endpoints (15000/15021/15090): %s; this proxy stays unready", exc)
    else:
        try:
            await asyncio.wait_for(endpoints.refresh(), 5)
        except Exception:  # the background refresh retries; ready now beats a stuck start
            log.exception("first endpoint refresh failed")
        mesh.listening = True
        log.info("proxy ready: %s (%s, mode %s, engine %s)", live.current.name, live.current.identity,
                 live.current.mode, ENGINE)
    await stop.wait()
    await drain(mesh)
    mesh.meters.flush_log()
    for task in tasks:
        task.cancel()
    admin.close()
    for listener in mesh.listeners:
        listener.close()


def run() -> None:
    try:
        import uvloop
    except ImportError:  # the unit tests import this module without it
        asyncio.run(main())
        return
    uvloop.run(main())
