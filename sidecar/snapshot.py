"""The snapshot: the one file the control plane hands a sidecar (the contract between the two planes).

Pure parsing into small typed values, so a snapshot the sidecar cannot apply is rejected with a reason
before anything uses it. Depends only on the stdlib.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sidecar import egress
from sidecar.contract import FORMAT_VERSION, MTLS_MODES

# Where the sidecar finds its mounted files (certificate, key, bundle, snapshot). Defined here, in a
# stdlib-only module, so the supervisor process does not load TLS and mitmproxy just to know a path.
PROXY_DIR = Path(os.environ.get("MESHCTL_PROXY_DIR", "/etc/meshctl"))
MODES = MTLS_MODES
PROTOCOLS = ("tcp", "http")  # a port's declared protocol: tcp connects upstream at once (server-first protocols)


class SnapshotError(ValueError):
    pass


@dataclass(frozen=True)
class Workload:
    host: str  # the compose service name, which resolves to its pods' addresses
    version: str  # its subset
    mode: str = "PERMISSIVE"  # its inbound mTLS mode: DISABLE means callers send plaintext
    port_modes: tuple[tuple[int, str], ...] = ()
    port_protocols: tuple[tuple[int, str], ...] = ()  # declared per port (compose app_protocol, a label)
    labels: tuple[tuple[str, str], ...] = ()  # its compose labels (app and version included): subsets match them

    def selected_by(self, wanted: Mapping[str, Any]) -> bool:
        """Whether a subset's `labels` select this workload; without its labels (an older snapshot), only by
        version. A label it lacks selects nothing (fail closed)."""
        have = dict(self.labels) or {"version": self.version}
        return all(have.get(k) == v for k, v in wanted.items())

    def accepts_mtls(self, port: int) -> bool:
        return dict(self.port_modes).get(port, self.mode) != "DISABLE"

    def protocol(self, port: int) -> str | None:
        """The protocol declared for `port` (one of PROTOCOLS), or None when it is left to detection."""
        return dict(self.port_protocols).get(port)


@dataclass(frozen=True)
class Service:
    name: str  # the logical service (the `app` label); also a DNS alias of all its pods
    identity: str  # SPIFFE ID its sidecars present
    workloads: tuple[Workload, ...]


@dataclass(frozen=True)
class TracingConfig:
    sampling: float = 100.0  # percent of new traces recorded; a caller's sampled flag is honoured
    zipkin: str | None = None  # also export spans here (Zipkin v2 JSON), e.g. http://zipkin:9411/api/v2/spans
    otlp: str | None = None  # and/or here (OTLP/HTTP JSON), e.g. http://collector:4318/v1/traces


@dataclass(frozen=True)
class MeshConfig:
    """Mesh-wide settings (Istio's meshConfig), chosen with `meshctl install`."""
    path_normalization: str = "MERGE_SLASHES"  # sidecar.normalize.MODES
    num_trusted_proxies: int = 0  # X-Forwarded-For hops trusted to name the original client (remoteIpBlocks)
    outbound_policy: str = egress.ALLOW_ANY  # Istio's outboundTrafficPolicy.mode (sidecar.egress)


@dataclass(frozen=True)
class Snapshot:
    revision: int
    hash: str
    name: str  # this proxy: project.service
    service: str  # compose service
    app: str
    version: str
    identity: str
    trust_domain: str
    mode: str
    exclude_inbound_ports: frozenset[int] = frozenset()
    exclude_outbound_ports: frozenset[int] = frozenset()
    published_ports: frozenset[int] = frozenset()
    services: tuple[Service, ...] = field(default_factory=tuple)
    routes: tuple[dict[str, Any], ...] = field(default_factory=tuple)  # VirtualService specs (issue [4 Traffic])
    destinations: tuple[dict[str, Any], ...] = field(default_factory=tuple)  # DestinationRule specs
    port_modes: dict[int, str] = field(default_factory=dict)  # PeerAuthentication portLevelMtls
    authorization: tuple[dict[str, Any], ...] = field(default_factory=tuple)  # AuthorizationPolicies selecting us
    jwt: tuple[dict[str, Any], ...] = field(default_factory=tuple)  # RequestAuthentication jwtRules
    tracing: TracingConfig = field(default_factory=TracingConfig)  # from Telemetry resources
    mesh: MeshConfig = field(default_factory=MeshConfig)
    egress: tuple[egress.External, ...] = ()  # ServiceEntry hosts (MESH_EXTERNAL) this proxy may call
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)


