"""Attacks from outside the mesh, and abusive HTTP, against real sidecars ([8 Reliability]).

The attacker is the testbed's `outsider`: a container on the app's network with no sidecar. Every
attempt must be refused, and the refusal must show in the target sidecar's log.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from meshctl.pki import ca as pki
from meshctl.pki import workload
from tests.conftest import meshctl
from tests.e2e.conftest import App
from tests.e2e.test_dataplane import TD, _copy_pems, inbound
from tests.e2e.test_security_policies import ISSUER, JWKS, synced, token

CURL = ["curl", "-sk", "--max-time", "10", "-w", "\n%{http_code}"]


def sidecar_log(app: App, sidecar: str, since: float) -> str:
    return app.container(sidecar).logs(stdout=False, stderr=True, since=int(since)).decode(errors="replace")


def self_signed(identity: str) -> tuple[bytes, bytes]:
    """A certificate claiming a mesh identity, signed by nobody the mesh trusts."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "client")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=1))
            .not_valid_after(now + dt.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(identity)]), critical=False)
            .sign(key, hashes.SHA256()))
    return (cert.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()))


@pytest.fixture
def target(testbed: App, mesh_home: Path) -> Iterator[App]:
    yield testbed
    for kind, name in (("authorizationpolicy", "strict-from-client"), ("authorizationpolicy", "web-echo-for-alice"),
                       ("requestauthentication", "web-jwt")):
        meshctl("delete", kind, name, home=mesh_home)
    synced(mesh_home, "e2etestbed")


def test_every_attack_from_outside_is_refused_and_logged(target: App, mesh_home: Path) -> None:
    t = target
    client_id = f"{TD}/e2etestbed/sa/client"
    policies = f"""apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: strict-from-client}}
spec:
  selector: {{matchLabels: {{app: web-strict}}}}
  action: ALLOW
  rules: [{{from: [{{source: {{principals: ["{client_id.removeprefix('spiffe://')}"]}}}}]}}]
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: web-jwt}}
spec:
  selector: {{matchLabels: {{app: web}}}}
  jwtRules: [{{issuer: "{ISSUER}", audiences: [bookinfo], jwks: '{JWKS}'}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: web-echo-for-alice}}
spec:
  selector: {{matchLabels: {{app: web}}}}
  action: ALLOW
  rules: [{{from: [{{source: {{requestPrincipals: ["{ISSUER}/alice"]}}}}], to: [{{operation: {{paths: [/echo]}}}}]}}]
"""
    done = meshctl("apply", "-f", "-", home=mesh_home, stdin=policies)
    assert done.code == 0, done.err
    synced(mesh_home, "e2etestbed")
    root = pki.load_root(mesh_home / "ca")
    now = dt.datetime.now(dt.UTC)
    intruder = workload.issue(root, f"{TD}/e2etestbed/sa/intruder", now)  # valid, but not who the policy wants
    fake_cert, fake_key = self_signed(client_id)  # claims to be the client, signed by itself
    _copy_pems(t, "outsider", {"fake.pem": fake_cert, "fake.key": fake_key,
                               "intruder.pem": intruder.cert_pem(), "intruder.key": intruder.key_pem()})
    started = time.time() - 1
    outsider_ips = {n["IPAddress"] for n in t.container("outsider").attrs["NetworkSettings"]["Networks"].values()}

    # 1. plaintext to a STRICT service, HTTP and raw TCP
    code, out = t.exec("outsider", *CURL, "http://web-strict:8080/echo")
    assert out.endswith("\n403") and "requires mutual TLS" in out, out
    code, out = t.exec("outsider", "python3", "/testbed/client.py", "redis", "web-strict", "6379")
    assert code != 0, out
    # 2. a self-signed certificate that claims the client's identity
    code, out = t.exec("outsider", *CURL, "--cert", "/tmp/fake.pem", "--key", "/tmp/fake.key",
                       "https://web-strict:8080/echo")
    assert code != 0 and not out.endswith("\n200"), out
    # 3. a valid mesh certificate of the wrong identity
    code, out = t.exec("outsider", *CURL, "--cert", "/tmp/intruder.pem", "--key", "/tmp/intruder.key",
                       "https://web-strict:8080/echo")
    assert code == 0 and out.endswith("\n403") and "strict-from-client" in out, out
    # 4. alice's token, stolen and replayed to a path her policy does not allow
    stolen = token("alice")
    code, out = t.exec("outsider", *CURL, "-H", f"Authorization: Bearer {stolen}", "http://web:8080/status/200")
    assert code == 0 and out.endswith("\n403"), out
    code, out = t.exec("outsider", *CURL, "-H", f"Authorization: Bearer {stolen}", "http://web:8080/echo")
    assert out.endswith("\n200"), out  # the token itself is valid: only the path is refused
    # ...and the legitimate caller still gets through
    code, out = t.exec("client", *CURL, "http://web-strict:8080/echo")
    assert out.endswith("\n200"), out

    # Every refusal is in the target's log, naming the attacker's address or identity.
    strict_log = sidecar_log(t, "web-strict-proxy", started)
    assert any(f"refused plaintext from {ip} to port 8080" in strict_log for ip in outsider_ips), strict_log[-2000:]
    assert any(f"refused plaintext from {ip} to port 6379" in strict_log for ip in outsider_ips), strict_log[-2000:]
    assert any(f"refused mutual TLS from {ip}" in strict_log for ip in outsider_ips), strict_log[-2000:]
    denied = [e for e in inbound(t, "web-strict-proxy") if e["time"] >= started and e["status"] == 403
              and e.get("source") == f"{TD}/e2etestbed/sa/intruder"]
    assert denied and denied[-1]["mtls"], "the intruder's refused request is not in the access log"
    replayed = [e for e in inbound(t, "web-proxy") if e["time"] >= started and e["path"] == "/status/200"]
    assert replayed and replayed[-1]["status"] == 403


