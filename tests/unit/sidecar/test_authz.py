"""Authorization decisions and JWT validation as pure functions."""

from __future__ import annotations

import base64
import json
import time

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from sidecar.jwt import Jwks, JwtError, authenticate
from sidecar.rbac import Subject, decide, string_match

PP = "cluster.local/ns/shop/sa/productpage"
EVIL = "cluster.local/ns/other/sa/evil"


def test_string_patterns() -> None:
    assert string_match("/api/*", "/api/x") and string_match("*.js", "/a.js") and string_match("*", "x")
    assert not string_match("*", "") and not string_match("/a", "/ab") and not string_match("/a", None)


ALLOW_GET = {"name": "shop/allow-get", "action": "ALLOW", "rules": [
    {"from": [{"source": {"principals": [PP]}}], "to": [{"operation": {"methods": ["GET"], "paths": ["/reviews/*"]}}]}]}
DENY_ADMIN = {"name": "deny-admin", "action": "DENY", "rules": [{"to": [{"operation": {"paths": ["/admin*"]}}]}]}


def http(principal: str | None, method: str = "GET", path: str = "/reviews/1", **kw: object) -> Subject:
    return Subject(principal=principal, method=method, path=path, port=9080, **kw)  # type: ignore[arg-type]


def test_allow_default_deny_and_deny_first() -> None:
    assert decide([], http(None)).allowed  # no policy: allowed
    assert decide([ALLOW_GET], http(PP)).allowed
    refused = decide([ALLOW_GET], http(PP, method="POST"))
    assert not refused.allowed and "shop/allow-get" in refused.reason  # default deny names the ALLOW policies
    assert not decide([ALLOW_GET], http(EVIL)).allowed and not decide([ALLOW_GET], http(None)).allowed
    denied = decide([ALLOW_GET, {**DENY_ADMIN, "rules": [{"to": [{"operation": {"paths": ["/reviews/9"]}}]}]}],
                    http(PP, path="/reviews/9"))
    assert not denied.allowed and "deny-admin (DENY rule 0)" in denied.reason  # DENY before ALLOW


def test_not_fields_namespaces_headers_and_jwt_principals() -> None:
    not_post = {"name": "p", "action": "ALLOW", "rules": [{"to": [{"operation": {"notMethods": ["POST"]}}],
                                                            "from": [{"source": {"namespaces": ["shop"]}}]}]}
    assert decide([not_post], http(PP)).allowed and not decide([not_post], http(PP, method="POST")).allowed
    assert not decide([not_post], http(EVIL)).allowed
    header = {"name": "h", "action": "ALLOW", "rules": [{"when": [{"key": "request.headers[x-team]",
                                                                   "values": ["blue"]}]}]}
    assert decide([header], http(None, headers={"x-team": "blue"})).allowed
    assert not decide([header], http(None, headers={"x-team": "red"})).allowed
    jwt_rule = {"name": "j", "action": "ALLOW", "rules": [{"from": [{"source": {"requestPrincipals": ["issuer/*"]}}]}]}
    assert decide([jwt_rule], http(None, request_principal="issuer/alice")).allowed
    assert not decide([jwt_rule], http(None)).allowed


def test_tcp_connections() -> None:
    tcp = Subject(principal=PP, port=6379)
    assert not decide([ALLOW_GET], tcp).allowed  # an ALLOW rule needing HTTP never allows TCP
    ports = {"name": "redis", "action": "ALLOW", "rules": [{"to": [{"operation": {"ports": ["6379"]}}]}]}
    assert decide([ports], tcp).allowed and not decide([ports], Subject(principal=PP, port=6380)).allowed
    assert not decide([DENY_ADMIN], tcp).allowed  # a DENY rule is applied without its HTTP parts: stricter


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def token(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, claims: dict, kid: str = "k1") -> str:
    alg = "RS256" if isinstance(key, rsa.RSAPrivateKey) else "ES256"
    signing = f"{b64(json.dumps({'alg': alg, 'kid': kid}).encode())}.{b64(json.dumps(claims).encode())}"
    if isinstance(key, rsa.RSAPrivateKey):
        sig = key.sign(signing.encode(), padding.PKCS1v15(), hashes.SHA256())
    else:
        r, s = decode_dss_signature(key.sign(signing.encode(), ec.ECDSA(hashes.SHA256())))
        sig = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    return f"{signing}.{b64(sig)}"


