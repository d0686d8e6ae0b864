"""HTTP to a sidecar through its node's engine API, for meshes that span hosts.

A sidecar's address on a swarm overlay is not routable from the CLI's host, so in a cluster every read of a
sidecar's endpoints runs `curl` inside the sidecar container (to 127.0.0.1:<port>, in the pod) through the
engine of the node it runs on. `route(container)` gives the container an opaque host name; the urllib
handler below (installed in runtime.direct.OPENER) answers URLs on such a host with that exec, as an ordinary
urllib response, so every reader written for `http://<ip>:<port>/path` reads through it unchanged. A failed
exec (node gone, container gone, curl's own error) is a URLError, as an unreachable IP would be.
"""

from __future__ import annotations

import email.message
import io
import socket
import threading
import urllib.error
import urllib.request
import urllib.response
from http.client import parse_headers
from typing import Any, Final, Protocol

import docker.errors

SUFFIX: Final = ".exec.meshctl.invalid"  # .invalid (RFC 6761): never resolvable, so never dialled by mistake
DEFAULT_TIMEOUT_S: Final = 10.0
SKIPPED_HEADERS: Final = frozenset({"host", "content-length", "connection"})  # curl writes its own


class Execs(Protocol):
    """What a route needs of a docker-py Container: run a command in it and return (exit code, output)."""

    id: str

    def exec_run(self, cmd: list[str], **kwargs: Any) -> Any: ...


_routes: dict[str, Execs] = {}
_lock = threading.Lock()


def route(container: Execs) -> str:
    """The host name that reaches `container` through the engine it was listed from (which the Container
    object carries). Registered for the life of the process; the same container always gets the same name."""
    host = f"c-{container.id[:40]}{SUFFIX}"
    with _lock:
        _routes[host] = container
    return host


def routed(host: str) -> bool:
    return host.endswith(SUFFIX)


def _refuse(what: str, text: str) -> None:
    """A path, method or header that curl would read as something else: one request must stay one request."""
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in text):
        raise urllib.error.URLError(f"{what} {text[:80]!r} has spaces or control characters: not sent to a sidecar")


def curl_command(port: int, path: str, timeout: float, method: str = "GET", headers: dict[str, str] | None = None,
                 body: bytes | None = None) -> list[str]:
    """curl's argv for one request to the pod's loopback; -i so the status line and headers come back too.
    -q first: no .curlrc in the image is read; --noproxy: a proxy Docker put in the container's environment
    never sees it; --globoff: `{}` and `[]` in a path are sent as they are, not expanded into more requests."""
    if not path.startswith("/"):
        raise urllib.error.URLError(f"path {path[:80]!r} must start with /")
    _refuse("path", path)
    _refuse("method", method)
    cmd = ["curl", "-q", "-sS", "-i", "--globoff", "--noproxy", "*", "--max-time", f"{timeout:g}"]
    if method != "GET" or body is not None:
        cmd += ["-X", method]
    for name, value in (headers or {}).items():
        if name.lower() not in SKIPPED_HEADERS:
            _refuse("header", name)
            if any(c in value for c in "\r\n\0"):
                raise urllib.error.URLError(f"header {name}'s value has a line break: not sent to a sidecar")
            cmd += ["-H", f"{name}: {value}"]
    if body is not None:
        # exec has no stdin here, so the body travels in argv: text only (argv cannot carry NUL, docker's API
        # takes UTF-8 strings); no reader of a sidecar sends a body today
        try:
            text = body.decode()
        except UnicodeDecodeError:
            text = "\0"
        if "\0" in text:
            raise urllib.error.URLError("a binary request body cannot be sent through the engine API")
        cmd += ["--data-raw", text]
    return [*cmd, f"http://127.0.0.1:{port}{path}"]


def parse_response(output: bytes) -> tuple[int, str, email.message.Message, bytes]:
    """(status, reason, headers, body) from curl -i's output; interim 1xx answers are skipped. ValueError when
    it is not an HTTP response."""
    rest = output
    while True:
        head, sep, body = rest.partition(b"\r\n\r\n")
        if not sep:
            head, sep, body = rest.partition(b"\n\n")
        status_line, _, header_block = head.partition(b"\n")
        parts = status_line.decode("latin-1").strip().split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
            raise ValueError(f"not an HTTP response: {status_line[:80]!r}")
        status = int(parts[1])
        if 100 <= status < 200 and sep:
            rest = body
            continue
        headers = parse_headers(io.BytesIO(header_block.lstrip(b"\r\n") + b"\r\n"))
        # curl has already removed the chunked framing: the body is whole, its length is what was read
        del headers["Transfer-Encoding"]
        return status, parts[2] if len(parts) > 2 else "", headers, body


def _timeout(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and value > 0 else DEFAULT_TIMEOUT_S


def exchange(container: Execs, req: urllib.request.Request) -> urllib.response.addinfourl:
    """One request through `container`'s engine, answered as urllib answers an http:// URL."""
    _, _, port_text = req.host.rpartition(":")
    port = int(port_text) if port_text.isdigit() else 80
    cmd = curl_command(port, req.selector or "/", _timeout(req.timeout), req.get_method(),
                       dict(req.header_items()), req.data if isinstance(req.data, bytes) else None)
    try:
        code, output = container.exec_run(cmd)
    except (docker.errors.DockerException, OSError) as exc:  # requests' errors are OSErrors
        raise urllib.error.URLError(f"exec in {container.id[:12]} failed: {exc}") from exc
    output = output if isinstance(output, bytes) else b""
    if code != 0:
        why = output.decode(errors="replace").strip().splitlines()
        raise urllib.error.URLError(f"curl in {container.id[:12]} exited {code}: {why[-1] if why else 'no output'}")
    try:
        status, reason, headers, body = parse_response(output)
    except ValueError as exc:
        raise urllib.error.URLError(f"curl in {container.id[:12]}: {exc}") from exc
    resp = urllib.response.addinfourl(io.BytesIO(body), headers, req.full_url, status)
    resp.msg = resp.reason = reason  # type: ignore[attr-defined]  # what HTTPErrorProcessor and readers read
    return resp


class ExecHandler(urllib.request.BaseHandler):
    """Answers http:// URLs on a routed host; any other host falls through to urllib's own HTTPHandler."""

    handler_order = 100  # before HTTPHandler (500)

    def http_open(self, req: urllib.request.Request) -> urllib.response.addinfourl | None:
        host = req.host.rpartition(":")[0] if req.host.rpartition(":")[2].isdigit() else req.host
        if not routed(host):
            return None
        with _lock:
            container = _routes.get(host)
        if container is None:
            raise urllib.error.URLError(socket.gaierror(f"{host} is not a container this process listed"))
        return exchange(container, req)
