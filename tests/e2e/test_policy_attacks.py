"""[9 Trust]: every class of the attacker's review, against real sidecars on the real engine.

The testbed's upstream is a deliberately lenient app (tests/e2e/testbed/server.py): it decodes every escape,
reads `\\` as `/`, merges slashes, resolves dots, splits header lines at a bare CR, lets the last Host win,
and answers any path it resolves under /admin (or Host admin.x) with TOP-SECRET-ADMIN-CONTENT. So a bypass
is not a guess: if the policy is fooled, the secret comes back. Each class has at least three variants,
from the outsider (plaintext, straight to the target's sidecar) and from a meshed client (through both
sidecars), and each refusal must be in the target's access log.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.conftest import meshctl
from tests.e2e.conftest import App
from tests.e2e.test_dataplane import inbound
from tests.e2e.test_security_policies import ISSUER, JWKS, KEY, synced

SECRET = "TOP-SECRET-ADMIN-CONTENT"
PROJECT = "e2etestbed"
POLICIES = (("authorizationpolicy", "attack-web-deny"), ("authorizationpolicy", "attack-slow-allow"),
            ("requestauthentication", "attack-slow-jwt"), ("virtualservice", "attack-regex"))

# Sends raw bytes (base64 in argv) and prints what came back: the whole connection's answer, so a second,
# smuggled response would show too.
RAW = r"""
import base64, socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
s.sendall(base64.b64decode(sys.argv[3]))
got = b''
try:
    while chunk := s.recv(65536):
        got += chunk
except OSError:
    pass
