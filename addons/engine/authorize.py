"""AuthorizationPolicy and RequestAuthentication on the engine, enforced by the receiving sidecar. Fails closed.

Per request (inbound HTTP): the JWT is verified (addons.jwt; 401 and flag UAEX when a token is invalid), the
verified token is taken out of what the app receives unless forwardOriginalToken, then addons.rbac decides
(403 and flag RBAC, with a body naming the policy). TCP connections are judged once, when they open.
Anything that cannot be evaluated denies.
"""

from __future__ import annotations

import logging
import time

from addons.engine.call import Call
from addons.engine.plan import ConnectionInfo
from addons.engine.proxy import Response
from addons.jwt import Jwks, JwtError, authenticate, query_pairs_of, token_to_strip
from addons.live import LiveSnapshot
from addons.rbac import Subject, decide, remote_address

log = logging.getLogger("meshctl.authz")


def refusal(status: int, text: str, *headers: tuple[bytes, bytes]) -> Response:
    return Response(status, f"meshctl: {text}\n".encode(), ((b"content-type", b"text/plain"), *headers))


def principal(spiffe: str | None) -> str | None:
    """cluster.local/ns/PROJECT/sa/APP, as Istio writes a source principal (no spiffe://)."""
    return spiffe[len("spiffe://"):] if spiffe and spiffe.startswith("spiffe://") else None


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
                subject.request_principal, subject.claims = authenticate(snap.jwt, self.jwks, fields,
                                                                         query_pairs_of(call.target), time.time())
            except JwtError as exc:
                call.flags = "UAEX"
                return refusal(401, f"JWT rejected by RequestAuthentication: {exc}",
                               (b"www-authenticate", b'Bearer error="invalid_token"'))
            if subject.request_principal is not None:
                header, target = token_to_strip(snap.jwt, fields, call.target)
                if header is not None:
                    headers.pop(header)
                call.target = target
        decision = decide(snap.authorization, subject)
        if decision.audited:
            call.audit = decision.audited
        if decision.allowed:
            return None
        log.info("403 %s %s from %s: %s", call.method, call.path, subject.principal or "plaintext", decision.reason)
        call.flags = "RBAC"
        return refusal(403, f"RBAC: access denied: {decision.reason}")

    def tcp_gate(self, info: ConnectionInfo) -> str | None:
        """For a TCP connection, judged once when it opens (TCP has no X-Forwarded-For: the original client is
        the peer). The reason to refuse, or None."""
        snap = self.live.current
        if not snap.authorization:
            return None
        decision = decide(snap.authorization, Subject(principal=principal(info.tls_peer or None),
                                                      port=info.destination[1], peer_ip=info.peer[0],
                                                      remote_ip=info.peer[0]))
        return None if decision.allowed else decision.reason
