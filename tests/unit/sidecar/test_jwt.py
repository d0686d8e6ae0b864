"""JWT validation (sidecar.jwt on PyJWT) against the attacker's review of issue 14, item 7: each finding as a
class, with real keys and tokens. A forged token must never yield a principal, and must never pass
unnoticed as "no token" either: the app behind the sidecar would see it."""

from __future__ import annotations

import json
from typing import Any

import pytest

from sidecar.jwt import Jwks, JwtError, authenticate, check_claims, jwks_problems, jwks_uri_problem, parse_jwks
from tests.unit import jwtkit
from tests.unit.jwtkit import (
    AUDIENCE,
    FORGED,
    GOOD,
    ISSUER,
    JWKS,
    NOW,
    P256,
    P384,
    P521,
    RSA_KEY,
    RULES,
    claims,
    ecdsa_token,
    jwk,
    jwks,
    none_token,
    sign,
)

Fields = list[tuple[str, str]]


def auth(headers: Fields, query: Fields | None = None, rules: list[dict[str, Any]] | None = None,
         now: float = NOW) -> tuple[str | None, dict[str, Any]]:
    return authenticate(rules or RULES, Jwks(), headers, query or [], now)


def bearer(token: str, scheme: str = "Bearer ") -> Fields:
    return [("Authorization", scheme + token)]


# --- signatures: the algorithm is bound to the key ------------------------------------------------------------------

@pytest.mark.parametrize("alg", sorted(GOOD))
def test_a_good_token_of_every_algorithm_is_accepted(alg: str) -> None:
    principal, got = auth(bearer(GOOD[alg]))
    assert principal == f"{ISSUER}/alice" and got["sub"] == "alice"


@pytest.mark.parametrize("case", sorted(FORGED))
def test_a_forged_or_invalid_token_gets_401(case: str) -> None:
    with pytest.raises(JwtError):
        auth(bearer(FORGED[case]))


@pytest.mark.parametrize(("key", "alg", "curve_alg"), [(P384, "ES256", "ES384"), (P256, "ES384", "ES256"),
                                                       (P384, "ES512", "ES384"), (P521, "ES384", "ES512"),
                                                       (P521, "ES256", "ES512")])
def test_an_ec_key_verifies_only_the_algorithm_of_its_curve(key: Any, alg: str, curve_alg: str) -> None:
    only_key = [{"issuer": ISSUER, "jwks": jwks(jwk(key, "k"))}]
    hash_of = {"ES256": "SHA256", "ES384": "SHA384", "ES512": "SHA512"}
    from cryptography.hazmat.primitives import hashes
    forged = ecdsa_token(key, alg, claims(), "k", getattr(hashes, hash_of[alg])())
    with pytest.raises(JwtError, match=f"no key .* verifies {alg}"):
        auth(bearer(forged), rules=only_key)
    assert auth(bearer(sign(key, curve_alg, claims(), "k")), rules=only_key)[0] == f"{ISSUER}/alice"


@pytest.mark.parametrize("alg", ["RS256", "PS256", "HS256", "EdDSA"])
def test_an_ec_key_never_verifies_rsa_or_hmac(alg: str) -> None:
    only_ec = [{"issuer": ISSUER, "jwks": jwks(jwk(P256, "k"))}]
    token = sign(RSA_KEY, alg, claims(), "k") if alg[:2] in ("RS", "PS") else none_token(claims(), alg)
    with pytest.raises(JwtError):
        auth(bearer(token), rules=only_ec)


@pytest.mark.parametrize(("published", "token_alg"), [("RS256", "PS256"), ("RS256", "RS512"), ("PS256", "RS256"),
                                                      ("PS384", "PS256")])
