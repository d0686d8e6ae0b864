"""Egress: the external hosts a sidecar may call (ServiceEntry, MESH_EXTERNAL) and how, as pure values.

The snapshot's `egress` list, parsed into small typed values, and the two lookups the engine makes:
- an HTTP request: its Host and port against the entries' hosts and ports (`http_target`). The sidecar then
  dials the host itself (DNS), never the address the app connected to, so a request cannot name an allowed
  host and go elsewhere; a port's `target` (targetPort, an endpoint's port) is where it connects, with TLS when
  a DestinationRule's `tls.mode: SIMPLE` says so (`Originate`);
- the app's own TLS under REGISTRY_ONLY: its ClientHello's server name (SNI) and port against the entries'
  hosts and ports (sidecar.engine.plan), dialled by name as HTTP is: an address a CDN shares proves nothing;
- any other connection (TCP) under REGISTRY_ONLY: its destination address and port against the
  addresses the entries' hosts resolve to (`Resolver`, in the background; an address it has not resolved is
  not in the registry: fail closed).
Depends only on the stdlib.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("meshctl.egress")
ALLOW_ANY = "ALLOW_ANY"
REGISTRY_ONLY = "REGISTRY_ONLY"
OUTBOUND_POLICIES = (ALLOW_ANY, REGISTRY_ONLY)  # Istio's meshConfig.outboundTrafficPolicy.mode
HTTP_PROTOCOLS = frozenset({"HTTP", "HTTP2", "GRPC"})  # ports whose requests are matched by Host at L7
REFRESH_EVERY_S = 5.0
ON_DEMAND_MIN_GAP_S = 1.0


class EgressError(ValueError):
    pass


@dataclass(frozen=True)
class Originate:
    """TLS the sidecar starts to the external host (DestinationRule tls.mode SIMPLE)."""

    sni: str  # the server name sent, and the name the certificate must carry
    ca: str | None = None  # PEM certificates to verify it with; None: the system's trust store
    verify: bool = True  # False: insecureSkipVerify


@dataclass(frozen=True)
class ExternalPort:
    number: int  # the port the app calls
    protocol: str  # Istio's: HTTP, HTTPS, TLS, TCP, ...
    target: int  # the port the sidecar connects to (targetPort; the number when none)
    tls: Originate | None = None


@dataclass(frozen=True)
class External:
    name: str  # the ServiceEntry, NAMESPACE/NAME
    hosts: tuple[str, ...]
    ports: tuple[ExternalPort, ...]
    endpoints: tuple[str, ...] = ()  # addresses to connect to instead of the hosts (DNS names or IPs)

    def port(self, number: int) -> ExternalPort | None:
        return next((p for p in self.ports if p.number == number), None)


def normal_host(authority: str) -> str:
    """`API.Example:80.` -> `api.example`: a Host header as hosts are compared (no port, no trailing dot)."""
    host = authority.strip().lower()
    if host.startswith("["):
        return host.split("]", 1)[0] + "]"
    return host.rsplit(":", 1)[0].rstrip(".") if host.count(":") == 1 else host.rstrip(".")


def http_target(entries: tuple[External, ...], authority: str, port: int) -> tuple[External, ExternalPort] | None:
    """The entry and port an HTTP request to `authority` on `port` is for, or None: not in the registry."""
    host = normal_host(authority)
    for entry in entries:
        if host in entry.hosts:
            found = entry.port(port)
            if found is not None and found.protocol in HTTP_PROTOCOLS:
                return entry, found
    return None


def dial_address(entry: External, port: ExternalPort, pick: int = 0) -> tuple[str, int]:
    """Where the sidecar connects for `port` of `entry`: an endpoint (round robin by `pick`), else the host."""
    addresses = entry.endpoints or entry.hosts[:1]
    return addresses[pick % len(addresses)], port.target


def _text(data: dict[str, Any], key: str, where: str) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value:
        raise EgressError(f"field {where}{key} must be a non-empty string")
    return value


def _port_number(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 65536:
        raise EgressError(f"field {where} must be a port number")
    return value


def _tls(data: Any, where: str) -> Originate | None:
    if data is None:
        return None
    if not isinstance(data, dict):
        raise EgressError(f"field {where} must be an object")
    ca = data.get("ca")
    if ca is not None and not (isinstance(ca, str) and ca.lstrip().startswith("-----BEGIN CERTIFICATE-----")):
        raise EgressError(f"field {where}.ca must be PEM certificates")
    verify = data.get("verify", True)
    if not isinstance(verify, bool):
        raise EgressError(f"field {where}.verify must be true or false")
    return Originate(_text(data, "sni", f"{where}."), ca, verify)


def parse(items: Any) -> tuple[External, ...]:
    """The snapshot's `egress` list; EgressError naming the field when it is not one."""
    if not isinstance(items, list):
        raise EgressError("field egress must be a list")
    entries = []
    for i, item in enumerate(items):
        where = f"egress[{i}]."
        if not isinstance(item, dict):
            raise EgressError(f"{where[:-1]} is not an object")
        hosts, endpoints, raw_ports = item.get("hosts"), item.get("endpoints", []), item.get("ports")
        if not isinstance(hosts, list) or not hosts or not all(isinstance(h, str) and h for h in hosts):
            raise EgressError(f"field {where}hosts must be a list of host names")
        if not isinstance(endpoints, list) or not all(isinstance(e, str) and e for e in endpoints):
            raise EgressError(f"field {where}endpoints must be a list of addresses")
        if not isinstance(raw_ports, list) or not all(isinstance(p, dict) for p in raw_ports):
            raise EgressError(f"field {where}ports must be a list of objects")
        ports = tuple(ExternalPort(_port_number(p.get("number"), f"{where}ports[{j}].number"),
                                   _text(p, "protocol", f"{where}ports[{j}]."),
                                   _port_number(p.get("target", p.get("number")), f"{where}ports[{j}].target"),
                                   _tls(p.get("tls"), f"{where}ports[{j}].tls"))
                      for j, p in enumerate(raw_ports))
        entries.append(External(_text(item, "name", where), tuple(h.lower() for h in hosts), ports,
                                tuple(endpoints)))
    return tuple(entries)


