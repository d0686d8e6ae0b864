"""The request guard: the first hook every HTTP request meets, in both directions.

It refuses what a parser behind us could read differently (control characters in header fields, two Host
headers, a Host that contradicts the request line) and rewrites the request into its one normal form
(addons.normalize): the path per the mesh's path normalisation, and an absolute-form request line into
origin-form with its authority as the Host. Every later decision (authorization, JWT, routing) and the app
itself see that same request. A refusal is a 400 that closes the connection, access-logged with flag DPE
(Envoy's downstream protocol error) and its reason.
"""

from __future__ import annotations

import logging

from mitmproxy import http

from addons.authz import refusal
from addons.live import LiveSnapshot
from addons.normalize import Refused, check_fields, normalize_target, request_host

log = logging.getLogger("meshctl.guard")


class RequestGuard:
    def __init__(self, live: LiveSnapshot) -> None:
        self.live = live

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None:
            return
        req = flow.request
        try:
            check_fields(req.headers.fields)
            host = request_host(req.headers.fields, req.authority)
            target = normalize_target(req.path, self.live.current.mesh.path_normalization)
        except Refused as exc:
            log.info("%d %s: %s", exc.status, req.method, exc.reason)
            flow.response = refusal(exc.status, f"bad request: {exc.reason}")
            flow.response.headers["connection"] = "close"  # the rest of this stream cannot be trusted
            flow.metadata["mesh_flags"] = "DPE"
            flow.metadata["mesh_reason"] = exc.reason
            return
        if req.authority:  # absolute-form: the authority wins, and the app gets origin-form with it as Host
            req.headers["host"] = host or req.authority
            req.authority = ""
        if target != req.path:
            req.path = target