def test_the_jwk_alg_binds_the_key_to_one_algorithm(published: str, token_alg: str) -> None:
    bound = [{"issuer": ISSUER, "jwks": jwks(jwk(RSA_KEY, "k", alg=published))}]
    with pytest.raises(JwtError, match="no key"):
        auth(bearer(sign(RSA_KEY, token_alg, claims(), "k")), rules=bound)
    assert auth(bearer(sign(RSA_KEY, published, claims(), "k")), rules=bound)[0] == f"{ISSUER}/alice"


@pytest.mark.parametrize("member", [{"use": "enc"}, {"use": "ENC"}, {"use": ""}, {"use": None},
                                    {"key_ops": ["encrypt"]}, {"key_ops": ["sign"]}, {"key_ops": []},
                                    {"key_ops": "verify"}, {"key_ops": ["wrapKey", "encrypt"]}])
def test_a_key_not_for_verifying_signatures_is_never_used(member: dict[str, Any]) -> None:
    for kid in ("k", None):  # named by the token's kid, or tried as one of all keys
        rules = [{"issuer": ISSUER, "jwks": jwks(jwk(P256, "k", **member))}]
        with pytest.raises(JwtError):
            auth(bearer(sign(P256, "ES256", claims(), kid)), rules=rules)


@pytest.mark.parametrize("member", [{"use": "sig"}, {"key_ops": ["verify"]}, {"key_ops": ["sign", "verify"]},
                                    {"use": "sig", "key_ops": ["verify"], "alg": "ES256"}])
def test_a_signing_key_is_used(member: dict[str, Any]) -> None:
    rules = [{"issuer": ISSUER, "jwks": jwks(jwk(P256, "k", **member))}]
    assert auth(bearer(sign(P256, "ES256", claims(), "k")), rules=rules)[0] == f"{ISSUER}/alice"


def test_a_token_kid_selects_its_key_and_keys_without_a_kid() -> None:
    unnamed = [{"issuer": ISSUER, "jwks": jwks(jwk(P256))}]
    assert auth(bearer(sign(P256, "ES256", claims(), "any")), rules=unnamed)[0]  # a key without kid: candidate
    other_kid = [{"issuer": ISSUER, "jwks": jwks(jwk(P256, "k1"))}]
    with pytest.raises(JwtError, match="kid 'k2'"):  # no fallback to a key named otherwise
        auth(bearer(sign(P256, "ES256", claims(), "k2")), rules=other_kid)


# --- claims: exp, nbf and iat are numbers --------------------------------------------------------------------------

BAD_TIMES = ["1", str(int(NOW) + 3600), "", "never", True, False, None, [], {}, [int(NOW) + 3600],
             float("nan"), float("inf"), float("-inf")]


@pytest.mark.parametrize("name", ["exp", "nbf", "iat"])
@pytest.mark.parametrize("value", BAD_TIMES, ids=lambda v: repr(v).replace(str(int(NOW) + 3600), "now+1h"))
def test_a_time_claim_that_is_not_a_number_gets_401(name: str, value: Any) -> None:
    with pytest.raises(JwtError, match=f"claim {name} must be a number"):
        auth(bearer(sign(P256, "ES256", claims(**{name: value}), "p256")))


@pytest.mark.parametrize(("changes", "error"), [
    ({"exp": int(NOW) - 61}, "expired"), ({"exp": NOW - 3600.5}, "expired"), ({"nbf": int(NOW) + 61}, "not valid yet"),
    ({"iat": int(NOW) + 3600}, "issued in the future"), ({"sub": 5}, "sub must be a string"),
    ({"sub": ["alice"]}, "sub must be a string"), ({"aud": 5}, "aud must be"), ({"aud": [AUDIENCE, 5]}, "aud must be"),
    ({"aud": ...}, "audience"), ({"aud": []}, "audience"), ({"iss": ...}, "issuer"), ({"iss": [ISSUER]}, "issuer"),
])
def test_claims_are_checked_with_their_types(changes: dict[str, Any], error: str) -> None:
    with pytest.raises(JwtError, match=error):  # signed by hand: PyJWT would not encode some of these
        auth(bearer(ecdsa_token(P256, "ES256", claims(**changes), "p256")))


