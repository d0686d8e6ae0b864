"""TLS contexts for the engine's mutual TLS, and the SPIFFE identity check (stdlib `ssl` only, no mitmproxy).

Mutual TLS on the `ssl` module that asyncio's transports take:
- both sides present the workload certificate and require the peer's, verified against the trust bundle;
- the peer is named by its SPIFFE ID, its one URI SAN, not by a hostname: a client checks it right after
  the handshake (`ssl` has no verify callback) and closes before a request byte is sent if it is not the
  identity expected for the destination. A certificate with no, or more than one, URI SAN names no one.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any


def _base(purpose: int, cert: Path, key: Path, bundle: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(purpose)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2  # two engines negotiate 1.3
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_cert_chain(str(cert), str(key))
    ctx.load_verify_locations(str(bundle))
    ctx.options |= ssl.OP_NO_COMPRESSION
    return ctx


def client_context(cert: Path, key: Path, bundle: Path, alpn: tuple[str, ...] = ("http/1.1",)) -> ssl.SSLContext:
    """For connections to peer sidecars; the caller checks the peer's identity (`identity_problem`)."""
    ctx = _base(ssl.PROTOCOL_TLS_CLIENT, cert, key, bundle)
    ctx.check_hostname = False  # peers are named by SPIFFE URI, checked after the handshake
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    return ctx


def server_context(cert: Path, key: Path, bundle: Path, alpn: tuple[str, ...] = ("http/1.1",)) -> ssl.SSLContext:
    """For inbound connections from peer sidecars: a client certificate is required (STRICT)."""
    ctx = _base(ssl.PROTOCOL_TLS_SERVER, cert, key, bundle)
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    return ctx


def directory_contexts(directory: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(client, server) contexts from a proxy directory's cert.pem, key.pem and bundle.pem."""
    files = (directory / "cert.pem", directory / "key.pem", directory / "bundle.pem")
    return client_context(*files), server_context(*files)


def peer_uris(ssl_object: Any) -> list[str]:
    """The URI SANs of the verified peer certificate of an `ssl.SSLObject`/`SSLSocket` (empty if none)."""
    cert = ssl_object.getpeercert() if ssl_object is not None else None
    return [str(v) for k, v in (cert or {}).get("subjectAltName", ()) if k == "URI"]


def identity_problem(ssl_object: Any, expected: str) -> str | None:
    """Why the peer is not `expected`, or None when its one URI SAN is exactly that SPIFFE ID."""
    found = peer_uris(ssl_object)
    if found == [expected]:
        return None
    return f"expected identity {expected}, the peer presented {', '.join(found) or 'none'}"
