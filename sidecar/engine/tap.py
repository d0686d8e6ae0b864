"""Live traffic capture (`meshctl tap`): the sidecar's side.

A TapHub holds the open tap sessions of one proxy. Nothing runs per request while none is open: the mesh's
hooks only test `hub.sessions`. While one is, `begin` (at request start) asks the engine to keep up to N body
bytes each way when a session wants bodies, and `offer` (once the request is over) turns the Call into one
JSON line per matching session: time, direction, peer identity, method, authority, path, status, latency,
sizes, headers and, when asked, bodies. The values of credential headers are redacted here, in the sidecar,
so they never leave it unless the session asked for them (`redact=0`); where those values reappear verbatim
in other headers or in the captured bodies (an echo server), they are masked too.

Bounded by construction: MAX_SESSIONS per proxy, a queue per session (records and bytes; a slow reader loses
records, counted as dropped), bodies cut at the session's limit (at most MAX_BODY), at most MAX_CAPTURING
requests keeping bodies at once, and MAX_DURATION_S per session.

Served on the admin port (sidecar.admin) at the host-only path /tap as chunked newline-delimited JSON: a
`start` line, `call` lines, a `tick` line when idle (so a dead client is noticed), and an `end` line with
the counts. HTTP/1.1 and HTTP/2 calls are the same Call objects, so both are tapped alike.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import logging
import re
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode

if TYPE_CHECKING:  # annotations only: meshctl imports this module (tap's client) and needs no HTTP parser
    from sidecar.engine.call import Call

log = logging.getLogger("meshctl.tap")

REDACTED_HEADERS = frozenset({b"authorization", b"proxy-authorization", b"cookie", b"set-cookie"})
MASK = "<redacted>"
MIN_SECRET = 6  # a credential part shorter than this is not looked for elsewhere (it would mask common words)
DEFAULT_BODY = 4096  # bytes of each body a --bodies session keeps
MAX_BODY = 65536
MAX_SESSIONS = 4  # per proxy
QUEUE_RECORDS = 2048  # per session, waiting to be written to its client
QUEUE_BYTES = 4 << 20
MAX_CAPTURING = 256  # requests keeping bodies at once (4096 connections x 2 x 64 KiB would not fit)
MAX_RECORDS = 1_000_000
MAX_DURATION_S = 3600.0  # a session without a duration ends after this; the CLI opens a new one
TICK_S = 10.0  # an idle stream writes a tick this often: a client that went away is noticed
COALESCE_S = 0.05  # a busy stream writes at most this often: one write carries many records
STATUS_RE = re.compile(r"^([1-5])xx$|^([1-5][0-9][0-9])$")
METHOD_RE = re.compile(r"^[A-Z][A-Z0-9_-]{0,31}$")
PARAMS = ("path", "method", "status", "bodies", "redact", "max", "duration")


class TapError(ValueError):
    """A tap request the sidecar refuses: a bad parameter (400) or no free session (503)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


