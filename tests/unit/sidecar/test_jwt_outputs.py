"""RequestAuthentication's fromCookies, outputPayloadToHeader, outputClaimToHeaders and forwardOriginalToken
(issue 17, part 4), from an attacker's side: a client must never pass a header of its own as one the sidecar
writes from a verified token, nor slip a second, unchecked token past it in a cookie."""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar.engine.authorize import Authorizer
from sidecar.jwt import claim_text, cookies_of, header_key, output_headers, rule_output_problems, without_cookie
from tests.unit import jwtkit
from tests.unit.engine.test_h2_attacks import NEED_JWT, Harness, h  # noqa: F401  (h: the HTTP/2 fixture)
from tests.unit.fakes import Live, call_on
from tests.unit.fuzzing import FUZZ
from tests.unit.jwtkit import P256, claims, sign
from tests.unit.sidecar.test_contract import GOOD as SNAPSHOT

Fields = list[tuple[str, str]]
TOKEN = sign(P256, "ES256", claims(group="admins", level=3, staff=True, ratio=0.5,
                                   nested={"team": {"name": "books"}}, roles=["a", "b"], evil="x\r\nx-a: 1"), "p256")
OTHER = sign(P256, "ES256", claims(sub="mallory"), "p256")
FORGED = jwtkit.FORGED["stranger"]
OUT_RULE: dict[str, Any] = {**jwtkit.RULE, "outputPayloadToHeader": "x-jwt-payload", "outputClaimToHeaders": [
    {"header": "x-jwt-claim-group", "claim": "group"}, {"header": "x-jwt-claim-level", "claim": "level"},
    {"header": "x-jwt-claim-staff", "claim": "staff"}, {"header": "x-jwt-claim-team", "claim": "nested.team.name"},
    {"header": "x-jwt-claim-ratio", "claim": "ratio"}, {"header": "x-jwt-claim-roles", "claim": "roles"},
    {"header": "x-jwt-claim-evil", "claim": "evil"}, {"header": "x-jwt-claim-none", "claim": "absent"}]}
COOKIE_RULE: dict[str, Any] = {**jwtkit.RULE, "fromCookies": ["session", "auth_token"]}


def judge(rule: dict[str, Any], headers: Fields, path: str = "/books",
          authorization: list[dict[str, Any]] | None = None) -> tuple[int | None, Fields, str]:
    """(refusal status or None, the header fields the app would get, the target it would get)."""
    live = Live({**SNAPSHOT, "jwt": [{"policy": "ra", **rule}], "authorization": authorization or []})
    call = call_on(live.current, path, list(headers), tls_peer="spiffe://cluster.local/ns/shop/sa/client")
    refused = Authorizer(live).request(call)  # type: ignore[arg-type]
    return (refused.status if refused else None,
            [(k.decode("latin-1"), v.decode("latin-1")) for k, v in call.head.headers], call.target)


def values(fields: Fields, name: str) -> list[str]:
    return [v for k, v in fields if k.lower() == name]


# --- outputPayloadToHeader and outputClaimToHeaders ------------------------------------------------------------------

def test_a_verified_token_writes_its_payload_and_claims_as_envoy_does() -> None:
    status, fields, _ = judge(OUT_RULE, [("authorization", f"Bearer {TOKEN}")])
    assert status is None
    payload = values(fields, "x-jwt-payload")
    assert payload == [TOKEN.split(".")[1]]  # base64url, unpadded: the segment that was signed
    assert json.loads(base64.urlsafe_b64decode(payload[0] + "=" * (-len(payload[0]) % 4)))["group"] == "admins"
    got = {k: v for k, v in fields if k.startswith("x-jwt-claim-")}
    assert got == {"x-jwt-claim-group": "admins", "x-jwt-claim-level": "3", "x-jwt-claim-staff": "true",
                   "x-jwt-claim-team": "books", "x-jwt-claim-ratio": "0.5"}  # no list, no CR/LF, no absent claim
    assert not values(fields, "authorization")  # and the token itself is gone (forwardOriginalToken false)


@pytest.mark.parametrize("forged", ["x-jwt-claim-group", "X-JWT-Claim-Group", "x_jwt_claim_group", "x-jwt-payload",
                                    "x-jwt-claim-roles", "x-jwt-claim-none", "x_jwt_claim_evil"])
@pytest.mark.parametrize("token", [None, TOKEN])
def test_a_clients_own_claim_header_never_reaches_the_app(forged: str, token: str | None) -> None:
    """Removed in every spelling an app folds together, with a token or without one, and also for a claim the
    token lacks or that cannot be copied (Envoy only adds, so there the client's value would stay)."""
    headers = [(forged, "root"), (forged, "root2")] + ([("authorization", f"Bearer {token}")] if token else [])
    status, fields, _ = judge(OUT_RULE, headers)
    assert status is None
    written = [v for k, v in fields if header_key(k) == header_key(forged)]
    assert not {"root", "root2"} & set(written)
    assert len(written) <= 1 and (written == [] if token is None else True)


