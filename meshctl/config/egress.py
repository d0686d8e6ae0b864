"""Galley's checks for egress: ServiceEntry specs, and a DestinationRule's `tls.caCertificates`.

ServiceEntry: only MESH_EXTERNAL hosts (the compose services are the mesh's own), named hosts (no wildcards:
the sidecar resolves each host itself), at least one port, and endpoints that fit the resolution.

caCertificates: in Istio a file path inside the proxy. On compose it is the CA's PEM itself, written inline or
as the path of a file on the host (relative to the YAML file), read once at apply and stored as PEM. Only PEM
certificates are accepted, nothing else in the text: the snapshot that carries them is readable by the app
(its admin port is on the pod's loopback), so a path must never pull another file's secrets into it.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509

from meshctl.config.schema import NAME_RE

PEM_BLOCK = re.compile(r"-----BEGIN ([A-Z0-9 ]+)-----\r?\n([A-Za-z0-9+/=\r\n]+?)-----END \1-----")
CA_MAX_BYTES = 256 * 1024
# Istio reads a port's protocol from its name's prefix when none is given (http-web, tcp-db), else TCP.
NAME_PREFIXES = ("http2", "https", "http", "grpc", "tls", "tcp", "mongo", "mysql", "redis")
MESH_INTERNAL_WHY = ("MESH_INTERNAL is not supported: the mesh's own services are its compose services; a "
                     "ServiceEntry describes hosts outside it (MESH_EXTERNAL)")


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def protocol(port: dict[str, Any]) -> str:
    """A ServiceEntry port's protocol: as given, else from its name's prefix, else TCP (Istio's rule)."""
    if port.get("protocol"):
        return str(port["protocol"]).upper()
    name = str(port.get("name") or "").lower()
    return next((p.upper() for p in NAME_PREFIXES if name == p or name.startswith(p + "-")), "TCP")


def service_entry_problems(spec: dict[str, Any], where: str) -> list[str]:
    problems = []
    if spec.get("location", "MESH_EXTERNAL") == "MESH_INTERNAL":
        problems.append(f"{where}.spec.location: {MESH_INTERNAL_WHY}")
    hosts = spec.get("hosts") or []
    if not hosts:
        problems.append(f"{where}.spec.hosts: name at least one host")
    for i, host in enumerate(hosts):
        if "*" in host:
            problems.append(f"{where}.spec.hosts[{i}]: {host!r}: wildcard hosts are not supported: the sidecar "
                            "resolves each host itself; list the host names")
        elif not NAME_RE.fullmatch(host.lower().rstrip(".")) or _is_ip(host):
            problems.append(f"{where}.spec.hosts[{i}]: {host!r} is not a DNS name")
    ports = spec.get("ports") or []
    if not ports:
        problems.append(f"{where}.spec.ports: give at least one port (number and protocol)")
    problems += [f"{where}.spec.ports[{i}].number: required" for i, p in enumerate(ports) if "number" not in p]
    numbers = [p.get("number") for p in ports]
    problems += [f"{where}.spec.ports: port {n} is listed twice" for n in sorted({n for n in numbers
                                                                                  if n and numbers.count(n) > 1})]
    resolution = spec.get("resolution", "NONE")
    endpoints = spec.get("endpoints") or []
    for i, endpoint in enumerate(endpoints):
        address = str(endpoint.get("address") or "")
        if not address:
            problems.append(f"{where}.spec.endpoints[{i}].address: required")
        elif resolution == "STATIC" and not _is_ip(address):
            problems.append(f"{where}.spec.endpoints[{i}].address: {address!r}: resolution STATIC takes IP "
                            "addresses (use resolution DNS for names)")
        elif not _is_ip(address) and not NAME_RE.fullmatch(address.lower()):
            problems.append(f"{where}.spec.endpoints[{i}].address: {address!r} is not an IP address or a DNS name "
                            "(unix sockets are not supported)")
    if resolution == "STATIC" and not endpoints:
        problems.append(f"{where}.spec.endpoints: resolution STATIC needs endpoints with IP addresses")
    return problems


def pem_problem(text: str) -> str | None:
    """Why `text` is not one or more PEM certificates and nothing else, or None."""
    blocks = list(PEM_BLOCK.finditer(text))
    if not blocks:
        return "holds no PEM certificate (-----BEGIN CERTIFICATE-----)"
    rest = PEM_BLOCK.sub("", text)
    if rest.strip():
        return "holds something besides PEM certificates; give the CA certificates only"
    for block in blocks:
        if block.group(1) != "CERTIFICATE":
            return f"holds a {block.group(1)}: only CERTIFICATE blocks are accepted (never a key)"
        try:
            x509.load_pem_x509_certificate(block.group(0).encode())
        except ValueError:
            return "holds a CERTIFICATE block that is not a valid X.509 certificate"
    return None


def ca_pem(value: str, base: Path | None) -> tuple[str | None, str | None]:
    """(PEM, None) for caCertificates given inline or as a file's path (relative to `base`); (None, problem)."""
    if "-----BEGIN" in value:
        problem = pem_problem(value)
        return (None, problem) if problem else (value, None)
    path = Path(value).expanduser()
    if not path.is_absolute():
        path = (base or Path.cwd()) / path
    try:
        if not path.is_file():
            return None, f"{value!r} is neither PEM certificates nor a file (a path is read relative to the YAML file)"
        if path.stat().st_size > CA_MAX_BYTES:
            return None, f"{path} is larger than {CA_MAX_BYTES // 1024} KiB: not a CA bundle"
        text = path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        return None, f"cannot read {path} as PEM text: {exc}"
    problem = pem_problem(text)
    return (None, f"{path} {problem}") if problem else (text, None)


def traffic_policies(spec: dict[str, Any]) -> list[tuple[str, int | None, dict[str, Any]]]:
    """A DestinationRule's traffic policies as (field path, subset index or None, policy): the host's, then each
    subset's."""
    subsets = spec.get("subsets") or []
    return [("spec.trafficPolicy", None, spec.get("trafficPolicy") or {})] + [
        (f"spec.subsets[{i}].trafficPolicy", i, s.get("trafficPolicy") or {}) for i, s in enumerate(subsets)]


@dataclass(frozen=True)
class TlsAt:
    """One `tls` block of a DestinationRule and where it is."""
    path: str  # spec.trafficPolicy.tls, spec.subsets[1].trafficPolicy.portLevelSettings[0].tls, ...
    tls: dict[str, Any]
    subset: int | None = None  # the subset's index; None: the host's own policy
    port: int | None = None  # portLevelSettings' port number; None: the policy's own tls


def tls_settings(spec: dict[str, Any]) -> list[TlsAt]:
    """Every `tls` block of a DestinationRule: the host's, its ports', each subset's and theirs."""
    out = []
    for path, subset, policy in traffic_policies(spec):
        if isinstance(policy.get("tls"), dict):
            out.append(TlsAt(f"{path}.tls", policy["tls"], subset))
        for j, setting in enumerate(policy.get("portLevelSettings") or []):
            if isinstance(setting.get("tls"), dict):
                out.append(TlsAt(f"{path}.portLevelSettings[{j}].tls", setting["tls"], subset,
                                 (setting.get("port") or {}).get("number")))
    return out


def inline_ca(resource: dict[str, Any], base: Path | None, label: str) -> list[str]:
    """A DestinationRule's caCertificates made PEM in place (a path is read now); the problems, if any."""
    if resource.get("kind") != "DestinationRule":
        return []
    settings = tls_settings(resource["spec"])
    problems = [f"{label}: spec.subsets[{i}]: tls mode SIMPLE applies to a ServiceEntry host as a whole (hosts "
                "outside the mesh have no subsets); set it in spec.trafficPolicy"
                for i in dict.fromkeys(t.subset for t in settings if t.subset is not None
                                       and t.tls.get("mode") == "SIMPLE")]
    for tls in (t.tls for t in settings):
        if isinstance(tls.get("caCertificates"), str):
            pem, problem = ca_pem(tls["caCertificates"], base)
            if problem:
                problems.append(f"{label}: tls.caCertificates: {problem}")
            else:
                tls["caCertificates"] = pem
    return problems
