"""RequestAuthentication's written headers from an attacker's side, past the L7 path: a client that keeps
silent (or sends half a request line) until the sidecar gives up detecting HTTP is relayed at L4, where no
header is removed; its own `x-jwt-claim-*` would reach the app as if the sidecar had written them."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar import snapshot
from sidecar.engine.authorize import Authorizer
from sidecar.engine.plan import INBOUND_PORT, L4_ALPN, ConnectionInfo, L4Tcp, decide
from sidecar.jwt import claim_text, cookie_key, cookies_of, rule_output_problems
from tests.unit import jwtkit
from tests.unit.engine.test_h2_attacks import NEED_JWT
from tests.unit.fakes import Live
from tests.unit.fuzzing import FUZZ
from tests.unit.sidecar.test_contract import GOOD
from tests.unit.sidecar.test_jwt_outputs import COOKIE_RULE, OUT_RULE, TOKEN, judge

PORT = 9080  # a port no workload declares: its protocol is detected


def live(rule: dict[str, Any] | None, mode: str = "PERMISSIVE", declared: str | None = None,
         authorization: list[dict[str, Any]] | None = None) -> Live:
    raw = copy.deepcopy(GOOD)
    raw["inbound"]["mode"] = mode
    raw["jwt"] = [{"policy": "ra", **rule}] if rule else []
    raw["authorization"] = authorization or []
    if declared:
        raw["services"][0]["workloads"][0]["port_protocols"] = {str(PORT): declared}
    return Live(raw)


def connection(s: snapshot.Snapshot, first: bytes | None, mtls: bool) -> ConnectionInfo:
    return ConnectionInfo(INBOUND_PORT, ("172.18.0.9", PORT), ("172.18.0.5", 40000), first, s,
                          tls_peer="spiffe://cluster.local/ns/p/sa/client" if mtls else None,
                          alpn=L4_ALPN if mtls else None)


@pytest.mark.parametrize("first", [None, b"G", b"GE"])
@pytest.mark.parametrize("mtls", [False, True])
def test_http_relayed_at_l4_cannot_carry_a_written_header_to_the_app(first: bytes | None, mtls: bool) -> None:
    lv = live(OUT_RULE)
    info = connection(lv.current, first, mtls)
    assert isinstance(decide(info), L4Tcp)  # silence, or a prefix of HTTP when time ran out: TCP
    assert Authorizer(lv).tcp_gate(info) is not None  # type: ignore[arg-type]


@pytest.mark.parametrize("rule", [None, jwtkit.RULE, COOKIE_RULE])
def test_tcp_is_judged_as_before_when_no_rule_writes_headers(rule: dict[str, Any] | None) -> None:
    lv = live(rule)
    assert Authorizer(lv).tcp_gate(connection(lv.current, None, False)) is None  # type: ignore[arg-type]


def test_a_port_declared_tcp_is_relayed_as_declared() -> None:
    lv = live(OUT_RULE, declared="tcp")
    assert Authorizer(lv).tcp_gate(connection(lv.current, None, True)) is None  # type: ignore[arg-type]


def test_the_refusal_names_the_fix() -> None:
    lv = live(OUT_RULE)
    reason = Authorizer(lv).tcp_gate(connection(lv.current, None, False))  # type: ignore[arg-type]
    assert reason is not None and "outputClaimToHeaders" in reason and "tcp" in reason and "\n" not in reason


@pytest.mark.parametrize(("value", "text"), [(10**400, str(10**400)), (-(2**70), str(-(2**70))), (3.0, "3"),
                                             (0.5, "0.5"), (float("nan"), None), (float("inf"), None)])
def test_a_number_claim_of_any_size_is_copied_not_refused(value: Any, text: str | None) -> None:
    # a float() of a huge whole number raised: the request got 403 "policy could not be evaluated"
    assert claim_text({"n": value}, "n") == text


# --- fromCookies: whatever surrounds the one token cookie, the token never reaches the app -----------------------

cookie_names = st.sampled_from(["session", "Session", "SESSION", "se%73sion", "auth_token", "auth.token", "auth token",
                                "other", "sessionx", "xsession", " session", "session ", "\tsession"])
cookie_values = st.sampled_from(["1", "", '"q"', "a=b", "x y", "%3B", "TOKEN"])
TOKEN_PLACEHOLDER = "TOKEN"
separators = st.sampled_from(["; ", ";", ", ", ",", " ;", ";;", "; ;"])


@FUZZ
@given(st.lists(st.tuples(cookie_names, cookie_values), max_size=5), separators,
       st.integers(min_value=0, max_value=5), st.booleans(), st.booleans())
def test_a_cookie_token_is_either_refused_or_taken_out(others: list[tuple[str, str]], sep: str, at: int,
                                                       quoted: bool, split: bool) -> None:
    token = TOKEN if not quoted else f'"{TOKEN}"'
    pairs = [f"{n}={TOKEN if v == TOKEN_PLACEHOLDER else v}" for n, v in others]
    pairs.insert(min(at, len(pairs)), f"session={token}")
    fields = [("cookie", p) for p in pairs] if split else [("cookie", sep.join(pairs))]
    status, got, _ = judge(COOKIE_RULE, fields, authorization=NEED_JWT)
    assert status in (None, 401)
    if status is None:  # no cookie the rule reads is left, and the token with it (unless sent under another name)
        assert not [n for n, _ in cookies_of(got) if cookie_key(n) in {"session", "auth_token"}]
        if all(v != TOKEN_PLACEHOLDER for _, v in others):
            assert not any(TOKEN in v for _, v in got)


@pytest.mark.parametrize("header", ["x-forwarded-client-cert", "X_Forwarded_Client_Cert", "x-forwarded-for",
                                    "Forwarded", "x-request-id", "traceparent", "x-b3-traceid", "b3",
                                    "content-length", "Transfer-Encoding", "host", "cookie"])
def test_a_claim_cannot_write_a_header_the_mesh_owns(header: str) -> None:
    """Applied, a claim would replace what the sidecar wrote (trace context, request id) or what an app trusts
    as the mesh's (Envoy's peer identity, the client's address): refused at apply, in any spelling."""
    for rule in ({"outputClaimToHeaders": [{"header": header, "claim": "sub"}]}, {"outputPayloadToHeader": header}):
        assert any("the proxy or the client owns it" in p for p in rule_output_problems(rule))
