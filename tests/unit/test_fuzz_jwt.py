"""Fuzzing JWT authentication as an attacker would: any tokens, good and forged, in any headers and query
parameters, in any case and with any scheme. The outcome is checked against an oracle written apart from
the code: a principal only for exactly one genuinely valid token in a place its issuer's rule looks; no
principal and no error only when no rule's place holds anything; JwtError otherwise, and never another
exception."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from hypothesis import example, given
from hypothesis import strategies as st

from sidecar.jwt import Jwks, JwtError, authenticate, jwks_problems, parse_jwks
from tests.unit.fuzzing import FUZZ, ODD_TEXT, TEXT, json_values, mutants
from tests.unit.jwtkit import (
    AUDIENCE,
    FORGED,
    GOOD,
    ISSUER,
    JWKS,
    NOW,
    P256,
    P384,
    RSA_KEY,
    STRANGER,
    claims,
    ecdsa_token,
    jwk,
    jwks,
)

SKEW = 60
OTHER = "https://other.example"
BEARER = re.compile(r"[ \t]*bearer(?:[ \t]|$)", re.IGNORECASE | re.ASCII)


@dataclass(frozen=True)
class Config:
    """Rules, and where the oracle expects each issuer's tokens (header name -> scheme regex or None)."""
    rules: list[dict[str, Any]]
    headers: dict[str, tuple[str, re.Pattern[str] | None]]  # lower-case name -> (issuer, prefix regex)
    params: dict[str, str]  # name -> issuer


DEFAULT = Config([{"issuer": ISSUER, "audiences": [AUDIENCE], "jwks": JWKS}],
                 {"authorization": (ISSUER, BEARER)}, {"access_token": ISSUER})
CUSTOM = Config([{"issuer": ISSUER, "audiences": [AUDIENCE], "jwks": JWKS, "fromHeaders": [{"name": "x-jwt"}],
                  "fromParams": ["token"]}], {"x-jwt": (ISSUER, None)}, {"token": ISSUER})
MIXED = Config([DEFAULT.rules[0], {"issuer": OTHER, "jwks": JWKS, "fromHeaders": [{"name": "x-jwt"}],
                                   "fromParams": ["token"]}],
               {"authorization": (ISSUER, BEARER), "x-jwt": (OTHER, None)}, {"access_token": ISSUER, "token": OTHER})


def number(value: Any) -> bool:
    return type(value) in (int, float) and value == value and abs(value) != float("inf")


def valid_claims(c: Any) -> bool:
    """RFC 7519 with Istio's rules, written out independently of sidecar.jwt."""
    if not isinstance(c, dict) or c.get("iss") != ISSUER:
        return False
    if any(k in c and not number(c[k]) for k in ("exp", "nbf", "iat")):
        return False
    if ("exp" in c and c["exp"] + SKEW < NOW) or ("nbf" in c and c["nbf"] - SKEW > NOW) or \
            ("iat" in c and c["iat"] - SKEW > NOW):
        return False
    if "sub" in c and not isinstance(c["sub"], str):
        return False
    aud = c.get("aud")
    return aud == AUDIENCE or (isinstance(aud, list) and all(isinstance(a, str) for a in aud) and AUDIENCE in aud)


# (token, the principal it is genuinely valid for or None)
Token = tuple[str, str | None]
GOOD_TOKENS = st.sampled_from([(t, f"{ISSUER}/alice") for t in GOOD.values()])
FORGED_TOKENS = st.sampled_from([(t, None) for t in FORGED.values()])
CLAIMS = mutants(st.just(claims()), st.one_of(json_values(2), st.sampled_from(
    [True, False, None, "1", str(int(NOW) + 99), NOW + 99, NOW - 99, float("inf"), ISSUER, AUDIENCE, [AUDIENCE]])),
    key=st.sampled_from(["exp", "nbf", "iat", "aud", "iss", "sub", "x"]))


def _signed(c: dict[str, Any]) -> Token:
    return ecdsa_token(P256, "ES256", c, "p256"), (f"{ISSUER}/{c.get('sub', '')}" if valid_claims(c) else None)