@pytest.mark.parametrize("changes", [{"exp": int(NOW) - 59}, {"nbf": int(NOW) + 59}, {"iat": int(NOW) + 59},
                                     {"exp": ...}, {"nbf": ...}, {"iat": ...}, {"exp": 10**30}, {"sub": ...}])
def test_within_the_clock_skew_or_absent_is_fine(changes: dict[str, Any]) -> None:
    principal, _ = auth(bearer(sign(P256, "ES256", claims(**changes), "p256")))
    assert principal is not None and principal.startswith(f"{ISSUER}/")


def test_check_claims_directly_refuses_a_bool_exp() -> None:
    with pytest.raises(JwtError):
        check_claims({"exp": True}, [], 0.0)  # True == 1: a bool must not pass for a number
    check_claims({"exp": 100}, [], 0.0)


def test_no_audiences_configured_accepts_any_audience() -> None:
    rules = [{"issuer": ISSUER, "jwks": JWKS}]
    assert auth(bearer(sign(P256, "ES256", claims(aud="whatever"), "p256")), rules=rules)[0]


# --- one token per request, wherever it is -------------------------------------------------------------------------

VALID = GOOD["ES256"]
FORGERY = FORGED["stranger"]
PAIRS = [(VALID, FORGERY), (FORGERY, VALID), (VALID, VALID), (FORGERY, FORGERY)]


@pytest.mark.parametrize(("first", "second"), PAIRS)
@pytest.mark.parametrize("placement", ["two headers", "two headers, cases differ", "header and query",
                                       "query twice", "query and header"])
def test_two_tokens_in_default_locations_get_401(first: str, second: str, placement: str) -> None:
    headers, query = {
        "two headers": ([("Authorization", f"Bearer {first}"), ("Authorization", f"Bearer {second}")], []),
        "two headers, cases differ": ([("authorization", f"bearer {first}"), ("AUTHORIZATION", f"Bearer {second}")],
                                      []),
        "header and query": ([("Authorization", f"Bearer {first}")], [("access_token", second)]),
        "query twice": ([], [("access_token", first), ("access_token", second)]),
        "query and header": ([("Authorization", f"Bearer {second}")], [("access_token", first)]),
    }[placement]
    with pytest.raises(JwtError, match="2 tokens"):
        auth(headers, query)


CUSTOM: list[dict[str, Any]] = [
    {"issuer": ISSUER, "jwks": JWKS, "fromHeaders": [{"name": "x-jwt"}, {"name": "x-auth", "prefix": "Token "}],
     "fromParams": ["token", "jwt"]},
    {"issuer": "https://other.example", "jwks": JWKS},  # the defaults, for another issuer
]


@pytest.mark.parametrize(("first", "second"), PAIRS)
@pytest.mark.parametrize(("headers", "query"), [
    ([("x-jwt", "{a}"), ("x-auth", "Token {b}")], []),
    ([("x-jwt", "{a}"), ("X-JWT", "{b}")], []),
    ([("x-jwt", "{a}")], [("jwt", "{b}")]),
    ([], [("token", "{a}"), ("jwt", "{b}")]),
    ([], [("token", "{a}"), ("token", "{b}")]),
    ([("x-auth", "token {a}")], [("access_token", "{b}")]),  # one rule's location and another's
    ([("Authorization", "Bearer {a}"), ("x-jwt", "{b}")], []),
])
def test_two_tokens_in_custom_locations_of_any_rule_get_401(first: str, second: str, headers: Fields,
                                                           query: Fields) -> None:
    def fill(fields: Fields) -> Fields:
        return [(k, v.format(a=first, b=second)) for k, v in fields]

    with pytest.raises(JwtError, match="2 tokens"):
        auth(fill(headers), fill(query), rules=CUSTOM)


