"""An attacker's pass over the HTTP/2 path: a hostile client speaking raw HTTP/2 (the `h2` library with its own
checks off, or hand-built frames) to an H2Proxy on 127.0.0.1, in front of an h2c app that records every request
it is sent. Authorization is the sidecar's own (sidecar.engine.authorize on a snapshot with policies), so "denied"
means the app never saw the request, and "allowed" means the app saw exactly what the policy judged.

Each class of attack is one test, its variants parametrised or looped: request targets and pseudo-headers, the
authority, header fields, methods, JWT placement, resource exhaustion (rapid reset, floods, oversize headers, a
client that never reads, bodies past the replay buffer), and failing closed.

Found on this pass, and fixed in the engine: header fields, :method, :scheme and :authority were passed on unchecked
(CR/LF, `a@admin.x`, `delete`); a client's reset of a request that had ended was never heard (rapid reset: unbounded
work upstream); data dropped with its stream was never acknowledged (the shared connection's window leaked until
every call on it stalled); one client that never read stalled the app connection it shared; floods of frames the
proxy answers, and a close its client never read, held memory and a connection slot for ever; empty DATA frames
queued for free; an upstream could pass CR/LF in response headers and trailers."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import pytest
from hyperframe.frame import ContinuationFrame, DataFrame, GoAwayFrame, HeadersFrame, PingFrame, SettingsFrame

from sidecar import rbac
from sidecar.engine import authorize, h2conn, h2proxy
from sidecar.engine.authorize import Authorizer
from sidecar.engine.call import Call
from sidecar.engine.h2pool import H2Pool
from sidecar.engine.h2proxy import Body, H2Decide, H2Proxy
from sidecar.engine.plan import INBOUND_PORT, L7H2, ConnectionInfo
from sidecar.engine.proxy import Route
from sidecar.engine.route import Router
from sidecar.rbac import Subject
from tests.unit.fakes import REVIEWS, WEB, Live, endpoints_of, vs
from tests.unit.jwtkit import P256, RULE, claims, sign

Fields = list[tuple[bytes, bytes]]
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


# --- the app behind the proxy --------------------------------------------------------------------------------------

@dataclass
class Seen:
    headers: Fields
    body: bytes = b""
    trailers: Fields | None = None

    def pseudo(self, name: bytes) -> bytes | None:
        return next((v for k, v in self.headers if k == name), None)

    @property
    def path(self) -> bytes | None:
        return self.pseudo(b":path")


class AppConnection(asyncio.Protocol):
    """One connection to the app: raw h2, server side. /big/N answers N bytes as the windows allow; /hang never
    answers; /stall never answers nor reads the request body (its window stays shut); /fail answers UNAVAILABLE
    (trailers-only); /evil/header and /evil/trailer answer with a CR LF in one; anything else answers 200 "ok"
    with grpc-status 0 in trailers."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None,
                                                                      validate_outbound_headers=False))
        self.transport: asyncio.Transport | None = None
        self.pending: dict[int, bytes] = {}  # stream -> response body still to send
        self.requests: dict[int, Seen] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.app.connections += 1
        self.h2.initiate_connection()
        transport.write(self.h2.data_to_send())

    def data_received(self, data: bytes) -> None:
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            self.app.errors.append(str(exc))
            assert self.transport is not None
            self.transport.write(self.h2.data_to_send())
            self.transport.close()
            return
        for event in events:
            if isinstance(event, h2.events.RequestReceived):
                seen = Seen(list(event.headers))
                self.requests[event.stream_id] = seen
                self.app.seen.append(seen)
            elif isinstance(event, h2.events.DataReceived):
                seen = self.requests[event.stream_id]
                seen.body += event.data
                if not (seen.path or b"").startswith(b"/stall"):
                    self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.TrailersReceived):
                self.requests[event.stream_id].trailers = list(event.headers)
            elif isinstance(event, h2.events.StreamEnded):
                self._answer(event.stream_id)
            elif isinstance(event, h2.events.StreamReset):
                self.pending.pop(event.stream_id, None)
                self.app.resets += 1
        self._pump()

    def _answer(self, sid: int) -> None:
        path = self.requests[sid].path or b""
        if path.startswith((b"/hang", b"/stall")):
            return
        if path.startswith(b"/big/"):
            self.h2.send_headers(sid, [(b":status", b"200")])
            self.pending[sid] = b"x" * int(path.rsplit(b"/", 1)[1])
            return
        if path.startswith(b"/fail"):
            self.h2.send_headers(sid, [(b":status", b"200"), (b"content-type", b"application/grpc"),
                                       (b"grpc-status", b"14")], end_stream=True)
            return
        injected = [(b"x-injected", b"a\r\nset-cookie: owned=1")] if path == b"/evil/header" else []
        self.h2.send_headers(sid, [(b":status", b"200"), (b"content-type", b"application/grpc"), *injected])
        self.h2.send_data(sid, b"ok")
        self.h2.send_headers(sid, [(b"grpc-status", b"0"),
                                   *([(b"grpc-message", b"x\r\nx-evil: 1")] if path == b"/evil/trailer" else [])],
                             end_stream=True)

    def _pump(self) -> None:
        for sid, rest in list(self.pending.items()):
            try:
                size = min(len(rest), self.h2.local_flow_control_window(sid), self.h2.max_outbound_frame_size)
            except h2.exceptions.StreamClosedError:
                self.pending.pop(sid)
                continue
            while size > 0:
                self.h2.send_data(sid, rest[:size], end_stream=size == len(rest))
                rest = rest[size:]
                size = min(len(rest), self.h2.local_flow_control_window(sid), self.h2.max_outbound_frame_size)
            if rest:
                self.pending[sid] = rest
            else:
                self.pending.pop(sid)
        assert self.transport is not None
        if data := self.h2.data_to_send():
            self.transport.write(data)


class App:
    def __init__(self) -> None:
        self.seen: list[Seen] = []
        self.errors: list[str] = []
        self.connections = 0
        self.resets = 0
        self.port = 0


# --- the proxy ----------------------------------------------------------------------------------------------------

