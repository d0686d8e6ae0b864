"""AuthorizationPolicy and RequestAuthentication on the engine, enforced by the receiving sidecar. Fails closed.

Per request (inbound HTTP): the JWT is verified (sidecar.jwt; 401 and flag UAEX when a token is invalid), the
verified token is taken out of what the app receives unless forwardOriginalToken, the payload and claims asked
for are added (a client's own headers of those names removed first), then sidecar.rbac decides
(403 and flag RBAC, with a body naming the policy). TCP connections are judged once, when they open.
Anything that cannot be evaluated denies.
"""

from __future__ import annotations

import dataclasses
import logging
import time

from sidecar.contract import SPIFFE_SCHEME
from sidecar.engine.call import Call
from sidecar.engine.plan import ConnectionInfo, classify, own_workload, port_protocol, strict_refuses
from sidecar.engine.proxy import Response
from sidecar.jwt import (
    Jwks,
    JwtError,
    Verified,
    header_key,
    output_headers,
    outputs,
    query_pairs_of,
    token_to_strip,
    verify_request,
    without_cookie,
)
from sidecar.live import LiveSnapshot
from sidecar.rbac import Subject, decide, remote_address

log = logging.getLogger("meshctl.authz")


def refusal(status: int, text: str, *headers: tuple[bytes, bytes]) -> Response:
    return Response(status, f"meshctl: {text}\n".encode(), ((b"content-type", b"text/plain"), *headers))


def principal(spiffe: str | None) -> str | None:
    """cluster.local/ns/PROJECT/sa/APP, as Istio writes a source principal (no spiffe://)."""
    return spiffe[len(SPIFFE_SCHEME):] if spiffe and spiffe.startswith(SPIFFE_SCHEME) else None


class Authorizer:
    def __init__(self, live: LiveSnapshot) -> None:
        self.live = live
        self.jwks = Jwks()
        live.on_apply.append(lambda snap: self.jwks.prefetch(snap.jwt))

    def start(self) -> None:
        self.jwks.prefetch(self.live.current.jwt)

    def request(self, call: Call) -> Response | None:
        """None to go on, or the refusal to answer with."""
        snap = self.live.current
        conn = call.conn
        if conn is not None and not conn.tls_peer and strict_refuses(dataclasses.replace(conn, snapshot=snap)):
            # a plaintext connection opened while the port took plaintext: once a PeerAuthentication makes it
            # STRICT, its next request is refused and the connection closed (Envoy drains a changed listener's)
            text = f"{snap.app} requires mutual TLS (PeerAuthentication STRICT); plaintext from {conn.peer[0]} refused"
            return dataclasses.replace(refusal(403, text), close=True)
        if not snap.authorization and not snap.jwt:
            return None
        try:
            return self._judge(call)
        except Exception:  # fail closed: a policy we cannot evaluate denies
            log.exception("authorization failed for %s; denied", call.path)
            call.flags = "RBAC"
            return refusal(403, "RBAC: access denied: the policy could not be evaluated (see the sidecar's log)")

    def _judge(self, call: Call) -> Response | None:
        snap = self.live.current
        headers = call.headers
        info = call.conn
        peer_ip = info.peer[0] if info is not None else None
        subject = Subject(principal=principal(call.caller), method=call.method, path=call.path,
                          host=call.head.host, headers=headers.lower_dict(),
                          port=info.destination[1] if info is not None else 0, peer_ip=peer_ip,
                          remote_ip=remote_address(peer_ip, headers.get_all("x-forwarded-for"),
                                                   snap.mesh.num_trusted_proxies))
        if snap.jwt:
            fields = list(headers.items())
            try:
                verified = verify_request(snap.jwt, self.jwks, fields, query_pairs_of(call.target), time.time())
            except JwtError as exc:
                call.flags = "UAEX"
                return refusal(401, f"JWT rejected by RequestAuthentication: {exc}",
                               (b"www-authenticate", b'Bearer error="invalid_token"'))
            self._rewrite(call, verified)
            if verified is not None:
                subject.request_principal, subject.claims = verified.principal, verified.claims
            subject.headers = headers.lower_dict()  # the policy sees what the app will
        decision = decide(snap.authorization, subject)
        if decision.audited:
            call.audit = decision.audited
        if decision.allowed:
            return None
        log.info("403 %s %s from %s: %s", call.method, call.path, subject.principal or "plaintext", decision.reason)
        call.flags = "RBAC"
        return refusal(403, f"RBAC: access denied: {decision.reason}")

    def _rewrite(self, call: Call, verified: Verified | None) -> None:
        """The request as the app gets it: no header a client wrote under a name the sidecar writes from a
        token (any spelling apps fold together), the verified token taken out unless forwarded, then the
        payload and claims asked for."""
        snap, headers = self.live.current, call.headers
        written = output_headers(snap.jwt)
        if written and any(header_key(k.decode("latin-1")) in written for k, _ in headers.fields):
            headers.fields[:] = [(k, v) for k, v in headers.fields if header_key(k.decode("latin-1")) not in written]
        if verified is None:
            return
        strip = token_to_strip(snap.jwt, list(headers.items()), call.target)
        if strip.header is not None:
            headers.pop(strip.header)
        if strip.cookie is not None:
            kept = [(k, without_cookie(v.decode("latin-1"), strip.cookie).encode("latin-1"))
                    if k.lower() == b"cookie" else (k, v) for k, v in headers.fields]
            headers.fields[:] = [(k, v) for k, v in kept if v or k.lower() != b"cookie"]
        call.target = strip.target
        for name, value in outputs(verified.rule, verified.token, verified.claims):
            headers.add(name, value.encode().decode("latin-1"))  # UTF-8 on the wire, as Envoy writes it

    def tcp_gate(self, info: ConnectionInfo) -> str | None:
        """For a TCP connection, judged once when it opens (TCP has no X-Forwarded-For: the original client is
        the peer). The reason to refuse, or None. Judged on the connection's snapshot: at accept the current one,
        on a config change the new one, before it is current (listeners.close_refused_relays)."""
        snap = info.snapshot
        if output_headers(snap.jwt) and port_protocol(info.destination[1], [own_workload(snap)]) != "tcp" and \
                not (info.first_bytes is not None and classify(info.first_bytes) == "tls"):
            # HTTP relayed at L4 (a client silent, or half a request line, until detection gave up) would carry
            # its own headers of the names the app is told the sidecar writes, none of them removed
            return (f"port {info.destination[1]} of {snap.app} is detected, and a RequestAuthentication writes "
                    "headers from tokens (outputClaimToHeaders, outputPayloadToHeader): only HTTP is taken; "
                    "declare the port tcp if it is not HTTP")
        if not snap.authorization:
            return None
        decision = decide(snap.authorization, Subject(principal=principal(info.tls_peer or None),
                                                      port=info.destination[1], peer_ip=info.peer[0],
                                                      remote_ip=info.peer[0]))
        return None if decision.allowed else decision.reason
