"""What a captured connection becomes: a pure decision over a typed ConnectionInfo. Fails closed.

The rules, with server-first protocols (issue 15, item 4):
Inbound (15006), from peers:
  TLS         -> DISABLE: passed through to the app (the caller's own TLS); else our mutual TLS is terminated
                 (TerminateTls) and the decision is made again on what is inside: the L4 ALPN marker, or a
                 port that carries TCP, relays at once; HTTP/1 goes to L7; anything else is L4
  plaintext   -> STRICT: refused (403 if it looks like HTTP), unless it came through a published port from
                 outside the pod's networks (the mesh's edge); else HTTP/1 -> L7, anything else -> L4
Outbound (15001), from our app:
  the app's own TLS    -> passed through untouched
  outside the mesh      -> HTTP/1 -> L7 in plaintext (sidecar.egress matches its Host per request); anything else
                          passed through, to the port a ServiceEntry's targetPort names; under REGISTRY_ONLY
                          TLS goes only to the host its SNI names if a ServiceEntry lists it on that port
                          (dialled by name), and TCP is refused unless a ServiceEntry's host resolves to the
                          address (fail closed)
  a meshed destination -> HTTP/1 -> L7 over pooled mTLS; anything else -> L4 over mTLS (one connection each)
                          HTTP/2 (h2c) -> L7 over multiplexed mTLS (ALPN h2) when a VirtualService routes the
                          service, else L4 over mTLS with ALPN h2, so the far side knows what is inside
Inside our mTLS, ALPN h2 (or plaintext h2c where a mode allows it) -> L7 when a VirtualService routes this
service, an AuthorizationPolicy needs request fields or a RequestAuthentication applies, else L4 to the app:
HTTP/2 pays for L7 only when config asks for it.
  anything else        -> HTTP/1 -> L7 in plaintext; anything else passed through
Any listener: a destination among the proxy's own ports (15000-15099) is refused (it would dial itself).

Which protocol a port carries, in order: the workload's declaration (snapshot `port_protocols`: "tcp" or
"http"), then the well-known ports below ("tcp"), then detection from the client's first bytes. A "tcp"
port is decided without waiting for a byte, so a server that speaks first (MySQL) gets its client at once;
on any other port the client gets SNIFF_TIMEOUT_S to speak, and silence means TCP.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

from sidecar.contract import PORT_INBOUND as INBOUND_PORT
from sidecar.contract import PORT_OUTBOUND as OUTBOUND_PORT
from sidecar.contract import PROXY_PORTS
from sidecar.egress import HTTP_PROTOCOLS, REGISTRY_ONLY, dial_address
from sidecar.endpoints import Endpoint
from sidecar.engine.clienthello import Hello
from sidecar.policy import ClusterPolicy, merged_policy
from sidecar.rbac import needs_request_fields
from sidecar.snapshot import Snapshot, Workload

L4_ALPN = "meshctl-l4"  # offered by a sidecar's L4 tunnel: the far side relays at once
H2_ALPN = "h2"  # offered by a sidecar carrying HTTP/2 (L7 or L4): the far side knows without looking
H2_PREFACE = b"PRI * HTTP/2.0"
NAMED_PROTOCOLS = HTTP_PROTOCOLS | {"HTTPS", "TLS"}  # ServiceEntry ports whose hosts are matched by Host or SNI

# How long a client that has said nothing may stay silent before its connection is taken as TCP. Clients of
# client-first protocols (HTTP, TLS, PostgreSQL, Redis) send within a round trip of connecting, far below
# this; a server-first client (MySQL, SMTP) on a port nobody declared waits this long once per connection.
# Istio's equivalent (protocolDetectionTimeout) was 100 ms, then off by default: too short loses slow HTTP
# clients to TCP, too long delays server-first ones.
SNIFF_TIMEOUT_S = 0.2
# A declared "http" port waits for the request this long (the L7 path's head timeout takes over after).
HTTP_FIRST_BYTES_S = 10.0

# TCP with no declaration. Server-first: the server speaks first, so a proxy that waits for the client hangs.
SERVER_FIRST_PORTS = {
    21: "FTP (220 greeting)", 22: "SSH (server identification)", 25: "SMTP (220 greeting)",
    110: "POP3 (+OK greeting)", 143: "IMAP (* OK greeting)", 587: "SMTP submission (220 greeting)",
    3306: "MySQL/MariaDB (server handshake)",
}
# Client-first but never HTTP: their text commands can read as an HTTP request line (memcached's
# `get key`, Redis's inline `SET a b`), and declaring them saves the sniffing.
NON_HTTP_PORTS = {5432: "PostgreSQL", 6379: "Redis", 11211: "memcached", 27017: "MongoDB"}
WELL_KNOWN_TCP = frozenset(SERVER_FIRST_PORTS) | frozenset(NON_HTTP_PORTS)

METHOD_MAX = 20  # longer than any registered HTTP method: more letters than this and no space is not HTTP

Kind = Literal["tls", "http", "h2", "other", "undecided"]


@dataclass(frozen=True)
class LocalNetworks:
    """The pod's own subnets and their gateways: plaintext from elsewhere came through a published port."""

    nets: tuple[ipaddress.IPv4Network, ...] = ()
    gateways: frozenset[str] = frozenset()


