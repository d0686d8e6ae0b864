"""PeerAuthentication, AuthorizationPolicy and RequestAuthentication (JWT), enforced by real sidecars."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from docker import DockerClient

from tests.conftest import meshctl
from tests.e2e.conftest import App
from tests.e2e.test_dataplane import _copy_pems, bookinfo


def synced(home: Path, target: str) -> None:
    """Until a project's proxies (or one proxy, project.service) run the current config."""
    which = [target] if "." in target else ["-p", target]
    done = meshctl("proxy-status", *which, "--wait", "--timeout", "10", home=home)
    assert done.code == 0, done.out + done.err


def apply(home: Path, text: str, project: str) -> None:
    done = meshctl("apply", "-f", "-", home=home, stdin=text)
    assert done.code == 0, done.err
    synced(home, project)


def call(app: App, caller: str, url: str, *args: str) -> tuple[str, str]:
    """(status, body) of one request from `caller`'s container."""
    code, out = app.exec(caller, "curl", "-s", "--max-time", "10", "-w", "\n%{http_code}", *args, url)
    assert code == 0, out
    body, _, status = out.rpartition("\n")
    return status, body


@pytest.fixture
def shop(demo: dict, engine: DockerClient, mesh_home: Path) -> Iterator[App]:
    app = bookinfo(engine, mesh_home)
    yield app
    for kind in ("authorizationpolicy", "requestauthentication", "peerauthentication"):
        for r in json.loads(meshctl("get", kind, "-o", "json", home=mesh_home).out or "[]"):
            meshctl("delete", kind, r["metadata"]["name"], home=mesh_home)
    synced(mesh_home, "bookinfo")


def test_allow_then_default_deny_with_method_rules(shop: App, mesh_home: Path) -> None:
    assert meshctl("authz", "allow", "--from", "productpage", "--to", "reviews", "--method", "GET",
                   home=mesh_home).code == 0
    synced(mesh_home, "bookinfo")
    assert call(shop, "productpage", "http://reviews:9080/reviews/0")[0] == "200"
    status, body = call(shop, "productpage", "http://reviews:9080/reviews/0", "-X", "POST")
    assert status == "403" and "allow-productpage-to-reviews" in body, body  # the body names the policy
    status, body = call(shop, "details", "http://reviews:9080/reviews/0")  # another caller: default deny
    assert status == "403" and "no rule of the ALLOW policies" in body, body
    assert call(shop, "details", "http://ratings:9080/ratings/0")[0] == "200"  # other services unaffected
    check = json.loads(meshctl("authz", "check", "reviews", "-o", "json", home=mesh_home).out)
    assert check["default"].startswith("deny") and "GET" in check["policies"][0]["rules"]
    # denials are counted in the destination's metrics, with Envoy's RBAC flag
    denied = 0.0
    for sidecar in ("reviews-v1-proxy", "reviews-v2-proxy", "reviews-v3-proxy"):
        code, metrics = shop.exec(sidecar, "curl", "-s", "127.0.0.1:15090/stats/prometheus")
        assert code == 0, metrics
        denied += sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                      if line.startswith("istio_requests_total{") and 'response_code="403"' in line
                      and 'response_flags="RBAC"' in line and 'reporter="destination"' in line)
    assert denied >= 2


