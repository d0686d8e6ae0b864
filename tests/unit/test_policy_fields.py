"""Every field the AuthorizationPolicy schema accepts changes a decision.

The test walks the schema (meshctl.config.kinds) and fails when a leaf has no example here, so a field
added to the schema without an effect in the sidecar cannot slip in: each example shows one request the
field lets through and one it stops, as judged by the sidecar's own decide().
"""

from __future__ import annotations

from typing import Any

import pytest

from meshctl.config.kinds import KINDS
from meshctl.mesh import Pod
from meshctl.pilot.security import selects
from sidecar.rbac import Subject, decide, remote_address
from tests.unit import jwtkit

PP = "cluster.local/ns/shop/sa/productpage"
EVIL = "cluster.local/ns/other/sa/evil"


def http(**kw: Any) -> Subject:
    base: dict[str, Any] = {"principal": PP, "method": "GET", "path": "/a", "host": "shop.x", "port": 9080,
                            "peer_ip": "10.1.0.5", "remote_ip": "10.1.0.5", "request_principal": "iss/alice",
                            "headers": {"x-team": "blue"}, "claims": {"aud": "app", "group": "admins"}}
    return Subject(**{**base, **kw})


# field path -> (rule, a subject it lets through, a subject it stops), for an ALLOW policy with only that rule
SOURCE, OP = "rules.from.source.", "rules.to.operation."
EFFECTS: dict[str, tuple[dict[str, Any], Subject, Subject]] = {
    SOURCE + "principals": ({"from": [{"source": {"principals": [PP]}}]}, http(), http(principal=EVIL)),
    SOURCE + "notPrincipals": ({"from": [{"source": {"notPrincipals": [EVIL]}}]}, http(), http(principal=EVIL)),
    SOURCE + "namespaces": ({"from": [{"source": {"namespaces": ["shop"]}}]}, http(), http(principal=EVIL)),
    SOURCE + "notNamespaces": ({"from": [{"source": {"notNamespaces": ["other"]}}]}, http(), http(principal=EVIL)),
    SOURCE + "serviceAccounts": ({"from": [{"source": {"serviceAccounts": ["shop/productpage"]}}]}, http(),
                                 http(principal="cluster.local/ns/other/sa/productpage")),
    SOURCE + "notServiceAccounts": ({"from": [{"source": {"notServiceAccounts": ["other/evil"]}}]}, http(),
                                    http(principal=EVIL)),
    SOURCE + "requestPrincipals": ({"from": [{"source": {"requestPrincipals": ["iss/*"]}}]}, http(),
                                   http(request_principal=None)),
    SOURCE + "notRequestPrincipals": ({"from": [{"source": {"notRequestPrincipals": ["iss/mallory"]}}]}, http(),
                                      http(request_principal="iss/mallory")),
    SOURCE + "ipBlocks": ({"from": [{"source": {"ipBlocks": ["10.1.0.0/16"]}}]}, http(), http(peer_ip="10.2.0.5")),
    SOURCE + "notIpBlocks": ({"from": [{"source": {"notIpBlocks": ["10.2.0.5"]}}]}, http(), http(peer_ip="10.2.0.5")),
    SOURCE + "remoteIpBlocks": ({"from": [{"source": {"remoteIpBlocks": ["10.1.0.0/16"]}}]}, http(),
                                http(remote_ip="203.0.113.9")),
    SOURCE + "notRemoteIpBlocks": ({"from": [{"source": {"notRemoteIpBlocks": ["203.0.113.0/24"]}}]}, http(),
                                   http(remote_ip="203.0.113.9")),
    OP + "methods": ({"to": [{"operation": {"methods": ["GET"]}}]}, http(), http(method="POST")),
    OP + "notMethods": ({"to": [{"operation": {"notMethods": ["POST"]}}]}, http(), http(method="POST")),
    OP + "paths": ({"to": [{"operation": {"paths": ["/a"]}}]}, http(), http(path="/b")),
    OP + "notPaths": ({"to": [{"operation": {"notPaths": ["/b*"]}}]}, http(), http(path="/b/c")),
    OP + "ports": ({"to": [{"operation": {"ports": ["9080"]}}]}, http(), http(port=9090)),
    OP + "notPorts": ({"to": [{"operation": {"notPorts": ["9090"]}}]}, http(), http(port=9090)),
    OP + "hosts": ({"to": [{"operation": {"hosts": ["shop.x"]}}]}, http(), http(host="admin.x")),
    OP + "notHosts": ({"to": [{"operation": {"notHosts": ["admin.x"]}}]}, http(), http(host="ADMIN.x.:80")),
    "rules.when.key": ({"when": [{"key": "request.headers[x-team]", "values": ["blue"]}]}, http(),
                       http(headers={})),
    "rules.when.values": ({"when": [{"key": "source.namespace", "values": ["shop"]}]}, http(), http(principal=EVIL)),
    "rules.when.notValues": ({"when": [{"key": "request.auth.claims[group]", "notValues": ["guests"]}]}, http(),
                             http(claims={"group": "guests"})),
}