# --- what a session asks for ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TapSpec:
    path: str | None = None  # a prefix of the request path
    methods: tuple[str, ...] = ()  # upper-case; any when empty
    statuses: tuple[str, ...] = ()  # "503" or "5xx"; any when empty
    bodies: int = 0  # bytes of each body to keep (0: none)
    redact: bool = True
    max: int = 0  # records, then the session ends (0: no limit)
    duration: float = 0.0  # seconds, then the session ends (0: MAX_DURATION_S)

    @classmethod
    def parse(cls, path: str | None = None, method: str | None = None, status: str | None = None,
              bodies: int = 0, redact: bool = True, max_records: int = 0, duration: float = 0.0) -> TapSpec:
        """Check every value; TapError names the one that is wrong. The CLI calls this before it connects."""
        if path is not None and (not path.startswith("/") or len(path) > 2048 or any(c in path for c in "\r\n\0")):
            raise TapError(f"path {path!r}: give a request path prefix that starts with /, such as /api")
        methods = tuple(m.strip().upper() for m in (method or "").split(",") if m.strip())
        bad = [m for m in methods if not METHOD_RE.match(m)]
        if bad:
            raise TapError(f"method {bad[0]!r}: give a method such as GET, or a comma list such as GET,POST")
        statuses = tuple(s.strip().lower() for s in (status or "").split(",") if s.strip())
        bad = [s for s in statuses if not STATUS_RE.match(s)]
        if bad:
            raise TapError(f"status {bad[0]!r}: give a status such as 503, a class such as 5xx, or a comma list")
        if not 0 <= bodies <= MAX_BODY:
            raise TapError(f"bodies {bodies}: give a number of bytes from 1 to {MAX_BODY} (0: no bodies)")
        if not 0 <= max_records <= MAX_RECORDS:
            raise TapError(f"max {max_records}: give a number of records from 1 to {MAX_RECORDS} (0: no limit)")
        if not 0 <= duration <= MAX_DURATION_S:  # also refuses NaN
            raise TapError(f"duration {duration}: give seconds from 1 to {MAX_DURATION_S:.0f} (0: until stopped)")
        return cls(path or None, methods, statuses, bodies, redact, max_records, duration)

    @classmethod
    def from_query(cls, query: str) -> TapSpec:
        try:
            pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query), max_num_fields=len(PARAMS))
        except ValueError:
            raise TapError("the query is not name=value pairs") from None
        given: dict[str, str] = {}
        for name, value in pairs:
            if name not in PARAMS:
                raise TapError(f"unknown parameter {name!r} (known: {', '.join(PARAMS)})")
            if name in given:
                raise TapError(f"parameter {name!r} given twice")
            given[name] = value
        if given.get("redact", "1") not in ("0", "1"):
            raise TapError("redact: give 1 or 0")
        return cls.parse(given.get("path"), given.get("method"), given.get("status"),
                         _number(given, "bodies", int), given.get("redact", "1") == "1",
                         _number(given, "max", int), _number(given, "duration", float))

    def query(self) -> str:
        """The query string that asks a sidecar for this spec (from_query's inverse)."""
        pairs = [("path", self.path or ""), ("method", ",".join(self.methods)), ("status", ",".join(self.statuses)),
                 ("bodies", str(self.bodies or "")), ("redact", "" if self.redact else "0"),
                 ("max", str(self.max or "")), ("duration", repr(self.duration) if self.duration else "")]
        return urlencode([(k, v) for k, v in pairs if v])

    def describe(self) -> str:
        return (f"path={self.path or '*'} method={','.join(self.methods) or '*'} "
                f"status={','.join(self.statuses) or '*'} bodies={self.bodies or 'off'} "
                f"redact={'on' if self.redact else 'OFF'} max={self.max or '-'} "
                f"duration={f'{self.duration:g}s' if self.duration else '-'}")

    def wants(self, call: Call) -> bool:
        """What is known at the request's start: its method and path."""
        if self.methods and call.method not in self.methods:
            return False
        return self.path is None or call.path.startswith(self.path)

    def matches(self, call: Call) -> bool:
        if not self.wants(call):
            return False
        if self.statuses:
            code = str(call.status)
            return any(code == s or (s[1:] == "xx" and code[:1] == s[0] and len(code) == 3) for s in self.statuses)
        return True


def _number(given: dict[str, str], name: str, kind: Callable[[str], Any]) -> Any:
    text = given.get(name, "") or "0"
    try:
        return kind(text)
    except ValueError:
        raise TapError(f"{name} {text!r}: give a number") from None


# --- redaction -----------------------------------------------------------------------------------------------


def keep(body: bytearray | None, data: bytes | bytearray | memoryview, limit: int) -> bytearray:
    """Append what still fits of `data` to `body` (the engine's body capture, both protocols)."""
    if body is None:
        body = bytearray()
    room = limit - len(body)
    if room > 0:
        body += data[:room]
    return body


def secrets_of(name: bytes, value: bytes) -> list[bytes]:
    """The parts of a credential header's value that must not show anywhere else either."""
    value = value.strip()
    found = [value]
    lower = name.lower()
    if lower in (b"authorization", b"proxy-authorization"):
        found += value.split(None, 1)[1:]  # the credentials after the scheme
    elif lower == b"cookie":
        found += [pair.split(b"=", 1)[-1].strip() for pair in value.split(b";")]
    elif lower == b"set-cookie":
        found.append(value.split(b";", 1)[0].split(b"=", 1)[-1].strip())
    return [s for s in found if len(s) >= MIN_SECRET]


def headers(fields: Iterable[tuple[bytes, bytes]], redact: bool, secrets: list[bytes]) -> list[list[str]]:
    """A head's fields as [name, value] strings. With `redact`, credential headers' values are replaced (any
    case of their names, every repetition) and their parts added to `secrets`, so they can be masked where
    they reappear."""
    if not redact:
        return [[k.decode("latin-1"), v.decode("latin-1")] for k, v in fields]
    out = []
    for k, v in fields:
        if k.lower() in REDACTED_HEADERS:
            secrets.extend(secrets_of(k, v))
            out.append([k.decode("latin-1"), MASK])
        else:
            out.append([k.decode("latin-1"), v.decode("latin-1")])
    return out


def _scrub_values(pairs: list[list[str]], secrets: list[str]) -> None:
    for pair in pairs:
        value = pair[1]
        for secret in secrets:
            if secret in value:
                value = value.replace(secret, MASK)
        pair[1] = value


