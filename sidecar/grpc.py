"""gRPC as a proxy sees it: status codes and names, Envoy's HTTP-to-gRPC status mapping, `grpc-timeout`, and
the trailers-only answer a proxy gives when it answers itself. Pure functions, no I/O.
"""

from __future__ import annotations

import re
import urllib.parse

STATUS_CODES = {
    "OK": 0, "CANCELLED": 1, "UNKNOWN": 2, "INVALID_ARGUMENT": 3, "DEADLINE_EXCEEDED": 4, "NOT_FOUND": 5,
    "ALREADY_EXISTS": 6, "PERMISSION_DENIED": 7, "RESOURCE_EXHAUSTED": 8, "FAILED_PRECONDITION": 9,
    "ABORTED": 10, "OUT_OF_RANGE": 11, "UNIMPLEMENTED": 12, "INTERNAL": 13, "UNAVAILABLE": 14, "DATA_LOSS": 15,
    "UNAUTHENTICATED": 16,
}
# Istio's gRPC retryOn values and the status each retries.
RETRY_ON = {"cancelled": 1, "deadline-exceeded": 4, "resource-exhausted": 8, "internal": 13, "unavailable": 14}
DEADLINE_EXCEEDED = 4
UNAVAILABLE = 14
TIMEOUT_RE = re.compile(rb"([0-9]{1,8})([HMSmun])")  # the spec: at most 8 digits and a unit
UNITS = {b"H": 3600.0, b"M": 60.0, b"S": 1.0, b"m": 1e-3, b"u": 1e-6, b"n": 1e-9}


def is_grpc(content_type: str | bytes | None) -> bool:
    """application/grpc, or application/grpc+proto and the like (gRPC-Web is not gRPC to the upstream)."""
    if content_type is None:
        return False
    value = content_type.decode("latin-1") if isinstance(content_type, bytes) else content_type
    value = value.strip().lower()
    return value == "application/grpc" or value.startswith(("application/grpc+", "application/grpc;"))


def status_code(value: str | int) -> int | None:
    """A status by Istio's name ("UNAVAILABLE") or number (0-16); None if it is neither."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if 0 <= value <= 16 else None
    text = value.strip()
    if text.isascii() and text.isdigit():
        number = int(text)
        return number if 0 <= number <= 16 else None
    return STATUS_CODES.get(text)


def from_http(status: int) -> int:
    """Envoy's mapping of an HTTP status to the gRPC status a gRPC client is told (Grpc::Utility)."""
    return {400: 13, 401: 16, 403: 7, 404: 12, 429: 14, 502: 14, 503: 14, 504: 14}.get(status, 2)


def timeout_of(value: bytes | None) -> float | None:
    """The `grpc-timeout` header in seconds; None if absent or malformed (then it is ignored, as Envoy does)."""
    if not value:
        return None
    found = TIMEOUT_RE.fullmatch(value.strip())
    if found is None:
        return None
    return int(found.group(1)) * UNITS[found.group(2)]


def message_value(text: str) -> bytes:
    """A `grpc-message` value: percent-encoded UTF-8 outside printable ASCII (and '%'), as the spec says."""
    return urllib.parse.quote(text, safe=" !\"#$&'()*+,-./:;<=>?@[\\]^_`{|}~").encode("ascii")


def trailers_only(code: int, message: str) -> list[tuple[bytes, bytes]]:
    """The headers of a trailers-only answer (HTTP 200, the status in the one HEADERS frame)."""
    return [(b":status", b"200"), (b"content-type", b"application/grpc"), (b"grpc-status", b"%d" % code),
            (b"grpc-message", message_value(message))]