class Harness:
    """The proxy and the app on one loop in a thread; the proxy listens on 127.0.0.1 and asks `decide`. By default
    it is an inbound sidecar's HTTP/2 path: each call authorized (`authorize`), then sent to the app."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.calls: list[Call] = []
        self.clients: list[Hostile] = []
        self.app = App()
        app_server = self.run(self.loop.create_server(lambda: AppConnection(self.app), "127.0.0.1", 0))
        self.app.port = app_server.sockets[0].getsockname()[1]
        self.servers = [app_server]
        self.live = Live()
        self.decide: H2Decide = self.to_app
        self.pool = H2Pool(lambda: None)
        self.proxy = H2Proxy(self.pool, path_mode=lambda: self.live.current.mesh.path_normalization,
                             on_done=self.calls.append)
        server = self.run(self.loop.create_server(lambda: self.proxy.connection(self._decide, self._info()),
                                                  "127.0.0.1", 0))
        self.servers.append(server)
        self.port = server.sockets[0].getsockname()[1]

    def _info(self) -> ConnectionInfo:
        """An inbound connection inside mutual TLS from the web workload."""
        return ConnectionInfo(INBOUND_PORT, ("127.0.0.1", self.app.port), ("127.0.0.9", 40000), None,
                              self.live.current, tls_peer=WEB)

    def _decide(self, call: Call) -> Any:
        return self.decide(call)

    def to_app(self, call: Call) -> Route:
        return Route(("127.0.0.1", self.app.port))

    def authorize(self, **snapshot: Any) -> Authorizer:
        """The inbound sidecar's decision (main.Mesh.h2_for): the Authorizer on a snapshot with these changes."""
        self.live = Live(**snapshot)
        authz = Authorizer(self.live)  # type: ignore[arg-type]
        self.decide = lambda call: authz.request(call) or self.to_app(call)
        return authz

    def route(self, http: list[dict[str, Any]]) -> None:
        """The outbound sidecar's decision: the router, the app being the one pod of reviews."""
        self.live = Live(routes=vs(http))
        endpoints = endpoints_of(self.live, {"127.0.0.1": ("reviews", "reviews-v1")})
        router = Router(self.live, endpoints, lambda: None)  # type: ignore[arg-type]
        plan = L7H2(("127.0.0.1", self.app.port), REVIEWS)
        self.decide = lambda call: router.decide_h2(call, plan)

    def run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    def on_loop(self, fn: Callable[[], Any]) -> Any:
        async def call() -> Any:
            return fn()
        return self.run(call())

    def client(self, **kwargs: Any) -> Hostile:
        client = Hostile(self.port, **kwargs)
        self.clients.append(client)
        return client

    def small_send_buffers(self) -> None:
        """What the proxy writes and its clients do not read backs up in its own buffer at once, not after the
        kernel's few MiB."""
        def shrink() -> None:
            for conn in self.proxy.connections:
                assert conn.transport is not None
                conn.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)

        self.on_loop(shrink)

    def tasks(self) -> int:
        """Streams the proxy is still serving, over all its connections."""
        return int(self.on_loop(lambda: sum(len(c.tasks) for c in self.proxy.connections)))

    def paths(self) -> list[bytes]:
        return [seen.path or b"" for seen in self.app.seen]

    def served(self) -> bool:
        """A well-behaved client on a new connection gets its answer."""
        client = self.client()
        answer = client.wait(client.request(), timeout=5)
        client.close()
        return answer.status == 200 and answer.body == b"ok" and answer.grpc_status == 0

    def close(self) -> None:
        for client in self.clients:
            client.close()

        async def shut() -> None:
            for server in self.servers:
                server.close()
            for conn in list(self.proxy.connections):
                if conn.transport is not None:
                    conn.transport.abort()
            self.pool.close()
            await asyncio.sleep(0.05)
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        try:
            self.run(shut())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(5)


@pytest.fixture
def h() -> Iterator[Harness]:
    harness = Harness()
    yield harness
    harness.close()


# --- the hostile client ---------------------------------------------------------------------------------------------

@dataclass
class Answer:
    headers: Fields | None = None
    body: bytes = b""
    trailers: Fields | None = None
    reset: int | None = None
    ended: bool = False

    @property
    def status(self) -> int | None:
        return int(dict(self.headers)[b":status"]) if self.headers else None

    def field(self, name: bytes) -> bytes | None:
        return next((v for k, v in [*(self.headers or []), *(self.trailers or [])] if k == name), None)

    @property
    def grpc_status(self) -> int | None:
        value = self.field(b"grpc-status")
        return None if value is None else int(value)

    @property
    def done(self) -> bool:
        return self.ended or self.reset is not None


