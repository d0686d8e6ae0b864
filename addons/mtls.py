"""Mutual TLS between sidecars with SPIFFE identities.

- Inbound (a peer sidecar calls us): we present our workload certificate, require the caller's, verify
  its chain against the mesh trust bundle. The caller's SPIFFE ID is then on `client_conn.certificate_list`.
- Outbound (our app calls a meshed service): we present our certificate and accept the server only if
  its chain verifies and its URI SAN is the identity expected for that destination.

mitmproxy's `request_client_cert` does not verify (see NOTES.md), and its upstream verification wants a
hostname; so both sides get pyOpenSSL connections built here. Contexts are built once per certificate
generation and reloaded when the files change, so a rotation reaches new connections only.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from mitmproxy import connection, tls
from OpenSSL import SSL, crypto

from addons.snapshot import PROXY_DIR

log = logging.getLogger("meshctl.mtls")

CERT_DIR = PROXY_DIR
# Preference when a TLS client offers both: apps behind sidecars mostly speak HTTP/1.1.
HTTP_ALPNS = (b"http/1.1", b"h2")


def spiffe_ids(cert: crypto.X509) -> list[str]:
    try:
        sans = cert.to_cryptography().extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [v for v in sans.get_values_for_type(x509.UniformResourceIdentifier) if v.startswith("spiffe://")]


def peer_identity(certificate_list: Sequence[Any]) -> str | None:
    """The SPIFFE ID of a verified peer, from mitmproxy's certificate list (leaf first)."""
    if not certificate_list:
        return None
    for name in certificate_list[0].altnames:
        if isinstance(name, x509.UniformResourceIdentifier) and name.value.startswith("spiffe://"):
            return str(name.value)
    return None


def _select_alpn(conn: SSL.Connection, offers: Any) -> Any:
    for proto in HTTP_ALPNS:
        if proto in offers:
            return proto
    return SSL.NO_OVERLAPPING_PROTOCOLS


@dataclass
class Contexts:
    server: SSL.Context  # inbound: we are the TLS server
    client: SSL.Context  # outbound: we are the TLS client
    stamp: tuple[float, ...]  # file mtimes these contexts were built from
    cert_info: dict[str, Any]  # serial and expiry of the certificate in force, for the ack
    upstream: ssl.SSLContext  # the routed-request client's (addons.upstream); identity checked after connect


def _verify_chain(conn: SSL.Connection, cert: crypto.X509, errno: int, depth: int, ok: int) -> bool:
    return bool(ok)


def _verify_peer_identity(conn: SSL.Connection, cert: crypto.X509, errno: int, depth: int, ok: int) -> bool:
    if not ok:
        return False
    if depth > 0:
        return True
    expected = conn.get_app_data()
    found = spiffe_ids(cert)
    if expected not in found:
        log.warning("refusing upstream: expected identity %s, server presented %s", expected, found or "none")
        return False
    return True


def build_contexts(cert_dir: Path) -> Contexts:
    cert, key, bundle = cert_dir / "cert.pem", cert_dir / "key.pem", cert_dir / "bundle.pem"
    stamp = tuple(p.stat().st_mtime for p in (cert, key, bundle))

    def base(method: int) -> SSL.Context:
        ctx = SSL.Context(method)
        ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
        ctx.use_certificate_chain_file(str(cert))
        ctx.use_privatekey_file(str(key))
        ctx.check_privatekey()
        ctx.load_verify_locations(str(bundle))
        ctx.set_options(SSL.OP_NO_COMPRESSION | SSL.OP_CIPHER_SERVER_PREFERENCE)
        return ctx

    server = base(SSL.TLS_SERVER_METHOD)
    server.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, _verify_chain)
    server.set_alpn_select_callback(_select_alpn)
    server.set_session_id(b"meshctl")
    client = base(SSL.TLS_CLIENT_METHOD)
    client.set_verify(SSL.VERIFY_PEER, _verify_peer_identity)
    leaf = x509.load_pem_x509_certificate(cert.read_bytes())
    roots = x509.load_pem_x509_certificates(bundle.read_bytes())
    info = {"cert_serial": f"{leaf.serial_number:x}", "cert_not_after": leaf.not_valid_after_utc.timestamp(),
            "cert_not_before": leaf.not_valid_before_utc.timestamp(),
            "trust_bundle": [{"serial": f"{r.serial_number:x}", "subject": r.subject.rfc4514_string(),
                              "not_after": r.not_valid_after_utc.timestamp()} for r in roots]}
    upstream = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    upstream.check_hostname = False  # peers are named by SPIFFE URI, checked by the caller
    upstream.verify_mode = ssl.CERT_REQUIRED
    upstream.minimum_version = ssl.TLSVersion.TLSv1_2
    upstream.load_cert_chain(str(cert), str(key))
    upstream.load_verify_locations(str(bundle))
    upstream.set_alpn_protocols(["http/1.1"])
    return Contexts(server, client, stamp, info, upstream)


class MutualTLS:
    """Provides the pyOpenSSL connection for every TLS handshake the proxy makes; never falls back."""

    def __init__(self, cert_dir: Path = CERT_DIR) -> None:
        self.cert_dir = cert_dir
        self.contexts: Contexts | None = None
        # destination address -> expected SPIFFE ID, filled by the routing addon before the handshake
        self.expected: dict[tuple[str, int], str] = {}

    def reload(self) -> bool:
        """Rebuild the contexts if the certificate files changed. Returns True if they were (re)loaded."""
        try:
            stamp = tuple((self.cert_dir / n).stat().st_mtime for n in ("cert.pem", "key.pem", "bundle.pem"))
        except OSError as exc:
            log.error("cannot stat workload certificate files: %s", exc)
            return False
        if self.contexts is not None and self.contexts.stamp == stamp:
            return False
        self.contexts = build_contexts(self.cert_dir)
        log.info("loaded workload certificate from %s", self.cert_dir)
        return True

    def tls_start_client(self, data: tls.TlsData) -> None:
        assert self.contexts is not None
        conn = SSL.Connection(self.contexts.server)
        conn.set_accept_state()
        data.ssl_conn = conn

    def tls_failed_client(self, data: tls.TlsData) -> None:
        """A peer that failed our mutual TLS (no certificate, another CA's, an expired one): refused, and said."""
        peer = data.conn.peername[0] if data.conn.peername else "?"
        log.warning("refused mutual TLS from %s: %s", peer, data.conn.error or "handshake failed")

    def tls_start_server(self, data: tls.TlsData) -> None:
        assert self.contexts is not None
        address = data.conn.address if isinstance(data.conn, connection.Server) else None
        expected = self.expected.get(address) if address else None
        conn = SSL.Connection(self.contexts.client)
        # Without an expected identity nothing can match: the handshake fails closed.
        conn.set_app_data(expected or "<no mesh identity known for this destination>")
        # L4 tunnels set their own offer; HTTP connections the HTTP layer opens carry none: HTTP/1.1.
        conn.set_alpn_protos(list(data.conn.alpn_offers) or [b"http/1.1"])
        conn.set_connect_state()
        data.ssl_conn = conn
