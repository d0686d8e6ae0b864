"""L7 routing on the engine: for each outbound request to a service with a VirtualService or DestinationRule,
everything Envoy's router decides, per request (one keep-alive connection is split by weight): the rule (first
match wins), faults, header operations, the subset, mirroring, the endpoint (load balancing minus ejected
outliers), and the exchange with the route's timeout and retries.

The decisions are sidecar.routes' and sidecar.policy's pure functions. A service with neither resource keeps the
connection's own destination (streamed, no buffering), unless its pod has gone: then its requests go to the
service's other pods. A request whose body is large or chunked, or that upgrades the connection, is routed to a
chosen endpoint and streamed: it gets no timeout, retries, faults or mirroring (as before the engine).
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import random
import ssl
import time
import urllib.parse
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol, TypeVar

from sidecar import grpc
from sidecar.endpoints import Endpoint, Endpoints
from sidecar.engine.call import Call, Headers
from sidecar.engine.client import Answer, UpstreamError, fetch
from sidecar.engine.h2proxy import Attempt, Forwarder, H2Routed
from sidecar.engine.http1 import RequestHead, ResponseHead, forwardable
from sidecar.engine.plan import L7H2, L7Http
from sidecar.engine.pool import Key, Pool
from sidecar.engine.proxy import Response, Route, Routed
from sidecar.live import LiveSnapshot
from sidecar.policy import UNLIMITED, Balancer, ClusterPolicy, Outliers, RetryPolicy, backoff, merged_policy, seconds
from sidecar.routes import (
    FAILURES,
    MIRROR_LIMIT,
    MIRROR_TIMEOUT_S,
    apply_header_ops,
    percent_hit,
    pick_route,
    select_rule,
    subset_labels,
)
from sidecar.snapshot import Snapshot

log = logging.getLogger("meshctl.routing")
ROUTED_BODY_MAX = 128 * 1024  # larger (or chunked) request bodies stream: no retries, timeouts or mirroring
DEFAULT_RETRY = RetryPolicy()
MAX_PER_ENDPOINT = 1024  # connections to one endpoint when the DestinationRule sets no limit


class Answered(Protocol):
    """An upstream's answer as the retry loop judges it (a buffered HTTP/1.1 Answer, an HTTP/2 Attempt)."""

    @property
    def status(self) -> int: ...

    @property
    def grpc_status(self) -> int | None: ...

    def discard(self) -> None: ...


A = TypeVar("A", bound=Answered)


def text(status: int, message: str) -> Response:
    return Response(status, f"meshctl: {message}\n".encode(), ((b"content-type", b"text/plain"),))


class Cluster:
    """One service subset as the router sees it: its policy, balancer, outlier state and connections.

    With HTTP/1.1 a connection carries one request at a time, so connectionPool.tcp.maxConnections bounds the
    requests in flight; up to http1MaxPendingRequests more wait for one to finish; any more overflow (UO)."""

    def __init__(self, policy: ClusterPolicy, context: Callable[[], ssl.SSLContext | None]) -> None:
        self.policy = policy
        self.balancer = Balancer(policy)
        self.outliers = Outliers(policy)
        limited = policy.max_connections < UNLIMITED
        self.pool = Pool(context, max_per_key=policy.max_connections if limited else MAX_PER_ENDPOINT,
                         max_total=policy.max_connections if limited else 1 << 20,
                         idle_timeout=policy.idle_timeout, connect_timeout=policy.connect_timeout)
        self.active = 0
        self.waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self.retrying = 0

    async def slot(self) -> None:
        if self.active < self.policy.max_connections:
            self.active += 1
            return
        if len(self.waiters) >= self.policy.max_pending:
            raise UpstreamError("overflow", "upstream connection limit reached (DestinationRule connectionPool)")
        waiter = asyncio.get_running_loop().create_future()
        self.waiters.append(waiter)
        try:
            await waiter  # free() hands its slot over
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.free()  # it was handed a slot just as it was cancelled: pass it on
            else:
                self.waiters.remove(waiter)
            raise

    def free(self) -> None:
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self.active -= 1

    def close(self) -> None:
        self.pool.close()


