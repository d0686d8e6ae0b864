"""DestinationRule `trafficPolicy.tls` in the client sidecar: ISTIO_MUTUAL is mesh mTLS (the default), DISABLE
sends plain text, per host, per port (portLevelSettings) and per subset, as Istio's client side does."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from sidecar import snapshot
from sidecar.engine.plan import L7H2, L4Tcp, L7Http, Passthrough, decide
from sidecar.engine.proxy import Route
from sidecar.engine.route import Router
from sidecar.policy import ClusterPolicy, merged_policy
from tests.unit.engine.test_plan import BINARY, DB_ID, H2, HTTP, SNAP, endpoint, out
from tests.unit.fakes import BASE, REVIEWS, Live, call_to, endpoints_of
from tests.unit.fakes import request_head as head


def policy(tls: dict[str, Any] | None = None, ports: list[dict[str, Any]] | None = None) -> ClusterPolicy:
    spec: dict[str, Any] = {} if tls is None else {"tls": tls}
    if ports is not None:
        spec["portLevelSettings"] = ports
    return ClusterPolicy.from_spec(spec)


@pytest.mark.parametrize(("tls", "ports", "port", "mtls"), [
    (None, None, 9080, True),
    ({"mode": "ISTIO_MUTUAL"}, None, 9080, True),
    ({"mode": "DISABLE"}, None, 9080, False),
    ({}, None, 9080, False),  # Istio's default mode, once a tls block is given, is DISABLE
    ({"mode": "DISABLE"}, [{"port": {"number": 9080}, "tls": {"mode": "ISTIO_MUTUAL"}}], 9080, True),
    ({"mode": "DISABLE"}, [{"port": {"number": 9080}, "tls": {"mode": "ISTIO_MUTUAL"}}], 9090, False),
    (None, [{"port": {"number": 9090}, "tls": {"mode": "DISABLE"}}], 9090, False),
    (None, [{"port": {"number": 9090}, "tls": {"mode": "DISABLE"}}], 9080, True),
])
def test_cluster_policy_mtls_per_port(tls: dict[str, Any] | None, ports: list[dict[str, Any]] | None, port: int,
                                      mtls: bool) -> None:
    assert policy(tls, ports).mtls(port) is mtls


def test_a_subsets_tls_replaces_the_hosts() -> None:
    rule = {"host": "db", "trafficPolicy": {"tls": {"mode": "ISTIO_MUTUAL"}},
            "subsets": [{"name": "v2", "labels": {"version": "v2"}, "trafficPolicy": {"tls": {"mode": "DISABLE"}}}]}
    assert ClusterPolicy.from_spec(merged_policy(rule, None)).mtls(9080)
    assert not ClusterPolicy.from_spec(merged_policy(rule, "v2")).mtls(9080)


def out_with(rule: dict[str, Any], port: int, first: bytes) -> Any:
    data = copy.deepcopy(SNAP)
    data["destinations"] = [{"name": "db-dr", **rule}]
    info = out(port, first, endpoint())
    return decide(type(info)(**{**info.__dict__, "snapshot": snapshot.parse(data)}))


DISABLE = {"host": "db", "trafficPolicy": {"tls": {"mode": "DISABLE"}}}


def test_plan_sends_plain_tcp_and_h2_when_the_caller_disables_tls() -> None:
    dest = ("172.18.0.9", 9080)
    assert out_with(DISABLE, 9080, BINARY) == Passthrough(dest)
    assert out_with(DISABLE, 9080, H2) == Passthrough(dest)
    # HTTP/1 stays at L7 with the identity: the router picks the subset, then applies its tls per request
    assert out_with(DISABLE, 9080, HTTP) == L7Http(dest, DB_ID)
    assert out_with({"host": "db", "trafficPolicy": {"tls": {"mode": "ISTIO_MUTUAL"}}}, 9080, BINARY) == \
        L4Tcp(dest, DB_ID)
    per_port = {"host": "db", "trafficPolicy": {"portLevelSettings": [{"port": {"number": 9080},
                                                                       "tls": {"mode": "DISABLE"}}]}}
    assert out_with(per_port, 9080, BINARY) == Passthrough(dest)
    assert out_with(per_port, 8000, BINARY) == L4Tcp(("172.18.0.9", 8000), DB_ID)
    other = {"host": "web", "trafficPolicy": {"tls": {"mode": "DISABLE"}}}
    assert out_with(other, 9080, BINARY) == L4Tcp(dest, DB_ID)
    routed = copy.deepcopy(SNAP) | {"routes": [{"name": "vs", "hosts": ["db"], "http": []}]}
    assert isinstance(decide(type(out(9080, H2, endpoint()))(**{**out(9080, H2, endpoint()).__dict__,
                                                             "snapshot": snapshot.parse(routed)})), L7H2)


def test_router_applies_the_chosen_subsets_tls() -> None:
    services = copy.deepcopy(BASE["services"])
    for w in services[1]["workloads"]:
        w["mode"] = "PERMISSIVE"  # both accept mTLS: only the caller's DestinationRule turns it off
    rule = {"name": "reviews-dr", "host": "reviews", "trafficPolicy": {"tls": {"mode": "ISTIO_MUTUAL"}},
            "subsets": [{"name": "v1", "labels": {"version": "v1"}},
                        {"name": "v2", "labels": {"version": "v2"}, "trafficPolicy": {"tls": {"mode": "DISABLE"}}}]}
    for subset, ip, identity in (("v1", "127.0.0.2", REVIEWS), ("v2", "127.0.0.3", "")):
        routes = [{"name": "vs", "hosts": ["reviews"], "http": [{"route": [
            {"destination": {"host": "reviews", "subset": subset}}]}]}]
        live = Live(services=services, destinations=[rule], routes=routes)
        router = Router(live, endpoints_of(live, {"127.0.0.2": ("reviews", "reviews-v1"),  # type: ignore[arg-type]
                                                  "127.0.0.3": ("reviews", "reviews-v2")}), lambda: None)
        call = call_to(9080, head(method=b"POST", framing="chunked"), live=live)
        decision = router.decide(call, L7Http(("127.0.0.2", 9080), REVIEWS))
        assert isinstance(decision, Route) and decision.address == (ip, 9080) and decision.identity == identity


def test_a_plaintext_connection_is_refused_once_its_port_turns_strict() -> None:
    from sidecar.engine.authorize import Authorizer
    from sidecar.engine.call import Call
    from tests.unit.engine.test_plan import WEB_ID, inb

    opened = inb(9080, HTTP)  # PERMISSIVE when it opened: plain text was taken
    strict = Live(inbound={"mode": "STRICT", "published_ports": [], "port_modes": {}})
    refused = Authorizer(strict).request(Call(opened, head()))  # type: ignore[arg-type]
    assert refused is not None and refused.status == 403 and refused.close and b"requires mutual TLS" in refused.body
    assert Authorizer(strict).request(Call(inb(9080, HTTP, tls_peer=WEB_ID), head())) is None  # type: ignore[arg-type]
    assert Authorizer(Live()).request(Call(opened, head())) is None  # type: ignore[arg-type]