@dataclass
class Hostile:
    """A client that sends whatever it likes: h2 with its checks off, plus hand-built frames."""

    port: int
    read: bool = True  # False: never acknowledges what it is sent (and with rcvbuf, hardly reads it)
    rcvbuf: int | None = None  # a small socket receive buffer: what it does not read backs up at the proxy

    def __post_init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if self.rcvbuf is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.rcvbuf)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.settimeout(5)
        self.sock.connect(("127.0.0.1", self.port))
        config = h2.config.H2Configuration(client_side=True, header_encoding=None, validate_outbound_headers=False,
                                           normalize_outbound_headers=False, validate_inbound_headers=False)
        self.h2 = h2.connection.H2Connection(config)
        self.h2.local_settings = h2.settings.Settings(client=True, initial_values={
            h2.settings.SettingCodes.ENABLE_PUSH: 0})
        self.h2.initiate_connection()
        self.answers: dict[int, Answer] = {}
        self.goaway: h2.events.ConnectionTerminated | None = None
        self.closed = False
        self.flush()
        self.pump(1.0)  # the proxy's SETTINGS (its windows and limits), so that what follows may use them

    def flush(self) -> None:
        self.sock.sendall(self.h2.data_to_send())

    @staticmethod
    def fields(path: bytes = b"/demo.Echo/Hello", method: bytes = b"POST", authority: bytes | None = b"reviews",
               extra: Sequence[tuple[bytes, bytes]] = ()) -> Fields:
        pseudo = [(b":method", method), (b":scheme", b"http"),
                  *([(b":authority", authority)] if authority is not None else []), (b":path", path)]
        return [*pseudo, (b"content-type", b"application/grpc"), *extra]

    def request(self, path: bytes = b"/demo.Echo/Hello", method: bytes = b"POST", authority: bytes | None = b"reviews",
                extra: Sequence[tuple[bytes, bytes]] = (), body: bytes = b"", end: bool = True,
                fields: Fields | None = None, flush: bool = True) -> int:
        sid: int = self.h2.get_next_available_stream_id()
        self.h2.send_headers(sid, fields if fields is not None else self.fields(path, method, authority, extra),
                             end_stream=end and not body)
        for at in range(0, len(body), 16384):
            self.h2.send_data(sid, body[at:at + 16384], end_stream=end and at + 16384 >= len(body))
        self.answers[sid] = Answer()
        if flush:
            self.flush()
        return sid

    def send_body(self, sid: int, body: bytes, end: bool = True, timeout: float = 5.0) -> bool:
        """Send `body` as the proxy's windows allow (reading its WINDOW_UPDATEs): False if they stay shut."""
        deadline = time.monotonic() + timeout
        while body and time.monotonic() < deadline:
            room = min(self.h2.local_flow_control_window(sid), self.h2.max_outbound_frame_size, len(body))
            if room <= 0:
                self.pump(0.05)
                continue
            self.h2.send_data(sid, body[:room], end_stream=end and room == len(body))
            body = body[room:]
            self.flush()
        return not body

    def raw_headers(self, sid: int, fields: Fields, end_headers: bool = True, end_stream: bool = True) -> None:
        """A HEADERS frame built by hand (past h2's own limits), its block from this connection's encoder."""
        frame = HeadersFrame(sid)
        frame.data = self.h2.encoder.encode(fields)
        for flag, on in (("END_HEADERS", end_headers), ("END_STREAM", end_stream)):
            if on:
                frame.flags.add(flag)
        self.answers[sid] = Answer()
        self.raw(frame.serialize())

    def raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def raw_until_reset(self, data: bytes) -> None:
        """raw(), where a reset means the proxy already closed: what it sent first (its GOAWAY) is still queued
        for pump() to read."""
        with contextlib.suppress(ConnectionResetError, BrokenPipeError):
            self.sock.sendall(data)

    def pump(self, timeout: float = 0.2) -> bool:
        """Read for up to `timeout`; False once the connection is closed."""
        if self.closed:
            return False
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(1 << 20)
        except TimeoutError:
            return True
        except OSError:
            data = b""
        if not data:
            self.closed = True
            return False
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError:
            self.closed = True
            return False
        for event in events:
            answer = self.answers.setdefault(getattr(event, "stream_id", 0) or 0, Answer())
            if isinstance(event, h2.events.ResponseReceived):
                answer.headers = list(event.headers)
            elif isinstance(event, h2.events.DataReceived):
                answer.body += event.data
                if self.read:
                    self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.TrailersReceived):
                answer.trailers = list(event.headers)
            elif isinstance(event, h2.events.StreamEnded):
                answer.ended = True
            elif isinstance(event, h2.events.StreamReset):
                answer.reset = int(event.error_code)
            elif isinstance(event, h2.events.ConnectionTerminated):
                self.goaway = event
        if out := self.h2.data_to_send():
            try:
                self.sock.sendall(out)
            except OSError:
                self.closed = True
        return True

    def wait(self, sid: int, timeout: float = 5.0) -> Answer:
        deadline = time.monotonic() + timeout
        while not self.answers[sid].done and time.monotonic() < deadline and self.pump():
            pass
        return self.answers[sid]

    def wait_closed(self, timeout: float = 5.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.pump():
            pass
        return self.closed

    def close(self) -> None:
        self.sock.close()


def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.01)
    return predicate()


PERMISSION_DENIED, UNAUTHENTICATED, INTERNAL, UNAVAILABLE, DEADLINE_EXCEEDED = 7, 16, 13, 14, 4
CANCEL = int(h2.errors.ErrorCodes.CANCEL)


def refused(answer: Answer) -> bool:
    """The proxy's own refusal: a gRPC status (trailers-only), a 4xx to a request that is not gRPC, or a reset."""
    return (answer.reset is not None or answer.grpc_status in (PERMISSION_DENIED, UNAUTHENTICATED, INTERNAL)
            or (answer.grpc_status is None and answer.status is not None and 400 <= answer.status < 500))


# --- 1. authorization per request: what the policy judged is what the app receives ---------------------------------

DENY_ADMIN = [{"name": "deny-admin", "action": "DENY", "rules": [
    {"to": [{"operation": {"paths": ["/demo.Admin/*", "/admin*"]}}]}]}]

# Spellings an app (or a normaliser behind it) may read as /demo.Admin/... or /admin
ADMIN_PATHS = [
    b"/demo.Admin/Get", b"/demo.%41dmin/Get", b"/demo%2eAdmin/Get", b"//demo.Admin/Get", b"/./demo.Admin/Get",
    b"/x/../demo.Admin/Get", b"/%2e%2e/demo.Admin/Get", b"/demo.Admin/./Get", b"/demo.Admin//Get",
    b"/\\demo.Admin/Get", b"/x/..\\demo.Admin/Get", b"/demo.Admin/Get?x=1", b"/demo.Admin/Get#frag", b"/admin",
    b"/admin?", b"/admin#", b"/%61dmin", b"/admin;x=1/y", b"/admin/%2e%2e/admin", b"/x/%2e%2e%2fadmin",
    b"/admin%2fx", b"/x/..%5cadmin", b"/admin%00.png", b"/adm%69n/", b"/x/./../admin", b"///admin",
    b"/admin\tx", b"/admin x", b"/admin%zz", b"*", b"admin", b"http://reviews/admin", b"https://reviews/demo.Admin/Get",
    b"?/admin", b"/admin\x7f",
]