def test_a_token_at_a_place_no_rule_looks_is_ignored() -> None:
    assert auth([("x-other", f"Bearer {FORGERY}"), ("Authorization", f"Basic {FORGERY}")],
                [("Access_Token", FORGERY), ("token", FORGERY)]) == (None, {})
    assert auth(bearer(VALID), [("id_token", FORGERY)])[0] == f"{ISSUER}/alice"


def test_a_custom_location_accepts_its_issuer_only_where_that_rule_looks() -> None:
    assert auth([("x-jwt", VALID)], rules=CUSTOM)[0] == f"{ISSUER}/alice"
    assert auth([], [("jwt", VALID)], rules=CUSTOM)[0] == f"{ISSUER}/alice"
    with pytest.raises(JwtError, match="not accepted"):  # the default header belongs to the other issuer's rule
        auth(bearer(VALID), rules=CUSTOM)


# --- the auth scheme is case-insensitive (RFC 7235) ----------------------------------------------------------------

SCHEMES = ["Bearer ", "bearer ", "BEARER ", "bEaReR ", "Bearer   ", "Bearer\t", " Bearer ", "bearer \t "]


@pytest.mark.parametrize("scheme", SCHEMES, ids=repr)
def test_any_case_of_the_scheme_carries_a_token(scheme: str) -> None:
    assert auth(bearer(VALID, scheme))[0] == f"{ISSUER}/alice"
    for forged in (FORGERY, FORGED["alg none"], FORGED["exp as a string"], "not-a-jwt"):
        with pytest.raises(JwtError):
            auth(bearer(forged, scheme))


@pytest.mark.parametrize("value", [f"Bearerx{VALID}", f"Basic {VALID}", f"Token {VALID}", f"Bear {VALID}",
                                   f"{VALID}"])
def test_another_scheme_is_not_a_bearer_token(value: str) -> None:
    assert auth([("Authorization", value)]) == (None, {})


@pytest.mark.parametrize("value", ["Bearer", "bearer ", "Bearer a.b", "BEARER ....", "bearer x y"])
def test_an_empty_or_broken_bearer_token_gets_401(value: str) -> None:
    with pytest.raises(JwtError):
        auth([("Authorization", value)])


def test_a_custom_prefix_is_case_insensitive_too() -> None:
    rules = [{"issuer": ISSUER, "jwks": JWKS, "fromHeaders": [{"name": "x-auth", "prefix": "Token "}]}]
    assert auth([("X-Auth", f"TOKEN {VALID}")], rules=rules)[0] == f"{ISSUER}/alice"
    with pytest.raises(JwtError):
        auth([("x-auth", f"token {FORGERY}")], rules=rules)


# --- JWKS documents -------------------------------------------------------------------------------------------------

def test_parse_jwks_keeps_only_signing_keys() -> None:
    keys = parse_jwks(jwks(jwk(P256, "a"), jwk(P256, "b", use="enc"), {"kty": "oct", "k": "c2VjcmV0"},
                           jwk(RSA_KEY, "r", alg="PS256")))
    assert [(k.kid, sorted(k.by_alg)) for k in keys] == [("a", ["ES256"]), ("r", ["PS256"])]


