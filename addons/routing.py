"""L7 routing: for each outbound HTTP request to a service with a VirtualService or DestinationRule, the
sidecar decides everything Envoy's router would, per request (so one keep-alive connection is split by
weight): the rule (first match wins), faults, header changes, the subset, mirroring, the endpoint (load
balancing minus ejected outliers), and then the exchange itself through addons.upstream, with the
route's timeout and retries.

Pure functions do the matching and choosing (tested without a network); the addon only applies them.
A service with neither resource keeps plain mTLS passthrough to the pod Docker's DNS picked, unless that
pod has gone: then its requests are routed to the service's other pods. Requests
whose body streams (larger than 128 KiB) or that upgrade the connection (WebSocket) are routed to a
chosen endpoint but relayed by mitmproxy itself: they get no timeout, retries or faults.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
import uuid
from collections.abc import Mapping
from typing import Any

from mitmproxy import http
from mitmproxy.http import Headers

from addons.endpoints import Endpoint, Endpoints
from addons.live import LiveSnapshot
from addons.mtls import MutualTLS
from addons.policy import Balancer, ClusterPolicy, Outliers, RetryPolicy, backoff, merged_policy, seconds
from addons.routes import (  # noqa: F401 (re-exported)
    FAILURES,
    MIRROR_LIMIT,
    MIRROR_TIMEOUT_S,
    apply_header_ops,
    percent_hit,
    pick_destination,
    pick_route,
    request_matches,
    select_rule,
    string_matches,
    subset_version,
)
from addons.snapshot import Snapshot
from addons.upstream import HOP_BY_HOP, Answer, Pool, UpstreamError

log = logging.getLogger("meshctl.routing")


def upstream_message(req: http.Request, host: str | None = None) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """The request's headers for our own upstream connection (hop-by-hop ones dropped, the length of the
    body we hold set; `host` replaces the Host header) and its body."""
    drop = HOP_BY_HOP | {b"content-length"} | ({b"host"} if host else set())
    headers = [(k, v) for k, v in req.headers.fields if k.lower() not in drop]
    if host:
        headers.insert(0, (b"host", host.encode()))
    body = req.raw_content or b""
    if body or req.method in ("POST", "PUT", "PATCH"):
        headers.append((b"content-length", str(len(body)).encode()))
    return headers, body


def peer_identity(endpoint: Endpoint, port: int) -> str:
    """The SPIFFE ID the endpoint must present; empty for a DISABLE workload or port, which gets plaintext."""
    return endpoint.service.identity if endpoint.workload.accepts_mtls(port) else ""


class Cluster:
    """One service subset as the router sees it: its policy, balancer, outlier state and connections."""

    def __init__(self, policy: ClusterPolicy, mtls: MutualTLS) -> None:
        self.policy = policy
        self.balancer = Balancer(policy)
        self.outliers = Outliers(policy)
        self.pool = Pool(policy, lambda: mtls.contexts.upstream if mtls.contexts else None)
        self.retrying = 0


def text_response(status: int, message: str, flags: str) -> tuple[http.Response, str]:
    return http.Response.make(status, f"meshctl: {message}\n".encode(), {"content-type": "text/plain"}), flags


class Routing:
    def __init__(self, live: LiveSnapshot, endpoints: Endpoints, mtls: MutualTLS) -> None:
        self.live = live
        self.endpoints = endpoints
        self.mtls = mtls
        self.clusters: dict[tuple[str, str | None], tuple[str, Cluster]] = {}  # (host, subset) -> (policy, cluster)
        self._checked: dict[tuple[str, str | None], str] = {}  # (host, subset) -> snapshot hash it was checked at
        self.mirrors: set[asyncio.Task[None]] = set()

    # --- hooks --------------------------------------------------------------------------------------

    async def requestheaders(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None or not flow.server_conn.tls or flow.server_conn.address is None:
            return  # only outbound calls to meshed services come here with upstream mTLS
        snap = self.live.current
        try:
            endpoint, gone = await self.endpoints.owner(flow.server_conn.address[0])
            # A pod that has gone is routed even without a policy: its service's other pods answer, as
            # behind a Kubernetes service address.
            if endpoint is None or not (gone or self._has_policy(snap, endpoint.service.name)):
                return
            flow.metadata["mesh_service"] = endpoint.service.name
            if flow.request.stream or "upgrade" in flow.request.headers:
                self._relay_natively(flow, snap, endpoint)
        except Exception:  # a routing bug must be visible, not silently route somewhere
            self._fail(flow)

    async def request(self, flow: http.HTTPFlow) -> None:
        if "mesh_service" not in flow.metadata or flow.response is not None or "mesh_native" in flow.metadata:
            return
        try:
            flow.response, flow.metadata["mesh_flags"] = await self._serve(flow, self.live.current,
                                                                         flow.metadata["mesh_service"])
        except Exception:
            self._fail(flow)
        if flow.response is not None and "close" in flow.request.headers.get("connection", "").lower():
            # mitmproxy closes the client connection after this response; say so, as any server must, or a
            # client like wrk sends its next request into a socket that is being closed
            flow.response.headers["connection"] = "close"

    # --- lookups ------------------------------------------------------------------------------------

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
            known[1].pool.close()  # a changed policy: in-flight requests finish on their connections
        cluster = Cluster(ClusterPolicy.from_spec(spec), self.mtls)
        self.clusters[(host, subset)] = (key, cluster)
        return cluster

    def _candidates(self, snap: Snapshot, host: str, subset: str | None) -> list[tuple[str, Endpoint]]:
        version = subset_version(list(snap.destinations), host, subset)
        return [(ip, e) for ip, e in self.endpoints.by_ip.items()
                if e.service.name == host and (version is None or e.workload.version == version)]

    @staticmethod
    def _hash_key(flow: http.HTTPFlow, policy: ClusterPolicy) -> str | None:
        if policy.hash_header:
            return flow.request.headers.get(policy.hash_header)
        if policy.hash_cookie:
            value = flow.request.cookies.get(policy.hash_cookie)
            if value is None and policy.hash_cookie_ttl:  # Envoy's: mint one, and tell the client to keep it
                value = uuid.uuid4().hex
                flow.metadata["mesh_set_cookie"] = (f"{policy.hash_cookie}={value}; Max-Age="
                                                    f"{int(policy.hash_cookie_ttl)}; Path={policy.hash_cookie_path}")
            return value
        if policy.hash_source_ip:
            return str(flow.client_conn.peername[0])
        return None

    @staticmethod
    def _rule(snap: Snapshot, service: str, req: http.Request) -> tuple[Mapping[str, Any] | None, str]:
        """The service's rule for this request and its VirtualService's name; without a VirtualService,
        a rule sending everything to the service. None: the VirtualService has no rule for it (404)."""
        vs = next((r for r in snap.routes if service in r.get("hosts", [])), None)
        if vs is None:
            return {"route": [{"destination": {"host": service}}]}, ""
        return select_rule(vs, req.method, req.path, {k.lower(): v for k, v in req.headers.items()},
                           dict(req.query)), vs["name"]

    @staticmethod
    def _no_rule(vs_name: str, req: http.Request) -> tuple[http.Response, str]:
        return text_response(404, f"no route of VirtualService {vs_name} matches {req.method} {req.path}", "NR")

    @staticmethod
    def _no_instance(host: str, subset: str | None) -> tuple[http.Response, str]:
        return text_response(503, f"no running instance of {host} subset {subset or '(any)'}", "UH")

    # --- the routed exchange ------------------------------------------------------------------------

    async def _serve(self, flow: http.HTTPFlow, snap: Snapshot, service: str) -> tuple[http.Response, str]:
        req = flow.request
        rule, vs_name = self._rule(snap, service, req)
        if rule is None:
            return self._no_rule(vs_name, req)
        flags = "-"
        fault = rule.get("fault") or {}
        if "delay" in fault and percent_hit(fault["delay"].get("percentage"), random.uniform(0, 100)):
            await asyncio.sleep(seconds(fault["delay"].get("fixedDelay"), 0.0) or 0.0)
            flags = "DI"
        if "abort" in fault and percent_hit(fault["abort"].get("percentage"), random.uniform(0, 100)):
            status = int(fault["abort"]["httpStatus"])
            return http.Response.make(status, b"fault filter abort", {"content-type": "text/plain"}), "FI"
        route = pick_route(rule, random.uniform(0, 100))
        if route is None:
            return text_response(503, f"no destination of VirtualService {vs_name} was picked", "NR")
        dest = route["destination"]
        host, subset = dest.get("host", service), dest.get("subset")
        apply_header_ops(req.headers, (rule.get("headers") or {}).get("request"))
        apply_header_ops(req.headers, (route.get("headers") or {}).get("request"))
        if "mirror" in rule and percent_hit(rule.get("mirrorPercentage"), random.uniform(0, 100)):
            self._mirror(flow, snap, rule["mirror"], service)
        outcome, outcome_flags = await self._forward(flow, snap, host, subset, (dest.get("port") or {}).get("number"),
                                                     RetryPolicy.from_spec(rule.get("retries")),
                                                     seconds(rule.get("timeout")))
        if isinstance(outcome, http.Response):
            return outcome, outcome_flags
        response = self._response(req.method, outcome)
        apply_header_ops(response.headers, (rule.get("headers") or {}).get("response"))
        apply_header_ops(response.headers, (route.get("headers") or {}).get("response"))
        if "mesh_set_cookie" in flow.metadata:
            response.headers.add("set-cookie", flow.metadata["mesh_set_cookie"])
        return response, (outcome_flags if outcome_flags != "-" else flags)

    async def _forward(self, flow: http.HTTPFlow, snap: Snapshot, host: str, subset: str | None,
                       port: int | None, retry: RetryPolicy, timeout: float | None
                       ) -> tuple[Answer | http.Response, str]:
        """Try the exchange up to 1 + attempts times; returns the answer, or the error response to give,
        and the response flags."""
        req = flow.request
        cluster = self._cluster(snap, host, subset)
        port = port or req.port
        deadline = time.monotonic() + timeout if timeout else None
        hash_key = self._hash_key(flow, cluster.policy)
        headers, body = upstream_message(req)
        tried: list[str] = []
        last: tuple[int | None, str | None] = (None, "connect-failure")
        for attempt in range(retry.attempts + 1):
            candidates = self._candidates(snap, host, subset)
            if not candidates:
                await self.endpoints.refresh()  # a pod that just started may not be known yet
                candidates = self._candidates(snap, host, subset)
            if not candidates:
                return self._no_instance(host, subset)
            by_ip = dict(candidates)
            healthy = cluster.outliers.healthy(list(by_ip))
            ip = cluster.balancer.pick([c for c in healthy if c not in tried] or healthy, hash_key)
            tried.append(ip)
            limits = [t for t in (retry.per_try_timeout, deadline and deadline - time.monotonic()) if t]
            flow.metadata["mesh_upstream"] = (ip, port)
            flow.metadata["mesh_route"] = {"host": host, "subset": subset, "attempts": attempt + 1}
            cluster.balancer.active[ip] = cluster.balancer.active.get(ip, 0) + 1
            try:
                exchange = cluster.pool.request((ip, port), peer_identity(by_ip[ip], port), req.method.encode(),
                                                req.path.encode(), headers, body)
                answer: Answer | None = await asyncio.wait_for(exchange, min(limits)) if limits else await exchange
                last = (answer.status, None) if answer else last
            except TimeoutError:
                answer, last = None, (None, "timeout")
            except UpstreamError as exc:
                if exc.kind == "overflow":
                    return text_response(503, str(exc), "UO")
                answer, last = None, (None, exc.kind)
            finally:
                cluster.balancer.active[ip] -= 1
            if cluster.outliers.record(ip, *last, population=len(by_ip)):
                log.warning("ejected %s (%s) from %s: consecutive errors", ip, by_ip[ip].workload.host, host)
            if deadline is not None and time.monotonic() >= deadline:
                return text_response(*FAILURES["timeout"][::2], "UT")
            retriable = retry.retriable(*last) and attempt < retry.attempts
            if retriable and cluster.retrying >= cluster.policy.max_retries:
                retriable = False  # the cluster's retry budget (connectionPool.http.maxRetries) is spent
            if not retriable:
                if answer is not None:
                    return answer, "URX" if attempt and retry.retriable(*last) else "-"
                status, flag, message = FAILURES[last[1] or "reset"]
                return text_response(status, message, "URX" if attempt else flag)
            pause = backoff(attempt)
            if deadline is not None:
                pause = min(pause, max(0.0, deadline - time.monotonic()))
            cluster.retrying += 1
            try:
                await asyncio.sleep(pause)
            finally:
                cluster.retrying -= 1
        raise AssertionError("unreachable: the last attempt always returns")

    @staticmethod
    def _response(method: str, answer: Answer) -> http.Response:
        headers = Headers(answer.headers)
        if method != "HEAD" and answer.status not in (204, 304) and answer.status >= 200:
            headers["content-length"] = str(len(answer.body))
        now = time.time()
        return http.Response(b"HTTP/1.1", answer.status, answer.reason, headers, answer.body, None, now, now)

    def _mirror(self, flow: http.HTTPFlow, snap: Snapshot, dest: Mapping[str, Any], service: str) -> None:
        """Fire and forget a copy: Istio's shadow traffic, Host suffixed -shadow, the answer dropped."""
        if len(self.mirrors) >= MIRROR_LIMIT:
            return
        req = flow.request
        host, subset = dest.get("host", service), dest.get("subset")
        port = int((dest.get("port") or {}).get("number") or req.port)
        authority = (req.host_header or host).split(":", 1)
        shadow = f"{authority[0]}-shadow" + (f":{authority[1]}" if len(authority) > 1 else "")
        headers, body = upstream_message(req, host=shadow)
        candidates = self._candidates(snap, host, subset)
        if not candidates:
            return
        cluster = self._cluster(snap, host, subset)
        ip, endpoint = random.choice(candidates)

        async def send() -> None:
            try:
                await asyncio.wait_for(cluster.pool.request((ip, port), peer_identity(endpoint, port),
                                                            req.method.encode(), req.path.encode(), headers, body),
                                       MIRROR_TIMEOUT_S)
            except Exception as exc:  # shadow traffic never affects the caller
                log.debug("mirror to %s failed: %s", host, exc)

        task = asyncio.get_running_loop().create_task(send())
        self.mirrors.add(task)
        task.add_done_callback(self.mirrors.discard)

    # --- streamed and upgraded requests: pick the endpoint, let mitmproxy relay ------------------------

    def _relay_natively(self, flow: http.HTTPFlow, snap: Snapshot, endpoint: Endpoint) -> None:
        req = flow.request
        flow.metadata["mesh_native"] = True
        service = endpoint.service.name
        rule, vs_name = self._rule(snap, service, req)
        if rule is None:
            flow.response, flow.metadata["mesh_flags"] = self._no_rule(vs_name, req)
            return
        route = pick_route(rule, random.uniform(0, 100))
        if route is None:
            return
        dest = route["destination"]
        host, subset = dest.get("host", service), dest.get("subset")
        apply_header_ops(req.headers, (rule.get("headers") or {}).get("request"))
        candidates = self._candidates(snap, host, subset)
        if not candidates:
            flow.response, flow.metadata["mesh_flags"] = self._no_instance(host, subset)
            return
        cluster = self._cluster(snap, host, subset)
        by_ip = dict(candidates)
        ip = cluster.balancer.pick(cluster.outliers.healthy(list(by_ip)), self._hash_key(flow, cluster.policy))
        port = int((dest.get("port") or {}).get("number") or req.port)
        self.mtls.expected[(ip, port)] = by_ip[ip].service.identity
        req.host, req.port = ip, port  # the Host header stays what the app sent
        flow.metadata["mesh_route"] = {"host": host, "subset": subset, "attempts": 1}

    @staticmethod
    def _fail(flow: http.HTTPFlow) -> None:
        log.exception("routing failed for %s", flow.request.pretty_url)
        flow.response, flow.metadata["mesh_flags"] = text_response(503, "routing failed; see the sidecar's log",
                                                                   "NR")