def test_forged_claim_headers_cannot_satisfy_a_policy() -> None:
    """A policy on request.headers[x-jwt-claim-group] judges the header the sidecar wrote, not the client's."""
    policy = [{"name": "admins", "action": "ALLOW", "rules": [
        {"when": [{"key": "request.headers[x-jwt-claim-group]", "values": ["admins"]}]}]}]
    assert judge(OUT_RULE, [("x-jwt-claim-group", "admins")], authorization=policy)[0] == 403
    assert judge(OUT_RULE, [("x-jwt-claim-group", "admins"), ("authorization", f"Bearer {OTHER}")],
                 authorization=policy)[0] == 403  # mallory's token has no group claim
    assert judge(OUT_RULE, [("authorization", f"Bearer {TOKEN}")], authorization=policy)[0] is None


def test_an_invalid_token_gets_401_and_writes_nothing() -> None:
    assert judge(OUT_RULE, [("authorization", f"Bearer {FORGED}"), ("x-jwt-claim-group", "admins")])[0] == 401


@pytest.mark.parametrize(("value", "text"), [("s", "s"), (7, "7"), (7.0, "7"), (-2, "-2"), (True, "true"),
                                            (False, "false"), ("", None), ([1], None), ({"a": 1}, None),
                                            (None, None), ("a\nb", None), ("a\x00", None), ("a\rb", None),
                                            ("a\x7f", None), ("tab\there", "tab\there"), ("ünï", "ünï")])
def test_which_claims_are_copied(value: Any, text: str | None) -> None:
    assert claim_text({"c": value}, "c") == text
    assert claim_text({"n": {"c": value}}, "n.c") == text


def test_a_utf8_claim_is_sent_as_utf8() -> None:
    token = sign(P256, "ES256", claims(group="bücher"), "p256")
    _, fields, _ = judge(OUT_RULE, [("authorization", f"Bearer {token}")])
    assert values(fields, "x-jwt-claim-group")[0].encode("latin-1").decode() == "bücher"


# --- fromCookies ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("cookie", [f"session={TOKEN}", f"a=1; session={TOKEN}; b=2", f'session="{TOKEN}"',
                                    f"a=1;session={TOKEN}", f"auth_token={TOKEN}", f"  session = {TOKEN} "])
def test_a_token_in_a_named_cookie_is_verified_and_taken_out(cookie: str) -> None:
    status, fields, _ = judge(COOKIE_RULE, [("cookie", cookie)], authorization=NEED_JWT)
    assert status is None
    assert TOKEN not in "".join(values(fields, "cookie"))
    assert values(fields, "cookie") in ([], ["a=1; b=2"], ["a=1"])


def test_other_cookies_stay_byte_for_byte_and_forward_keeps_the_token() -> None:
    _, fields, _ = judge(COOKIE_RULE, [("cookie", "a=1;  b=\"x y\""), ("cookie", f"session={TOKEN}")])
    assert values(fields, "cookie") == ['a=1;  b="x y"']  # an HTTP/2 crumb left empty is dropped
    _, fields, _ = judge({**COOKIE_RULE, "forwardOriginalToken": True}, [("cookie", f"a=1; session={TOKEN}")])
    assert values(fields, "cookie") == [f"a=1; session={TOKEN}"]


@pytest.mark.parametrize("cookies", [
    [f"session={TOKEN}; session={FORGED}"],  # Envoy verifies the first; an app reading the last gets the forgery
    [f"session={FORGED}; session={TOKEN}"],
    [f"session={TOKEN}", f"session={FORGED}"],  # two fields (HTTP/2 crumbs)
    [f"session={TOKEN}, session={FORGED}"],  # RFC 2965 readers split on commas
    [f"session={TOKEN}; Session={FORGED}"],  # ASP.NET reads names case-blind
    [f"session={TOKEN}; se%73sion={FORGED}"],  # PHP decodes names
    [f"auth_token={TOKEN}; auth.token={FORGED}"],  # PHP folds . to _
    [f"session={TOKEN}; session={TOKEN}"],  # even the same token twice: exactly one is sent
    [f"session={TOKEN}; auth_token={OTHER}"],
])
def test_a_second_token_in_any_cookie_gets_401(cookies: list[str]) -> None:
    assert judge(COOKIE_RULE, [("cookie", c) for c in cookies], authorization=NEED_JWT)[0] == 401


def test_a_cookie_and_a_header_token_are_two_tokens() -> None:
    rules_both = {**COOKIE_RULE, "fromHeaders": [{"name": "authorization", "prefix": "Bearer "}]}
    assert judge(rules_both, [("cookie", f"session={TOKEN}"), ("authorization", f"Bearer {TOKEN}")])[0] == 401


