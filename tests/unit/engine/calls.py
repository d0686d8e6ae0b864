"""Typed request contexts for the hook tests: an inbound or outbound Call on a given snapshot, no sockets."""

from __future__ import annotations

from typing import Any

from sidecar import snapshot
from sidecar.engine.call import Call
from sidecar.engine.http1 import RequestHead
from sidecar.engine.plan import INBOUND_PORT, ConnectionInfo


class Live:
    """sidecar.live.LiveSnapshot's interface, without a file."""

    def __init__(self, raw: dict[str, Any]) -> None:
        self.current = snapshot.parse(raw)
        self.on_apply: list[Any] = []


def request_head(method: bytes = b"GET", target: bytes = b"/", headers: list[tuple[bytes, bytes]] | None = None,
                 framing: str = "none", length: int | None = None, upgrade: bool = False,
                 host: str = "reviews:9080") -> RequestHead:
    fields = headers if headers is not None else [(b"host", host.encode())]
    return RequestHead(method, target, b"1.1", fields, True, framing, length, host, upgrade)  # type: ignore[arg-type]


def call_on(snap: snapshot.Snapshot, target: str = "/", headers: list[tuple[str, str]] | None = None,
            listener: int = INBOUND_PORT, port: int = 9080, tls_peer: str | None = None,
            peer_ip: str = "10.0.0.9") -> Call:
    """A request as it arrives on `listener`, with str headers (a Host is added when none is given)."""
    fields = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers or []]
    if not any(k.lower() == b"host" for k, _ in fields):
        fields.insert(0, (b"host", b"web"))
    info = ConnectionInfo(listener, ("10.0.0.2", port), (peer_ip, 4000), None, snap, tls_peer=tls_peer)
    return Call(info, request_head(target=target.encode("latin-1"), headers=fields, host="web"))