async def resolve(host: str) -> set[str] | None:
    """The host's IPv4 addresses; empty if it does not exist (not started, scaled to zero); None if DNS failed."""
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, None, family=socket.AF_INET,
                                                             type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        return set() if exc.errno in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", -5)) else None
    except OSError:
        return None
    return {str(info[4][0]) for info in infos}


def _table(entries: tuple[External, ...], resolved: dict[str, set[str]]) -> dict[str, dict[int, int]]:
    """address -> {port the app calls: port to connect to}, for the entries' names as `resolved`."""
    allowed: dict[str, dict[int, int]] = {}
    for entry in entries:
        for name in entry.endpoints or entry.hosts:
            for ip in resolved.get(name, ()):
                ports = allowed.setdefault(ip, {})
                for p in entry.ports:
                    ports.setdefault(p.number, p.target)
    return allowed


class Resolver:
    """Which (address, port) pairs the registry's hosts and endpoints stand for, resolved through DNS in the
    background. A DNS failure keeps what was known; a name that no longer resolves drops out."""

    def __init__(self) -> None:
        self.entries: tuple[External, ...] = ()
        self.allowed: dict[str, dict[int, int]] = {}  # address -> {port the app calls: port to connect to}
        self._resolved: dict[str, set[str]] = {}  # name -> its addresses, as last resolved
        self._refreshed_at = 0.0
        self._refreshing: asyncio.Task[None] | None = None

    def replace(self, entries: tuple[External, ...]) -> None:
        if entries != self.entries:
            self.entries = entries
            self._refreshed_at = 0.0
            # at once, from what was resolved: a host or port no longer listed admits no new connection while
            # DNS is asked again; a new host is admitted once it has resolved (fail closed)
            self.allowed = _table(entries, self._resolved)

    async def _refresh(self) -> None:
        entries = self.entries
        names = sorted({n for e in entries for n in (e.endpoints or e.hosts)})
        results = await asyncio.gather(*(resolve(n) for n in names))
        resolved = {n: self._resolved.get(n, set()) if ips is None else ips for n, ips in zip(names, results,
                                                                                              strict=True)}
        if entries is not self.entries:  # replaced while resolving: its table stands until the next round
            return
        self._resolved = resolved
        self.allowed = _table(entries, resolved)
        self._refreshed_at = time.monotonic()

    async def refresh(self) -> None:
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = asyncio.ensure_future(self._refresh())
        await self._refreshing

    def known(self, address: tuple[str, int]) -> int | None:
        """The port to connect to for `address`, from the table as it is (no DNS), else None."""
        return self.allowed.get(address[0], {}).get(address[1])

    async def target(self, address: tuple[str, int], look_again: bool) -> int | None:
        """The port to connect to when `address` is a host of the registry on one of its ports, else None.
        `look_again`: resolve now (rate-limited) if it is not known yet, as a freshly listed host may not be."""
        found = self.known(address)
        if found is None and look_again and self.entries and \
                time.monotonic() - self._refreshed_at > ON_DEMAND_MIN_GAP_S:
            await self.refresh()
            found = self.known(address)
        return found

    async def run_forever(self) -> None:
        while True:
            try:
                if self.entries:
                    await self.refresh()
            except Exception:  # keep the last table; the next round may succeed
                log.exception("resolving the registry's external hosts failed")
            await asyncio.sleep(REFRESH_EVERY_S)