def test_deny_is_evaluated_before_allow_on_paths(shop: App, mesh_home: Path) -> None:
    apply(mesh_home, """apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: details-open}
spec:
  selector: {matchLabels: {app: details}}
  action: ALLOW
  rules: [{}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: watch-books}
spec:
  selector: {matchLabels: {app: details}}
  action: AUDIT
  rules: [{to: [{operation: {paths: ["/details/1"]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-secret-books}
spec:
  selector: {matchLabels: {app: details}}
  action: DENY
  rules:
  - to: [{operation: {paths: ["/details/9*"], notMethods: [HEAD]}}]
""", "bookinfo")
    assert call(shop, "productpage", "http://details:9080/details/1")[0] == "200"
    audited = [e for e in shop.logs("details-proxy") if e.get("path") == "/details/1"][-1]
    assert audited["audit"] == "watch-books"  # AUDIT: let through, and marked in the access log
    status, body = call(shop, "productpage", "http://details:9080/details/99")
    assert status == "403" and "no-secret-books (DENY rule 0)" in body, body


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
NUMBERS = KEY.public_key().public_numbers()
JWKS = json.dumps({"keys": [{"kty": "RSA", "kid": "e2e", "alg": "RS256", "n": b64(NUMBERS.n.to_bytes(256, "big")),
                             "e": b64(NUMBERS.e.to_bytes(3, "big"))}]})
ISSUER = "https://auth.bookinfo.test"


def token(sub: str, key: rsa.RSAPrivateKey = KEY, ttl: float = 300, aud: str = "bookinfo") -> str:
    head = b64(json.dumps({"alg": "RS256", "kid": "e2e", "typ": "JWT"}).encode())
    body = b64(json.dumps({"iss": ISSUER, "sub": sub, "aud": aud, "exp": int(time.time() + ttl)}).encode())
    return f"{head}.{body}.{b64(key.sign(f'{head}.{body}'.encode(), padding.PKCS1v15(), hashes.SHA256()))}"


def jwt_policies(jwks_field: str) -> str:
    return f"""apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: web-jwt}}
spec:
  selector: {{matchLabels: {{app: web}}}}
  jwtRules: [{{issuer: "{ISSUER}", audiences: [bookinfo], {jwks_field}}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: web-alice-only}}
spec:
  selector: {{matchLabels: {{app: web}}}}
  action: ALLOW
  rules: [{{from: [{{source: {{requestPrincipals: ["{ISSUER}/alice"]}}}}]}}]
"""


def check_jwt_rules(testbed: App) -> None:
    def as_(tok: str | None) -> tuple[str, str]:
        return call(testbed, "client", "http://web:8080/echo", *(["-H", f"Authorization: Bearer {tok}"] if tok else []))
    assert as_(token("alice"))[0] == "200"
    status, body = as_(None)
    assert status == "403" and "web-alice-only" in body  # no token: unauthenticated, and the policy wants alice
    assert as_(token("bob"))[0] == "403"
    for bad in (token("alice", key=rsa.generate_private_key(public_exponent=65537, key_size=2048)),
                token("alice", ttl=-600), token("alice", aud="other"), "garbage"):
        status, body = as_(bad)
        assert status == "401" and "JWT rejected" in body, (status, body)


@pytest.fixture
def web(testbed: App, mesh_home: Path) -> Iterator[App]:
    yield testbed
    for kind, name in (("requestauthentication", "web-jwt"), ("authorizationpolicy", "web-alice-only"),
                       ("peerauthentication", "web"), ("peerauthentication", "default")):
        meshctl("delete", kind, name, home=mesh_home)
    synced(mesh_home, "e2etestbed.web")


def test_jwt_with_an_inline_jwks_and_a_file_uri_refused(web: App, mesh_home: Path, tmp_path: Path) -> None:
    apply(mesh_home, jwt_policies(f"jwks: '{JWKS}'"), "e2etestbed.web")
    check_jwt_rules(web)
    # jwksUri is http(s) only, as in Istio: the control plane never reads a host file into a snapshot
    (tmp_path / "jwks.json").write_text(JWKS)
    done = meshctl("apply", "-f", "-", home=mesh_home,
                   stdin=jwt_policies(f"jwksUri: 'file://{tmp_path / 'jwks.json'}'"))
    assert done.code == 3 and "jwksUri: must be an http:// or https:// URL" in done.err, done.err
    check_jwt_rules(web)  # the inline rules stay in force