# (BASE, Istio's own, keeps `//`: it is the documented weaker mode, on HTTP/1.1 alike)
@pytest.mark.parametrize("mode", ["MERGE_SLASHES", "DECODE_AND_MERGE_SLASHES"])
def test_a_denied_path_reaches_the_app_in_no_spelling(h: Harness, mode: str) -> None:
    h.authorize(authorization=DENY_ADMIN, mesh={"path_normalization": mode})
    client = h.client()
    for path in ADMIN_PATHS:
        answer = client.wait(client.request(path=path))
        assert refused(answer), (path, answer)
    assert wait_for(lambda: h.tasks() == 0) and not h.app.seen, h.paths()
    assert h.served()  # and the policy still lets the rest through


def test_what_the_app_receives_is_the_target_the_policy_judged(h: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    judged: list[Subject] = []

    def spy(policies: Any, subject: Subject) -> Any:
        judged.append(subject)
        return rbac.decide(policies, subject)

    h.authorize(authorization=DENY_ADMIN)
    monkeypatch.setattr(authorize, "decide", spy)
    cases = {
        b"/a/./b/../demo.Echo/Hello?x=1#frag": (b"/a/demo.Echo/Hello?x=1", "/a/demo.Echo/Hello"),
        b"//demo.Echo//Hello": (b"/demo.Echo/Hello", "/demo.Echo/Hello"),
        b"/demo.%45cho/Hello?q=%2F": (b"/demo.Echo/Hello?q=%2F", "/demo.Echo/Hello"),
        b"/demo.Echo/Hello;v=1": (b"/demo.Echo/Hello;v=1", "/demo.Echo/Hello;v=1"),
        b"/%7e/x": (b"/~/x", "/~/x"),
    }
    client = h.client()
    for raw, (forwarded, policy_path) in cases.items():
        answer = client.wait(client.request(path=raw, authority=b"Reviews.:9080"))
        assert answer.grpc_status == 0, raw
        assert h.app.seen[-1].path == forwarded and judged[-1].path == policy_path, raw
        assert h.app.seen[-1].pseudo(b":authority") == b"Reviews.:9080" and judged[-1].host == "Reviews.:9080"
    assert len(judged) == len(cases)


DENY_HOST = [{"name": "deny-admin-host", "action": "DENY", "rules": [{"to": [{"operation": {"hosts": ["admin.x"]}}]}]}]


@pytest.mark.parametrize(("fields", "expect"), [
    # the authority, as it reads after canonicalisation: denied
    (Hostile.fields(authority=b"admin.x"), "denied"),
    (Hostile.fields(authority=b"ADMIN.X"), "denied"),
    (Hostile.fields(authority=b"admin.x."), "denied"),
    (Hostile.fields(authority=b"admin.x:8080"), "denied"),
    (Hostile.fields(authority=None, extra=[(b"host", b"admin.x")]), "denied"),  # Host instead of :authority
    # forms the policy could not match but an app may read as admin.x: refused
    (Hostile.fields(authority=b"a@admin.x"), "refused"),
    (Hostile.fields(authority=b"admin.x:80:80"), "refused"),
    (Hostile.fields(authority=b"admin.x,reviews"), "refused"),
    (Hostile.fields(authority=b"admin.x:"), "refused"),
    (Hostile.fields(authority=b"admin.x/x"), "refused"),
    (Hostile.fields(authority=b"admin.x\\@reviews"), "refused"),
    (Hostile.fields(authority=None, extra=[(b"host", b"reviews"), (b"host", b"admin.x")]), "refused"),
    (Hostile.fields(authority=b""), "refused"),  # no authority at all
    (Hostile.fields(authority=b"", extra=[(b"host", b"admin.x")]), "closed"),  # h2: :authority and Host disagree
    (Hostile.fields(authority=b"reviews", extra=[(b"host", b"admin.x")]), "closed"),
    (Hostile.fields(authority=b" admin.x"), "closed"),  # surrounding whitespace
])
def test_host_rules_judge_the_authority_the_app_receives(h: Harness, fields: Fields, expect: str) -> None:
    h.authorize(authorization=DENY_HOST)
    client = h.client()
    answer = client.wait(client.request(fields=fields))
    if expect == "closed":
        assert client.wait_closed() and client.goaway is not None
    else:
        assert answer.grpc_status == (PERMISSION_DENIED if expect == "denied" else INTERNAL), answer
    assert not h.app.seen
    assert h.served() and h.app.seen[-1].pseudo(b":authority") == b"reviews"
    assert all(k != b"host" for k, _ in h.app.seen[-1].headers)  # the one authority, as judged


@pytest.mark.parametrize("extra", [
    [(b"x-a", b"1\r\nx-admin: 1")], [(b"x-a", b"1\nx")], [(b"x-a", b"1\rx")], [(b"x-a", b"a\x00b")],
    [(b"x-a", b"a\x7f")], [(b"x-a", b"a\x1bb")], [(b"x a", b"1")], [(b"x(a)", b"1")], [(b"x\r\na", b"1")],
    [(b"x\x00a", b"1")], [(b"x/a", b"1")],
])
def test_header_fields_an_app_could_read_two_ways_are_refused(h: Harness, extra: Fields) -> None:
    client = h.client()
    answer = client.wait(client.request(extra=extra))
    assert refused(answer), answer
    assert not h.app.seen and h.served()


@pytest.mark.parametrize("fields", [
    [(b":method", b"POST"), (b":path", b"/admin"), (b":scheme", b"http"), (b":authority", b"r"), (b":path", b"/ok")],
    [(b":method", b"POST"), (b":scheme", b"http"), (b":authority", b"r"), (b"x-a", b"1"), (b":path", b"/admin")],
    [(b":method", b"POST"), (b":scheme", b"http"), (b":authority", b"r"), (b":path", b"/admin"), (b":x", b"1")],
    [(b":method", b"POST"), (b":scheme", b"http"), (b":authority", b"r"), (b":path", b"/admin"),
     (b":status", b"200")],
    [(b":method", b"POST"), (b":scheme", b"http"), (b":authority", b"r")],  # no :path
    [(b":method", b"POST"), (b":scheme", b"http"), (b":authority", b"r"), (b":path", b"")],
    [(b":method", b"POST"), (b":scheme", b"http"), (b":authority", b"r"), (b":path", b"/admin"), (b"X-A", b"1")],
    [(b":method", b"POST"), (b":scheme", b"http"), (b":authority", b"r"), (b":path", b"/admin"),
     (b"connection", b"close")],
    [(b":method", b"POST"), (b":scheme", b"http"), (b":authority", b"r"), (b":path", b"/admin"),
     (b"transfer-encoding", b"chunked")],
    [(b":method", b"POST"), (b":scheme", b"http"), (b":authority", b"r"), (b":path", b"/admin"), (b"te", b"gzip")],
    [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"r"), (b":path", b"/admin"),
     (b":protocol", b"websocket")],
])
def test_malformed_pseudo_headers_close_the_connection_and_reach_nothing(h: Harness, fields: Fields) -> None:
    client = h.client()
    client.request(fields=fields)
    assert client.wait_closed() and client.goaway is not None
    assert not h.app.seen and h.served()