@dataclass(frozen=True)
class ConnectionInfo:
    listener: int  # the capture port it arrived on
    destination: tuple[str, int]  # SO_ORIGINAL_DST
    peer: tuple[str, int]
    first_bytes: bytes | None  # None: the client has sent nothing (or need not be waited for)
    snapshot: Snapshot
    endpoint: Endpoint | None = None  # outbound: the meshed workload at the destination, if any
    tls_peer: str | None = None  # inbound inside our verified mTLS: the caller's SPIFFE ID ("" if it has none)
    alpn: str | None = None  # inbound inside our mTLS: the protocol the caller chose
    networks: LocalNetworks = field(default_factory=LocalNetworks)
    external_port: int | None = None  # outbound outside the mesh: the ServiceEntry port to connect to, if any
    hello: Hello | None = None  # outbound TLS outside the mesh under REGISTRY_ONLY: its whole ClientHello, parsed


@dataclass(frozen=True)
class L7Http:
    """Parse HTTP/1.1 and forward to `address`; `identity` is the upstream's SPIFFE ID ("" = plaintext)."""

    address: tuple[str, int]
    identity: str = ""


@dataclass(frozen=True)
class L4Tcp:
    """Relay bytes to `address`: over mTLS with the L4 marker to a peer of `identity`, or plaintext if ""."""

    address: tuple[str, int]
    identity: str = ""
    h2: bool = False  # HTTP/2 inside: offer ALPN h2 instead of the L4 marker


@dataclass(frozen=True)
class L7H2:
    """Serve HTTP/2 (h2c or gRPC) per stream and forward to `address` (`identity` as in L7Http)."""

    address: tuple[str, int]
    identity: str = ""


@dataclass(frozen=True)
class Passthrough:
    """Relay bytes untouched, plaintext TCP, to `address` (the app's own TLS, an unmeshed destination)."""

    address: tuple[str, int]


@dataclass(frozen=True)
class TerminateTls:
    """Inbound: accept our mutual TLS, then decide again on what is inside (with tls_peer and alpn set)."""


@dataclass(frozen=True)
class Refuse:
    reason: str  # what was refused and why, logged after "refused "
    message: bytes = b""  # sent before closing (a 403 to plaintext HTTP in STRICT)


Plan = L7Http | L7H2 | L4Tcp | Passthrough | TerminateTls | Refuse


def classify(data: bytes) -> Kind:
    """What the first bytes are, or "undecided" while they are still a prefix of HTTP or TLS."""
    if not data:
        return "undecided"
    if data[0] == 0x16:  # a TLS handshake record: 0x16 0x03 0x00-0x03 (as mitmproxy's starts_like_tls_record)
        if len(data) < 3:
            return "undecided" if data[1:] in (b"", b"\x03") else "other"
        return "tls" if data[1] == 0x03 and data[2] <= 0x03 else "other"
    if data.startswith(H2_PREFACE) or H2_PREFACE.startswith(data):
        return "h2" if len(data) >= len(H2_PREFACE) else "undecided"
    method, space, _ = data.partition(b" ")
    if not space:
        return "undecided" if method.isalpha() and len(method) <= METHOD_MAX else "other"
    first_line = data.split(b"\n", 1)[0]
    return "http" if len(method) >= 3 and method.isalpha() and b" " in first_line else "other"


