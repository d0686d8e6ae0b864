"""Fuzzing the data plane's parsers: the snapshot file, a live snapshot swap, JWTs and JWKS, trace headers.

Whatever the input, each ends in its own clean refusal (SnapshotError, JwtError, None) or a valid value;
a sidecar given a bad snapshot keeps the one it has and says why.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from hypothesis import example, given
from hypothesis import strategies as st

from sidecar import snapshot
from sidecar.jwt import Jwks, JwtError, authenticate, check_claims, decode, parse_jwks
from sidecar.live import LiveSnapshot
from sidecar.spans import extract
from tests.unit.fuzzing import FUZZ, JUNK_BYTES, ODD_TEXT, TEXT, json_values, mutants

# --- the snapshot -----------------------------------------------------------------------------------------------

GOOD: dict[str, Any] = {
    "format": 1, "revision": 3, "hash": "abc", "trust_domain": "cluster.local",
    "proxy": {"name": "p.web", "project": "p", "service": "web", "app": "web", "version": "v1",
              "identity": "spiffe://cluster.local/ns/p/sa/web"},
    "inbound": {"mode": "STRICT", "exclude_ports": [9000], "published_ports": [8080],
                "port_modes": {"9090": "DISABLE"}},
    "outbound": {"exclude_ports": [25]},
    "services": [{"name": "web", "identity": "spiffe://cluster.local/ns/p/sa/web",
                  "workloads": [{"host": "web", "version": "v1", "mode": "STRICT",
                                 "port_modes": {"9090": "DISABLE"}}]}],
    "routes": [{"name": "web", "hosts": ["web"], "http": [{"route": [{"destination": {"host": "web"}}]}]}],
    "destinations": [{"name": "web", "host": "web", "subsets": [{"name": "v1", "labels": {"version": "v1"}}]}],
    "authorization": [{"name": "allow", "action": "ALLOW", "rules": [{"from": [{"source": {"namespaces": ["p"]}}]}]}],
    "jwt": [{"policy": "ra", "issuer": "https://issuer", "jwks": '{"keys": []}'}],
    "tracing": {"sampling": 10.0, "zipkin": "http://zipkin:9411/api/v2/spans", "otlp": None},
}
EDGES = st.sampled_from([None, True, False, 0, 1, -1, 65536, 2**64, 1.5, float("inf"), "", "STRICT", "LOOSE", "9090",
                         "²", "٣", "9" * 5000, "http://x", "ftp://x", [], {}, [None], {"²": "STRICT"},
                         {"65536": "DISABLE"}, {"": "STRICT"}])
LEAVES = st.one_of(EDGES, EDGES, json_values(4), TEXT)


def parses_or_refuses(data: Any) -> snapshot.Snapshot | None:
    try:
        snap = snapshot.parse(data)
    except snapshot.SnapshotError as exc:
        assert str(exc)
        return None
    assert all(0 < p < 65536 for p in snap.exclude_inbound_ports | snap.published_ports | set(snap.port_modes))
    assert all(0 < p < 65536 for s in snap.services for w in s.workloads for p, _ in w.port_modes)
    assert 0 <= snap.tracing.sampling <= 100
    return snap


@FUZZ
@given(data=mutants(st.just(GOOD), LEAVES, TEXT))
@example(data={**GOOD, "inbound": {**GOOD["inbound"], "port_modes": {"²": "STRICT"}}})
@example(data={**GOOD, "services": [{**GOOD["services"][0], "workloads": [{"host": "web", "version": "v1",
                                                                            "port_modes": {"http": "STRICT"}}]}]})
def test_mutated_snapshots_parse_or_are_refused(data: dict[str, Any]) -> None:
    parses_or_refuses(data)


@FUZZ
@given(data=json_values(20))
def test_random_json_is_refused(data: Any) -> None:
    assert parses_or_refuses(data) is None or isinstance(data, dict)


def test_the_good_snapshot_parses() -> None:
    snap = parses_or_refuses(copy.deepcopy(GOOD))
    assert snap is not None and snap.port_modes == {9090: "DISABLE"}


HOSTILE_FILES = [*JUNK_BYTES, b"[" * 100_000 + b"]" * 100_000, b'{"format": ' + b"1" * 5000 + b"}", b"", b"NaN",
                 b'{"format": 1, "tracing": {"sampling": NaN}}']


@pytest.mark.parametrize("content", HOSTILE_FILES, ids=range(len(HOSTILE_FILES)))
def test_unreadable_files_are_snapshot_errors(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "snapshot.json"
    path.write_bytes(content)
    with pytest.raises(snapshot.SnapshotError):
        snapshot.load(path)


@pytest.fixture(scope="module")
def live_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("live") / "snapshot.json"


def write_later(path: Path, content: bytes) -> None:
    """Replace the file and move its mtime on, as a push does (poll compares mtimes)."""
    stamp = path.stat().st_mtime_ns if path.exists() else time.time_ns()
    path.write_bytes(content)
    os.utime(path, ns=(stamp + 1_000_000, stamp + 1_000_000))


def check_poll(live_file: Path, content: bytes) -> None:
    write_later(live_file, json.dumps(GOOD).encode())
    live = LiveSnapshot(live_file, snapshot.load(live_file))
    applied: list[snapshot.Snapshot] = []
    live.on_apply.append(applied.append)
    old = live.current
    write_later(live_file, content)
    if live.poll():
        assert live.current is applied[0] and live.rejected is None
    else:
        assert live.current is old and not applied
        assert live.rejected is not None and live.rejected.reason
        assert json.loads(json.dumps(live.status(), default=str))["rejected"]["reason"]
    assert not live.poll()  # nothing changed since


@FUZZ
@given(content=st.one_of(mutants(st.just(GOOD), LEAVES, TEXT).map(lambda d: json.dumps(d).encode()),
                         st.binary(max_size=64)))
def test_live_snapshot_keeps_the_old_one_and_says_why(live_file: Path, content: bytes) -> None:
    check_poll(live_file, content)


@pytest.mark.parametrize("content", HOSTILE_FILES, ids=range(len(HOSTILE_FILES)))
def test_live_snapshot_survives_hostile_files(live_file: Path, content: bytes) -> None:
    check_poll(live_file, content)


# --- JWTs ----------------------------------------------------------------------------------------------------------

KEY = ec.generate_private_key(ec.SECP256R1())


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _coord(n: int) -> str:
    return b64(n.to_bytes(32, "big"))


NUMBERS = KEY.public_key().public_numbers()
JWKS = json.dumps({"keys": [{"kty": "EC", "crv": "P-256", "kid": "k1", "x": _coord(NUMBERS.x),
                             "y": _coord(NUMBERS.y)}]})
RULES = [{"issuer": "https://issuer", "audiences": ["web"], "jwks": JWKS}]


def sign(header: Any, claims: Any) -> str:
    head = b64(json.dumps(header).encode())
    body = b64(json.dumps(claims).encode())
    r, s = decode_dss_signature(KEY.sign(f"{head}.{body}".encode(), ec.ECDSA(hashes.SHA256())))
    return f"{head}.{body}.{b64(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"


GOOD_CLAIMS = {"iss": "https://issuer", "sub": "alice", "aud": "web", "exp": time.time() + 3600}
TOKENS = st.one_of(
    ODD_TEXT, st.text(max_size=40),
    st.lists(st.text("abcXYZ019-_=", max_size=12), min_size=1, max_size=4).map(".".join),
    st.builds(lambda h, c, s: f"{b64(json.dumps(h).encode())}.{b64(json.dumps(c).encode())}.{s}",
              json_values(4), json_values(4), st.text("abc-_", max_size=8)),
    st.builds(sign, st.one_of(st.just({"alg": "ES256", "kid": "k1"}), json_values(3)),
              mutants(st.just(GOOD_CLAIMS), st.one_of(EDGES, json_values(2)), TEXT)),
)


def test_a_good_token_is_accepted() -> None:
    token = sign({"alg": "ES256", "kid": "k1"}, GOOD_CLAIMS)
    principal, _ = authenticate(RULES, Jwks(), [("authorization", f"Bearer {token}")], [], time.time())
    assert principal == "https://issuer/alice"


@FUZZ
@given(token=TOKENS)
@example(token=f"{b64(b'[]')}.{b64(b'1')}.AA")
@example(token=sign({"alg": "ES256"}, {**GOOD_CLAIMS, "aud": 5}))
@example(token=sign({"alg": "ES256"}, {**GOOD_CLAIMS, "aud": [{"a": 1}]}))
@example(token=f"{b64(b'[' * 100_000)}.e30.AA")
def test_any_token_is_accepted_or_cleanly_rejected(token: str) -> None:
    try:
        header, claims = decode(token)
    except JwtError:
        pass
    else:
        assert isinstance(header, dict) and isinstance(claims, dict)
    try:
        principal, claims = authenticate(RULES, Jwks(), [("authorization", f"Bearer {token}")], [], time.time())
    except JwtError as exc:
        assert str(exc)
    else:
        assert principal is None or principal.startswith("https://issuer/")


@FUZZ
@given(claims=st.dictionaries(st.sampled_from(["exp", "nbf", "aud", "iss"]), st.one_of(EDGES, json_values(3))),
       audiences=st.lists(st.sampled_from(["web", "api"]), max_size=2))
def test_claims_checks_never_crash(claims: dict[str, Any], audiences: list[str]) -> None:
    with contextlib.suppress(JwtError):
        check_claims(claims, audiences, time.time())


@FUZZ
@given(text=st.one_of(st.builds(json.dumps, json_values(8)), TEXT, st.builds(
    lambda keys: json.dumps({"keys": keys}),
    st.lists(st.one_of(st.fixed_dictionaries({"kty": st.sampled_from(["RSA", "EC", "oct"])}, optional={
        "crv": st.sampled_from(["P-256", "P-999"]), "x": st.one_of(TEXT, json_values(1)), "y": TEXT, "e": TEXT,
        "n": st.one_of(TEXT, st.just("AQAB")), "kid": json_values(1)}), json_values(2)), max_size=3))))
def test_any_jwks_is_keys_or_a_jwt_error(text: str) -> None:
    try:
        keys = parse_jwks(text)
    except JwtError:
        return
    assert isinstance(keys, list)


# --- trace headers ---------------------------------------------------------------------------------------------

HEX = st.text("0123456789abcdefABCDEF", min_size=0, max_size=33)
HEADER_VALUES = st.one_of(HEX, ODD_TEXT, st.builds("-".join, st.lists(st.one_of(HEX, TEXT), max_size=5)))


@FUZZ
@given(headers=st.dictionaries(st.sampled_from(["traceparent", "b3", "x-b3-traceid", "x-b3-spanid", "x-b3-sampled",
                                                "x-b3-flags"]), HEADER_VALUES))
def test_trace_context_is_valid_or_absent(headers: dict[str, str]) -> None:
    context = extract(headers)
    if context is not None:
        assert len(context.trace_id) == 32 and len(context.span_id) == 16
        assert int(context.trace_id, 16) and int(context.span_id, 16)