print(got.decode('latin-1'))
"""


def raw(app: App, caller: str, host: str, data: bytes, port: int = 8080) -> str:
    code, out = app.exec(caller, "python3", "-c", RAW, host, str(port), base64.b64encode(data).decode())
    assert code == 0, out
    return out


def status_of(answer: str) -> int:
    return int(answer.split(" ", 2)[1]) if answer.startswith("HTTP/1.1 ") else 0


def get(target: str, host: str = "web", extra: str = "") -> bytes:
    return f"GET {target} HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\n\r\n".encode("latin-1")


def curl(app: App, caller: str, url: str, *args: str) -> tuple[int, str]:
    code, out = app.exec(caller, "curl", "-s", "--path-as-is", "--max-time", "10", "-w", "\n%{http_code}", *args, url)
    assert code == 0, out
    body, _, status = out.rpartition("\n")
    return int(status), body


def ip_of(app: App, service: str) -> str:
    networks = app.container(service).attrs["NetworkSettings"]["Networks"].values()
    return next(n["IPAddress"] for n in networks if n["IPAddress"])


def signed(claims: dict, key: rsa.RSAPrivateKey = KEY) -> str:
    return jwt.encode({"iss": ISSUER, "aud": "bookinfo", **claims}, key, algorithm="RS256", headers={"kid": "e2e"})


@pytest.fixture(scope="module")
def armed(testbed: App, mesh_home: Path) -> Iterator[App]:
    """The testbed with the attack tests' policies: web denies /admin, host admin.x and three address rules;
    slow allows /public/* to all and /echo to alice's JWT only."""
    outsider, client = ip_of(testbed, "outsider"), ip_of(testbed, "client-proxy")  # a pod's address is its sidecar's
    text = f"""apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: attack-web-deny, namespace: {PROJECT}}}
spec:
  selector: {{matchLabels: {{app: web}}}}
  action: DENY
  rules:
  - to: [{{operation: {{paths: ["/admin", "/admin/*"]}}}}]
  - to: [{{operation: {{hosts: ["admin.x"]}}}}]
  - from: [{{source: {{ipBlocks: ["{outsider}/32"]}}}}]
    to: [{{operation: {{paths: ["/status/230"]}}}}]
  - from: [{{source: {{notIpBlocks: ["{client}"]}}}}]
    to: [{{operation: {{paths: ["/status/231"]}}}}]
  - from: [{{source: {{remoteIpBlocks: ["{outsider}/32"]}}}}]
    to: [{{operation: {{paths: ["/status/232"]}}}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: attack-slow-allow, namespace: {PROJECT}}}
spec:
  selector: {{matchLabels: {{app: slow}}}}
  action: ALLOW
  rules:
  - to: [{{operation: {{paths: ["/public/*"]}}}}]
  - from: [{{source: {{requestPrincipals: ["{ISSUER}/alice"]}}}}]
    to: [{{operation: {{paths: ["/echo"]}}}}]
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: attack-slow-jwt, namespace: {PROJECT}}}
spec:
  selector: {{matchLabels: {{app: slow}}}}
  jwtRules: [{{issuer: "{ISSUER}", audiences: [bookinfo], jwks: '{JWKS}'}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: attack-regex, namespace: {PROJECT}}}
spec:
  hosts: [web]
  http:
  - match: [{{uri: {{regex: "/(a+)+b"}}}}]
    fault: {{abort: {{httpStatus: 418, percentage: {{value: 100}}}}}}
    route: [{{destination: {{host: web}}}}]
  - route: [{{destination: {{host: web}}}}]
"""
    done = meshctl("apply", "-f", "-", home=mesh_home, stdin=text)
    assert done.code == 0, done.err
    synced(mesh_home, PROJECT)
    yield testbed
    for kind, name in POLICIES:
        meshctl("delete", kind, name, "-p", PROJECT, home=mesh_home)
    synced(mesh_home, PROJECT)


def refused_in_log(app: App, sidecar: str, since: float, status: int) -> list[dict]:
    return [e for e in inbound(app, sidecar) if e["time"] >= since and e["status"] == status]


# --- 1. path normalisation ------------------------------------------------------------------------------------

PATH_BYPASSES = ["//admin/x", "/%61dmin/x", "/./admin/x", "/x/../admin/x", "/%2e%2e/admin/x", "/admin%2Fx",
                 "/x%2F..%2Fadmin/x", "/admin/x#frag", "/admin#frag", "\\admin\\x", "/ADMIN/../admin/x", "///admin"]


def test_path_bypasses_never_reach_the_denied_resource(armed: App) -> None:
    t, started = armed, time.time() - 1
    for caller in ("outsider", "client"):  # straight to the target's sidecar, and through the caller's too
        for target in PATH_BYPASSES:
            answer = raw(t, caller, "web", get(target))
            assert SECRET not in answer and status_of(answer) in (400, 403), (caller, target, answer[:300])
    # the app resolves these exactly as the policy did: the normalised path is what it received
    status, body = curl(t, "client", "http://web:8080/x/./../echo")
    assert status == 200 and json.loads(body)["path"] == "/echo", body
    # an ALLOW on /public/* cannot be climbed out of, from either side
    for caller in ("outsider", "client"):
        for target in ("/public/../admin/x", "/public/%2e%2e/admin/x", "/public//..//admin/x"):
            answer = raw(t, caller, "slow", get(target, "slow"))
            assert SECRET not in answer and status_of(answer) in (400, 403), (caller, target, answer[:300])
        assert status_of(raw(t, caller, "slow", get("/public/./a/../b", "slow"))) == 200
    refused = refused_in_log(t, "web-proxy", started, 400)
    assert any(e.get("flags") == "DPE" and "escaped slash" in (e.get("reason") or "") for e in refused), refused[-3:]
    assert len(refused_in_log(t, "web-proxy", started, 403)) >= 8


# --- 3. strict framing: control characters, Host ambiguity ---------------------------------------------------

SMUGGLE_TAIL = "0\r\n\r\nGET /admin/x HTTP/1.1\r\nHost: web\r\n\r\n"


@pytest.mark.parametrize("caller", ["outsider", "client"])
def test_control_characters_and_host_ambiguity_are_refused_before_the_app(armed: App, caller: str) -> None:
    t, started = armed, time.time() - 1
    smuggled = [
        f"POST /echo HTTP/1.1\r\nHost: web\r\nX-A: a\rTransfer-Encoding: chunked\r\nContent-Length: "
        f"{len(SMUGGLE_TAIL)}\r\n\r\n{SMUGGLE_TAIL}".encode(),
        b"GET /echo HTTP/1.1\r\nHost: web\r\nX-A: a\rX-B: b\r\nConnection: close\r\n\r\n",
        b"GET /echo HTTP/1.1\r\nHost: web\r\nX-A: a\x00b\r\nConnection: close\r\n\r\n",
        b"GET /echo HTTP/1.1\r\nHost: web\r\nX-A: \x1b[2Jb\r\nConnection: close\r\n\r\n",
        # two Host headers: the lenient app would take the last one
        b"GET /echo HTTP/1.1\r\nHost: web\r\nHost: admin.x\r\nConnection: close\r\n\r\n",
        # absolute-form naming another host than the Host header
        b"GET http://admin.x/echo HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n",
    ]
    for data in smuggled:
        answer = raw(t, caller, "web", data)
        assert SECRET not in answer and status_of(answer) == 400, (data, answer[:300])
        assert answer.count("HTTP/1.1 ") == 1, answer[:500]  # no second (smuggled) response
    refused = [e for e in refused_in_log(t, "web-proxy", started, 400) if e.get("flags") == "DPE"]
    reasons = " | ".join(str(e.get("reason")) for e in refused)
    assert "control character" in reasons and "more than one Host" in reasons and "another host" in reasons, reasons


@pytest.mark.parametrize("host", ["ADMIN.x", "admin.x:8080", "admin.x.", "Admin.X.:80"])
def test_host_deny_holds_for_every_spelling(armed: App, host: str) -> None:
    for caller in ("outsider", "client"):
        answer = raw(armed, caller, "web", get("/echo", host))
        assert SECRET not in answer and status_of(answer) == 403, (caller, host, answer[:300])
    # the absolute-form authority wins over no Host at all, and the app gets it as the Host
    answer = raw(armed, "outsider", "web", b"GET http://admin.x/echo HTTP/1.1\r\nConnection: close\r\n\r\n")
    assert SECRET not in answer and status_of(answer) in (400, 403), answer[:300]


# --- 2. ipBlocks, notIpBlocks, remoteIpBlocks -------------------------------------------------------------------

def test_ip_blocks_are_enforced_and_forwarded_for_is_not_believed(armed: App) -> None:
    t = armed
    outsider = ip_of(t, "outsider")
    assert curl(t, "outsider", "http://web:8080/status/230")[0] == 403  # ipBlocks: the outsider's address
    assert curl(t, "client", "http://web:8080/status/230")[0] == 230
    assert curl(t, "outsider", "http://web:8080/status/231")[0] == 403  # notIpBlocks: everyone but the client
    assert curl(t, "client", "http://web:8080/status/231")[0] == 231
    # remoteIpBlocks with no trusted hops: the peer is the client, whatever X-Forwarded-For claims
    assert curl(t, "outsider", "http://web:8080/status/232", "-H", "X-Forwarded-For: 192.0.2.1")[0] == 403
    assert curl(t, "client", "http://web:8080/status/232", "-H", f"X-Forwarded-For: {outsider}")[0] == 232


# --- 5. JWT edge cases ------------------------------------------------------------------------------------------

def test_jwt_edge_cases_are_refused(armed: App) -> None:
    t = armed
    good = signed({"sub": "alice", "exp": int(time.time()) + 300})
    forged = signed({"sub": "alice", "exp": int(time.time()) + 300},
                    rsa.generate_private_key(public_exponent=65537, key_size=2048))
    string_exp = signed({"sub": "alice", "exp": str(int(time.time()) - 3600)})
    assert curl(t, "outsider", "http://slow:8080/echo", "-H", f"Authorization: Bearer {good}")[0] == 200
    assert curl(t, "outsider", "http://slow:8080/echo", "-H", f"authorization: bearer {good}")[0] == 200
    cases = {
        "forged, lower-case scheme": ("http://slow:8080/echo", ["-H", f"Authorization: bearer {forged}"]),
        "forged, upper-case scheme": ("http://slow:8080/echo", ["-H", f"Authorization: BEARER {forged}"]),
        "valid header + forged query": (f"http://slow:8080/echo?access_token={forged}",
                                        ["-H", f"Authorization: Bearer {good}"]),
        "two query tokens": (f"http://slow:8080/echo?access_token={good}&access_token={forged}", []),
        "two Authorization headers": ("http://slow:8080/echo", ["-H", f"Authorization: Bearer {good}",
                                                                "-H", f"Authorization: Bearer {forged}"]),
        "string exp": ("http://slow:8080/echo", ["-H", f"Authorization: Bearer {string_exp}"]),
    }
    for name, (url, args) in cases.items():
        for caller in ("outsider", "client"):
            status, body = curl(t, caller, url, *args)
            assert status == 401 and "JWT" in body, (name, caller, status, body)


# --- 6. RE2 ------------------------------------------------------------------------------------------------------

def test_route_regexes_cannot_stall_a_sidecar_and_backtracking_syntax_is_refused(armed: App, mesh_home: Path) -> None:
    t = armed
    assert curl(t, "client", "http://web:8080/aaab")[0] == 418  # the regex route works (full match)
    hostile = "/" + "a" * 40 + "!"  # ~2^40 steps for a backtracking engine; linear for RE2
    started = time.monotonic()
    for _ in range(5):
        assert curl(t, "client", f"http://web:8080{hostile}")[0] == 404
    assert time.monotonic() - started < 10, "the sidecar's event loop stalled on a regex"
    assert curl(t, "client", "http://web:8080/echo")[0] == 200
    for pattern in (r"(a)\1", "(?=admin)/.*", "(?<!x)/admin"):
        vs = (f"apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: bad-regex}}\n"
              f"spec: {{hosts: [web], http: [{{match: [{{uri: {{regex: '{pattern}'}}}}], "
              f"route: [{{destination: {{host: web}}}}]}}]}}\n")
        done = meshctl("apply", "-f", "-", home=mesh_home, stdin=vs)
        assert done.code == 3 and "RE2" in done.err and len(done.err.strip().splitlines()) == 1, (pattern, done.err)
    assert meshctl("get", "vs", "bad-regex", home=mesh_home).code != 0  # nothing was stored


# --- 7. no host file reaches a snapshot -------------------------------------------------------------------------

def test_jwks_uri_cannot_read_a_host_file_into_a_pod(armed: App, mesh_home: Path) -> None:
    key_file = next((mesh_home / "ca").glob("*key*"))
    for uri in (f"file://{key_file}", str(key_file), "/etc/shadow", "ftp://example.invalid/jwks"):
        doc = (f"apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {{name: steal}}\n"
               f"spec: {{jwtRules: [{{issuer: x, jwksUri: '{uri}'}}]}}\n")
        done = meshctl("apply", "-f", "-", home=mesh_home, stdin=doc)
        assert done.code == 3 and "jwksUri" in done.err, (uri, done.err)
    for inline in ("not json", '{"keys": []}', '{"keys": [{"kty": "RSA"}]}'):
        doc = (f"apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {{name: steal}}\n"
               f"spec: {{jwtRules: [{{issuer: x, jwks: '{inline}'}}]}}\n")
        assert meshctl("apply", "-f", "-", home=mesh_home, stdin=doc).code == 3, inline
    # what any pod's app can read from its sidecar's admin endpoint holds no key material
    code, dump = armed.exec("slow", "curl", "-s", "--max-time", "5", "http://127.0.0.1:15000/config_dump")
    assert code == 0 and "attack-slow-jwt" in dump and "PRIVATE KEY" not in dump, dump[:300]


# --- 4/8. memory stays bounded under the reported attacks ---------------------------------------------------

MEMORY_ATTACKS = r"""
import socket, sys
host, port, which = sys.argv[1], int(sys.argv[2]), sys.argv[3]
def send(chunks):
    s = socket.create_connection((host, port), timeout=10)
    try:
        for chunk in chunks:
            s.sendall(chunk)
    except OSError:
        pass
    try:
        got = s.recv(100)
    except OSError:
        got = b''
    s.close()
    return got[:12].decode(errors='replace')
def endless():
    yield b'GET /echo HTTP/1.1\r\nHost: web\r\nx-big: '
    for _ in range(2048):  # 128 MiB, never terminated
        yield b'a' * 65536
attacks = {
    'long-paths': lambda: [send([b'GET /' + b'a' * (1 << 20) + b' HTTP/1.1\r\nHost: web\r\n\r\n']) for _ in range(100)],
    'endless-header': lambda: [send(endless())],
    'header-flood': lambda: [send([b'GET /echo HTTP/1.1\r\nHost: web\r\n' + b'x-h: v\r\n' * 5000 + b'\r\n'])
                             for _ in range(50)],
}
print(sorted(set(attacks[which]())))
"""


def test_memory_stays_bounded_under_attack(armed: App) -> None:
    t = armed
    import threading

    from tests.e2e.test_dataplane import rss_mb, watch_rss

    limit = t.container("web-proxy").attrs["HostConfig"]["Memory"]
    assert limit == 256 * 1024 * 1024, limit  # inject gives every sidecar a memory limit
    sidecars = ("web-proxy", "client-proxy")
    stop, samples = threading.Event(), {s: [] for s in sidecars}  # type: ignore[var-annotated]
    watchers = [threading.Thread(target=watch_rss, args=(t, s, stop, samples[s])) for s in sidecars]
    for w in watchers:
        w.start()
    try:
        for caller in ("outsider", "client"):
            for attack, want in (("long-paths", "414"), ("endless-header", "431"), ("header-flood", "431")):
                code, out = t.exec(caller, "python3", "-c", MEMORY_ATTACKS, "web", "8080", attack)
                assert code == 0 and f"HTTP/1.1 {want}" in out, (caller, attack, out[-300:])
    finally:
        stop.set()
        for w in watchers:
            w.join()
    for sidecar in sidecars:
        peak = max(samples[sidecar])
        print(f"{sidecar}: peak RSS {peak:.0f} MB under the attacks, {rss_mb(t, sidecar):.0f} MB after")
        assert peak < 100 and rss_mb(t, sidecar) < 100, (sidecar, peak)
    assert curl(t, "client", "http://web:8080/echo")[0] == 200  # still serving


def test_the_mesh_wide_path_normalization_reaches_running_sidecars(armed: App, mesh_home: Path) -> None:
    t = armed

    def install(mode: str) -> None:
        done = meshctl("install", "--path-normalization", mode, home=mesh_home)
        assert done.code == 0, done.err
        synced(mesh_home, PROJECT)

    assert status_of(raw(t, "outsider", "web", get("/admin%2Fx"))) == 400  # the default refuses escaped slashes
    try:
        install("DECODE_AND_MERGE_SLASHES")
        answer = raw(t, "outsider", "web", get("/admin%2Fx"))
        assert status_of(answer) == 403 and SECRET not in answer, answer[:300]  # decoded, then denied
        install("NONE")  # the user's choice: nothing normalised, so the lenient app is reached (Istio's NONE)
        assert SECRET in raw(t, "outsider", "web", get("/./admin/x"))
    finally:
        install("MERGE_SLASHES")
    assert status_of(raw(t, "outsider", "web", get("/./admin/x"))) == 403
