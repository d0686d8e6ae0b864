"""The workload certificate in force, as the engine's TLS contexts, reloaded when its files change.

Contexts are built once per certificate generation: a rotation reaches new connections, and connections
already open (pooled ones too) keep the certificate they were made with until they close. A half-written
pair fails to load and the contexts in force stay until the next look.
"""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509

from sidecar.engine.l4 import inbound_server_context, l4_client_context
from sidecar.engine.plan import H2_ALPN
from sidecar.engine.tls import client_context

log = logging.getLogger("meshctl.mtls")
FILES = ("cert.pem", "key.pem", "bundle.pem")


@dataclass(frozen=True)
class Contexts:
    l7_client: ssl.SSLContext  # pooled HTTP/1.1 connections to peer sidecars
    l4_client: ssl.SSLContext  # one connection per relayed TCP connection (the L4 ALPN marker)
    h2_client: ssl.SSLContext  # HTTP/2 to peer sidecars (ALPN h2): multiplexed L7, or h2c relayed at L4
    server: ssl.SSLContext  # inbound: mutual TLS, either of the two
    stamp: tuple[float, ...]  # file mtimes these were built from
    cert_info: dict[str, Any]  # serial and expiry of the certificate in force, for the ack


def certificate_info(cert: Path, bundle: Path) -> dict[str, Any]:
    leaf = x509.load_pem_x509_certificate(cert.read_bytes())
    roots = x509.load_pem_x509_certificates(bundle.read_bytes())
    return {"cert_serial": f"{leaf.serial_number:x}", "cert_not_after": leaf.not_valid_after_utc.timestamp(),
            "cert_not_before": leaf.not_valid_before_utc.timestamp(),
            "trust_bundle": [{"serial": f"{r.serial_number:x}", "subject": r.subject.rfc4514_string(),
                              "not_after": r.not_valid_after_utc.timestamp()} for r in roots]}


class Certificates:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.contexts: Contexts | None = None

    def reload(self) -> bool:
        """Rebuild the contexts if the files changed. True if they were (re)loaded."""
        paths = [self.directory / name for name in FILES]
        try:
            stamp = tuple(p.stat().st_mtime for p in paths)
        except OSError as exc:
            log.error("cannot stat workload certificate files: %s", exc)
            return False
        if self.contexts is not None and self.contexts.stamp == stamp:
            return False
        cert, key, bundle = paths
        self.contexts = Contexts(client_context(cert, key, bundle), l4_client_context(cert, key, bundle),
                                 client_context(cert, key, bundle, alpn=(H2_ALPN,)),
                                 inbound_server_context(cert, key, bundle), stamp, certificate_info(cert, bundle))
        log.info("loaded workload certificate from %s", self.directory)
        return True

    # Callables the pools and listeners ask at each new connection.
    def l7_client(self) -> ssl.SSLContext | None:
        return self.contexts.l7_client if self.contexts else None

    def l4_client(self) -> ssl.SSLContext | None:
        return self.contexts.l4_client if self.contexts else None

    def h2_client(self) -> ssl.SSLContext | None:
        return self.contexts.h2_client if self.contexts else None

    def server(self) -> ssl.SSLContext | None:
        return self.contexts.server if self.contexts else None

    @property
    def cert_info(self) -> dict[str, Any]:
        return self.contexts.cert_info if self.contexts else {}