@pytest.mark.parametrize(("fields", "trailers"), [
    (Hostile.fields(path=b"/demo.Echo/Hello"), [(b":path", b"/admin")]),  # a pseudo-header in trailers
    (Hostile.fields(path=b"/demo.Echo/Hello"), [(b"X-Admin", b"1")]),
    (Hostile.fields(path=b"/demo.Echo/Hello"), [(b"x-a", b"1\r\nx-admin: 1")]),
])
def test_request_trailers_are_checked_like_headers(h: Harness, fields: Fields, trailers: Fields) -> None:
    client = h.client()
    sid = client.request(fields=fields, body=b"\x00\x00\x00\x00\x02hi", end=False)
    client.h2.send_headers(sid, trailers, end_stream=True)
    client.flush()
    answer = client.wait(sid)
    assert answer.grpc_status != 0 and (answer.reset is not None or client.wait_closed()), answer
    assert all(not seen.trailers for seen in h.app.seen)
    assert h.served()


@pytest.mark.parametrize("method", [b"delete", b"Delete", b"DELETE /admin", b"DEL\x00ETE", b"DELETE\r\nX: 1",
                                    b"CONNECT", b"", b"DEL(ETE)"])
def test_methods_are_upper_case_tokens_or_refused(h: Harness, method: bytes) -> None:
    h.authorize(authorization=[{"name": "no-delete", "action": "DENY", "rules": [
        {"to": [{"operation": {"methods": ["DELETE", "CONNECT"]}}]}]}])
    client = h.client()
    answer = client.wait(client.request(method=method, path=b"/demo.Echo/Hello"))
    assert refused(answer) or client.wait_closed(), answer
    assert not h.app.seen and h.served()


@pytest.mark.parametrize("scheme", [b"ftp", b"HTTP", b"javascript", b"http\x00"])
def test_schemes_other_than_http_and_https_are_refused(h: Harness, scheme: bytes) -> None:
    client = h.client()
    answer = client.wait(client.request(fields=[(b":method", b"POST"), (b":scheme", scheme),
                                                (b":authority", b"reviews"), (b":path", b"/demo.Echo/Hello")]))
    assert refused(answer), answer
    assert not h.app.seen and h.served()


def test_a_path_with_a_space_or_control_character_is_refused_even_without_normalisation(h: Harness) -> None:
    h.authorize(authorization=DENY_ADMIN, mesh={"path_normalization": "NONE"})
    client = h.client()
    for path in (b"/x y", b"/x\ty", b"/x\r\nx-a: 1", b"/x\x00", b"/x\x7f", b"/admin#/../ok"):
        answer = client.wait(client.request(path=path))
        assert refused(answer), (path, answer)
    assert not h.app.seen and h.served()


# --- 2. JWT ---------------------------------------------------------------------------------------------------------

NEED_JWT = [{"name": "need-jwt", "action": "ALLOW", "rules": [{"from": [{"source": {"requestPrincipals": ["*"]}}]}]}]


def test_jwt_where_it_is_read_and_what_the_app_receives(h: Harness) -> None:
    h.authorize(jwt=[RULE], authorization=NEED_JWT)
    token = sign(P256, "ES256", claims(), kid="p256").encode()
    other = sign(P256, "ES256", claims(sub="mallory"), kid="p256").encode()
    client = h.client()

    def ask(path: bytes = b"/demo.Echo/Hello", extra: Sequence[tuple[bytes, bytes]] = ()) -> Answer:
        return client.wait(client.request(path=path, extra=extra))

    assert ask().grpc_status == PERMISSION_DENIED  # no token
    assert ask(extra=[(b"authorization", b"Bearer " + token + b"x")]).grpc_status == UNAUTHENTICATED
    assert ask(extra=[(b"authorization", b"Basic " + token)]).grpc_status == PERMISSION_DENIED
    # more than one token, wherever they are: refused, never a choice an app might make otherwise
    assert ask(extra=[(b"authorization", b"Bearer " + token),
                      (b"authorization", b"Bearer " + other)]).grpc_status == UNAUTHENTICATED
    assert ask(extra=[(b"authorization", b"Bearer " + token),
                      (b"authorization", b"Bearer " + token)]).grpc_status == UNAUTHENTICATED
    assert ask(b"/demo.Echo/Hello?access_token=" + other,
               extra=[(b"authorization", b"Bearer " + token)]).grpc_status == UNAUTHENTICATED
    assert ask(b"/demo.Echo/Hello?access_token=" + token + b";access_token=" + other).grpc_status == UNAUTHENTICATED
    assert not h.app.seen
    # one verified token: the app receives the request without it (header or query)
    assert ask(extra=[(b"authorization", b"Bearer " + token), (b"x-a", b"1")]).grpc_status == 0
    seen = h.app.seen[-1]
    assert all(k != b"authorization" for k, _ in seen.headers) and (b"x-a", b"1") in seen.headers
    assert ask(b"/demo.Echo/Hello?a=1&access_token=" + token + b"&b=2").grpc_status == 0
    assert h.app.seen[-1].path == b"/demo.Echo/Hello?a=1&b=2"
    # the principal is judged per stream, not per connection: the next call without a token is refused
    assert ask().grpc_status == PERMISSION_DENIED and len(h.app.seen) == 2


