"""AuthorizationPolicy and RequestAuthentication, enforced by the receiving sidecar. Fails closed.

Evaluation is Istio's: AUDIT policies are noted; DENY policies are checked first; then, if any ALLOW
policy selects this workload, a request no ALLOW rule matches is denied. Within a rule, `from`, `to` and
`when` must all match; any one entry of a list may. A denied request gets 403 with a body naming the
policy (or saying no ALLOW policy matched), flag RBAC in the access log and metrics.

TCP connections are judged once, when they open, with what TCP has: a rule that needs HTTP fields
(methods, paths, hosts, request principals, header conditions) never ALLOWs TCP, and is applied without
them to DENY it (stricter, as Istio does).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

from mitmproxy import connection, http

from addons.jwt import Jwks, JwtError, authenticate, query_pairs_of, token_to_strip
from addons.listeners import INBOUND_PORT
from addons.live import LiveSnapshot
from addons.mtls import peer_identity
from addons.rbac import (  # noqa: F401 (re-exported: the decision lives in addons.rbac)
    HTTP_ONLY,
    MATCHERS,
    Decision,
    Subject,
    _needs_http,
    condition_value,
    decide,
    field_matches,
    host_match,
    ip_match,
    network,
    remote_address,
    rule_matches,
    string_match,
)

log = logging.getLogger("meshctl.authz")
def query_pairs(req: http.Request) -> list[tuple[str, str]]:
    return query_pairs_of(req.path)


def drop_verified_token(req: http.Request, rules: Sequence[Mapping[str, Any]],
                        fields: Sequence[tuple[str, str]]) -> None:
    """addons.jwt.token_to_strip, applied to a mitmproxy request."""
    header, target = token_to_strip(rules, fields, req.path)
    if header is not None:
        del req.headers[header]
    elif target != req.path:
        req.path = target


def principal_of(certificate_list: Sequence[Any]) -> str | None:
    spiffe = peer_identity(certificate_list)
    return spiffe[len("spiffe://"):] if spiffe else None


def refusal(status: int, text: str) -> http.Response:
    return http.Response.make(status, f"meshctl: {text}\n".encode(), {"content-type": "text/plain"})


class Authorization:
    def __init__(self, live: LiveSnapshot) -> None:
        self.live = live
        self.jwks = Jwks()
        live.on_apply.append(lambda snap: self.jwks.prefetch(snap.jwt))

    def running(self) -> None:
        self.jwks.prefetch(self.live.current.jwt)

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        if flow.client_conn.proxy_mode.custom_listen_port != INBOUND_PORT or flow.response is not None:
            return
        snap = self.live.current
        if not snap.authorization and not snap.jwt:
            return
        try:
            self._judge(flow)
        except Exception:  # fail closed: a policy we cannot evaluate denies
            log.exception("authorization failed for %s; denied", flow.request.path)
            flow.response = refusal(403, "RBAC: access denied: the policy could not be evaluated (see the "
                                    "sidecar's log)")
            flow.metadata["mesh_flags"] = "RBAC"

    def _judge(self, flow: http.HTTPFlow) -> None:
        snap, req = self.live.current, flow.request
        headers = {k.lower(): v for k, v in req.headers.items()}  # type: ignore[no-untyped-call]
        peer_ip = str(flow.client_conn.peername[0]) if flow.client_conn.peername else None
        subject = Subject(principal=principal_of(flow.client_conn.certificate_list)
                          if flow.client_conn.tls_established else None,
                          method=req.method, path=req.path.split("?", 1)[0], host=req.host_header, headers=headers,
                          port=flow.server_conn.address[1] if flow.server_conn.address else 0, peer_ip=peer_ip,
                          remote_ip=remote_address(peer_ip, req.headers.get_all("x-forwarded-for"),
                                                   snap.mesh.num_trusted_proxies))
        if snap.jwt:
            try:
                fields = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in req.headers.fields]
                subject.request_principal, subject.claims = authenticate(snap.jwt, self.jwks, fields,
                                                                         query_pairs(req), time.time())
            except JwtError as exc:
                flow.response = refusal(401, f"JWT rejected by RequestAuthentication: {exc}")
                flow.response.headers["www-authenticate"] = 'Bearer error="invalid_token"'
                flow.metadata["mesh_flags"] = "UAEX"
                return
            if subject.request_principal is not None:
                drop_verified_token(req, snap.jwt, fields)
        decision = decide(snap.authorization, subject)
        if decision.audited:
            flow.metadata["mesh_audit"] = decision.audited
        if not decision.allowed:
            log.info("403 %s %s from %s: %s", req.method, req.path, subject.principal or "plaintext", decision.reason)
            flow.response = refusal(403, f"RBAC: access denied: {decision.reason}")
            flow.metadata["mesh_flags"] = "RBAC"

    def connection_allowed(self, client: connection.Client, port: int) -> Decision:
        """For a TCP connection to `port`, judged once when it opens (TCP has no X-Forwarded-For: the
        original client is the peer)."""
        snap = self.live.current
        if not snap.authorization:
            return Decision(True, "no policy")
        try:
            principal = principal_of(client.certificate_list) if client.tls_established else None
            peer_ip = str(client.peername[0]) if client.peername else None
            return decide(snap.authorization, Subject(principal=principal, port=port, peer_ip=peer_ip,
                                                      remote_ip=peer_ip))
        except Exception:
            log.exception("authorization failed for a TCP connection; denied")
            return Decision(False, "the policy could not be evaluated")