@pytest.mark.parametrize(("document", "problem"), [
    (jwks(jwk(P256, "e", use="enc")), "keys[0] (kid 'e'): use is 'enc'"),
    (jwks(jwk(P256, "ok"), jwk(P256, "x", key_ops=["encrypt"])), "keys[1] (kid 'x'): key_ops"),
    (jwks(jwk(P256, "a", alg="ES384")), "alg 'ES384' does not fit a EC key on P-256"),
    (jwks(jwk(RSA_KEY, "a", alg="ES256")), "alg 'ES256' does not fit a RSA key"),
    (jwks(jwk(RSA_KEY, "a", alg="HS256")), "alg 'HS256'"),
    (jwks(jwk(P256, "a", alg="none")), "alg 'none'"),
    (jwks({"kty": "oct", "k": "c2VjcmV0"}), "kty 'oct' is not accepted"),
    (jwks({"kty": "OKP", "crv": "Ed25519", "x": "AAAA"}), "kty 'OKP'"),
    (jwks({**jwk(P256, "p"), "crv": "secp256k1"}), "crv 'secp256k1'"),
    (jwks({**jwk(P256, "p"), "x": jwk(P384)["x"]}), "not a valid EC public key"),
    (jwks({"kty": "RSA", "n": "AQAB"}), "not a valid RSA public key"),
    (jwks({**jwk(P256, "p"), "d": "AAAA"}), "private"),
    (jwks({**jwk(P256), "kid": 7}), "kid must be a string"),
    ('{"keys": ["a key"]}', "keys[0]: is not a JSON object"),
    ('{"keys": []}', "not a JWKS"), ("[]", "not a JWKS"), ("{", "not a JWKS: not JSON"), ('{"keys": 5}', "not a JWKS"),
    ('{"keys": {"kty": "EC"}}', "not a JWKS"), ("null", "not a JWKS"), ('"keys"', "not a JWKS"),
    ("[" * 100_000, "not a JWKS"),
])
def test_jwks_problems_name_the_wrong_key(document: str, problem: str) -> None:
    found = jwks_problems(document)
    assert len(found) == 1 and problem in found[0], found


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")  # the test signs with it
def test_a_short_rsa_key_is_refused() -> None:
    from cryptography.hazmat.primitives.asymmetric import rsa
    short = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    assert "shorter than 2048 bits" in jwks_problems(jwks(jwk(short, "s")))[0]
    with pytest.raises(JwtError):
        auth(bearer(sign(short, "RS256", claims(), "s")), rules=[{"issuer": ISSUER, "jwks": jwks(jwk(short, "s"))}])


def test_a_good_jwks_has_no_problems() -> None:
    assert jwks_problems(jwks(jwk(RSA_KEY, "r"), jwk(P256, "p", use="sig", key_ops=["verify"]),
                              jwk(P521, alg="ES512"))) == []


def test_problems_do_not_echo_key_material() -> None:
    secret_ish = "VERY-SECRET-VALUE"
    found = jwks_problems(json.dumps({"keys": [{"kty": "EC", "crv": "P-256", "x": secret_ish, "y": secret_ish}]}))
    assert found and all(secret_ish not in p for p in found)


@pytest.mark.parametrize("uri", ["file:///etc/passwd", "/home/me/.meshctl/ca/key.pem", "file:jwks.json",
                                 "ftp://x/jwks", "data:application/json,{}", "jwks.json", "issuer.example/jwks",
                                 "http://", "https:///path", "gopher://x", "HTTP:/x", "http://x y/", "http://x\n/",
                                 "http://[::1", ""])
def test_jwks_uri_must_be_http_with_a_host(uri: str) -> None:
    assert jwks_uri_problem(uri) == ("must be an http:// or https:// URL (file paths are not read; put the keys "
                                     "inline with jwks)")


@pytest.mark.parametrize("uri", ["http://auth:8080/jwks.json", "https://auth.example/.well-known/jwks.json",
                                 "HTTPS://Auth.Example/jwks", "http://[::1]:80/k", "http://10.0.0.1/k"])
def test_http_jwks_uris_are_fine(uri: str) -> None:
    assert jwks_uri_problem(uri) is None


