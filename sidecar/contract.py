"""The contract between the two planes: the numbers, names and formats meshctl and the sidecar must agree on.

Defined once, here, in the sidecar package, because the sidecar runs alone in its image and cannot import
meshctl; meshctl imports these. Stdlib only: the supervisor process loads it too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

# The snapshot's format (sidecar.snapshot reads this one only; meshctl's pilot writes it).
FORMAT_VERSION: Final = 1

# mTLS modes of a pod, a port or a workload (PeerAuthentication's, without UNSET, which config resolves).
MTLS_MODES: Final = ("STRICT", "PERMISSIVE", "DISABLE")

# Istio's data-plane numbers.
PORT_ADMIN: Final = 15000  # admin: /config_dump, /stats (loopback of the pod)
PORT_OUTBOUND: Final = 15001  # outbound capture
PORT_INBOUND: Final = 15006  # inbound capture
PORT_HEALTH: Final = 15021  # readiness and the ack (/healthz/ready, /status)
PORT_METRICS: Final = 15090  # Prometheus metrics, spans, tap
PROXY_PORTS: Final = range(15000, 15100)  # the proxy's own: an app may not use them, the listeners never dial them
PROXY_UID: Final = 1337  # the proxy's uid and gid, exempt from capture

# Files a pod's directory holds, and across hosts the manifest that vouches for them: the CLI writes it last
# into the pod's volume, and the supervisor hands the set to the proxy only when every file matches it.
DELIVERY_FILES: Final = ("cert.pem", "key.pem", "bundle.pem", "snapshot.json")
MANIFEST_JSON: Final = "manifest.json"

# Istio's duration strings, as resources write them ('250ms', '1.5s', '2m', '1h'): one number, one unit.
DURATION_RE: Final = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h)$")
DURATION_UNITS: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
MAX_DURATION_S: Final = 315_576_000_000  # protobuf's Duration (Istio's): 10,000 years


def parse_duration(text: str) -> float:
    """'1.5s' -> 1.5, '250ms' -> 0.25; ValueError naming the text otherwise (at least one unit is required)."""
    m = DURATION_RE.match(text.strip())
    if not m:
        raise ValueError(f"{text!r} is not a duration; write it like 250ms, 1.5s, 2m or 1h")
    seconds = float(m.group(1)) * DURATION_UNITS[m.group(2)]
    if not seconds <= MAX_DURATION_S:  # also inf: more digits than a float holds
        raise ValueError(f"{text!r} is longer than a duration can be (10,000 years)")
    return seconds


# Identities: spiffe://<trust domain>/ns/<compose project>/sa/<service account>. Istio writes a principal as
# the same without the scheme. A segment is a non-empty run of anything but '/' (and no whitespace or
# control characters, which no certificate meshctl issues holds).
SPIFFE_SCHEME: Final = "spiffe://"
_SEGMENT = r"[^/\s\x00-\x1f\x7f]+"
PRINCIPAL_RE: Final = re.compile(rf"({_SEGMENT})/ns/({_SEGMENT})/sa/({_SEGMENT})")


class IdentityError(ValueError):
    """Text that is not a mesh identity (SPIFFE ID or principal)."""


@dataclass(frozen=True)
class Identity:
    trust_domain: str
    namespace: str  # the compose project
    account: str  # the service account (default: the app)

    def __post_init__(self) -> None:
        if PRINCIPAL_RE.fullmatch(self.principal) is None:
            raise IdentityError(f"{self.trust_domain!r}, {self.namespace!r}, {self.account!r} do not make an "
                                "identity: each must be non-empty, without '/' or whitespace")

    @property
    def principal(self) -> str:
        """Istio's source principal: cluster.local/ns/PROJECT/sa/ACCOUNT."""
        return f"{self.trust_domain}/ns/{self.namespace}/sa/{self.account}"

    @property
    def uri(self) -> str:
        """The SPIFFE ID, as the workload certificate's URI SAN holds it."""
        return SPIFFE_SCHEME + self.principal

    def __str__(self) -> str:
        return self.uri


def spiffe_id(trust_domain: str, namespace: str, account: str) -> str:
    """The SPIFFE ID of `account` in `namespace`; IdentityError when a part cannot be one segment."""
    return Identity(trust_domain, namespace, account).uri


def parse_principal(text: str) -> Identity:
    """cluster.local/ns/PROJECT/sa/ACCOUNT -> Identity; IdentityError otherwise."""
    m = PRINCIPAL_RE.fullmatch(text) if isinstance(text, str) else None
    if m is None:
        raise IdentityError(f"{str(text)[:200]!r} is not a principal (TRUST_DOMAIN/ns/NAMESPACE/sa/ACCOUNT)")
    return Identity(*m.groups())


def parse_spiffe(text: str) -> Identity:
    """spiffe://cluster.local/ns/PROJECT/sa/ACCOUNT -> Identity; IdentityError otherwise."""
    if not isinstance(text, str) or not text.startswith(SPIFFE_SCHEME):
        raise IdentityError(f"{str(text)[:200]!r} is not a SPIFFE ID (spiffe://TRUST_DOMAIN/ns/NAMESPACE/sa/ACCOUNT)")
    return parse_principal(text[len(SPIFFE_SCHEME):])