def peer_identity(endpoint: Endpoint, port: int, policy: ClusterPolicy) -> str:
    """The SPIFFE ID the endpoint must present; empty (plaintext) for a DISABLE workload or port, or when the
    caller's DestinationRule disables TLS to it."""
    return endpoint.service.identity if endpoint.workload.accepts_mtls(port) and policy.mtls(port) else ""


def upstream_request(head: RequestHead, body: bytes, host: str | None = None) -> bytes:
    """The whole request for our own upstream connection: end-to-end fields, the length of the body we hold,
    `host` replacing the Host header (a mirror's)."""
    fields = [(k, v) for k, v in forwardable(head.headers) if not host or k.lower() != b"host"]
    if host:
        fields.insert(0, (b"host", host.encode("latin-1")))
    if body or head.method in (b"POST", b"PUT", b"PATCH"):
        fields.append((b"content-length", b"%d" % len(body)))
    return (head.method + b" " + head.target + b" HTTP/1.1\r\n" + b"".join(k + b": " + v + b"\r\n" for k, v in fields)
            + b"\r\n" + body)


def abort_response(abort: Mapping[str, Any]) -> Response:
    """A fault's abort: an HTTP status, or a gRPC status (answered as gRPC: HTTP 200 carrying grpc-status)."""
    if "grpcStatus" in abort:
        code = grpc.status_code(abort["grpcStatus"])
        return Response(200, b"fault filter abort", ((b"content-type", b"application/grpc"),
                                                      (b"grpc-status", b"%d" % (code if code is not None else 2)),
                                                      (b"grpc-message", b"fault filter abort")))
    return Response(int(abort["httpStatus"]), b"fault filter abort", ((b"content-type", b"text/plain"),))


def cookie(headers: Headers, name: str) -> str | None:
    for value in headers.get_all("cookie"):
        for part in value.split(";"):
            key, _, val = part.strip().partition("=")
            if key == name:
                return val
    return None