def _tampered(token: str, at: int, char: str) -> Token:
    at %= len(token)
    return (token[:at] + char + token[at + 1:], None) if token[at] != char and token[at] != "." else (token, None
            if token not in GOOD.values() else f"{ISSUER}/alice")


VALID_CLAIMS = st.builds(lambda sub, aud, exp: claims(sub=sub, aud=aud, exp=exp), st.text(max_size=8),
                        st.sampled_from([AUDIENCE, [AUDIENCE], ["x", AUDIENCE]]),
                        st.sampled_from([int(NOW) + 5, NOW - 30.5, 2**40, ...]))
_TOKEN_KINDS: list[st.SearchStrategy[Token]] = [
    GOOD_TOKENS, GOOD_TOKENS, FORGED_TOKENS,
    st.builds(_signed, VALID_CLAIMS), st.builds(_signed, VALID_CLAIMS),
    st.builds(_signed, CLAIMS),  # the issuer's own key, with any claims: valid only when the oracle says so
    st.builds(lambda c, name, value: _signed({**c, name: value}), VALID_CLAIMS, st.sampled_from(["exp", "nbf", "iat"]),
              st.sampled_from([str(int(NOW) + 99), "1", True, False, None, float("inf"), float("nan"), [1], {}])),
    st.builds(lambda c: (ecdsa_token(STRANGER, "ES256", c, "p256"), None), VALID_CLAIMS),
    st.builds(lambda c: (ecdsa_token(P384, "ES256", c, "p384"), None), VALID_CLAIMS),  # the wrong curve's key
    st.builds(_tampered, st.sampled_from(list(GOOD.values())), st.integers(0, 2000), st.sampled_from("AaZz09-_.")),
    st.builds(lambda t: (t, None), st.one_of(ODD_TEXT, TEXT)),
]
# Drawn by index: hypothesis's one_of would not weigh repeated branches.
TOKENS: st.SearchStrategy[Token] = st.integers(0, len(_TOKEN_KINDS) - 1).flatmap(lambda i: _TOKEN_KINDS[i])

BEARERS = ["Bearer ", "bearer ", "BEARER\t", " Bearer  ", "bEaReR "]
NEAR_MISSES = ["Basic ", "Bearer", "Bearerx", "Token ", "Bearer Bearer ", ""]
CASES = [str.lower, str.upper, str.title]
NOISE_NAMES = st.one_of(st.sampled_from(["x-other", "cookie", "proxy-authorization", "authorization2",
                                         "Access_Token", "jwt", "access_token ", "access%5Ftoken"]), TEXT)

Request = tuple[list[tuple[str, str]], list[tuple[str, str]], dict[str, str | None]]


@st.composite
def requests(draw: st.DrawFn, config: Config) -> Request:
    """Header fields and query pairs holding 0-3 tokens, mostly where the config's rules look, and noise;
    and each token's genuine principal."""
    headers, query, principals = [], [], {}
    for _ in range(draw(st.sampled_from([0, 1, 1, 1, 1, 2, 3]))):
        token, principal = draw(TOKENS)
        principals[token] = principal
        place = draw(st.sampled_from(["header", "header", "param", "param", "elsewhere"]))
        if place == "header":
            name, (_, scheme) = draw(st.sampled_from(sorted(config.headers.items())))
            prefixes = (BEARERS if scheme else [""]) * 3 + NEAR_MISSES
            prefix = draw(st.one_of(st.sampled_from(prefixes), st.sampled_from(prefixes), TEXT))
            headers.append((draw(st.sampled_from(CASES))(name), prefix + token))
        elif place == "param":
            query.append((draw(st.sampled_from(sorted(config.params))), token))
        else:
            where = draw(st.sampled_from([headers, query]))
            where.append((draw(NOISE_NAMES), draw(st.sampled_from(["", *BEARERS])) + token))
    headers += draw(st.lists(st.tuples(NOISE_NAMES, TEXT), max_size=2))
    query += draw(st.lists(st.tuples(NOISE_NAMES, TEXT), max_size=2))
    return draw(st.permutations(headers)), draw(st.permutations(query)), principals


