"""Tap records as mitmproxy flows: `meshctl tap --save FILE` writes what `mitmproxy -r FILE` opens.

The flows are built with mitmproxy's own classes (HTTPFlow, Request, Response) and written with its
FlowWriter, one at a time into a temporary file beside FILE that replaces FILE when the tap ends: readers
see the old file or the whole new one. The records come redacted from the sidecars unless --no-redact.
Bodies that were not captured (no --bodies) stay "content missing"; cut ones are marked in the comment.
"""

from __future__ import annotations

import base64
import contextlib
import http
import os
import tempfile
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from meshctl.errors import MeshError, UsageError
from meshctl.fsutil import os_error

if TYPE_CHECKING:
    from mitmproxy.http import HTTPFlow


def _require_mitmproxy() -> None:
    try:
        import mitmproxy.io  # noqa: F401
    except ImportError:
        raise MeshError("--save needs mitmproxy in meshctl's Python environment",
                        "install it there with: pip install 'mitmproxy==11.0.2'") from None


def _address(text: Any, default_port: int = 0) -> tuple[str, int]:
    if not isinstance(text, str) or not text:
        return ("", 0)
    host, _, port = text.rpartition(":")
    return (host, int(port)) if host and port.isdigit() else (text, default_port)


def _fields(pairs: Any) -> tuple[tuple[bytes, bytes], ...]:
    return tuple((str(k).encode("latin-1", "replace"), str(v).encode("latin-1", "replace")) for k, v in pairs or ())


def _content(body: Any) -> tuple[bytes | None, bool]:
    """(bytes, cut) of a record's body; None when the record carries none."""
    if not isinstance(body, dict):
        return None, False
    data = str(body.get("data", ""))
    raw = base64.b64decode(data) if body.get("encoding") == "base64" else data.encode("utf-8")
    return raw, bool(body.get("truncated"))


def to_flow(rec: dict[str, Any]) -> HTTPFlow:
    from mitmproxy import connection, flow
    from mitmproxy.http import HTTPFlow, Request, Response

    start = float(rec.get("time") or 0)
    end = start + float(rec.get("latency_ms") or 0) / 1000
    h2 = rec.get("protocol") == "HTTP/2"
    version = b"HTTP/2.0" if h2 else str(rec.get("protocol") or "HTTP/1.1").encode("ascii", "replace")
    upstream = _address(rec.get("upstream"))
    authority = str(rec.get("authority") or "")
    host, port = _address(authority, upstream[1] or 80)
    client = connection.Client(peername=_address(rec.get("client_address")), sockname=("", 0),
                               timestamp_start=start)
    server = connection.Server(address=upstream if upstream[0] else (host, port))
    result = HTTPFlow(client, server)
    request_body, request_cut = _content(rec.get("request_body"))
    if request_body is None and not rec.get("request_bytes"):
        request_body = b""
    result.request = Request(host or upstream[0], port, str(rec.get("method") or "").encode("latin-1", "replace"),
                             b"http", authority.encode("latin-1", "replace") if h2 else b"",
                             str(rec.get("path") or "/").encode("latin-1", "replace"), version,
                             _fields(rec.get("request_headers")), request_body, None, start, start)
    status = int(rec.get("status") or 0)
    response_cut = False
    if status:
        response_body, response_cut = _content(rec.get("response_body"))
        if response_body is None and not rec.get("response_bytes"):
            response_body = b""
        reason = b"" if h2 else _reason(status)
        result.response = Response(version, status, reason, _fields(rec.get("response_headers")), response_body,
                                   None, end, end)
    else:
        result.error = flow.Error(str(rec.get("error") or "no response"), end)
    peer = rec.get("peer") or "plaintext"
    notes = [f"meshctl tap: {rec.get('direction')} at {rec.get('proxy')}, peer {peer}",
             f"latency {rec.get('latency_ms')} ms, flags {rec.get('flags')}"]
    if rec.get("grpc_status") is not None:
        notes.append(f"grpc-status {rec['grpc_status']}")
    for name, cut, size in (("request", request_cut, rec.get("request_bytes")),
                            ("response", response_cut, rec.get("response_bytes"))):
        if cut:
            notes.append(f"{name} body cut ({size} bytes in all)")
    result.comment = "; ".join(notes)
    result.metadata.update({"meshctl.proxy": str(rec.get("proxy")), "meshctl.direction": str(rec.get("direction")),
                            "meshctl.peer": str(peer)})
    return result


def _reason(status: int) -> bytes:
    try:
        return http.HTTPStatus(status).phrase.encode()
    except ValueError:
        return b""


class FlowFile:
    """A flow file written atomically: flows go to a temporary file, `commit` renames it over the target."""

    def __init__(self, path: Path) -> None:
        _require_mitmproxy()
        from mitmproxy.io import FlowWriter

        self.path = path
        self.count = 0
        if path.is_dir():
            raise UsageError(f"--save {path}: that is a directory", "give a file name, e.g. tap.mitm")
        if not path.parent.is_dir():
            raise UsageError(f"--save {path}: directory {path.parent} does not exist", "create it or pick another path")
        try:
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        except OSError as exc:
            raise os_error(exc, path, "write") from exc
        self.tmp = Path(tmp)
        self.file: IO[bytes] = os.fdopen(fd, "wb")
        os.fchmod(fd, 0o600)  # captured traffic: for its owner only
        self.writer = FlowWriter(self.file)  # type: ignore[no-untyped-call]

    def add(self, rec: dict[str, Any]) -> None:
        try:
            self.writer.add(to_flow(rec))
        except OSError as exc:
            self.discard()
            raise os_error(exc, self.path, "write") from exc
        self.count += 1

    def commit(self) -> None:
        try:
            self.file.flush()
            os.fsync(self.file.fileno())
            self.file.close()
            os.replace(self.tmp, self.path)
        except OSError as exc:
            self.discard()
            raise os_error(exc, self.path, "write") from exc

    def discard(self) -> None:
        with contextlib.suppress(OSError):
            self.file.close()
        with contextlib.suppress(OSError):
            self.tmp.unlink()