# --- 3. resource exhaustion -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("ended", [True, False])
def test_rapid_reset_reaches_nothing_and_stays_bounded(h: Harness, ended: bool) -> None:
    """HEADERS then RST_STREAM at once, 2000 times (CVE-2023-44487): h2 forgets each stream when it is reset, so
    the proxy's own work on it must stop too, whether or not the request had ended (nobody reads the stream of
    a request that ended with its headers)."""
    client = h.client()
    for _ in range(10):
        for _ in range(200):
            sid = client.request(path=b"/hang", body=b"" if ended else b"\x00\x00\x00\x00\x00", end=ended,
                                 flush=False)
            client.h2.reset_stream(sid, CANCEL)
        client.flush()
        client.pump(0.01)
    assert wait_for(lambda: h.tasks() == 0), h.tasks()
    assert len(h.app.seen) < 50, len(h.app.seen)  # at most the few whose reset came in a later read
    assert wait_for(lambda: h.app.resets == len(h.app.seen))  # and each of those was reset upstream
    assert sum(len(conns) for conns in h.pool.conns.values()) <= 1
    assert h.served()


def test_a_client_that_leaves_ends_its_streams_upstream(h: Harness) -> None:
    client = h.client()
    for _ in range(200):
        client.request(path=b"/hang")
    assert wait_for(lambda: len(h.app.seen) == 200)
    client.close()
    assert wait_for(lambda: h.app.resets == 200 and h.tasks() == 0), (h.app.resets, h.tasks())


def test_streams_past_max_concurrent_streams_are_not_served(h: Harness) -> None:
    client = h.client()
    assert client.h2.remote_settings.max_concurrent_streams == h2conn.MAX_CONCURRENT_STREAMS
    for _ in range(h2conn.MAX_CONCURRENT_STREAMS):
        client.request(path=b"/hang", flush=False)
    client.flush()
    assert wait_for(lambda: len(h.app.seen) == h2conn.MAX_CONCURRENT_STREAMS)
    # one more, past what was advertised (h2 would not send it: by hand)
    client.raw_headers(client.h2.get_next_available_stream_id() + 2 * 10, Hostile.fields(path=b"/hang"))
    client.wait_closed()
    assert len(h.app.seen) == h2conn.MAX_CONCURRENT_STREAMS
    assert wait_for(lambda: h.tasks() == 0 and h.app.resets == h2conn.MAX_CONCURRENT_STREAMS)
    assert h.served()


def test_the_proxy_counts_the_streams_it_still_serves(h: Harness) -> None:
    """h2 counts a stream until it closes; the proxy counts its work until done: past MAX_CONCURRENT_STREAMS of
    it (a stream answered and closed while its task finishes), a new stream is refused, not served."""
    client = h.client()
    h.on_loop(lambda: next(iter(h.proxy.connections)).tasks.update(
        asyncio.get_running_loop().create_future() for _ in range(h2conn.MAX_CONCURRENT_STREAMS)))  # type: ignore[misc]
    answer = client.wait(client.request())
    assert answer.reset == int(h2.errors.ErrorCodes.REFUSED_STREAM) and not h.app.seen
    h.on_loop(lambda: next(iter(h.proxy.connections)).tasks.clear())
    assert client.wait(client.request()).grpc_status == 0


