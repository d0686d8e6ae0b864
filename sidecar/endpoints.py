"""Which addresses belong to meshed workloads: resolve each workload's compose name through Docker's DNS.

Replicas and containers that come and go show up as the names resolve to more or fewer addresses. The
table is rebuilt in the background every few seconds and on demand (rate-limited) when an outbound
connection goes to an address it does not know yet, so a freshly started pod is recognised at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from sidecar.egress import resolve
from sidecar.snapshot import Service, Snapshot, Workload

log = logging.getLogger("meshctl.endpoints")
REFRESH_EVERY_S = 2.0
ON_DEMAND_MIN_GAP_S = 0.25
DEPARTED_TTL_S = 300.0  # how long an address that left its service is still known as that service's
DEPARTED_MAX = 4096


@dataclass(frozen=True)
class Endpoint:
    service: Service
    workload: Workload


class Endpoints:
    def __init__(self, services: tuple[Service, ...]) -> None:
        self.services = services
        self.by_ip: dict[str, Endpoint] = {}
        # Addresses whose pod is gone, and when it went. An app's keep-alive connection (or DNS cache)
        # can outlive the pod it was opened to; its requests still belong to that service.
        self.departed: dict[str, tuple[Endpoint, float]] = {}
        self._refreshed_at = 0.0
        self._refreshing: asyncio.Task[None] | None = None

    def replace_services(self, snap: Snapshot) -> None:
        """A new snapshot may add or drop services: resolve the new set on the next refresh.

        Until then the known addresses are re-pointed at the new workloads at once, so a changed mode
        (say a peer now DISABLE) applies from the moment the sidecar acknowledges the snapshot.
        """
        self.services = snap.services
        fresh = {wl.host: Endpoint(svc, wl) for svc in snap.services for wl in svc.workloads}
        self.by_ip = {ip: fresh[old.workload.host] for ip, old in self.by_ip.items() if old.workload.host in fresh}
        self._refreshed_at = 0.0

    _resolve = staticmethod(resolve)  # the host's addresses (a seam for the tests)

    async def _refresh(self) -> None:
        pairs = [(svc, wl) for svc in self.services for wl in svc.workloads]
        results = await asyncio.gather(*(self._resolve(wl.host) for _, wl in pairs))
        known: dict[str, set[str]] = {}
        for ip, endpoint in self.by_ip.items():
            known.setdefault(endpoint.workload.host, set()).add(ip)
        # A DNS hiccup must not make a meshed peer look like an outside address (and get plaintext).
        resolved = [known.get(wl.host, set()) if ips is None else ips for (_, wl), ips in zip(pairs, results,
                                                                                                strict=True)]
        table = {ip: Endpoint(svc, wl) for (svc, wl), ips in zip(pairs, resolved, strict=True) for ip in ips}
        now = time.monotonic()
        self._note_departed({ip: e for ip, e in self.by_ip.items() if ip not in table}, table, now)
        self.by_ip = table  # swapped whole: readers never see a half-built table
        self._refreshed_at = now

    def _note_departed(self, gone: dict[str, Endpoint], table: dict[str, Endpoint], now: float) -> None:
        kept = {ip: (e, t) for ip, (e, t) in self.departed.items() if ip not in table and now - t < DEPARTED_TTL_S}
        kept.update((ip, (e, now)) for ip, e in gone.items())
        if len(kept) > DEPARTED_MAX:  # the oldest go first
            kept = dict(sorted(kept.items(), key=lambda item: item[1][1])[-DEPARTED_MAX:])
        self.departed = kept

    def departed_endpoint(self, ip: str) -> Endpoint | None:
        """The endpoint `ip` was, if its pod left the service recently and the service is still meshed."""
        found = self.departed.get(ip)
        if found is None or time.monotonic() - found[1] >= DEPARTED_TTL_S:
            return None
        service = self.find_service(found[0].service.name)
        return Endpoint(service, found[0].workload) if service is not None else None

    async def refresh(self) -> None:
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = asyncio.ensure_future(self._refresh())
        await self._refreshing

    async def lookup(self, ip: str) -> Endpoint | None:
        found = self.by_ip.get(ip)
        if found is None and time.monotonic() - self._refreshed_at > ON_DEMAND_MIN_GAP_S:
            await self.refresh()
            found = self.by_ip.get(ip)
        return found

    async def owner(self, ip: str) -> tuple[Endpoint | None, bool]:
        """The endpoint at `ip`, and whether its pod has gone. An address that left its service recently
        still belongs to it: an app's keep-alive connection or DNS cache can outlive the pod."""
        found = await self.lookup(ip)
        if found is not None:
            return found, False
        gone = self.departed_endpoint(ip)
        return gone, gone is not None

    def find_service(self, name: str) -> Service | None:
        return next((s for s in self.services if s.name == name), None)

    async def run_forever(self) -> None:
        while True:
            try:
                await self.refresh()
            except Exception:  # keep the last table; the next round may succeed
                log.exception("endpoint refresh failed")
            await asyncio.sleep(REFRESH_EVERY_S)
