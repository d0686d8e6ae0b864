"""HTTP/1.1 requests to hosts outside the mesh: the registry's answer per request (sidecar.egress).

- A request whose Host and port a ServiceEntry lists goes to that host as the sidecar resolves it (or an
  endpoint), on the port's target, over TLS the sidecar originates when a DestinationRule says SIMPLE: the app
  calls `http://api.example`, the sidecar speaks TLS to api.example:443, checking its certificate.
- Any other request keeps its destination under ALLOW_ANY; under REGISTRY_ONLY it gets 502, and its body and
  the access log say why. Nothing is dialled for it: fail closed.
TLS contexts and pools are built once per distinct TLS setting and kept while a snapshot uses them.
"""

from __future__ import annotations

import itertools
import ssl
from collections.abc import Callable

from sidecar.egress import REGISTRY_ONLY, ExternalPort, Originate, dial_address, http_target, normal_host
from sidecar.engine.call import Call
from sidecar.engine.plan import L7Http
from sidecar.engine.pool import Pool
from sidecar.engine.proxy import Response, Route
from sidecar.snapshot import Snapshot

NOT_REGISTERED = "not in the mesh's registry (outboundTrafficPolicy REGISTRY_ONLY)"


def origination_context(tls: Originate) -> ssl.SSLContext:
    """A client context for TLS to an external host: its certificate checked against `tls.ca` (the system's
    trust store without one) and for the name `tls.sni`, unless insecureSkipVerify."""
    ctx = ssl.create_default_context(cadata=tls.ca) if tls.ca else ssl.create_default_context()
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if not tls.verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def refusal(call: Call, host: str) -> Response:
    call.flags = "NR"
    call.reason = f"{host} is {NOT_REGISTERED}"
    body = f"meshctl: {host or 'a request without a Host'} is {NOT_REGISTERED}; add a ServiceEntry for it\n"
    return Response(502, body.encode(), ((b"content-type", b"text/plain"),))


class Egress:
    def __init__(self, snapshot: Callable[[], Snapshot]) -> None:
        self.snapshot = snapshot
        self.pools: dict[Originate, Pool] = {}
        self._turn = itertools.count()

    def decide(self, call: Call, plan: L7Http) -> Route | Response:
        snap = self.snapshot()
        port = plan.address[1]
        found = http_target(snap.egress, call.authority, port)
        if found is None:
            if snap.mesh.outbound_policy == REGISTRY_ONLY:
                return refusal(call, normal_host(call.authority))
            return Route(plan.address)
        entry, chosen = found
        address = dial_address(entry, chosen, next(self._turn))
        call.route = {"host": entry.hosts[0], "subset": None, "attempts": 1}
        return Route(address, "", self._pool(snap, chosen))

    def _pool(self, snap: Snapshot, port: ExternalPort) -> Pool | None:
        """The pool for a port's TLS setting (None: plaintext, the listener's pool); those no longer used go."""
        if port.tls is None:
            return None
        pool = self.pools.get(port.tls)
        if pool is None:
            in_use = {p.tls for e in snap.egress for p in e.ports if p.tls is not None}
            for stale in [t for t in self.pools if t not in in_use]:
                self.pools.pop(stale).close()
            context = origination_context(port.tls)
            pool = self.pools[port.tls] = Pool(context, server_name=port.tls.sni)
        return pool
