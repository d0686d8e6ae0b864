"""`meshctl mtls set`, `authz allow|check` and `certs status` on a mesh home (no engine needed)."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from meshctl.status import ExitCode
from tests.unit.cli import meshctl
from tests.unit.test_cli_errors import one_error_line
from tests.unit.test_inject import BOOKINFO, inject


def snapshot(home: Path, service: str) -> dict:
    return json.loads((home / "proxies" / "shop" / service / "snapshot.json").read_text())


def test_mtls_set_compiles_into_the_selected_proxies(installed_home: Path, tmp_path: Path) -> None:
    inject(installed_home, BOOKINFO, tmp_path / "meshed.yaml")
    done = meshctl("mtls", "set", "reviews", "--mode", "strict", "--port", "9080=permissive", home=installed_home)
    assert done.code == 0, done.err
    assert snapshot(installed_home, "reviews-v2")["inbound"]["mode"] == "STRICT"
    assert snapshot(installed_home, "reviews-v2")["inbound"]["port_modes"] == {"9080": "PERMISSIVE"}
    assert snapshot(installed_home, "details")["inbound"]["mode"] == "PERMISSIVE"  # not selected
    mesh = meshctl("mtls", "set", "--mode", "strict", home=installed_home)  # mesh-wide
    assert mesh.code == 0 and snapshot(installed_home, "details")["inbound"]["mode"] == "STRICT"
    bad = meshctl("mtls", "set", "nope", home=installed_home)
    assert bad.code == ExitCode.USAGE and "no meshed service is called 'nope'" in one_error_line(bad.err)
    worse = meshctl("mtls", "set", "reviews", "--mode", "sometimes", home=installed_home)
    assert worse.code == ExitCode.USAGE and "spec.mtls.mode" in one_error_line(worse.err)


def test_authz_allow_and_check(installed_home: Path, tmp_path: Path) -> None:
    inject(installed_home, BOOKINFO, tmp_path / "meshed.yaml")
    dry = meshctl("authz", "allow", "--from", "productpage", "--to", "reviews", "--method", "get", "--dry-run",
                  home=installed_home)
    policy = yaml.safe_load(dry.out)
    assert policy["spec"] == {"selector": {"matchLabels": {"app": "reviews"}}, "action": "ALLOW", "rules": [
        {"from": [{"source": {"principals": ["cluster.local/ns/shop/sa/bookinfo-productpage"]}}],  # its account
         "to": [{"operation": {"methods": ["GET"]}}]}]}
    assert meshctl("authz", "allow", "--from", "productpage", "--to", "reviews", "--method", "GET",
                   home=installed_home).code == 0
    assert snapshot(installed_home, "reviews-v1")["authorization"][0]["name"] == "allow-productpage-to-reviews"
    assert snapshot(installed_home, "details")["authorization"] == []
    checked = json.loads(meshctl("authz", "check", "reviews", "-o", "json", home=installed_home).out)
    assert checked["default"].startswith("deny") and checked["policies"][0]["action"] == "ALLOW"
    assert "methods GET" in checked["policies"][0]["rules"]
    status = json.loads(meshctl("certs", "status", "-o", "json", home=installed_home).out)
    assert len(status) == 8 and {r["state"] for r in status} == {"VALID"}