def leaves(schema: Any, prefix: str = "") -> list[str]:
    if isinstance(schema, str):
        return [prefix.rstrip(".")]
    if isinstance(schema, list):
        return leaves(schema[0], prefix)
    return [leaf for key, sub in schema.items() if not key.startswith("*") for leaf in leaves(sub, f"{prefix}{key}.")]


AUTHZ = next(k for k in KINDS if k.name == "AuthorizationPolicy")


def test_every_accepted_field_has_an_example() -> None:
    accepted = set(leaves(AUTHZ.spec)) - {"action", "selector.matchLabels.app", "selector.matchLabels.version"}
    assert accepted == set(EFFECTS), f"fields without a proven effect: {sorted(accepted - set(EFFECTS))}"


@pytest.mark.parametrize("field", sorted(EFFECTS))
def test_field_changes_the_decision(field: str) -> None:
    rule, passes, stopped = EFFECTS[field]
    allow = {"name": "p", "action": "ALLOW", "rules": [rule]}
    assert decide([allow], passes).allowed, field
    assert not decide([allow], stopped).allowed, field
    deny = {"name": "p", "action": "DENY", "rules": [rule]}
    assert not decide([deny], passes).allowed and decide([deny], stopped).allowed, field


def test_action_and_selector_change_the_outcome() -> None:
    rule = EFFECTS[OP + "methods"][0]
    outcomes = {a: decide([{"name": "p", "action": a, "rules": [rule]}], http()).allowed for a in ("ALLOW", "DENY")}
    assert outcomes == {"ALLOW": True, "DENY": False}
    pod = Pod("reviews-v2", "reviews-v2-sidecar", "reviews", "v2", "PERMISSIVE", (), (), ())
    for labels, want in (({"app": "reviews"}, True), ({"app": "ratings"}, False), ({"version": "v2"}, True),
                         ({"version": "v1"}, False)):
        policy = {"kind": "AuthorizationPolicy", "metadata": {"name": "p"},
                  "spec": {"selector": {"matchLabels": labels}}}
        assert selects(policy, "shop", pod) is want


def test_tcp_judges_ip_blocks_with_the_peer() -> None:
    rule = {"from": [{"source": {"ipBlocks": ["10.1.0.0/16"]}}]}
    allow = {"name": "p", "action": "ALLOW", "rules": [rule]}
    tcp = Subject(principal=PP, port=6379, peer_ip="10.1.0.7", remote_ip="10.1.0.7")
    assert decide([allow], tcp).allowed
    assert not decide([allow], Subject(principal=PP, port=6379, peer_ip="10.3.0.7")).allowed


@pytest.mark.parametrize("peer, xff, hops, want", [
    ("10.0.0.2", [], 0, "10.0.0.2"),
    ("10.0.0.2", ["203.0.113.9"], 0, "10.0.0.2"),  # nothing trusted: a client cannot claim an address
    ("10.0.0.2", ["203.0.113.9"], 1, "203.0.113.9"),
    ("10.0.0.2", ["6.6.6.6, 203.0.113.9"], 1, "203.0.113.9"),  # a forged leftmost entry is not believed
    ("10.0.0.2", ["6.6.6.6, 203.0.113.9, 10.0.0.1"], 2, "203.0.113.9"),
    ("10.0.0.2", ["6.6.6.6", "203.0.113.9"], 1, "203.0.113.9"),  # two header lines are one list
    ("10.0.0.2", ["203.0.113.9"], 5, "203.0.113.9"),  # fewer entries than hops: the leftmost
    ("10.0.0.2", [" , "], 1, "10.0.0.2"),
    ("10.0.0.2", ["10.1.2.3:80"], 1, "10.0.0.2"),  # not an address: Envoy falls back to the peer
    ("10.0.0.2", ["010.001.002.003"], 1, "10.0.0.2"),
    ("10.0.0.2", ["garbage"], 1, "10.0.0.2"),
])
def test_remote_address(peer: str, xff: list[str], hops: int, want: str) -> None:
    assert remote_address(peer, xff, hops) == want


@pytest.mark.parametrize("garbage", ["not-an-ip", "", "10.0.0.1/8", "::ffff:zz", "1" * 5000])
def test_garbled_remote_address_fails_closed(garbage: str) -> None:
    allow = {"name": "p", "action": "ALLOW", "rules": [{"from": [{"source": {"remoteIpBlocks": ["0.0.0.0/0"]}}]}]}
    assert not decide([allow], http(remote_ip=garbage)).allowed


@pytest.mark.parametrize("host", ["ADMIN.x", "admin.x:8080", "admin.x.", "Admin.X.:443", "admin.x"])
def test_host_deny_holds_for_every_spelling(host: str) -> None:
    deny = {"name": "d", "action": "DENY", "rules": [{"to": [{"operation": {"hosts": ["admin.x"]}}]}]}
    assert not decide([deny], http(host=host)).allowed


def test_host_pattern_with_a_port_needs_that_port() -> None:
    allow = {"name": "a", "action": "ALLOW", "rules": [{"to": [{"operation": {"hosts": ["shop.x:8080"]}}]}]}
    assert decide([allow], http(host="SHOP.x:8080")).allowed and not decide([allow], http(host="shop.x:9090")).allowed
    assert not decide([allow], http(host="shop.x")).allowed