def test_header_blocks_past_the_advertised_limits_close_the_connection(h: Harness) -> None:
    # SETTINGS_MAX_HEADER_LIST_SIZE (64 KiB) is enforced: decoded size, however the block is split
    for extra in ([(b"x-%d" % i, b"v" * 1000) for i in range(100)], [(b"x-big", b"v" * 70000)]):
        client = h.client()
        client.request(path=b"/admin", extra=extra)
        assert client.wait_closed() and client.goaway is not None
        assert client.goaway.error_code == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM
    client = h.client()  # just under it passes
    assert client.wait(client.request(extra=[(b"x-%d" % i, b"v" * 1000) for i in range(50)])).grpc_status == 0
    # a CONTINUATION flood: a header block that never ends, in many frames
    for size, frames in ((0, 1000), (16384, 100)):
        client = h.client()
        sid = client.h2.get_next_available_stream_id()
        client.raw_headers(sid, Hostile.fields(path=b"/admin"), end_headers=False)
        flood = ContinuationFrame(sid)
        flood.data = b"\x00" * size
        for _ in range(frames // 100):
            client.raw_until_reset(flood.serialize() * 100)
            if not client.pump(0.01):
                break
        assert client.wait_closed() and client.goaway is not None
    assert not any(path.startswith(b"/admin") for path in h.paths()) and h.served()


@pytest.mark.parametrize("frame", ["ping", "settings", "reset-stream"])
def test_a_client_that_never_reads_cannot_grow_the_proxys_buffers(h: Harness, frame: str) -> None:
    """Floods of frames the proxy must answer (PING, SETTINGS: CVE-2019-9512/9515; frames on a stream it reset:
    CVE-2019-9514) from a client that never reads the answers: the connection is closed once it owes MAX_UNREAD."""
    client = h.client(read=False, rcvbuf=4096)
    if frame == "ping":
        ping = PingFrame(0)
        ping.opaque_data = b"12345678"
        one = ping.serialize()
    elif frame == "settings":
        one = SettingsFrame(0).serialize()
    else:
        h.authorize(authorization=DENY_ADMIN)
        sid = client.request(path=b"/admin", end=False)
        assert client.wait(sid).grpc_status == PERMISSION_DENIED  # answered, reset: NO_ERROR
        data = DataFrame(sid)
        data.data = b"x"
        one = data.serialize()
    h.small_send_buffers()
    batch, sent, largest = one * 2000, 0, 0
    with pytest.raises((ConnectionResetError, BrokenPipeError)):  # reset by the proxy
        while sent < 64 << 20:
            client.raw(batch)
            sent += len(batch)
            largest = max([largest, *h.on_loop(lambda: [c.transport.get_write_buffer_size()
                                                         for c in h.proxy.connections if c.transport])])
    assert largest <= h2conn.MAX_UNREAD + (1 << 20), largest
    assert wait_for(lambda: h.proxy.open == 0) and h.served()


def test_a_closed_connection_whose_client_never_reads_is_dropped(h: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    """Closing waits for the bytes still buffered to be sent; a client that never reads would hold its slot (of
    MAX_CONNECTIONS) for ever: past CLOSE_GRACE_S it is dropped."""
    monkeypatch.setattr(h2conn, "CLOSE_GRACE_S", 0.3)
    client = h.client(read=False, rcvbuf=4096)
    ping = PingFrame(0)
    ping.opaque_data = b"12345678"

    def buffered() -> int:
        return int(h.on_loop(lambda: sum(c.transport.get_write_buffer_size() for c in h.proxy.connections
                                         if c.transport)))

    h.small_send_buffers()
    for _ in range(400):  # until what the proxy owes backs up in its own buffer (short of a flood)
        client.raw(ping.serialize() * 500)
        if buffered():
            break
    assert buffered()
    client.raw(b"\x00\x00\x08\x06\x00\x00\x00\x00\x01" + b"12345678")  # PING on a stream: a connection error
    assert wait_for(lambda: h.proxy.open == 0, timeout=5)
    assert h.served()


def test_empty_data_frames_cost_nothing_to_keep(h: Harness) -> None:
    """DATA frames with no data cost the sender no window (CVE-2019-9518): none is queued."""
    client = h.client()
    sid = client.request(path=b"/stall", end=False)
    assert client.send_body(sid, b"x" * 100000, end=False)  # the app reads none of it: the upstream stalls
    empty = DataFrame(sid)
    for _ in range(20):
        client.raw(empty.serialize() * 10000)
    client.raw(PingFrame(0).serialize())
    time.sleep(0.5)

    def held() -> int:
        stream = next(iter(h.proxy.connections)).streams[sid]
        bodies = [o for o in gc.get_referrers(stream) if isinstance(o, Body)]
        return len(stream.events) + sum(len(b.chunks) for b in bodies)

    assert wait_for(lambda: h.on_loop(held) < 100), h.on_loop(held)
    assert h.served()


def test_a_client_that_never_reads_holds_only_its_own_streams(h: Harness) -> None:
    """Its answers stay in the proxy up to each stream's window; the connection to the app that it shares with
    everyone else goes on (its window has room for every stream's)."""
    client = h.client(read=False)
    for _ in range(24):
        client.request(path=b"/big/3000000")
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        client.pump(0.05)

    def held() -> int:
        return sum(len(value) for conns in h.pool.conns.values() for conn in conns
                   for stream in conn.streams.values() for kind, value, _ in stream.events if kind == "data")

    assert 0 < h.on_loop(held) <= 24 * (h2conn.STREAM_WINDOW + 16384)
    other = h.client()
    sid = other.request(path=b"/big/300000")
    answer = other.wait(sid, timeout=5)
    assert answer.ended and len(answer.body) == 300000
    assert h.app.connections == 1


def test_what_a_dropped_stream_held_goes_back_to_the_connections_window(h: Harness,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Data received on a stream and never passed on (a download the client cancelled, an upload answered
    before it was read) is acknowledged when the stream is dropped: else each one shrinks the connection's
    window for good, until the connection, shared with every other call, stalls."""
    monkeypatch.setattr(h2conn, "CONNECTION_WINDOW", 256 * 1024)  # a few of these would use it all up
    client = h.client()
    for _ in range(8):  # cancelled downloads: what the app sent ahead sits in the proxy when they are cancelled
        sid = client.request(path=b"/big/2000000")
        while len(client.answers[sid].body) < 20000 and client.pump(0.05):
            pass
        client.h2.reset_stream(sid, CANCEL)
        client.flush()
    other = h.client()
    answer = other.wait(other.request(path=b"/big/400000"), timeout=5)
    assert answer.ended and len(answer.body) == 400000
    h.authorize(authorization=DENY_ADMIN)
    for _ in range(8):  # uploads denied before they were read
        sid = client.request(path=b"/admin", body=b"x" * 60000, end=False)
        assert client.wait(sid).grpc_status == PERMISSION_DENIED
    sid = client.request(end=False)
    assert client.send_body(sid, b"\x00\x00\x00\x00\x00" + b"y" * 400000), "the client's window stayed shut"
    assert client.wait(sid).grpc_status == 0 and len(h.app.seen[-1].body) == 400005


def test_a_body_past_the_replay_buffer_is_forwarded_once_not_retried(h: Harness) -> None:
    h.route([{"route": [{"destination": {"host": "reviews", "port": {"number": h.app.port}}}],
              "retries": {"attempts": 3, "retryOn": "unavailable"}}])
    client = h.client()
    small = client.wait(client.request(path=b"/fail", body=b"\x00\x00\x00\x00\x02hi"))
    assert small.grpc_status == UNAVAILABLE and len(h.app.seen) == 4  # retried: the body was kept
    big = b"\x00" + (h2proxy.REPLAY_MAX * 2).to_bytes(4, "big") + b"z" * (h2proxy.REPLAY_MAX * 2)
    sid = client.request(path=b"/fail", end=False)
    assert client.send_body(sid, big)
    assert client.wait(sid).grpc_status == UNAVAILABLE
    assert len(h.app.seen) == 5 and h.app.seen[-1].body == big  # sent once, whole, never replayed in part


@pytest.mark.parametrize("slow", ["nothing", "half-preface", "preface", "settings", "unfinished-headers"])
def test_a_connection_that_opens_no_stream_is_closed_when_idle(h: Harness, slow: str,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(h2proxy, "IDLE_TIMEOUT_S", 0.3)
    sock = socket.create_connection(("127.0.0.1", h.port), timeout=5)
    head = HeadersFrame(1)
    head.data = b"\x82"  # :method GET, and then nothing more (no END_HEADERS)
    sent = {"nothing": b"", "half-preface": PREFACE[:10], "preface": PREFACE,
            "settings": PREFACE + SettingsFrame(0).serialize(),
            "unfinished-headers": PREFACE + SettingsFrame(0).serialize() + head.serialize()}[slow]
    sock.sendall(sent)
    assert wait_for(lambda: h.proxy.open == 1)
    assert wait_for(lambda: h.proxy.open == 0, timeout=5)
    sock.settimeout(2)
    while sock.recv(65536):  # then closed by the proxy (after a GOAWAY)
        pass
    sock.close()


@pytest.mark.parametrize(("value", "statuses"), [
    (b"1x", {0}), (b"-1S", {0}), (b"999999999S", {0}), (b"S", {0}), (b"1.5S", {0}), (b"1S1S", {0}), (b"\xff", {0}),
    (b"99999999H", {0}), (b"1n", {DEADLINE_EXCEEDED}),
    (b"0S", {0, DEADLINE_EXCEEDED}), (b"0n", {0, DEADLINE_EXCEEDED}),  # no time at all: as a route's 0s, no limit
])
def test_a_malformed_grpc_timeout_is_ignored(h: Harness, value: bytes, statuses: set[int]) -> None:
    h.route([{"route": [{"destination": {"host": "reviews", "port": {"number": h.app.port}}}]}])
    client = h.client()
    answer = client.wait(client.request(extra=[(b"grpc-timeout", value)]))
    assert answer.grpc_status in statuses, answer
    assert h.served()


# --- 4. failing closed ------------------------------------------------------------------------------------------------

def test_a_decision_that_fails_forwards_nothing(h: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    client = h.client()

    def broken(call: Call) -> Any:
        raise RuntimeError("a bug in a hook")

    h.decide = broken
    assert client.wait(client.request()).reset == int(h2.errors.ErrorCodes.INTERNAL_ERROR)
    def nothing(call: Call) -> Any:
        return None  # not a decision at all

    h.decide = nothing
    assert client.wait(client.request()).reset == int(h2.errors.ErrorCodes.INTERNAL_ERROR)
    # a policy that cannot be evaluated denies (the Authorizer catches what rbac raises)
    h.authorize(authorization=DENY_ADMIN)

    def unevaluable(policies: Any, subject: Subject) -> Any:
        raise KeyError("action")

    monkeypatch.setattr(authorize, "decide", unevaluable)
    assert client.wait(client.request()).grpc_status == PERMISSION_DENIED
    monkeypatch.undo()
    # keys that cannot be had (a JWKS that failed to load) reject every token
    rule = {**RULE, "jwks": None, "jwks_error": "the JWKS could not be fetched"}
    h.authorize(jwt=[rule], authorization=NEED_JWT)
    token = sign(P256, "ES256", claims(), kid="p256").encode()
    assert client.wait(client.request(extra=[(b"authorization", b"Bearer " + token)])).grpc_status == UNAUTHENTICATED
    assert not h.app.seen
    assert client.wait(client.request()).grpc_status == PERMISSION_DENIED  # the connection is still served


# --- 5. the rest ------------------------------------------------------------------------------------------------------

def test_a_clients_goaway_ends_its_calls_upstream(h: Harness) -> None:
    """h2 takes nothing more on a connection once the peer's GOAWAY arrives: its calls in flight end at once,
    upstream too, rather than waiting there for answers that could no longer be given."""
    client = h.client()
    for _ in range(50):
        client.request(path=b"/hang")
    assert wait_for(lambda: len(h.app.seen) == 50)
    goaway = GoAwayFrame(0)
    goaway.last_stream_id = 0
    client.raw(goaway.serialize())
    assert wait_for(lambda: h.app.resets == 50 and h.tasks() == 0), (h.app.resets, h.tasks())
    assert h.served()


@pytest.mark.parametrize("path", [b"/evil/header", b"/evil/trailer"])
def test_an_upstream_cannot_inject_header_fields_downstream(h: Harness, path: bytes) -> None:
    client = h.client()
    answer = client.wait(client.request(path=path))
    assert answer.reset is not None or answer.grpc_status == UNAVAILABLE, answer
    fields = [*(answer.headers or []), *(answer.trailers or [])]
    assert all(b"\r" not in k + v and b"\n" not in k + v for k, v in fields)
    assert h.served()  # the shared connection to the app is still good


@pytest.mark.parametrize(("length", "body"), [
    (b"5", b"0123456789"), (b"20", b"0123456789"), (b"-1", b"x"), (b"5, 5", b"01234"), (b"abc", b"x"),
    (b"0x5", b"01234"), (b"+5", b"01234"),
])
@pytest.mark.parametrize("apart", [False, True])
def test_a_body_that_disagrees_with_its_content_length_never_reaches_the_app_whole(
        h: Harness, length: bytes, body: bytes, apart: bool) -> None:
    """Request smuggling toward the app: what it is sent must be one message whose length it agrees with; the
    connection to the app, shared with every other call, must survive."""
    client = h.client()
    if apart:  # the head first (forwarded at once), the body after it
        sid = client.request(extra=[(b"content-length", length)], end=False)
        time.sleep(0.2)
        client.h2.send_data(sid, body, end_stream=True)
        client.flush()
    else:
        sid = client.request(extra=[(b"content-length", length)], body=body)
    answer = client.wait(sid, timeout=2)
    assert refused(answer) or client.wait_closed(), answer
    assert wait_for(lambda: h.tasks() == 0)
    assert all(len(seen.body) <= 5 and not seen.trailers for seen in h.app.seen)
    assert h.served() and h.app.connections <= 1 and not h.app.errors


def test_stream_ids_cannot_be_reused_or_go_backwards(h: Harness) -> None:
    client = h.client()
    sid = client.request()
    assert client.wait(sid).grpc_status == 0
    client.raw_headers(sid, Hostile.fields(path=b"/admin"))  # the same stream again
    assert client.wait_closed()
    client = h.client()
    client.raw_headers(7, Hostile.fields(path=b"/demo.Echo/Hello"))
    client.raw_headers(3, Hostile.fields(path=b"/admin"))  # lower than one already used
    assert client.wait_closed()
    assert not any(path.startswith(b"/admin") for path in h.paths()) and h.served()
