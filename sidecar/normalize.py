"""One request normalisation, done once before any decision looks at the request (pure, stdlib only).

Path (Istio's `meshConfig.pathNormalization`, with a safer default than Istio's BASE):
- NONE: the path is left as the client sent it (only the fragment is dropped).
- BASE: RFC 3986: percent-encoded unreserved characters are decoded (`%61` -> `a`, `%2e` -> `.`), other
  escapes are upper-cased, `\\` becomes `/` (as Envoy's and browsers' URL parsers read it), and `.` and `..`
  segments are resolved.
- MERGE_SLASHES (meshctl's default): BASE, then runs of `/` become one.
- DECODE_AND_MERGE_SLASHES: `%2F` and `%5C` are decoded to `/` first, then as MERGE_SLASHES.
In every mode but NONE and DECODE_AND_MERGE_SLASHES an escaped slash or backslash (`%2F`, `%5C`) is refused
with 400: apps disagree on whether it separates segments, so no decision about it could be trusted.
A fragment (`#…`) never belongs in a request target and is dropped in every mode. A malformed escape, an
escaped control character (`%00`-`%1F`, `%7F`), a byte outside printable ASCII, or a target that is not a
path gets 400. Path parameters (`/admin;x/y`, which Tomcat reads as `/admin/y`) are left alone, as in Istio.

Host: compared case-insensitively, without its port and without a trailing dot. A Host (or absolute-form
authority) that is not a plain `name[:port]` or `[IPv6][:port]` gets 400: `a@admin.x`, `admin.x:`,
`admin.x:80:80` or `admin.x,b` would match no host rule here, yet many apps read them as `admin.x`.

Header fields: a name that is not an RFC 9110 token, or a value holding a control character (CR, LF, NUL,
…; HTAB is allowed), gets 400, since a parser behind us could split the message there.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from sidecar.snapshot import PATH_MODES, MeshConfig

MODES = PATH_MODES
DEFAULT_MODE = MeshConfig.path_normalization
UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
HEX = frozenset(b"0123456789abcdefABCDEF")
TOKEN_RE = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
BAD_VALUE_RE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
SLASHES_RE = re.compile(r"/{2,}")
# `_`: compose service names; an IPv6 literal holds a colon (`[.]` is no address, and apps read it apart)
HOST_RE = re.compile(r"(?:\[[0-9A-Fa-f.]*:[0-9A-Fa-f:.]*\]|[A-Za-z0-9._-]+)(?::[0-9]{1,5})?")


class Refused(ValueError):
    """The request cannot be passed on: answer `status` with `reason` (and access-log it)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def _decode(path: str, decode_slashes: bool) -> str:
    out: list[str] = []
    i, raw = 0, path.encode("ascii")
    while i < len(raw):
        c = raw[i]
        if c != 0x25:  # '%'
            out.append("/" if c == 0x5C else chr(c))
            i += 1
            continue
        pair = raw[i + 1:i + 3]
        if len(pair) != 2 or not all(b in HEX for b in pair):
            raise Refused(400, "malformed percent-encoding in the path")
        byte = int(pair, 16)
        if byte < 0x20 or byte == 0x7F:  # `/admin%00.png`: C-string apps stop at the NUL
            raise Refused(400, "an escaped control character in the path")
        if byte in UNRESERVED:
            out.append(chr(byte))
        elif byte in (0x2F, 0x5C):
            if not decode_slashes:
                raise Refused(400, "escaped slash or backslash (%2F, %5C) in the path")
            out.append("/")
        else:
            out.append("%" + pair.decode().upper())
        i += 3
    return "".join(out)


def remove_dot_segments(path: str) -> str:
    """RFC 3986 section 5.2.4 on an absolute path: `/a/./b/../c` -> `/a/c`; never climbs above `/`."""
    segments = path.split("/")[1:]
    out: list[str] = []
    for i, seg in enumerate(segments):
        last = i == len(segments) - 1
        if seg in (".", ".."):
            if seg == ".." and out:
                out.pop()
            if last:
                out.append("")  # `/a/..` is the directory `/`, with its trailing slash
        else:
            out.append(seg)
    return "/" + "/".join(out)


def normalize_target(target: str, mode: str = DEFAULT_MODE) -> str:
    """The request target (path and query, origin-form) the policy and the app both see; Refused if none."""
    target = target.split("#", 1)[0]
    path, sep, query = target.partition("?")
    if mode == "NONE" or path == "*":
        return path + sep + query
    if not path.startswith("/"):
        raise Refused(400, "the request target is not a path")
    if not (path + query).isascii() or not (path + query).isprintable() or " " in path + query:
        raise Refused(400, "the request target holds a byte outside printable ASCII")
    path = _decode(path, decode_slashes=mode == "DECODE_AND_MERGE_SLASHES")
    if mode != "BASE":
        path = SLASHES_RE.sub("/", path)
    return remove_dot_segments(path) + sep + query


def split_host(value: str) -> tuple[str, int | None]:
    """(`host`, port) of a Host header or authority: lower-case, no trailing dot; port None if not given."""
    host, port = value.strip(), None
    if host.startswith("["):  # an IPv6 literal: [::1]:8080
        end = host.find("]")
        rest = host[end + 1:] if end >= 0 else ""
        host = host[:end + 1] if end >= 0 else host
        if rest.startswith(":") and rest[1:].isascii() and rest[1:].isdigit():
            port = int(rest[1:])
    elif host.count(":") == 1:
        name, _, digits = host.partition(":")
        if digits.isascii() and digits.isdigit() and len(digits) <= 5:
            host, port = name, int(digits)
    return host.lower().rstrip("."), port


def canonical_host(value: str | None) -> str | None:
    return None if value is None else split_host(value)[0]


def check_fields(fields: Iterable[tuple[bytes, bytes]]) -> None:
    """Refused(400) for a header name that is not a token or a value with a control character."""
    for name, value in fields:
        if not TOKEN_RE.fullmatch(name):
            raise Refused(400, f"header name {name[:40]!r} is not an HTTP token")
        if BAD_VALUE_RE.search(value):
            raise Refused(400, f"header {name[:40].decode('ascii', 'replace')} holds a control character")


def request_host(fields: Iterable[tuple[bytes, bytes]], authority: str) -> str | None:
    """The one host the request is for: the absolute-form authority wins; two Host headers, or a Host that
    names another host than the authority, are refused (request smuggling's favourite ambiguities)."""
    hosts = [v.decode("latin-1").strip(" \t") for k, v in fields if k.lower() == b"host"]
    if len(hosts) > 1:
        raise Refused(400, "more than one Host header")
    for value in [*hosts, authority] if authority else hosts:
        if value and not HOST_RE.fullmatch(value):
            raise Refused(400, "the Host is not a host name or address with an optional port")
    if authority:
        if hosts and canonical_host(hosts[0]) != canonical_host(authority):
            raise Refused(400, "the Host header names another host than the request line")
        return authority
    return hosts[0] if hosts else None