CASES_OF_CONFIGS = st.sampled_from([DEFAULT, CUSTOM, MIXED]).flatmap(lambda c: st.tuples(st.just(c), requests(c)))


def expected(config: Config, headers: list[tuple[str, str]], query: list[tuple[str, str]],
             principals: dict[str, str | None]) -> str | None:
    """'none', 'error', or the principal."""
    found = []  # (issuer whose rule looks there, token)
    for name, value in headers:
        if name.lower() in config.headers:
            issuer, scheme = config.headers[name.lower()]
            if scheme is None:
                found.append((issuer, value.strip(" \t")))
            elif match := scheme.match(value):
                found.append((issuer, value[match.end():].strip(" \t")))
    found += [(config.params[name], value) for name, value in query if name in config.params]
    if not found:
        return "none"
    if len(found) > 1:
        return "error"
    issuer, token = found[0]
    principal = principals.get(token)
    return principal if principal and issuer == ISSUER else "error"


@FUZZ
@given(case=CASES_OF_CONFIGS)
@example(case=(DEFAULT, ([("authorization", "bearer " + FORGED["stranger"])], [], {})))
@example(case=(DEFAULT, ([("Authorization", "Bearer " + GOOD["ES256"])], [("access_token", FORGED["stranger"])],
                         {GOOD["ES256"]: f"{ISSUER}/alice"})))
@example(case=(MIXED, ([("x-jwt", GOOD["ES256"])], [], {GOOD["ES256"]: f"{ISSUER}/alice"})))
@example(case=(DEFAULT, ([], [("access_token", FORGED["exp as a string"])], {})))
def test_authenticate_yields_a_principal_only_for_one_genuine_token(case: tuple[Config, Request]) -> None:
    config, request = case
    headers, query, principals = request
    want = expected(config, headers, query, principals)
    try:
        principal, got = authenticate(config.rules, Jwks(), headers, query, NOW)
    except JwtError as exc:
        assert want == "error", f"refused ({exc}) but the oracle says {want}"
        assert str(exc)
        return
    if principal is None:
        assert want == "none" and got == {}
    else:
        assert principal == want, f"accepted as {principal}, the oracle says {want}"
        assert got["iss"] == ISSUER


KEY_MEMBERS = st.fixed_dictionaries({}, optional={
    "use": st.sampled_from(["sig", "enc", "", None, 1]),
    "key_ops": st.sampled_from([["verify"], ["encrypt"], [], "x"]),
    "alg": st.sampled_from(["RS256", "PS512", "ES256", "ES384", "ES512", "HS256", "none", 5]),
    "kid": st.one_of(st.text(max_size=5), st.integers()), "d": st.just("AQAB"),
    "crv": st.sampled_from(["P-256", "P-9"]),
})
JWKS_TEXT = st.one_of(
    TEXT, st.builds(json.dumps, json_values(6)),
    st.builds(lambda keys: jwks(*keys), st.lists(st.one_of(
        st.builds(lambda base, extra: {**base, **extra}, st.sampled_from([jwk(P256), jwk(P384), jwk(RSA_KEY)]),
                  KEY_MEMBERS),
        mutants(st.sampled_from([jwk(P256), jwk(RSA_KEY)]), st.one_of(TEXT, json_values(1)), key=TEXT),
        json_values(2)), max_size=3)),
)


@FUZZ
@given(text=JWKS_TEXT)
def test_a_jwks_accepted_at_apply_time_is_used_whole_by_the_sidecar(text: str) -> None:
    problems = jwks_problems(text)
    assert all(isinstance(p, str) and p and "\n" not in p for p in problems)
    try:
        keys = parse_jwks(text)
    except JwtError:
        assert problems, "the sidecar refuses a JWKS apply accepted"
        return
    if not problems:
        assert len(keys) == len(json.loads(text)["keys"]) > 0
    for key in keys:
        assert key.by_alg and set(key.by_alg) <= {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256",
                                                  "ES384", "ES512"}
