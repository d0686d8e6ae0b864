"""Which protocol a port of a meshed service carries, as its compose file declares it.

Two ways, compiled into the snapshot's `services[].workloads[].port_protocols` (sidecar.snapshot.PROTOCOLS),
which the caller's and the callee's sidecars both read:

- compose's long port syntax: `ports: [{target: 3306, app_protocol: mysql}]` (compose v2 only: docker-compose
  1.x refuses the key, in the user's file as in the meshed one);
- the label `mesh.port-protocols: "3306=tcp,8080=http"`, which both compose versions accept; for the same
  port it overrides `app_protocol`.

A "tcp" port gets its upstream connection at once, so a server that speaks first (MySQL, SMTP) is not kept
waiting for its client; an "http" port is parsed as HTTP/1.1 without sniffing. Undeclared ports are left to
the sidecar: well-known TCP ports, else a short sniff of the client's first bytes.
"""

from __future__ import annotations

import difflib
from typing import Any

from meshctl import const
from meshctl.config.schema import is_port

LABEL_PORT_PROTOCOLS = "mesh.port-protocols"
PROXY_PORTS = const.PROXY_PORTS

# Names as compose's `app_protocol`, Kubernetes' `appProtocol` and Istio's port names spell them
# (case-insensitive), each mapped to what the sidecar does with the port.
HTTP_NAMES = ("http", "http1", "http1.1", "http/1.1",
              "ws", "kubernetes.io/ws",  # WebSocket begins as an HTTP/1.1 upgrade, handled at L7
              # HTTP/2 with prior knowledge (h2c, gRPC): known from its preface, at L7 when config asks for it
              "h2c", "http2", "grpc", "kubernetes.io/h2c")
TCP_NAMES = ("tcp", "mysql", "mariadb", "postgresql", "postgres", "redis", "mongo", "mongodb", "memcached",
             "amqp", "kafka", "smtp", "ftp", "pop3", "imap", "ssh",
             # the app's own TLS: carried at L4 inside the mesh's mutual TLS
             "tls", "https", "wss", "kubernetes.io/wss")
PROTOCOL_NAMES: dict[str, str] = {**{n: "http" for n in HTTP_NAMES}, **{n: "tcp" for n in TCP_NAMES}}
ACCEPTED = f"http ({', '.join(HTTP_NAMES[1:])}) or tcp ({', '.join(TCP_NAMES[1:])})"


def protocol_of(name: Any) -> str | None:
    """"tcp" or "http" for a protocol name meshctl knows, else None."""
    return PROTOCOL_NAMES.get(name.strip().lower()) if isinstance(name, str) else None


def unknown(name: Any) -> str:
    """Why `name` is refused, with a "did you mean" when one is close, and what is accepted."""
    close = difflib.get_close_matches(str(name).strip().lower(), list(PROTOCOL_NAMES), n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"is not a protocol meshctl knows{hint}; accepted: {ACCEPTED}"


def _port_problem(port: Any) -> str | None:
    if not is_port(port):
        return "is not a port (1-65535)"
    if int(port) in PROXY_PORTS:
        return "is one of the sidecar's own ports (15000-15099)"
    return None


def from_ports(ports: Any, where: str, problems: list[str]) -> dict[int, str]:
    """port -> protocol from the long syntax's `app_protocol` (the short syntax has none)."""
    out: dict[int, str] = {}
    for i, entry in enumerate(ports if isinstance(ports, list) else []):
        if not isinstance(entry, dict) or entry.get("app_protocol") is None:
            continue
        field = f"{where}: `ports[{i}].app_protocol: {entry['app_protocol']}`"
        protocol = protocol_of(entry["app_protocol"])
        wrong_port = _port_problem(entry.get("target"))
        if protocol is None:
            problems.append(f"{field} {unknown(entry['app_protocol'])}")
        elif wrong_port is not None:
            problems.append(f"{field}: its target {entry.get('target')!r} {wrong_port}")
        else:
            out[int(entry["target"])] = protocol
    return out


def from_label(value: str, where: str, problems: list[str]) -> dict[int, str]:
    """port -> protocol from `mesh.port-protocols: "3306=tcp,8080=http"`."""
    out: dict[int, str] = {}
    field = f"{where}: label `{LABEL_PORT_PROTOCOLS}`"
    for part in filter(None, (p.strip() for p in value.split(","))):
        port, eq, name = (s.strip() for s in part.partition("="))
        protocol = protocol_of(name)
        wrong_port = _port_problem(port)
        if not eq or wrong_port is not None:
            problems.append(f"{field}: {part!r} must be PORT=PROTOCOL, e.g. \"3306=tcp,8080=http\""
                            + (f" ({port!r} {wrong_port})" if eq and wrong_port else ""))
        elif protocol is None:
            problems.append(f"{field}: {name!r} (for port {port}) {unknown(name)}")
        elif out.get(int(port), protocol) != protocol:
            problems.append(f"{field}: port {port} is declared both {out[int(port)]} and {protocol}")
        else:
            out[int(port)] = protocol
    return out


def declared(svc: dict[str, Any], labels: dict[str, str], where: str,
             problems: list[str]) -> tuple[tuple[int, str], ...]:
    """The service's declared port protocols, sorted by port: `app_protocol`, then the label over it."""
    found = from_ports(svc.get("ports"), where, problems)
    found.update(from_label(labels.get(LABEL_PORT_PROTOCOLS, ""), where, problems))
    return tuple(sorted(found.items()))


def uses_app_protocol(svc: Any) -> bool:
    """Whether the service declares a protocol with compose v2's `app_protocol` (docker-compose 1.x refuses it)."""
    ports = svc.get("ports") if isinstance(svc, dict) else None
    return isinstance(ports, list) and any(isinstance(p, dict) and "app_protocol" in p for p in ports)
