"""The server name (SNI) of a TLS ClientHello, from the bytes a client has sent so far. Pure; stdlib only.

`parse(data)` answers one of:
- `Hello("more", need=N)`: the hello is not complete; at least N bytes in all are needed (N <= MAX_WIRE);
- `Hello("sni", host=...)`: the server_name extension's host name, lower-cased, a valid DNS name;
- `Hello("none")`: a complete ClientHello without a server name;
- `Hello("malformed", reason=...)`: not a ClientHello, a broken one, or longer than MAX_HELLO.
A hello may span several TLS records (and so TCP segments): post-quantum key shares make it >1.5 KB.
Never reads past `data`, never raises.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

MAX_HELLO = 16384  # the handshake message's body; a longer ClientHello is refused
MAX_WIRE = MAX_HELLO + 4 + 1024  # the records carrying it: the message, its header, room for record headers
RECORD_HEADER = 5
HANDSHAKE = 0x16
CLIENT_HELLO = 1
SERVER_NAME = 0  # extension type (RFC 6066)
HOST_NAME = 0  # name_type

_LABEL = re.compile(r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?\Z")

Status = Literal["more", "sni", "none", "malformed"]


@dataclass(frozen=True)
class Hello:
    status: Status
    host: str = ""  # "sni": the server name
    need: int = 0  # "more": how many bytes in all are needed, at least
    reason: str = ""  # "malformed": what is wrong

    def describe(self) -> str:
        """For a log line: the server name, or why there is none."""
        return {"sni": f"SNI {self.host}", "none": "no SNI", "more": "an incomplete ClientHello"}.get(
            self.status, f"a malformed ClientHello ({self.reason})")


def _bad(reason: str) -> Hello:
    return Hello("malformed", reason=reason)


def dns_name(raw: bytes) -> str | None:
    """`raw` lower-cased when it is a DNS host name (ASCII labels, no trailing dot, no IP literal), else None."""
    if not 0 < len(raw) <= 253 or not raw.isascii():
        return None
    name = raw.decode("ascii").lower()
    labels = name.split(".")
    if not all(_LABEL.match(label) for label in labels) or labels[-1].isdigit():
        return None
    return name


def _handshake(data: bytes) -> tuple[bytes, int] | Hello:
    """The handshake bytes of the ClientHello, and how many wire bytes held them; or the answer already."""
    out = bytearray()
    offset = 0
    total: int | None = None  # the handshake message's length with its 4-byte header, once known
    while total is None or len(out) < total:
        if offset + RECORD_HEADER > len(data):
            return Hello("more", need=offset + RECORD_HEADER)
        kind, major, length = data[offset], data[offset + 1], int.from_bytes(data[offset + 3:offset + 5], "big")
        if kind != HANDSHAKE or major != 3:
            return _bad("not a TLS handshake record")
        if length == 0 or length > MAX_HELLO + 4:
            return _bad("a record of a bad length")
        end = offset + RECORD_HEADER + length
        if end > MAX_WIRE:
            return _bad(f"longer than {MAX_HELLO} bytes")
        out += data[offset + RECORD_HEADER:end]
        if total is None and len(out) >= 4:  # known from a part of a record: an oversized hello is refused at once
            if out[0] != CLIENT_HELLO:
                return _bad("not a ClientHello")
            body = int.from_bytes(out[1:4], "big")
            if body > MAX_HELLO:
                return _bad(f"longer than {MAX_HELLO} bytes")
            total = 4 + body
        if end > len(data):
            return Hello("more", need=end)
        offset = end
    assert total is not None
    return bytes(out[:total]), offset


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.at = data, 0

    def take(self, n: int) -> bytes | None:
        if n < 0 or self.at + n > len(self.data):
            return None
        self.at += n
        return self.data[self.at - n:self.at]

    def number(self, size: int) -> int | None:
        raw = self.take(size)
        return None if raw is None else int.from_bytes(raw, "big")

    def vector(self, size: int) -> bytes | None:
        n = self.number(size)
        return None if n is None else self.take(n)

    @property
    def left(self) -> int:
        return len(self.data) - self.at


def _server_name(ext: bytes) -> Hello:
    r = _Reader(ext)
    names = r.vector(2)
    if names is None or r.left or not names:
        return _bad("a broken server_name extension")
    r = _Reader(names)
    host: str | None = None
    while r.left:
        kind, name = r.number(1), r.vector(2)
        if kind is None or name is None:
            return _bad("a broken server_name list")
        if kind == HOST_NAME:
            if host is not None:
                return _bad("two host names")
            host = dns_name(name)
            if host is None:
                return _bad("a server name that is no DNS host name")
    return Hello("sni", host=host) if host is not None else Hello("none")


def parse(data: bytes) -> Hello:
    """What the ClientHello in `data` (from the first byte the client sent) says about its server name."""
    found = _handshake(bytes(data))
    if isinstance(found, Hello):
        return found
    message, _ = found
    r = _Reader(message[4:])
    if (r.take(2) is None or r.take(32) is None  # legacy_version, random
            or (session := r.vector(1)) is None or len(session) > 32):
        return _bad("a broken ClientHello")
    suites = r.vector(2)
    compression = r.vector(1)
    if not suites or len(suites) % 2 or not compression:
        return _bad("a broken ClientHello")
    if not r.left:
        return Hello("none")  # no extensions (TLS 1.0-1.2 allow it)
    extensions = r.vector(2)
    if extensions is None or r.left:
        return _bad("broken extensions")
    r = _Reader(extensions)
    seen: set[int] = set()
    answer = Hello("none")
    while r.left:
        kind, body = r.number(2), r.vector(2)
        if kind is None or body is None:
            return _bad("broken extensions")
        if kind in seen:
            return _bad(f"extension {kind} twice")
        seen.add(kind)
        if kind == SERVER_NAME:
            answer = _server_name(body)
            if answer.status == "malformed":
                return answer
    return answer