def local_networks(route_table: str) -> LocalNetworks:
    """The pod's own subnets and their gateways, from /proc/net/route (hex, little-endian)."""
    nets: list[ipaddress.IPv4Network] = []
    gateways: set[str] = set()
    for line in route_table.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 8:
            continue
        dest, gateway, mask = (ipaddress.IPv4Address(bytes.fromhex(f)[::-1]) for f in (fields[1], fields[2],
                                                                                          fields[7]))
        if int(dest) == 0 and int(gateway) != 0:
            gateways.add(str(gateway))
        elif int(dest) != 0:
            net = ipaddress.IPv4Network(f"{dest}/{mask}", strict=False)
            nets.append(net)
            gateways.add(str(net.network_address + 1))  # Docker's default gateway for a bridge network
    return LocalNetworks(tuple(nets), frozenset(gateways))


def own_workload(snap: Snapshot) -> Workload | None:
    """This proxy's own workload entry (where its declared port protocols are)."""
    mine = [wl for svc in snap.services if svc.name == snap.app for wl in svc.workloads]
    return next((wl for wl in mine if wl.host == snap.service), None) or next(
        (wl for wl in mine if wl.version == snap.version), None)


def port_protocol(port: int, workloads: Iterable[Workload | None]) -> str | None:
    """"tcp", "http", or None (detect): the first declaration found, then the well-known ports."""
    for wl in workloads:
        declared = wl.protocol(port) if wl is not None else None
        if declared is not None:
            return declared
    return "tcp" if port in WELL_KNOWN_TCP else None


def _protocol(info: ConnectionInfo) -> str | None:
    port = info.destination[1]
    if info.listener == OUTBOUND_PORT:
        return port_protocol(port, [info.endpoint.workload if info.endpoint else None])
    return port_protocol(port, [own_workload(info.snapshot)])


def _proxy_port(port: int) -> bool:
    return port in PROXY_PORTS


def _inbound_mode(info: ConnectionInfo) -> str:
    return info.snapshot.port_modes.get(info.destination[1], info.snapshot.mode)  # PeerAuthentication per port


def named_only(info: ConnectionInfo) -> bool:
    """Outbound outside the mesh under REGISTRY_ONLY, to a port every ServiceEntry listing it judges by a name
    (HTTP's Host, TLS's SNI): an address, which a CDN shares with any site, admits nothing there."""
    if info.listener != OUTBOUND_PORT or info.endpoint is not None or \
            info.snapshot.mesh.outbound_policy != REGISTRY_ONLY:
        return False
    port = info.destination[1]
    protocols = {p.protocol for e in info.snapshot.egress for p in e.ports if p.number == port}
    return bool(protocols) and protocols <= NAMED_PROTOCOLS


def sniff_timeout(info: ConnectionInfo) -> float:
    """How long to wait for the client's first bytes before deciding; 0 = decide now, without them."""
    if info.listener not in (INBOUND_PORT, OUTBOUND_PORT) or _proxy_port(info.destination[1]):
        return 0.0  # refused at once
    if named_only(info):
        return HTTP_FIRST_BYTES_S  # a name must be read: a client that waits does not pass as TCP by its address
    protocol = _protocol(info)
    if info.listener == INBOUND_PORT and info.tls_peer is None:
        if protocol == "tcp" and _inbound_mode(info) == "DISABLE":
            return 0.0  # no TLS of ours to find: relay at once
        return HTTP_FIRST_BYTES_S if protocol == "http" else SNIFF_TIMEOUT_S  # TLS or not must be seen
    if protocol == "tcp" or info.alpn in (L4_ALPN, H2_ALPN):
        return 0.0
    return HTTP_FIRST_BYTES_S if protocol == "http" else SNIFF_TIMEOUT_S