@pytest.mark.parametrize("uri", ["file:///etc/passwd", "/etc/passwd", "ftp://x/y"])
def test_the_sidecar_never_fetches_a_uri_that_is_not_http(uri: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import sidecar.jwt as module
    opened: list[str] = []
    monkeypatch.setattr(module._OPENER, "open", lambda *a, **k: opened.append(str(a[0])))
    cache = Jwks()
    cache.prefetch([{"issuer": ISSUER, "jwksUri": uri}])
    with pytest.raises(JwtError, match="not an http"):
        authenticate([{"issuer": ISSUER, "jwksUri": uri}], cache, bearer(VALID), [], NOW)
    assert opened == []


def test_a_stored_jwks_error_refuses_tokens_of_that_issuer() -> None:
    with pytest.raises(JwtError, match="not an http"):
        auth(bearer(VALID), rules=[{"issuer": ISSUER, "jwks_error": "the policy's jwksUri is not an http(s) URL"}])


# --- through the authorization hook: repeated header fields and query pairs reach authenticate -------------------

def _hook_call(path: str, headers: Fields) -> tuple[Any, Any]:
    from sidecar.engine.authorize import Authorizer
    from tests.unit.fakes import Live, call_on
    from tests.unit.sidecar.test_contract import GOOD as SNAPSHOT

    # PERMISSIVE: these calls are plaintext, which a STRICT port refuses before any policy
    live = Live({**SNAPSHOT, "inbound": {**SNAPSHOT["inbound"], "mode": "PERMISSIVE"},
                 "jwt": [{"policy": "ra", **RULES[0]}], "authorization": [
        {"name": "need-jwt", "action": "ALLOW", "rules": [{"from": [{"source": {"requestPrincipals": ["*"]}}]}]}]})
    return Authorizer(live), call_on(live.current, path, list(headers))  # type: ignore[arg-type]


@pytest.mark.parametrize(("path", "headers", "status"), [
    ("/books", [("Authorization", f"Bearer {VALID}")], None),
    ("/books", [("authorization", f"bearer {VALID}")], None),
    (f"/books?access_token={VALID}", [], None),
    ("/books", [("Authorization", f"Bearer {VALID}"), ("Authorization", f"Bearer {FORGERY}")], 401),
    ("/books", [("Authorization", f"Bearer {VALID}"), ("authorization", f"Bearer {VALID}")], 401),
    (f"/books?access_token={FORGERY}", [("Authorization", f"Bearer {VALID}")], 401),
    (f"/books?access_token={VALID}&access_token={FORGERY}", [], 401),
    (f"/books?access_token={VALID}&access%5Ftoken={FORGERY}", [], 401),
    ("/books", [("Authorization", f"bearer {FORGERY}")], 401),
    ("/books", [("Authorization", f"BEARER {FORGED['exp as a string']}")], 401),
    ("/books", [], 403),  # no token: unauthenticated, and the ALLOW policy wants a principal
])
def test_the_authz_hook_sees_every_header_field_and_query_pair(path: str, headers: Fields, status: int | None) -> None:
    hook, call = _hook_call(path, headers)
    refusal = hook.request(call)
    got = refusal.status if refusal else None
    assert got == status, refusal.body if refusal else None


# --- names that apps fold together are one location (a look-alike is a second token) ------------------------

@pytest.mark.parametrize("query", ["access.token", "access token", "access[token"])
def test_a_look_alike_parameter_is_a_second_token(query: str) -> None:
    good = jwtkit.GOOD["RS256"]
    with pytest.raises(JwtError, match="tokens"):
        authenticate(jwtkit.RULES, Jwks(), [("authorization", f"Bearer {good}")], [(query, "forged")], jwtkit.NOW)


def test_a_look_alike_header_is_a_second_token() -> None:
    good = jwtkit.GOOD["RS256"]
    rules = [{**jwtkit.RULE, "fromHeaders": [{"name": "x-jwt"}]}]
    with pytest.raises(JwtError, match="tokens"):
        authenticate(rules, Jwks(), [("x-jwt", good), ("x_jwt", "forged")], [], jwtkit.NOW)


def test_a_token_behind_a_semicolon_is_seen() -> None:
    from sidecar.jwt import query_pairs_of, token_to_strip

    assert [k for k, _ in query_pairs_of("/a?x=1;access_token=forged&access_token=valid&y=%2F")].count(
        "access_token") == 2
    strip = token_to_strip(jwtkit.RULES, [], "/a?x=1;access_token=valid&y=%2F")
    assert strip.header is None and strip.target == "/a?x=1&y=%2F"  # the token is gone, the rest stays byte for byte