def test_jwt_with_a_jwks_fetched_from_a_url(web: App, mesh_home: Path) -> None:
    _copy_pems(web, "outsider", {"jwks.json": JWKS.encode()})
    web.container("outsider").exec_run(["python3", "-m", "http.server", "8000", "--directory", "/tmp"], detach=True)
    apply(mesh_home, jwt_policies("jwksUri: 'http://outsider:8000/jwks.json'"), "e2etestbed.web")
    deadline = time.monotonic() + 10
    while call(web, "client", "http://web:8080/echo", "-H", f"Authorization: Bearer {token('alice')}")[0] != "200":
        assert time.monotonic() < deadline, "the sidecar never fetched the JWKS"
        time.sleep(0.5)
    check_jwt_rules(web)


def test_jwt_from_a_cookie_with_claims_written_for_the_app(web: App, mesh_home: Path) -> None:
    """fromCookies, outputClaimToHeaders and outputPayloadToHeader on a real sidecar (issue 17, part 4)."""
    apply(mesh_home, jwt_policies(f"jwks: '{JWKS}', fromCookies: [session], outputPayloadToHeader: x-jwt-payload, "
                                  "outputClaimToHeaders: [{header: x-jwt-claim-sub, claim: sub}]"), "e2etestbed.web")
    alice = token("alice")
    status, body = call(web, "client", "http://web:8080/echo", "-H", f"Cookie: a=1; session={alice}; b=2",
                        "-H", "X-Jwt-Claim-Sub: admin", "-H", "x_jwt_claim_sub: admin")
    assert status == "200", body
    seen = json.loads(body)["headers"]
    assert seen["x-jwt-claim-sub"] == "alice" and "x_jwt_claim_sub" not in seen  # the client's own never arrive
    assert seen["cookie"] == "a=1; b=2"  # the verified token is taken out; the other cookies stay
    payload = seen["x-jwt-payload"]
    assert json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["sub"] == "alice"
    # a second session cookie beside the valid one (Envoy would check only the first): refused
    status, body = call(web, "client", "http://web:8080/echo", "-H", f"Cookie: session={alice}; session={token('bob')}")
    assert status == "401" and "2 tokens" in body, (status, body)
    # with fromCookies alone, the Authorization header is no longer a place a token is read (Istio's rule)
    assert call(web, "client", "http://web:8080/echo", "-H", f"Authorization: Bearer {alice}")[0] == "403"


def test_peer_authentication_per_service_and_per_port(web: App, mesh_home: Path) -> None:
    assert call(web, "outsider", "http://web:8080/echo")[0] == "200"  # PERMISSIVE by default
    assert meshctl("mtls", "set", "web", "--mode", "strict", home=mesh_home).code == 0
    synced(mesh_home, "e2etestbed.web")
    status, body = call(web, "outsider", "http://web:8080/echo")
    assert status == "403" and "requires mutual TLS" in body
    assert call(web, "client", "http://web:8080/echo")[0] == "200"  # meshed callers are fine
    assert meshctl("mtls", "set", "web", "--mode", "strict", "--port", "8080=permissive", home=mesh_home).code == 0
    synced(mesh_home, "e2etestbed.web")
    assert call(web, "outsider", "http://web:8080/echo")[0] == "200"  # that port's own mode
    assert meshctl("mtls", "set", "--mode", "strict", "-p", "e2etestbed", home=mesh_home).code == 0
    assert meshctl("delete", "pa", "web", home=mesh_home).code == 0
    synced(mesh_home, "e2etestbed.web")
    assert call(web, "outsider", "http://web:8080/echo")[0] == "403"  # the project-wide mode now applies
    assert meshctl("mtls", "set", "web", "--mode", "disable", home=mesh_home).code == 0
    synced(mesh_home, "e2etestbed.client")
    synced(mesh_home, "e2etestbed.web")
    assert call(web, "client", "http://web:8080/echo?disabled=1")[0] == "200"  # the caller's sidecar sends plaintext
    last = [e for e in web.logs("web-proxy") if e.get("path") == "/echo?disabled=1"][-1]
    assert last["mtls"] is False and last["status"] == 200