# --- abusive HTTP: malformed, huge, slow -------------------------------------------------------------------------

ABUSE = r"""
import json, socket, sys, time
host, port = sys.argv[1], int(sys.argv[2])
def exchange(data, wait=5.0):
    s = socket.create_connection((host, port), timeout=wait)
    got = b''
    try:
        s.sendall(data)
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            got += chunk
            if b'\r\n\r\n' in got and len(got) > 12:
                break
        return got[:200].decode(errors='replace')
    except socket.timeout:
        return 'TIMEOUT ' + got[:200].decode(errors='replace')
    except OSError as e:
        return 'CLOSED ' + type(e).__name__
    finally:
        s.close()
cases = {
    'bad-request-line': b'GARBAGE\r\n\r\n',
    'no-version': b'GET /echo\r\n\r\n',
    'bad-version': b'GET /echo HTTP/9.9\r\nhost: x\r\n\r\n',
    'nul-in-target': b'GET /e\x00cho HTTP/1.1\r\nhost: x\r\n\r\n',
    'bad-header': b'GET /echo HTTP/1.1\r\nhost: x\r\nno colon here\r\n\r\n',
    'bad-content-length': b'POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: -5\r\n\r\n',
    'two-content-lengths': b'POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\nab',
    'huge-header': b'GET /echo HTTP/1.1\r\nhost: x\r\nx-big: ' + b'a' * 300000 + b'\r\n\r\n',
    'many-headers': b'GET /echo HTTP/1.1\r\nhost: x\r\n' + b''.join(b'x-h%d: v\r\n' % i for i in range(5000)) + b'\r\n',
    'huge-target': b'GET /' + b'a' * 300000 + b' HTTP/1.1\r\nhost: x\r\n\r\n',
}
print(json.dumps({name: exchange(data) for name, data in cases.items()}))
"""

SLOW = r"""
import socket, sys, time
host, port, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
socks = []
for _ in range(20):  # slowloris: 20 connections, each dribbling a request one byte at a time
    s = socket.create_connection((host, port), timeout=5); s.sendall(b'GET /echo HTTP/1.1\r\n'); socks.append(s)
end = time.time() + seconds
while time.time() < end:
    for s in socks:
        try: s.sendall(b'x')
        except OSError: pass
    time.sleep(0.5)
print('done')
"""


def test_malformed_huge_and_slow_requests_get_http_errors_and_the_sidecar_keeps_serving(testbed: App) -> None:
    t = testbed
    # Inbound (outsider -> web's sidecar, plaintext, PERMISSIVE) and outbound (client's app -> its own sidecar).
    for caller, port in (("outsider", "8080"), ("client", "8080")):
        code, out = t.exec(caller, "python3", "-c", ABUSE, "web", port)
        assert code == 0, out
        answers = json.loads(out)
        # A well-formed HTTP error, or the connection closed: never a hang, never the request served.
        served = {case: answer for case, answer in answers.items()
                  if not (answer.startswith(("HTTP/1.1 4", "HTTP/1.1 5", "CLOSED")) or answer == "")}
        assert not served, f"{caller}: {served}"
        assert answers["many-headers"].startswith("HTTP/1.1 431") and answers["huge-header"].startswith(
            ("HTTP/1.1 4", "CLOSED")), answers
    # Slow clients hold connections, but cannot starve everyone else.
    slow = threading.Thread(target=t.exec, args=("outsider", "python3", "-c", SLOW, "web", "8080", "8"))
    slow.start()
    time.sleep(1)
    for _ in range(20):
        started = time.monotonic()
        code, out = t.exec("client", "curl", "-s", "--max-time", "5", "-o", "/dev/null", "-w", "%{http_code}",
                           "http://web:8080/echo")
        assert (code, out) == (0, "200") and time.monotonic() - started < 3
    slow.join()
    # Still the same proxy process (no crash and restart), still serving.
    logs = t.container("web-proxy").logs(stdout=False, stderr=True, tail=200).decode(errors="replace")
    assert "Traceback" not in logs and "restarting" not in logs, logs[-3000:]
    code, out = t.exec("client", "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "http://web:8080/echo")
    assert out == "200"