def _kind(info: ConnectionInfo) -> Kind:
    """Silence, and bytes still a prefix of HTTP or TLS when time ran out, are neither: TCP."""
    kind = classify(info.first_bytes) if info.first_bytes is not None else "other"
    return "other" if kind == "undecided" else kind


def _from_edge(info: ConnectionInfo) -> bool:
    """Plaintext that came in through a published port from the host or beyond, not from a pod."""
    if info.destination[1] not in info.snapshot.published_ports:
        return False
    peer_ip = info.peer[0]
    if peer_ip in info.networks.gateways:
        return True
    try:
        addr = ipaddress.ip_address(peer_ip)
    except ValueError:
        return False
    return not any(addr in net for net in info.networks.nets)


def strict_refuses(info: ConnectionInfo) -> bool:
    """Whether the inbound plaintext of `info` is refused by STRICT in its snapshot (the mesh's edge excepted)."""
    return not info.tls_peer and _inbound_mode(info) == "STRICT" and not _from_edge(info)


def decide(info: ConnectionInfo) -> Plan:
    """The plan for one connection. Anything it cannot place is refused."""
    port = info.destination[1]
    if _proxy_port(port):
        return Refuse(f"a connection to the proxy's own port {port} from {info.peer[0]} (it would dial itself)")
    if info.listener == INBOUND_PORT:
        return _inbound(info) if info.tls_peer is None else _inbound_app(info)
    if info.listener == OUTBOUND_PORT:
        return _outbound(info)
    return Refuse(f"a connection from {info.peer[0]} on port {info.listener}, which is no capture listener")


def _inbound(info: ConnectionInfo) -> Plan:
    mode = _inbound_mode(info)
    kind = _kind(info)
    if kind == "tls":
        return Passthrough(info.destination) if mode == "DISABLE" else TerminateTls()
    if strict_refuses(info):
        snap = info.snapshot
        body = (f"meshctl: {snap.app} requires mutual TLS (PeerAuthentication STRICT); "
                f"plaintext from {info.peer[0]} refused\n").encode()
        message = (b"HTTP/1.1 403 Forbidden\r\ncontent-type: text/plain\r\nconnection: close\r\n"
                   + f"content-length: {len(body)}\r\n\r\n".encode() + body) if kind == "http" else b""
        return Refuse(f"plaintext from {info.peer[0]} to port {info.destination[1]}: {snap.app} requires mutual TLS "
                      "(STRICT)", message)
    return _app_protocol(info, kind)


def _inbound_app(info: ConnectionInfo) -> Plan:
    """Inside our verified mTLS (or plaintext a mode allows): the peer's app protocol, to the app."""
    if info.alpn == L4_ALPN:
        return L4Tcp(info.destination)
    return _app_protocol(info, "h2" if info.alpn == H2_ALPN else _kind(info))


def inbound_wants_l7(snap: Snapshot) -> bool:
    """Whether HTTP/2 to this workload is served per request: a VirtualService routes its service (the
    server's side then reports each call too, as Istio's does), or its policies read request fields."""
    return routed(snap, snap.app) or bool(snap.jwt) or needs_request_fields(snap.authorization)


def routed(snap: Snapshot, service: str) -> bool:
    """Whether a VirtualService routes `service`."""
    return any(service in r.get("hosts", []) for r in snap.routes)


def _app_protocol(info: ConnectionInfo, kind: Kind) -> Plan:
    if kind == "h2":
        return L7H2(info.destination) if inbound_wants_l7(info.snapshot) else L4Tcp(info.destination)
    protocol = _protocol(info)
    if protocol == "http" or (protocol is None and kind == "http"):
        return L7Http(info.destination)
    return L4Tcp(info.destination)


def _unregistered(info: ConnectionInfo, kind: Kind) -> Refuse:
    what = {"tls": "TLS", "h2": "HTTP/2"}.get(kind, "TCP")
    ip, port = info.destination
    return Refuse(f"{what} from {info.peer[0]} to {ip}:{port}: not in the mesh's registry (outboundTrafficPolicy "
                  "REGISTRY_ONLY): neither a meshed service nor a ServiceEntry host on that port")