def test_cookies_are_only_read_where_a_rule_asks() -> None:
    # the default locations are the Authorization header and access_token: a cookie of that name is not a token
    assert judge(jwtkit.RULE, [("cookie", f"access_token={TOKEN}")], authorization=NEED_JWT)[0] == 403
    # a rule with only fromCookies no longer reads the Authorization header (Istio: explicit locations replace it)
    assert judge(COOKIE_RULE, [("authorization", f"Bearer {TOKEN}")], authorization=NEED_JWT)[0] == 403
    assert judge(COOKIE_RULE, [("cookie", f"session={FORGED}")])[0] == 401


def test_cookie_parsing_helpers() -> None:
    assert cookies_of([("Cookie", 'a=1; b="q"'), ("x", "c=3"), ("cookie", "d")]) == [("a", "1"), ("b", "q")]
    assert without_cookie("a=1; session=t; b=2", "session") == "a=1; b=2"
    assert without_cookie("session=t;a=1", "session") == "a=1"
    assert without_cookie("session=t", "session") == ""


# --- apply time -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("rule", "problem"), [
    ({"fromCookies": ["a b"]}, "fromCookies[0]: 'a b' is not a cookie name"),
    ({"outputPayloadToHeader": "x y"}, "is not an HTTP header name"),
    ({"outputPayloadToHeader": "Content-Length"}, "the proxy or the client owns it"),
    ({"outputClaimToHeaders": [{"header": "host", "claim": "sub"}]}, "the proxy or the client owns it"),
    ({"outputClaimToHeaders": [{"header": "Authorization", "claim": "sub"}]}, "the token is read from it"),
    ({"outputClaimToHeaders": [{"header": "x-a", "claim": "sub"}, {"header": "X_A", "claim": "iss"}]},
     "outputClaimToHeaders[1].header: header 'X_A' is written twice"),
    ({"outputPayloadToHeader": "x-a", "outputClaimToHeaders": [{"header": "x-a", "claim": "sub"}]}, "written twice"),
    ({"outputClaimToHeaders": [{"header": "x-a"}]}, "outputClaimToHeaders[0].claim: required"),
    ({"outputClaimToHeaders": [{"claim": "sub"}]}, "outputClaimToHeaders[0].header: '' is not an HTTP header name"),
])
def test_output_and_cookie_fields_are_checked_at_apply(rule: dict[str, Any], problem: str) -> None:
    problems = rule_output_problems({**jwtkit.RULE, **rule})
    assert any(problem in p for p in problems), problems


def test_good_outputs_have_no_problems() -> None:
    assert rule_output_problems(OUT_RULE) == [] and rule_output_problems(COOKIE_RULE) == []


# --- the same on the HTTP/2 path ---------------------------------------------------------------------------------

def test_outputs_and_cookies_on_http2(h: Harness) -> None:  # noqa: F811
    h.authorize(jwt=[{**OUT_RULE, "fromCookies": ["session"]}], authorization=NEED_JWT)
    client = h.client()

    def ask(extra: Sequence[tuple[bytes, bytes]]) -> int | None:
        return client.wait(client.request(extra=extra)).grpc_status

    token = TOKEN.encode()
    assert ask([(b"cookie", b"session=" + token), (b"cookie", b"session=" + FORGED.encode())]) == 16  # two: 401
    assert not h.app.seen
    assert ask([(b"cookie", b"a=1"), (b"cookie", b"session=" + token), (b"x-jwt-claim-group", b"root"),
                (b"x_jwt_claim_group", b"root")]) == 0
    seen = dict(h.app.seen[-1].headers)
    assert seen[b"x-jwt-claim-group"] == b"admins" and seen[b"x-jwt-payload"] == token.split(b".")[1]
    assert b"root" not in [v for _, v in h.app.seen[-1].headers]
    assert [v for k, v in h.app.seen[-1].headers if k == b"cookie"] == [b"a=1"]


# --- property: whatever a client sends, no value of its own arrives under a name the sidecar writes --------------

@FUZZ
@given(st.lists(st.tuples(st.sampled_from(["x-jwt-claim-group", "X-Jwt-Claim-Group", "x_jwt_claim_group",
                                           "X_JWT_PAYLOAD", "x-jwt-payload", "x-jwt-claim-none", "x-other",
                                           "cookie", "authorization"]),
                          st.sampled_from(["forged", f"Bearer {TOKEN}", f"session={TOKEN}", "a=1"])), max_size=6))
def test_no_client_value_arrives_under_a_written_name(sent: Fields) -> None:
    rule = {**OUT_RULE, "fromCookies": ["session"], "fromHeaders": [{"name": "authorization", "prefix": "Bearer "}]}
    status, fields, _ = judge(rule, sent)
    if status is not None:
        assert status == 401  # more than one token
        return
    written = output_headers([rule])
    assert not [v for k, v in fields if header_key(k) in written and v in {"forged", "a=1"} | {v for _, v in sent}]