def scrub(data: bytes, secrets: list[bytes], truncated: bool = False) -> bytes:
    """`data` with every secret masked; a cut body that ends in the start of one loses that start too."""
    for secret in secrets:  # longest first (sorted by the caller)
        if secret in data:
            data = data.replace(secret, MASK.encode())
    if truncated:
        for secret in secrets:
            for n in range(min(len(secret) - 1, len(data)), 0, -1):
                if data.endswith(secret[:n]):
                    data = data[:-n] + MASK.encode()
                    break
    return data


# --- one record ----------------------------------------------------------------------------------------------


def _body(data: bytearray | None, size: int, limit: int, secrets: list[bytes]) -> dict[str, Any] | None:
    if data is None:
        return None if size else {"encoding": "utf-8", "data": "", "truncated": False}
    taken = bytes(data[:limit])
    truncated = size > len(taken)
    if secrets:
        taken = scrub(taken, secrets, truncated)
    try:
        return {"encoding": "utf-8", "data": taken.decode("utf-8"), "truncated": truncated}
    except UnicodeDecodeError:
        return {"encoding": "base64", "data": base64.b64encode(taken).decode("ascii"), "truncated": truncated}


def _address(address: tuple[str, int] | None) -> str | None:
    return f"{address[0]}:{address[1]}" if address else None


def protocol_of(call: Call) -> str:
    version = call.head.version.decode("latin-1") or "1.1"
    return "HTTP/2" if version.startswith("2") else f"HTTP/{version}"


def record(call: Call, redact: bool, bodies: int) -> dict[str, Any]:
    """One finished call as a tap record (JSON-ready). Secrets are gone from it when `redact`."""
    inbound = call.inbound
    secrets: list[bytes] = []
    request_headers = headers(call.head.headers, redact, secrets)
    response_headers = headers(call.response_fields, redact, secrets) if call.response_fields is not None else None
    if secrets:
        secrets = sorted(set(secrets), key=len, reverse=True)
        text = [x.decode("latin-1") for x in secrets]
        _scrub_values(request_headers, text)
        if response_headers:
            _scrub_values(response_headers, text)
    end = call.end or time.time()
    entry: dict[str, Any] = {
        "type": "call", "time": call.start, "direction": "inbound" if inbound else "outbound",
        "peer": (call.caller or "") if inbound else call.upstream_identity,
        "peer_address": _address(call.conn.peer if inbound and call.conn else call.upstream),
        "client_address": _address(call.conn.peer if call.conn else None), "upstream": _address(call.upstream),
        "protocol": protocol_of(call), "method": call.method, "authority": call.authority, "path": call.target,
        "status": call.status, "latency_ms": round((end - call.start) * 1000, 3),
        "request_bytes": call.request_bytes, "response_bytes": call.response_bytes, "flags": call.flags,
        "error": call.error or call.reason,
        "request_headers": request_headers, "response_headers": response_headers,
    }
    grpc_status = getattr(call, "grpc_status", None)
    if grpc_status is not None:
        entry["grpc_status"] = grpc_status
    if bodies:
        entry["request_body"] = _body(call.request_body, call.request_bytes, bodies, secrets)
        entry["response_body"] = _body(call.response_body, call.response_bytes, bodies, secrets)
    return entry


_ENCODER = json.JSONEncoder(separators=(",", ":"))


def line(entry: dict[str, Any]) -> bytes:
    return _ENCODER.encode(entry).encode() + b"\n"


# --- sessions and the hub ------------------------------------------------------------------------------------


@dataclass(eq=False)
class TapSession:
    id: int
    spec: TapSpec
    who: str  # the client's address
    opened: float = field(default_factory=time.monotonic)
    queue: deque[bytes] = field(default_factory=deque)
    queued_bytes: int = 0
    records: int = 0  # accepted (queued), at most spec.max
    dropped: int = 0  # matched, but the queue was full: the client reads too slowly
    ready: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def full(self) -> bool:
        return bool(self.spec.max) and self.records >= self.spec.max

    def put(self, data: bytes) -> None:
        if len(self.queue) >= QUEUE_RECORDS or self.queued_bytes + len(data) > QUEUE_BYTES:
            self.dropped += 1
            return
        self.queue.append(data)
        self.queued_bytes += len(data)
        self.records += 1
        self.ready.set()

    def take(self) -> bytes:
        data = b"".join(self.queue)
        self.queue.clear()
        self.queued_bytes = 0
        return data