def wants_hello(info: ConnectionInfo) -> bool:
    """Whether `info` is judged by its ClientHello's server name: the app's own TLS leaving the mesh under
    REGISTRY_ONLY (its address may be a CDN's, shared by any site: it proves nothing)."""
    return (info.listener == OUTBOUND_PORT and info.endpoint is None and info.first_bytes is not None
            and info.snapshot.mesh.outbound_policy == REGISTRY_ONLY and classify(info.first_bytes) == "tls")


def _by_name(info: ConnectionInfo) -> Plan:
    """TLS under REGISTRY_ONLY: to the ServiceEntry host its SNI names, if that entry lists the port (any protocol),
    dialled by name (or an endpoint) on the port's target, never the address the app chose; else refused."""
    ip, port = info.destination
    hello = info.hello
    if hello is not None and hello.status == "sni":
        for entry in info.snapshot.egress:
            found = entry.port(port) if hello.host in entry.hosts else None
            if found is not None:
                return Passthrough(dial_address(entry, found, info.peer[1]))
    what = hello.describe() if hello is not None else "no ClientHello read"
    return Refuse(f"TLS from {info.peer[0]} to {ip}:{port} with {what}: not in the mesh's registry "
                  "(outboundTrafficPolicy REGISTRY_ONLY): no ServiceEntry lists that server name on that port")


def _outside(info: ConnectionInfo, kind: Kind, http: bool) -> Plan:
    """Outside the mesh: HTTP/1 is judged per request (its Host), TLS under REGISTRY_ONLY by its SNI; anything
    else by the address it goes to, and so is HTTP to an address a ServiceEntry lists on a port that is HTTP for
    none (TCP: any bytes, to targetPort)."""
    port = info.destination[1]
    if kind == "tls" and info.snapshot.mesh.outbound_policy == REGISTRY_ONLY:
        return _by_name(info)
    if http and (info.external_port is None or any(p.number == port and p.protocol in HTTP_PROTOCOLS
                                                   for e in info.snapshot.egress for p in e.ports)):
        return L7Http(info.destination)
    if info.external_port is not None and kind == "other" and named_only(info):
        ip = info.destination[0]
        return Refuse(f"TCP from {info.peer[0]} to {ip}:{port}: neither HTTP nor TLS, on a port ServiceEntries list "
                      "only for HTTP or TLS, whose hosts are judged by name, not by address (outboundTrafficPolicy "
                      "REGISTRY_ONLY)")
    if info.external_port is not None:
        return Passthrough((info.destination[0], info.external_port))
    if info.snapshot.mesh.outbound_policy == REGISTRY_ONLY:
        return _unregistered(info, kind)
    return Passthrough(info.destination)


def _outbound(info: ConnectionInfo) -> Plan:
    protocol = _protocol(info)
    kind = _kind(info)
    endpoint = info.endpoint
    if protocol != "tcp" and kind == "tls":  # the app's own TLS: never intercepted
        return Passthrough(info.destination) if endpoint is not None else _outside(info, kind, False)
    h2 = protocol != "tcp" and kind == "h2"
    http = not h2 and (protocol == "http" or (protocol is None and kind == "http"))
    if endpoint is None:
        return _outside(info, kind, http)
    if not endpoint.workload.accepts_mtls(info.destination[1]):
        # a workload whose PeerAuthentication is DISABLE: plaintext, as Istio does
        return L7Http(info.destination) if http else Passthrough(info.destination)
    identity = endpoint.service.identity
    if h2 and routed(info.snapshot, endpoint.service.name):
        return L7H2(info.destination, identity)  # the router applies the DestinationRule's tls per request
    if not (http or client_mtls(info.snapshot, endpoint.service.name, info.destination[1])):
        return Passthrough(info.destination)  # the caller's DestinationRule says tls DISABLE: plaintext
    if h2:
        return L4Tcp(info.destination, identity, h2=True)
    return L7Http(info.destination, identity) if http else L4Tcp(info.destination, identity)


def client_mtls(snap: Snapshot, service: str, port: int) -> bool:
    """Whether this proxy's DestinationRule for `service` (its host-wide and port settings) keeps mesh mTLS."""
    rule = next((d for d in snap.destinations if d.get("host") == service), None)
    return ClusterPolicy.from_spec(merged_policy(rule, None)).mtls(port)
