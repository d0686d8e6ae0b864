"""The typed request context every hook reads and writes: one HTTP request through the sidecar.

The engine creates a Call when a request head is whole, hands it to the hooks (sidecar.engine.hooks: tracing,
authorization, routing), forwards or answers it, fills in the outcome (status, sizes, flags, upstream) and
hands it back to the hooks once it is over (telemetry, the span). Hooks never see sockets.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from sidecar.contract import PORT_INBOUND as INBOUND_PORT
from sidecar.engine.http1 import RequestHead, ResponseHead
from sidecar.engine.plan import ConnectionInfo


class Headers:
    """A case-insensitive view over a head's fields (bytes pairs) with str names and values (latin-1): the
    subset of mitmproxy's Headers the shared decisions use. Edits go to the head's list itself."""

    __slots__ = ("fields",)

    def __init__(self, fields: list[tuple[bytes, bytes]]) -> None:
        self.fields = fields

    @staticmethod
    def _key(name: str) -> bytes:
        return name.lower().encode("latin-1")

    def get(self, name: str, default: str | None = None) -> str | None:
        key = self._key(name)
        for k, v in self.fields:
            if k.lower() == key:
                return v.decode("latin-1")
        return default

    def get_all(self, name: str) -> list[str]:
        key = self._key(name)
        return [v.decode("latin-1") for k, v in self.fields if k.lower() == key]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def __getitem__(self, name: str) -> str:
        value = self.get(name)
        if value is None:
            raise KeyError(name)
        return value

    def __setitem__(self, name: str, value: str) -> None:
        """Replace every field of that name with one, where the first one was (appended if none)."""
        key, raw = self._key(name), value.encode("latin-1")
        at = next((i for i, (k, _) in enumerate(self.fields) if k.lower() == key), None)
        if at is None:
            self.fields.append((key, raw))
            return
        self.fields[at] = (self.fields[at][0], raw)
        self.fields[at + 1:] = [(k, v) for k, v in self.fields[at + 1:] if k.lower() != key]

    def __delitem__(self, name: str) -> None:
        if self.pop(name) is None:
            raise KeyError(name)

    def add(self, name: str, value: str) -> None:
        self.fields.append((self._key(name), value.encode("latin-1")))

    def pop(self, name: str, default: str | None = None) -> str | None:
        key = self._key(name)
        found = self.get(name)
        if found is None:
            return default
        self.fields[:] = [(k, v) for k, v in self.fields if k.lower() != key]
        return found

    def items(self) -> Iterator[tuple[str, str]]:
        return ((k.decode("latin-1"), v.decode("latin-1")) for k, v in self.fields)

    def lower_dict(self) -> dict[str, str]:
        """name -> first value, names lower-case (what matches and conditions read)."""
        out: dict[str, str] = {}
        for k, v in self.fields:
            out.setdefault(k.decode("latin-1").lower(), v.decode("latin-1"))
        return out


@dataclass(slots=True, eq=False)
class Call:
    conn: ConnectionInfo | None  # the connection it came on (None: a listener used directly, in tests)
    head: RequestHead  # method, normalised target, version, headers (edited in place by the hooks)
    start: float = field(default_factory=time.time)
    # --- what the hooks decided ---
    flags: str = "-"  # Envoy's response flags: RBAC, UAEX, DPE, NR, UH, UF, UC, UO, UT, URX, FI, DI
    reason: str | None = None  # why the proxy refused it (a protocol error)
    audit: str | None = None  # the AUDIT policy that matched
    route: dict[str, Any] | None = None  # the router's decision: host, subset, attempts
    span: Any = None  # sidecar.spans.OpenSpan
    parties: dict[str, str] | None = None  # both ends, worked out once (metrics, log and span share it)
    upstream: tuple[str, int] | None = None  # where it was sent
    upstream_identity: str = ""  # the SPIFFE ID the upstream presented ("" = plaintext)
    edit_response: Callable[[ResponseHead], None] | None = None  # header operations on the response
    # --- the outcome ---
    status: int = 0  # 0: no response
    end: float = 0.0
    request_bytes: int = 0
    response_bytes: int = 0
    error: str | None = None
    protocol: str = "http"  # Istio's request_protocol: "http", or "grpc" (content-type application/grpc)
    grpc_status: int | None = None  # a gRPC call's status (trailers, or a trailers-only answer)
    deadline: float | None = None  # HTTP/2: when the whole exchange must be over (the loop's clock)
    # --- tap (filled only while a tap session asks) ---
    response_fields: list[tuple[bytes, bytes]] | None = None  # the response head's headers as sent downstream
    capture: int = 0  # body bytes to keep, each way (0: none); set at request start by sidecar.engine.tap
    request_body: bytearray | None = None
    response_body: bytearray | None = None

    @property
    def inbound(self) -> bool:
        return self.conn is not None and self.conn.listener == INBOUND_PORT

    @property
    def headers(self) -> Headers:
        return Headers(self.head.headers)

    @property
    def method(self) -> str:
        return self.head.method.decode("latin-1")

    @property
    def target(self) -> str:
        """The normalised request target (path and query), as the upstream gets it."""
        return self.head.target.decode("latin-1")

    @target.setter
    def target(self, value: str) -> None:
        self.head.target = value.encode("latin-1")

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]

    @property
    def authority(self) -> str:
        return self.head.host or ""

    @property
    def caller(self) -> str | None:
        """Inbound: the caller's verified SPIFFE ID, None in plaintext."""
        return (self.conn.tls_peer or None) if self.conn is not None else None

    def finish(self, status: int, flags: str | None = None) -> None:
        self.status = status
        if flags is not None:
            self.flags = flags
        self.end = time.time()
