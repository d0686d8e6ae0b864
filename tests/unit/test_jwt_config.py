"""RequestAuthentication at apply time and in compile (issue 14, item 5): jwksUri is http(s) only, an inline
jwks must be a JWKS of signing keys, and no resource field makes the control plane read a host file into a
snapshot, not even one stored by an earlier version."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from meshctl.config.resources import check_document
from meshctl.config.store import Store
from meshctl.mesh import Pod
from meshctl.pilot.security import request_authentication
from meshctl.status import ExitCode
from tests.unit.cli import meshctl
from tests.unit.jwtkit import ISSUER, JWKS, P256, RSA_KEY, jwk, jwks
from tests.unit.test_cli_errors import one_error_line
from tests.unit.test_inject import BOOKINFO, inject

URI_ERROR = ("spec.jwtRules[0].jwksUri: must be an http:// or https:// URL (file paths are not read; put the keys "
             "inline with jwks)")
POD = Pod(service="reviews-v1", sidecar="reviews-v1-proxy", app="reviews", version="v1", mode="PERMISSIVE",
          exclude_inbound=(), exclude_outbound=(), published=())


def request_auth(rule: dict[str, Any], name: str = "jwt") -> dict[str, Any]:
    return {"apiVersion": "security.istio.io/v1", "kind": "RequestAuthentication", "metadata": {"name": name},
            "spec": {"jwtRules": [{"issuer": ISSUER, **rule}]}}


@pytest.mark.parametrize("uri", [
    "file:///etc/passwd", "file://localhost/etc/shadow", "FILE:///etc/passwd", "file:jwks.json", "/etc/passwd",
    "/home/me/.meshctl/ca/key.pem", "./jwks.json", "../ca/key.pem", "~/jwks.json", "jwks.json", "C:\\jwks.json",
    "ftp://host/jwks.json", "data:application/json,{\"keys\":[]}", "gopher://host/", "issuer.example/jwks",
    "//issuer.example/jwks", "http:/jwks", "https://", "http://exa mple/", "http://x/\n",
])
def test_a_jwks_uri_that_is_not_http_is_refused_at_apply(uri: str) -> None:
    resource, problems = check_document(request_auth({"jwksUri": uri}), "ra.yaml")
    assert resource is None and len(problems) == 1, problems
    assert problems[0].startswith("ra.yaml: RequestAuthentication jwt") and problems[0].endswith(URI_ERROR)


@pytest.mark.parametrize("uri", ["http://auth:8080/jwks.json", "https://issuer.example/.well-known/jwks.json",
                                 "https://10.0.0.7/keys", "http://[fd00::1]:9000/jwks"])
def test_an_http_jwks_uri_is_accepted(uri: str) -> None:
    resource, problems = check_document(request_auth({"jwksUri": uri}), "ra.yaml")
    assert problems == [] and resource is not None


@pytest.mark.parametrize(("document", "named"), [
    (jwks(jwk(P256, "enc", use="enc")), "jwks: keys[0] (kid 'enc'): use is 'enc'"),
    (jwks(jwk(RSA_KEY, "r"), jwk(P256, "ops", key_ops=["encrypt", "decrypt"])), "jwks: keys[1] (kid 'ops'): key_ops"),
    (jwks(jwk(P256, "a", alg="ES512")), "jwks: keys[0] (kid 'a'): alg 'ES512' does not fit"),
    (jwks({"kty": "oct", "k": "c2VjcmV0"}), "jwks: keys[0]: kty 'oct' is not accepted"),
    (jwks({**jwk(P256, "priv"), "d": "AAAA"}), "jwks: keys[0] (kid 'priv'): holds private"),
    ('{"keys": []}', "jwks: not a JWKS"), ("not json", "jwks: not a JWKS"),
])
def test_an_inline_jwks_with_a_key_not_for_signatures_is_refused_naming_it(document: str, named: str) -> None:
    resource, problems = check_document(request_auth({"jwks": document}), "ra.yaml")
    assert resource is None and len(problems) == 1 and f"spec.jwtRules[0].{named}" in problems[0], problems


def test_a_good_inline_jwks_is_accepted() -> None:
    good = jwks(jwk(RSA_KEY, "r"), jwk(P256, "p", use="sig"), jwk(RSA_KEY, "ps", alg="PS256", key_ops=["verify"]))
    resource, problems = check_document(request_auth({"jwks": good}), "ra.yaml")
    assert problems == [] and resource is not None


def test_apply_refuses_a_file_jwks_uri_in_one_line_and_stores_nothing(installed_home: Path, tmp_path: Path) -> None:
    before = Store(installed_home / "config").read().revision
    for uri in (f"file://{installed_home}/ca/ca-key.pem", f"{installed_home}/ca/ca-key.pem"):
        target = tmp_path / "ra.yaml"
        target.write_text(yaml.safe_dump(request_auth({"jwksUri": uri})))
        done = meshctl("apply", "-f", str(target), home=installed_home)
        assert done.code == ExitCode.INVALID_INPUT, done.err
        assert URI_ERROR in one_error_line(done.err)
    assert Store(installed_home / "config").read().revision == before


SECRET = "-----BEGIN PRIVATE KEY-----\nTHE-HOST-SECRET\n-----END PRIVATE KEY-----\n"


@pytest.mark.parametrize("form", ["file://{}", "{}", "file://localhost{}"])
def test_a_stored_file_jwks_uri_compiles_to_a_jwks_error_without_reading_it(tmp_path: Path, form: str) -> None:
    secret = tmp_path / "secret.pem"
    secret.write_text(SECRET)
    stored = request_auth({"jwksUri": form.format(secret)})  # as an earlier version accepted it
    compiled = request_authentication([stored], "shop", POD)
    assert len(compiled) == 1 and compiled[0]["jwks_error"] and "jwksUri" not in compiled[0]
    assert "jwks" not in compiled[0]
    text = json.dumps(compiled)
    assert "THE-HOST-SECRET" not in text and str(secret) not in text  # neither the file nor where it is


def test_a_stored_unusable_inline_jwks_compiles_to_a_jwks_error() -> None:
    compiled = request_authentication([request_auth({"jwks": '{"keys": 5}'})], "shop", POD)
    assert "not usable" in compiled[0]["jwks_error"]
    mixed = request_authentication([request_auth({"jwks": JWKS})], "shop", POD)  # an enc key among signing keys
    assert "jwks_error" not in mixed[0] and mixed[0]["jwks"] == JWKS


def test_an_old_store_with_a_file_jwks_uri_never_puts_the_file_in_a_snapshot(installed_home: Path,
                                                                              tmp_path: Path) -> None:
    inject(installed_home, BOOKINFO, tmp_path / "meshed.yaml")
    secret = tmp_path / "secret.pem"
    secret.write_text(SECRET)
    ca_keys = [p for p in (installed_home / "ca").rglob("*") if p.is_file() and "key" in p.name]
    assert ca_keys, "the CA's key is where this test expects it"
    old = [request_auth({"jwksUri": f"file://{secret}"}, "old-file"),
           request_auth({"jwksUri": str(ca_keys[0])}, "old-ca-key")]
    Store(installed_home / "config").commit(lambda resources: resources + old, "an earlier version's store",
                                            time.time())
    done = meshctl("mtls", "set", "--mode", "strict", home=installed_home)  # compiles every proxy's snapshot
    assert done.code == 0, done.err
    snapshots = list((installed_home / "proxies").rglob("snapshot.json"))
    assert snapshots
    ca_text = ca_keys[0].read_text()
    for path in snapshots:
        text = path.read_text()
        assert "THE-HOST-SECRET" not in text and ca_text.strip().splitlines()[1] not in text
        assert str(secret) not in text and str(ca_keys[0]) not in text
    rules = json.loads((installed_home / "proxies" / "shop" / "reviews-v1" / "snapshot.json").read_text())
    jwt_rules = rules.get("jwt") or rules.get("security", {}).get("jwt")
    assert jwt_rules and all(r.get("jwks_error") and "jwksUri" not in r for r in jwt_rules)