# --- RequestAuthentication: every jwtRules field changes what is authenticated or forwarded --------------------

RA = next(k for k in KINDS if k.name == "RequestAuthentication")


def _authn(rule: dict[str, Any], headers: list[tuple[str, str]], query: list[tuple[str, str]]) -> str | None:
    from sidecar.jwt import Jwks, JwtError, authenticate

    try:
        return authenticate([rule], Jwks(), headers, query, jwtkit.NOW)[0]
    except JwtError:
        return "401"


def test_every_jwt_rule_field_has_an_effect() -> None:
    good = jwtkit.GOOD["RS256"]
    base = dict(jwtkit.RULE)
    bearer = [("authorization", f"Bearer {good}")]
    principal = f"{jwtkit.ISSUER}/alice"
    effects = {
        "issuer": _authn({**base, "issuer": "https://other"}, bearer, []) == "401",
        "audiences": _authn({**base, "audiences": ["other"]}, bearer, []) == "401",
        "jwks": _authn({**base, "jwks": jwtkit.jwks(jwtkit.jwk(jwtkit.P256, "rsa"))}, bearer, []) == "401",
        "jwksUri": _authn({k: v for k, v in {**base, "jwksUri": "http://127.0.0.1:9/jwks"}.items() if k != "jwks"},
                          bearer, []) == "401",  # not fetched yet: that issuer's tokens are refused (fail closed)
        "fromHeaders.name": _authn({**base, "fromHeaders": [{"name": "x-jwt"}]}, [("x-jwt", good)], []) == principal
        and _authn({**base, "fromHeaders": [{"name": "x-jwt"}]}, bearer, []) is None,
        "fromHeaders.prefix": _authn({**base, "fromHeaders": [{"name": "x-jwt", "prefix": "Token "}]},
                                     [("x-jwt", f"Token {good}")], []) == principal
        and _authn({**base, "fromHeaders": [{"name": "x-jwt", "prefix": "Token "}]}, [("x-jwt", good)], []) is None,
        "fromParams": _authn({**base, "fromParams": ["jwt"]}, [], [("jwt", good)]) == principal
        and _authn({**base, "fromParams": ["jwt"]}, [], [("access_token", good)]) is None,
        "forwardOriginalToken": _forwarded({**base, "forwardOriginalToken": True}, good)
        and not _forwarded(base, good),
        "fromCookies": _authn({**base, "fromCookies": ["s"]}, [("cookie", f"s={good}")], []) == principal
        and _authn(base, [("cookie", f"s={good}")], []) is None,
        "outputPayloadToHeader": _outputs({**base, "outputPayloadToHeader": "x-p"}, good)
        == [("x-p", good.split(".")[1])],
        "outputClaimToHeaders.header": _outputs({**base, "outputClaimToHeaders": [{"header": "x-s", "claim": "sub"}]},
                                                good) == [("x-s", "alice")],
        "outputClaimToHeaders.claim": _outputs({**base, "outputClaimToHeaders": [{"header": "x-s", "claim": "iss"}]},
                                               good) == [("x-s", jwtkit.ISSUER)],
    }
    assert set(leaves(RA.spec)) - {"selector.matchLabels.app", "selector.matchLabels.version"} == \
        {f"jwtRules.{f}" for f in effects}
    assert all(effects.values()), {k for k, v in effects.items() if not v}
    assert _authn(base, bearer, []) == principal  # the base case authenticates


def _outputs(rule: dict[str, Any], token: str) -> list[tuple[str, str]]:
    """The header fields a verified token adds for the app."""
    from sidecar.jwt import Jwks, outputs, verify_request

    verified = verify_request([rule], Jwks(), [("authorization", f"Bearer {token}")], [], jwtkit.NOW)
    return outputs(rule, token, verified.claims) if verified else []


def _forwarded(rule: dict[str, Any], token: str) -> bool:
    """Whether the app still gets the token once the sidecar has verified it."""
    from sidecar.jwt import token_to_strip

    target = f"/a?access_token={token}&keep=1" if rule.get("fromParams") else "/a?keep=1"
    strip = token_to_strip([rule], [("authorization", f"Bearer {token}")], target)
    assert "keep=1" in strip.target
    return strip.header is None or strip.header.lower() != "authorization"


@pytest.mark.parametrize("spelling", ["10.1.2.3", "::ffff:10.1.2.3", "::FFFF:10.1.2.3", " 10.1.2.3 "])
def test_an_address_denied_in_any_spelling(spelling: str) -> None:
    deny = {"name": "d", "action": "DENY", "rules": [{"from": [{"source": {"remoteIpBlocks": ["10.0.0.0/8"]}}]}]}
    assert not decide([deny], http(remote_ip=spelling)).allowed
    deny_peer = {"name": "d", "action": "DENY", "rules": [{"from": [{"source": {"ipBlocks": ["10.0.0.0/8"]}}]}]}
    assert not decide([deny_peer], http(peer_ip=spelling)).allowed