class Router:
    def __init__(self, live: LiveSnapshot, endpoints: Endpoints, context: Callable[[], ssl.SSLContext | None]) -> None:
        self.live = live
        self.endpoints = endpoints
        self.context = context
        self.clusters: dict[tuple[str, str | None], tuple[str, Cluster]] = {}  # (host, subset) -> (policy, cluster)
        self._checked: dict[tuple[str, str | None], str] = {}  # (host, subset) -> snapshot hash it was checked at
        self.mirrors: set[asyncio.Task[None]] = set()
        self._compiled: dict[int, tuple[Mapping[str, Any], RetryPolicy, float | None]] = {}
        self._compiled_for = ""

    # --- the decision --------------------------------------------------------------------------------------

    def decide(self, call: Call, plan: L7Http) -> Route | Response | Routed:
        """Outbound: where this request goes, and how."""
        target = self._routed_service(plan.address, plan.identity)
        if target is None:
            return Route(plan.address, plan.identity)  # no policy, outside the mesh or a DISABLE peer
        snap, service = target
        head = call.head
        if head.upgrade or head.framing == "chunked" or (head.length or 0) > ROUTED_BODY_MAX:
            return self._stream(call, snap, service, plan.address[1])
        port = plan.address[1]
        return Routed(lambda c, body: self._serve(c, body, snap, service, port))

    def decide_h2(self, call: Call, plan: L7H2) -> Route | Response | H2Routed:
        """Outbound HTTP/2 (gRPC): the same decisions per stream; the body streams, kept for retries."""
        target = self._routed_service(plan.address, plan.identity)
        if target is None:
            return Route(plan.address, plan.identity)
        snap, service = target
        port = plan.address[1]
        return H2Routed(lambda c, forwarder: self._serve_h2(c, forwarder, snap, service, port))

    def _routed_service(self, address: tuple[str, int], identity: str) -> tuple[Snapshot, str] | None:
        """The snapshot and the service whose policy routes a request to `address`; None: as it was going."""
        if not identity:
            return None  # outside the mesh or a DISABLE peer
        snap = self.live.current
        ip = address[0]
        endpoint, gone = self.endpoints.by_ip.get(ip), False
        if endpoint is None:
            endpoint = self.endpoints.departed_endpoint(ip)
            gone = endpoint is not None
        # A pod that has gone is routed even without a policy: its service's other pods answer, as behind a
        # Kubernetes service address.
        if endpoint is None or not (gone or self._has_policy(snap, endpoint.service.name)):
            return None
        return snap, endpoint.service.name

    @staticmethod
    def _has_policy(snap: Snapshot, service: str) -> bool:
        return (any(service in r.get("hosts", []) for r in snap.routes)
                or any(d.get("host") == service for d in snap.destinations))

    def _cluster(self, snap: Snapshot, host: str, subset: str | None) -> Cluster:
        """The cluster for a subset; rebuilt only when a new snapshot changed its policy (not per request)."""
        known = self.clusters.get((host, subset))
        if known is not None and self._checked.get((host, subset)) == snap.hash:
            return known[1]
        self._checked[(host, subset)] = snap.hash
        rule = next((d for d in snap.destinations if d.get("host") == host), None)
        spec = merged_policy(rule, subset)
        key = json.dumps(spec, sort_keys=True)
        if known is not None and known[0] == key:
            return known[1]
        if known is not None:
            known[1].close()  # a changed policy: in-flight requests finish on their connections
        cluster = Cluster(ClusterPolicy.from_spec(spec), self.context)
        self.clusters[(host, subset)] = (key, cluster)
        return cluster

    def _candidates(self, snap: Snapshot, host: str, subset: str | None) -> list[tuple[str, Endpoint]]:
        labels = subset_labels(list(snap.destinations), host, subset)
        return [(ip, e) for ip, e in self.endpoints.by_ip.items()
                if e.service.name == host and e.workload.selected_by(labels)]

    @staticmethod
    def _hash_key(call: Call, policy: ClusterPolicy) -> str | None:
        headers = call.headers
        if policy.hash_header:
            return headers.get(policy.hash_header)
        if policy.hash_cookie:
            value = cookie(headers, policy.hash_cookie)
            if value is None and policy.hash_cookie_ttl:  # Envoy's: mint one, and tell the client to keep it
                value = uuid.uuid4().hex
                minted = (f"{policy.hash_cookie}={value}; Max-Age={int(policy.hash_cookie_ttl)}; "
                          f"Path={policy.hash_cookie_path}")
                _then_edit(call, lambda h: h.add("set-cookie", minted))
            return value
        if policy.hash_source_ip and call.conn is not None:
            return call.conn.peer[0]
        return None

    @staticmethod
    def _rule(snap: Snapshot, service: str, call: Call, port: int) -> tuple[Mapping[str, Any] | None, str]:
        """The service's rule for this request and its VirtualService's name; without a VirtualService, a rule
        sending everything to the service. None: the VirtualService has no rule for it (404)."""
        vs = next((r for r in snap.routes if service in r.get("hosts", [])), None)
        if vs is None:
            return {"route": [{"destination": {"host": service}}]}, ""
        return (select_rule(vs, call.method, call.target, call.headers.lower_dict(), query(call.target), port),
                vs["name"])

    @staticmethod
    def _pick(call: Call, rule: Mapping[str, Any], vs_name: str) -> Mapping[str, Any] | Response:
        """A destination of the rule by weight, with the rule's and the destination's request header operations
        applied; a 503 (NR) when the weights pick none."""
        route = pick_route(rule, random.uniform(0, 100))
        if route is None:
            call.flags = "NR"
            return text(503, f"no destination of VirtualService {vs_name} was picked")
        apply_header_ops(call.headers, (rule.get("headers") or {}).get("request"))
        apply_header_ops(call.headers, (route.get("headers") or {}).get("request"))
        return route

    @staticmethod
    def _no_rule(call: Call, vs_name: str) -> Response:
        call.flags = "NR"
        return text(404, f"no route of VirtualService {vs_name} matches {call.method} {call.target}")

    # --- the routed exchange -------------------------------------------------------------------------------

    async def _serve(self, call: Call, body: bytes, snap: Snapshot, service: str, port: int) -> Response:
        prepared = await self._prepare(call, snap, service, port)
        if isinstance(prepared, Response):
            return prepared
        rule, dest = prepared
        if "mirror" in rule and percent_hit(rule.get("mirrorPercentage"), random.uniform(0, 100)):
            self._mirror(call, body, snap, rule["mirror"], service, port)
        retry, timeout = self._rule_policy(snap, rule)
        request = upstream_request(call.head, body)
        is_head = call.head.method == b"HEAD"

        def exchange(cluster: Cluster, key: Key) -> Awaitable[Answer]:
            return fetch(cluster.pool, key, request, is_head, cluster.policy.max_requests_per_connection)

        answer = await self._attempts(call, snap, dest.get("host", service), dest.get("subset"),
                                      (dest.get("port") or {}).get("number") or port, retry, timeout, exchange)
        if isinstance(answer, Response):
            return answer
        return Response(answer.status, answer.body, tuple(answer.headers), reason=answer.reason,
                        length_from_headers=is_head)

    async def _serve_h2(self, call: Call, forwarder: Forwarder, snap: Snapshot, service: str,
                        port: int) -> Attempt | Response:
        prepared = await self._prepare(call, snap, service, port)
        if isinstance(prepared, Response):
            return prepared
        rule, dest = prepared
        if "mirror" in rule and percent_hit(rule.get("mirrorPercentage"), random.uniform(0, 100)):
            self._mirror_h2(call, forwarder, snap, rule["mirror"], service, port)
        retry, timeout = self._rule_policy(snap, rule)
        deadline_in = grpc.timeout_of(call.head.header(b"grpc-timeout"))  # the caller's deadline, honoured
        if timeout is not None:
            deadline_in = timeout if deadline_in is None else min(timeout, deadline_in)
        if deadline_in is not None:
            call.deadline = asyncio.get_running_loop().time() + deadline_in

        def exchange(cluster: Cluster, key: Key) -> Awaitable[Attempt]:
            return forwarder.attempt(key)

        return await self._attempts(call, snap, dest.get("host", service), dest.get("subset"),
                                    (dest.get("port") or {}).get("number") or port, retry, deadline_in, exchange,
                                    lambda: forwarder.can_retry)

    async def _prepare(self, call: Call, snap: Snapshot, service: str, port: int
                       ) -> tuple[Mapping[str, Any], Mapping[str, Any]] | Response:
        """The rule and destination for a request, with its faults and header operations applied; or the
        answer to give without an upstream (no rule, an abort, no destination picked)."""
        rule, vs_name = self._rule(snap, service, call, port)
        if rule is None:
            return self._no_rule(call, vs_name)
        fault = rule.get("fault") or {}
        if "delay" in fault and percent_hit(fault["delay"].get("percentage"), random.uniform(0, 100)):
            await asyncio.sleep(seconds(fault["delay"].get("fixedDelay"), 0.0) or 0.0)
            call.flags = "DI"
        if "abort" in fault and percent_hit(fault["abort"].get("percentage"), random.uniform(0, 100)):
            call.flags = "FI"
            return abort_response(fault["abort"])
        route = self._pick(call, rule, vs_name)
        if isinstance(route, Response):
            return route
        response_ops = [(rule.get("headers") or {}).get("response"), (route.get("headers") or {}).get("response")]
        if any(response_ops):
            def edit(h: Headers) -> None:
                for ops in response_ops:
                    apply_header_ops(h, ops)

            _then_edit(call, edit)
        return rule, route["destination"]

    def _rule_policy(self, snap: Snapshot, rule: Mapping[str, Any]) -> tuple[RetryPolicy, float | None]:
        """A rule's retries and timeout, read once per snapshot (rules are the snapshot's own objects)."""
        if "retries" not in rule and "timeout" not in rule:  # Istio's defaults (and the implied rule's)
            return DEFAULT_RETRY, None
        if self._compiled_for != snap.hash:
            self._compiled.clear()
            self._compiled_for = snap.hash
        found = self._compiled.get(id(rule))
        if found is None or found[0] is not rule:
            found = self._compiled[id(rule)] = (rule, RetryPolicy.from_spec(rule.get("retries")),
                                                seconds(rule.get("timeout")))
        return found[1], found[2]

    async def _attempts(self, call: Call, snap: Snapshot, host: str, subset: str | None, port: int,
                        retry: RetryPolicy, timeout: float | None, exchange: Callable[[Cluster, Key], Awaitable[A]],
                        can_retry: Callable[[], bool] = lambda: True) -> A | Response:
        """Try the exchange up to 1 + attempts times: the answer, or the error response to give."""
        cluster = self._cluster(snap, host, subset)
        deadline = time.monotonic() + timeout if timeout else None
        hash_key = self._hash_key(call, cluster.policy)
        tried: list[str] = []
        last: tuple[int | None, str | None] = (None, "connect-failure")
        grpc_status: int | None = None
        for attempt in range(retry.attempts + 1):
            candidates = self._candidates(snap, host, subset)
            if not candidates:
                await self.endpoints.refresh()  # a pod that just started may not be known yet
                candidates = self._candidates(snap, host, subset)
            if not candidates:
                call.flags = "UH"
                return text(503, f"no running instance of {host} subset {subset or '(any)'}")
            by_ip = dict(candidates)
            healthy = cluster.outliers.healthy(list(by_ip))
            ip = cluster.balancer.pick([c for c in healthy if c not in tried] or healthy, hash_key)
            tried.append(ip)
            limits = [t for t in (retry.per_try_timeout, deadline and deadline - time.monotonic()) if t]
            # Whether this attempt's time limit is the route's own timeout: its expiry ends the request (UT), even
            # if the loop's clock (uvloop's is cached per turn) fires it a hair before time.monotonic() agrees.
            overall = deadline is not None and bool(limits) and min(limits) != retry.per_try_timeout
            identity = peer_identity(by_ip[ip], port, cluster.policy)
            call.upstream, call.upstream_identity = (ip, port), identity
            call.route = {"host": host, "subset": subset, "attempts": attempt + 1}
            answer: A | None = None
            cluster.balancer.active[ip] = cluster.balancer.active.get(ip, 0) + 1
            try:
                await cluster.slot()
                try:
                    pending = exchange(cluster, ((ip, port), identity))
                    answer = await asyncio.wait_for(pending, min(limits)) if limits else await pending
                finally:
                    cluster.free()
                last = (answer.status, None)
                grpc_status = answer.grpc_status
            except TimeoutError:
                last = (None, "timeout")
            except UpstreamError as exc:
                if exc.kind == "overflow":
                    call.flags = "UO"
                    return text(503, str(exc))
                call.error = str(exc)
                last = (None, exc.kind)
            finally:
                cluster.balancer.active[ip] -= 1
            if cluster.outliers.record(ip, last[0], last[1], population=len(by_ip)):
                log.warning("ejected %s (%s) from %s: consecutive errors", ip, by_ip[ip].workload.host, host)
            if deadline is not None and (time.monotonic() >= deadline or (overall and last[1] == "timeout")):
                if answer is not None:
                    answer.discard()
                call.flags = "UT"
                return text(*FAILURES["timeout"][::2])
            retriable = retry.retriable(last[0], last[1], grpc_status) and attempt < retry.attempts and can_retry()
            if retriable and cluster.retrying >= cluster.policy.max_retries:
                retriable = False  # the cluster's retry budget (connectionPool.http.maxRetries) is spent
            if not retriable:
                if answer is not None:
                    if attempt and retry.retriable(last[0], last[1], grpc_status):
                        call.flags = "URX"
                    return answer
                status, flag, message = FAILURES[last[1] or "reset"]
                call.flags = "URX" if attempt else flag
                return text(status, message)
            if answer is not None:
                answer.discard()  # not the answer given: a retry follows
            pause = backoff(attempt)
            if deadline is not None:
                pause = min(pause, max(0.0, deadline - time.monotonic()))
            cluster.retrying += 1
            try:
                await asyncio.sleep(pause)
            finally:
                cluster.retrying -= 1
        raise AssertionError("unreachable: the last attempt always returns")

    def _mirror(self, call: Call, body: bytes, snap: Snapshot, dest: Mapping[str, Any], service: str,
                port: int) -> None:
        """Fire and forget a copy: Istio's shadow traffic, Host suffixed -shadow, the answer dropped."""
        if len(self.mirrors) >= MIRROR_LIMIT:
            return
        host, subset = dest.get("host", service), dest.get("subset")
        port = int((dest.get("port") or {}).get("number") or port)
        authority = (call.authority or host).split(":", 1)
        shadow = f"{authority[0]}-shadow" + (f":{authority[1]}" if len(authority) > 1 else "")
        candidates = self._candidates(snap, host, subset)
        if not candidates:
            return
        request = upstream_request(call.head, body, host=shadow)
        cluster = self._cluster(snap, host, subset)
        ip, endpoint = random.choice(candidates)

        identity = peer_identity(endpoint, port, cluster.policy)

        async def send() -> None:
            try:
                await asyncio.wait_for(fetch(cluster.pool, ((ip, port), identity), request,
                                             call.head.method == b"HEAD"), MIRROR_TIMEOUT_S)
            except Exception as exc:  # shadow traffic never affects the caller
                log.debug("mirror to %s failed: %s", host, exc)

        task = asyncio.get_running_loop().create_task(send())
        self.mirrors.add(task)
        task.add_done_callback(self.mirrors.discard)

    def _mirror_h2(self, call: Call, forwarder: Forwarder, snap: Snapshot, dest: Mapping[str, Any], service: str,
                   port: int) -> None:
        """An HTTP/2 copy, sent once the request is whole and only if its body is still held (REPLAY_MAX)."""
        if len(self.mirrors) >= MIRROR_LIMIT:
            return
        host, subset = dest.get("host", service), dest.get("subset")
        port = int((dest.get("port") or {}).get("number") or port)
        candidates = self._candidates(snap, host, subset)
        if not candidates:
            return
        authority = (call.authority or host).split(":", 1)
        shadow = f"{authority[0]}-shadow" + (f":{authority[1]}" if len(authority) > 1 else "")
        ip, endpoint = random.choice(candidates)
        copy = forwarder.copy(shadow)
        policy = self._cluster(snap, host, subset).policy

        async def send() -> None:
            try:
                async with asyncio.timeout(MIRROR_TIMEOUT_S):
                    await copy.mirror(((ip, port), peer_identity(endpoint, port, policy)))
            except Exception as exc:  # shadow traffic never affects the caller
                log.debug("mirror to %s failed: %s", host, exc)

        task = asyncio.get_running_loop().create_task(send())
        self.mirrors.add(task)
        task.add_done_callback(self.mirrors.discard)

    # --- streamed and upgraded requests: pick the endpoint, stream through it -------------------------------

    def _stream(self, call: Call, snap: Snapshot, service: str, port: int) -> Route | Response:
        rule, vs_name = self._rule(snap, service, call, port)
        if rule is None:
            return self._no_rule(call, vs_name)
        route = self._pick(call, rule, vs_name)
        if isinstance(route, Response):
            return route
        dest = route["destination"]
        host, subset = dest.get("host", service), dest.get("subset")
        candidates = self._candidates(snap, host, subset)
        if not candidates:
            call.flags = "UH"
            return text(503, f"no running instance of {host} subset {subset or '(any)'}")
        cluster = self._cluster(snap, host, subset)
        by_ip = dict(candidates)
        ip = cluster.balancer.pick(cluster.outliers.healthy(list(by_ip)), self._hash_key(call, cluster.policy))
        port = int((dest.get("port") or {}).get("number") or port)
        call.route = {"host": host, "subset": subset, "attempts": 1}
        return Route((ip, port), peer_identity(by_ip[ip], port, cluster.policy), cluster.pool)


def query(target: str) -> dict[str, str]:
    """The query parameters as a match reads them: the first value of a repeated name."""
    out: dict[str, str] = {}
    for name, value in urllib.parse.parse_qsl(target.partition("?")[2], keep_blank_values=True):
        out.setdefault(name, value)
    return out


def _then_edit(call: Call, edit: Callable[[Headers], Any]) -> None:
    """Queue a change to the response's headers (applied when its head arrives)."""
    previous = call.edit_response

    def apply(head: ResponseHead) -> None:
        if previous is not None:
            previous(head)
        edit(Headers(head.headers))

    call.edit_response = apply