def _get(data: dict[str, Any], key: str, kind: type, where: str = "") -> Any:
    if key not in data:
        raise SnapshotError(f"missing field {where}{key}")
    value = data[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise SnapshotError(f"field {where}{key} must be {kind.__name__}, not {type(value).__name__}")
    return value


def _ports(values: Any, where: str) -> frozenset[int]:
    if not isinstance(values, list) or not all(isinstance(p, int) and not isinstance(p, bool) and 0 < p < 65536
                                               for p in values):
        raise SnapshotError(f"field {where} must be a list of port numbers")
    return frozenset(values)


def _port_modes(values: Any, allowed: tuple[str, ...] = MODES) -> bool:
    """{"8080": "DISABLE"}: JSON keys are strings, of ASCII digits only ('²'.isdigit() is True)."""
    return isinstance(values, dict) and all(
        isinstance(k, str) and len(k) <= 5 and k.isascii() and k.isdigit() and 0 < int(k) < 65536 and
        isinstance(v, str) and v in allowed for k, v in values.items())


def parse(data: Any) -> Snapshot:
    if not isinstance(data, dict):
        raise SnapshotError("snapshot is not a JSON object")
    if data.get("format") != FORMAT_VERSION:
        raise SnapshotError(f"unsupported snapshot format {data.get('format')!r} (this proxy reads {FORMAT_VERSION})")
    proxy = _get(data, "proxy", dict)
    inbound = _get(data, "inbound", dict)
    outbound = _get(data, "outbound", dict)
    mode = _get(inbound, "mode", str, "inbound.")
    if mode not in MODES:
        raise SnapshotError(f"inbound.mode must be one of {', '.join(MODES)}, not {mode!r}")
    services = []
    for i, svc in enumerate(_get(data, "services", list)):
        if not isinstance(svc, dict):
            raise SnapshotError(f"services[{i}] is not an object")
        workloads = []
        for j, wl in enumerate(_get(svc, "workloads", list, f"services[{i}].")):
            where = f"services[{i}].workloads[{j}]."
            if not isinstance(wl, dict):
                raise SnapshotError(f"{where[:-1]} is not an object")
            wl_mode = wl.get("mode", "PERMISSIVE")
            wl_ports = wl.get("port_modes", {})
            if wl_mode not in MODES or not _port_modes(wl_ports):
                raise SnapshotError(f"{where}mode and port_modes must be one of {', '.join(MODES)}")
            wl_protocols = wl.get("port_protocols", {})
            if not _port_modes(wl_protocols, PROTOCOLS):
                raise SnapshotError(f"{where}port_protocols must map port numbers to {' or '.join(PROTOCOLS)}")
            wl_labels = wl.get("labels", {})
            if not isinstance(wl_labels, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                          for k, v in wl_labels.items()):
                raise SnapshotError(f"{where}labels must map label names to strings")
            workloads.append(Workload(_get(wl, "host", str, where), _get(wl, "version", str, where), wl_mode,
                                      tuple(sorted((int(k), v) for k, v in wl_ports.items())),
                                      tuple(sorted((int(k), v) for k, v in wl_protocols.items())),
                                      tuple(sorted(wl_labels.items()))))
        services.append(Service(_get(svc, "name", str, f"services[{i}]."),
                                _get(svc, "identity", str, f"services[{i}]."), tuple(workloads)))
    routes = data.get("routes", [])
    destinations = data.get("destinations", [])
    for key, items in (("routes", routes), ("destinations", destinations)):
        if not isinstance(items, list) or not all(isinstance(i, dict) and isinstance(i.get("name"), str)
                                                   for i in items):
            raise SnapshotError(f"field {key} must be a list of named objects")
    port_modes = inbound.get("port_modes", {})
    if not _port_modes(port_modes):
        raise SnapshotError("field inbound.port_modes must map port numbers to " + ", ".join(MODES))
    security: dict[str, list[dict[str, Any]]] = {}
    for key in ("authorization", "jwt"):
        items = data.get(key, [])
        if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
            raise SnapshotError(f"field {key} must be a list of objects")
        security[key] = items
    for i, policy in enumerate(security["authorization"]):
        if policy.get("action") not in ("ALLOW", "DENY", "AUDIT") or not isinstance(policy.get("rules", []), list):
            raise SnapshotError(f"authorization[{i}] needs an action (ALLOW, DENY, AUDIT) and a rules list")
    try:
        external = egress.parse(data.get("egress", []))
    except egress.EgressError as exc:
        raise SnapshotError(str(exc)) from None
    return Snapshot(
        egress=external,
        tracing=_tracing(data.get("tracing", {})),
        mesh=_mesh(data.get("mesh", {})),
        revision=_get(data, "revision", int),
        hash=_get(data, "hash", str),
        name=_get(proxy, "name", str, "proxy."),
        service=_get(proxy, "service", str, "proxy."),
        app=_get(proxy, "app", str, "proxy."),
        version=_get(proxy, "version", str, "proxy."),
        identity=_get(proxy, "identity", str, "proxy."),
        trust_domain=_get(data, "trust_domain", str),
        mode=mode,
        exclude_inbound_ports=_ports(inbound.get("exclude_ports", []), "inbound.exclude_ports"),
        published_ports=_ports(inbound.get("published_ports", []), "inbound.published_ports"),
        exclude_outbound_ports=_ports(outbound.get("exclude_ports", []), "outbound.exclude_ports"),
        services=tuple(services),
        routes=tuple(routes),
        destinations=tuple(destinations),
        port_modes={int(k): v for k, v in port_modes.items()},
        authorization=tuple(security["authorization"]),
        jwt=tuple(security["jwt"]),
        raw=data,
    )


def _tracing(data: Any) -> TracingConfig:
    if not isinstance(data, dict):
        raise SnapshotError("field tracing must be an object")
    sampling = data.get("sampling", 100.0)
    if isinstance(sampling, bool) or not isinstance(sampling, (int, float)) or not 0 <= sampling <= 100:
        raise SnapshotError("field tracing.sampling must be a percentage (0-100)")
    urls = {k: data.get(k) for k in ("zipkin", "otlp")}
    for key, url in urls.items():
        if url is not None and not (isinstance(url, str) and url.startswith(("http://", "https://"))):
            raise SnapshotError(f"field tracing.{key} must be an http(s) URL")
    return TracingConfig(float(sampling), urls["zipkin"], urls["otlp"])


PATH_MODES = ("NONE", "BASE", "MERGE_SLASHES", "DECODE_AND_MERGE_SLASHES")  # sidecar.normalize.MODES


def _mesh(data: Any) -> MeshConfig:
    if not isinstance(data, dict):
        raise SnapshotError("field mesh must be an object")
    mode = data.get("path_normalization", MeshConfig.path_normalization)
    if mode not in PATH_MODES:
        raise SnapshotError(f"field mesh.path_normalization must be one of {', '.join(PATH_MODES)}")
    hops = data.get("num_trusted_proxies", 0)
    if isinstance(hops, bool) or not isinstance(hops, int) or not 0 <= hops <= 64:
        raise SnapshotError("field mesh.num_trusted_proxies must be a whole number from 0 to 64")
    outbound = data.get("outbound_traffic_policy", egress.ALLOW_ANY)
    if outbound not in egress.OUTBOUND_POLICIES:
        raise SnapshotError(f"field mesh.outbound_traffic_policy must be one of {', '.join(egress.OUTBOUND_POLICIES)}")
    return MeshConfig(mode, hops, outbound)


def read_raw(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except OSError as exc:
        raise SnapshotError(f"cannot read {path}: {exc.strerror}") from exc
    except (ValueError, RecursionError) as exc:  # bad JSON or UTF-8, an integer too long, nesting too deep
        raise SnapshotError(f"{path} is not valid JSON: {exc}") from exc


def load(path: Path) -> Snapshot:
    return parse(read_raw(path))
