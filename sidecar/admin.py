"""The proxy's own endpoints, on Istio's ports:

  :15021 /healthz/ready     readiness (the compose healthcheck and `depends_on: service_healthy` use it)
  :15021 /status            the ack: snapshot revision and hash in force, a rejected one, certificate
  :15090 /stats/prometheus  Prometheus metrics (also /metrics)
  :15090 /spans             recent trace spans (Zipkin v2 JSON); only for the host (meshctl), not other pods
  :15090 /stats/history     ?window=30: the counters now and about 30 s ago (sidecar.history); only for the host
  :15090 /tap               live requests, streamed as JSON lines (sidecar.engine.tap); only for the host too
  127.0.0.1:15000           admin: /config_dump (what this proxy actually uses), /stats, /ready
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from sidecar import history
from sidecar.contract import PORT_ADMIN, PORT_HEALTH, PORT_METRICS
from sidecar.engine import tap

log = logging.getLogger("meshctl.admin")
Handler = Callable[[], tuple[int, str, bytes]]
Queried = Callable[[str], tuple[int, str, bytes]]  # given the query string
# (query, peer address, reader, writer): writes its own response, for as long as it streams
Stream = Callable[[str, str, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
# paths, queries and identities (/stats/history: peers' names and counts): for the operator on the host, not other pods
HOST_ONLY = ("/spans", "/tap", "/stats/history")
NOT_IN_POD = ("/tap",)  # not for the pod's own app either (loopback): it would see requests the sidecar refused


def _response(status: int, content_type: str, body: bytes) -> bytes:
    reason = {200: "OK", 400: "Bad Request", 403: "Forbidden", 404: "Not Found",
              503: "Service Unavailable"}.get(status, "OK")
    return (f"HTTP/1.1 {status} {reason}\r\ncontent-type: {content_type}\r\ncontent-length: {len(body)}\r\n"
            "connection: close\r\n\r\n").encode() + body


async def serve(host: str, port: int, routes: dict[str, Handler], host_peers: frozenset[str] = frozenset(),
                streams: dict[str, Stream] | None = None, queried: dict[str, Queried] | None = None,
                ) -> asyncio.Server:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request_line = await asyncio.wait_for(reader.readline(), 5)
            while (await asyncio.wait_for(reader.readline(), 5)) not in (b"\r\n", b"\n", b""):
                pass
            parts = request_line.decode("latin-1").split()
            path, _, query = (parts[1] if len(parts) >= 2 else "").partition("?")
            handler = routes.get(path)
            if path in (queried or {}):
                handler = functools.partial((queried or {})[path], query)
            stream = (streams or {}).get(path)
            peer = (writer.get_extra_info("peername") or ("",))[0]
            if path in HOST_ONLY and peer not in host_peers and (peer != "127.0.0.1" or path in NOT_IN_POD):
                log.info("refused %s to %s: only the host may read it", path, peer)
                handler, stream = lambda: (403, "text/plain", b"only the host may read this\n"), None
            if stream is not None:
                await stream(query, peer, reader, writer)
                return
            status, ctype, body = handler() if handler else (404, "text/plain", b"not found\n")
            writer.write(_response(status, ctype, body))
            await writer.drain()
        except (TimeoutError, ConnectionError, UnicodeDecodeError):
            pass
        except Exception:
            log.exception("admin endpoint failed")
        finally:
            writer.close()

    return await asyncio.start_server(handle, host, port, reuse_address=True)


class Admin:
    def __init__(self, state: Any, gateways: set[str] | None = None) -> None:
        self.state = state  # sidecar.engine.main.Mesh
        self.gateways = frozenset(gateways or ())  # the host, as seen from the pod
        self.servers: list[asyncio.Server] = []

    def _ready(self) -> tuple[int, str, bytes]:
        ready, why = self.state.readiness()
        return (200 if ready else 503), "text/plain", (why + "\n").encode()

    def _metrics(self) -> tuple[int, str, bytes]:
        return 200, CONTENT_TYPE_LATEST, generate_latest(self.state.telemetry.registry)

    def _config_dump(self) -> tuple[int, str, bytes]:
        return 200, "application/json", json.dumps(self.state.config_dump(), indent=1).encode()

    def _spans(self) -> tuple[int, str, bytes]:
        tracing = self.state.tracing
        return 200, "application/json", json.dumps(tracing.recent() if tracing else []).encode()

    def _status(self) -> tuple[int, str, bytes]:
        return 200, "application/json", json.dumps(self.state.status()).encode()

    def _stats(self) -> tuple[int, str, bytes]:
        return 200, "application/json", json.dumps(self.state.stats()).encode()

    def _history(self, query: str) -> tuple[int, str, bytes]:
        return history.serve(self.state.history, query)

    async def _tap(self, query: str, peer: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await tap.serve(self.state.tap, query, peer, reader, writer)

    async def start(self) -> None:
        self.servers = [
            await serve("0.0.0.0", PORT_HEALTH, {"/healthz/ready": self._ready, "/status": self._status}),
            await serve("0.0.0.0", PORT_METRICS, {"/stats/prometheus": self._metrics, "/metrics": self._metrics,
                                                  "/spans": self._spans}, self.gateways, {"/tap": self._tap},
                        {"/stats/history": self._history}),
            await serve("127.0.0.1", PORT_ADMIN, {"/config_dump": self._config_dump, "/stats": self._stats,
                                                   "/ready": self._ready}),
        ]

    def close(self) -> None:
        for server in self.servers:
            server.close()