def jwks(rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey) -> str:
    n = rsa_key.public_key().public_numbers()
    p = ec_key.public_key().public_numbers()
    return json.dumps({"keys": [
        {"kty": "RSA", "kid": "k1", "n": b64(n.n.to_bytes(256, "big")), "e": b64(n.e.to_bytes(3, "big"))},
        {"kty": "EC", "kid": "k2", "crv": "P-256", "x": b64(p.x.to_bytes(32, "big")),
         "y": b64(p.y.to_bytes(32, "big"))}]})


def test_jwt_validation() -> None:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    rules = [{"issuer": "https://auth.example", "audiences": ["bookinfo"], "jwks": jwks(rsa_key, ec_key)}]
    now = time.time()
    good = {"iss": "https://auth.example", "sub": "alice", "aud": "bookinfo", "exp": now + 60}
    cache = Jwks()

    def auth(tok: str | None) -> tuple[str | None, dict]:
        return authenticate(rules, cache, [("authorization", f"Bearer {tok}")] if tok else [], [], now)

    assert auth(None) == (None, {})  # no token: unauthenticated, not refused
    assert auth(token(rsa_key, good))[0] == "https://auth.example/alice"
    assert auth(token(ec_key, good, kid="k2"))[0] == "https://auth.example/alice"
    bad = {"expired": {**good, "exp": now - 3600}, "audience": {**good, "aud": "other"},
           "issuer": {**good, "iss": "https://evil.example"}}
    for case, claims in bad.items():
        with pytest.raises(JwtError):
            auth(token(rsa_key, claims))
        assert case
    with pytest.raises(JwtError, match="signature"):
        auth(token(rsa.generate_private_key(public_exponent=65537, key_size=2048), good))
    with pytest.raises(JwtError):
        auth("not.a.token")
    none_alg = f"{b64(json.dumps({'alg': 'none'}).encode())}.{b64(json.dumps(good).encode())}."
    with pytest.raises(JwtError, match="not accepted"):
        auth(none_alg)


def test_the_hook_fails_closed_and_answers_403_naming_the_policy() -> None:
    from sidecar.engine.authorize import Authorizer
    from tests.unit.fakes import Live, call_on
    from tests.unit.sidecar.test_contract import GOOD

    def hook(policies: list[dict[str, object]]) -> tuple[Authorizer, Live]:
        # PERMISSIVE: these calls are plaintext, which a STRICT port refuses before any policy
        live = Live({**GOOD, "inbound": {**GOOD["inbound"], "mode": "PERMISSIVE"}, "authorization": policies})
        return Authorizer(live), live  # type: ignore[arg-type]

    deny, live = hook([{"name": "no-admin", "action": "DENY",
                        "rules": [{"to": [{"operation": {"paths": ["/admin*"]}}]}]}])
    refusal = deny.request(call_on(live.current, "/admin/x"))
    assert refusal is not None and refusal.status == 403 and b"no-admin (DENY rule 0)" in refusal.body
    assert deny.request(call_on(live.current, "/books")) is None
    broken, live = hook([{"name": "broken", "action": "ALLOW", "rules": [{"when": [{"values": ["x"]}]}]}])  # no key
    call = call_on(live.current, "/books")
    refusal = broken.request(call)
    assert refusal is not None and refusal.status == 403 and b"could not be evaluated" in refusal.body
    assert call.flags == "RBAC"