class TapHub:
    def __init__(self, whoami: Callable[[], tuple[str, str]] = lambda: ("", "")) -> None:
        self.sessions: list[TapSession] = []  # the hooks test this list: empty means no cost
        self.whoami = whoami  # (proxy name, SPIFFE ID), for the start line
        self.capturing = 0  # calls keeping body bytes now
        self._ids = itertools.count(1)

    def open(self, spec: TapSpec, who: str) -> TapSession:
        if len(self.sessions) >= MAX_SESSIONS:
            log.warning("tap refused to %s: %d sessions are open already", who, len(self.sessions))
            raise TapError(f"this proxy already serves {MAX_SESSIONS} tap sessions; stop one and retry", 503)
        session = TapSession(next(self._ids), spec, who)
        self.sessions.append(session)
        log.info("tap session %d opened by %s: %s", session.id, who, spec.describe())
        return session

    def close(self, session: TapSession, reason: str) -> None:
        if session in self.sessions:
            self.sessions.remove(session)
            log.info("tap session %d closed (%s) after %.1fs: %d records, %d dropped; opened by %s", session.id,
                     reason, time.monotonic() - session.opened, session.records, session.dropped, session.who)

    def begin(self, call: Call) -> None:
        """At a request's start: keep its bodies if a session that wants bodies may want this call."""
        limit = 0
        for session in self.sessions:
            if session.spec.bodies > limit and not session.full and session.spec.wants(call):
                limit = session.spec.bodies
        if limit and self.capturing < MAX_CAPTURING:
            call.capture = limit
            self.capturing += 1

    def offer(self, call: Call) -> None:
        """A call is over: a record for each session it matches."""
        if call.capture:
            self.capturing = max(0, self.capturing - 1)
            call.capture = 0  # a call offered twice is counted once
        built: dict[tuple[bool, int], bytes] = {}
        for session in self.sessions:
            spec = session.spec
            if session.full or not spec.matches(call):
                continue
            key = (spec.redact, spec.bodies)
            data = built.get(key)
            if data is None:
                data = built[key] = line(record(call, spec.redact, spec.bodies))
            session.put(data)


# --- the stream on the admin port ----------------------------------------------------------------------------

HEAD = (b"HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\ntransfer-encoding: chunked\r\n"
        b"cache-control: no-store\r\nconnection: close\r\n\r\n")
LAST_CHUNK = b"0\r\n\r\n"


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def _plain(status: int, text: str) -> bytes:
    body = (text + "\n").encode()
    reason = {400: b"Bad Request", 503: b"Service Unavailable"}.get(status, b"Error")
    return (b"HTTP/1.1 %d %s\r\ncontent-type: text/plain\r\ncontent-length: %d\r\nconnection: close\r\n\r\n"
            % (status, reason, len(body))) + body


async def _client_gone(reader: asyncio.StreamReader) -> None:
    """Returns when the client closes its side (anything it sends meanwhile is ignored)."""
    while await reader.read(4096):
        pass


async def serve(hub: TapHub, query: str, peer: str, reader: asyncio.StreamReader,
                writer: asyncio.StreamWriter) -> None:
    """GET /tap?…: stream the session's records until max, duration or the client goes."""
    try:
        spec = TapSpec.from_query(query)
        session = hub.open(spec, peer)
    except TapError as exc:
        if exc.status == 400:
            log.info("tap refused to %s: %s", peer, exc)
        writer.write(_plain(exc.status, str(exc)))
        await writer.drain()
        return
    reason = "client went away"
    name, identity = hub.whoami()
    try:
        writer.write(HEAD + chunk(line({"type": "start", "proxy": name, "identity": identity, "session": session.id,
                                        "filters": spec.describe(), "time": time.time()})))
        await writer.drain()
        reason = await _pump(session, reader, writer)
        writer.write(chunk(line({"type": "end", "reason": reason, "records": session.records,
                                 "dropped": session.dropped, "seconds": round(time.monotonic() - session.opened, 3)}))
                     + LAST_CHUNK)
        await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        hub.close(session, reason)


async def _pump(session: TapSession, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> str:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + (session.spec.duration or MAX_DURATION_S)
    gone = asyncio.ensure_future(_client_gone(reader))
    try:
        while True:
            session.ready.clear()
            if session.queue:
                writer.write(chunk(session.take()))
                await writer.drain()  # a slow client: the queue fills meanwhile, and drops are counted
                await asyncio.sleep(COALESCE_S)  # what arrives meanwhile goes out in one write
                continue
            if session.full:
                return "max reached"
            if gone.done():
                return "client went away"
            remaining = deadline - loop.time()
            if remaining <= 0:
                return "duration reached"
            waiter = asyncio.ensure_future(session.ready.wait())
            done, _ = await asyncio.wait({waiter, gone}, timeout=min(remaining, TICK_S),
                                         return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            if not done and loop.time() < deadline:
                writer.write(chunk(line({"type": "tick", "time": time.time(), "dropped": session.dropped})))
                await writer.drain()
    finally:
        gone.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await gone
