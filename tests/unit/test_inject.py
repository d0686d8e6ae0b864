"""The injector on real compose files: structure, identities, idempotence, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from cryptography import x509

from meshctl.resources import SAMPLES
from meshctl.status import ExitCode
from sidecar import snapshot as contract
from tests.unit.cli import meshctl
from tests.unit.test_cli_errors import one_error_line

BOOKINFO = SAMPLES / "bookinfo" / "compose.yaml"


def inject(home: Path, source: Path | str, out: Path, *flags: str) -> dict:
    done = meshctl("inject", str(source), "-o", str(out), "-p", "shop", *flags, home=home)
    assert done.code == 0, done.err
    return yaml.safe_load(out.read_text())


def test_bookinfo_becomes_pods_of_sidecar_and_app(installed_home: Path, tmp_path: Path) -> None:
    meshed = inject(installed_home, BOOKINFO, BOOKINFO.parent / "meshed.yaml")
    services = meshed["services"]
    assert len(services) == 16  # 8 pods: ratings has 3 replicas
    sidecar, app = services["productpage-proxy"], services["productpage"]
    assert app["network_mode"] == "service:productpage-proxy"
    assert app["depends_on"]["productpage-proxy"] == {"condition": "service_healthy"}
    assert app["depends_on"]["details"] == {"condition": "service_started"}
    assert "ports" not in app and sidecar["ports"] == ["9080:9080"]
    assert app["environment"] == {"ROLE": "productpage", "SERVICE_VERSION": "v1"}  # kept as it was
    assert sidecar["cap_add"] == ["NET_ADMIN"] and "healthcheck" in sidecar
    assert sidecar["networks"]["default"]["aliases"] == ["productpage"]
    assert services["reviews-v2-proxy"]["networks"]["default"]["aliases"] == ["reviews", "reviews-v2"]
    assert meshed["networks"]["meshctl"] == {"external": True, "name": "meshctl"}
    # each sidecar mounts only its own directory, read-only; the CA never enters a container
    mounts = [v for s in services.values() for v in s.get("volumes", [])]
    assert all(m.startswith(str(installed_home / "proxies" / "shop")) and m.endswith(":/etc/meshctl:ro")
               for m in mounts)
    assert not any("/ca" in m for m in mounts)
    (BOOKINFO.parent / "meshed.yaml").unlink()


def test_identity_certificate_key_and_snapshot(installed_home: Path, tmp_path: Path) -> None:
    inject(installed_home, BOOKINFO, tmp_path / "out.yaml")
    proxy = installed_home / "proxies" / "shop" / "reviews-v2"
    assert (proxy / "key.pem").stat().st_mode & 0o777 == 0o600
    assert proxy.stat().st_mode & 0o777 == 0o700
    cert = x509.load_pem_x509_certificate((proxy / "cert.pem").read_bytes())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [u.value for u in sans] == ["spiffe://cluster.local/ns/shop/sa/bookinfo-reviews"]  # its account label
    snap = contract.parse(json.loads((proxy / "snapshot.json").read_text()))  # the data plane's own parser
    assert (snap.app, snap.version, snap.mode) == ("reviews", "v2", "PERMISSIVE")
    reviews = next(s for s in snap.services if s.name == "reviews")
    assert [(w.host, w.version) for w in reviews.workloads] == [("reviews-v1", "v1"), ("reviews-v2", "v2"),
                                                                 ("reviews-v3", "v3")]


def test_relative_paths_follow_the_output_directory(installed_home: Path, tmp_path: Path) -> None:
    meshed = inject(installed_home, BOOKINFO, tmp_path / "elsewhere.yaml")
    assert meshed["services"]["details"]["build"]["context"] == str(BOOKINFO.parent / "app")


def test_injecting_a_meshed_file_returns_it_unchanged(installed_home: Path, tmp_path: Path) -> None:
    inject(installed_home, BOOKINFO, tmp_path / "once.yaml")
    again = meshctl("inject", str(tmp_path / "once.yaml"), home=installed_home)
    assert again.code == 0 and "unchanged" in again.err
    assert again.out == (tmp_path / "once.yaml").read_text()


def test_opt_out_modes_and_excluded_ports(installed_home: Path, tmp_path: Path) -> None:
    source = tmp_path / "compose.yaml"
    source.write_text(yaml.safe_dump({"services": {
        "db": {"image": "redis", "labels": {"mesh.inject": "false"}, "ports": ["6379:6379"]},
        "api": {"image": "api", "labels": ["mesh.mtls-mode=strict", "mesh.exclude-inbound-ports=9000, 9001"],
                "depends_on": ["db"]},
    }}))
    meshed = inject(installed_home, source, tmp_path / "out.yaml")
    assert meshed["services"]["db"] == {"image": "redis", "labels": {"mesh.inject": "false"}, "ports": ["6379:6379"]}
    snap = contract.parse(json.loads((installed_home / "proxies/shop/api/snapshot.json").read_text()))
    assert snap.mode == "STRICT" and snap.exclude_inbound_ports == {9000, 9001}
    assert [s.name for s in snap.services] == ["api"]  # opted-out services are not mesh endpoints


BAD = {
    "invalid_yaml": ("services:\n  web: [image: x\n", "invalid YAML at line"),
    "not_compose": ("just: a map\n", "is not a compose file"),
    "unknown_dependency": ("services:\n  web:\n    image: x\n    depends_on: [db]\n",
                           "service 'web': `depends_on` names unknown service 'db'"),
    "host_network": ("services:\n  web:\n    image: x\n    network_mode: host\n",
                     "service 'web': `network_mode: host` cannot be meshed"),
    "bad_mode_label": ("services:\n  web:\n    image: x\n    labels: {mesh.mtls-mode: loose}\n",
                       "service 'web': label `mesh.mtls-mode: loose` must be one of"),
    "bad_port_label": ("services:\n  web:\n    image: x\n    labels: {mesh.exclude-inbound-ports: '80,http'}\n",
                       "service 'web': label `mesh.exclude-inbound-ports`: 'http' is not a port"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_compose_files_get_one_line_and_change_nothing(case: str, installed_home: Path, tmp_path: Path) -> None:
    text, expected = BAD[case]
    source, out = tmp_path / "compose.yaml", tmp_path / "out.yaml"
    source.write_text(text)
    done = meshctl("inject", str(source), "-o", str(out), home=installed_home)
    assert done.code == ExitCode.INVALID_INPUT
    line = one_error_line(done.err)
    assert expected in line and str(source) in line
    assert not out.exists()
    assert list((installed_home / "proxies").iterdir()) == []


def test_inject_before_install_says_what_to_do(home: Path, tmp_path: Path) -> None:
    done = meshctl("inject", str(BOOKINFO), home=home)
    assert done.code == ExitCode.NOT_INSTALLED
    assert "meshctl install" in one_error_line(done.err)


def test_stdin_input_and_replicas_become_one_pod_each(installed_home: Path) -> None:
    compose = "services:\n  web:\n    image: nginx\n    deploy: {replicas: 3, resources: {limits: {cpus: '1'}}}\n" \
              "  api:\n    image: api\n    depends_on: [web]\n"
    done = meshctl("inject", "-", "-p", "shop", home=installed_home, stdin=compose)
    assert done.code == 0, done.err
    services = yaml.safe_load(done.out)["services"]
    assert [n for n in services if n.startswith("web")] == ["web-proxy", "web", "web-2-proxy", "web-2",
                                                            "web-3-proxy", "web-3"]
    for name in ("web", "web-2", "web-3"):
        assert services[name]["network_mode"] == f"service:{name}-proxy"
        assert services[name]["deploy"] == {"resources": {"limits": {"cpus": "1"}}}
        assert services[f"{name}-proxy"]["networks"]["default"]["aliases"] == ["web"]
    assert services["api"]["depends_on"]["web"] == {"condition": "service_started"}
    snap = contract.parse(json.loads((installed_home / "proxies/shop/web-3/snapshot.json").read_text()))
    web = next(s for s in snap.services if s.name == "web")
    assert [(w.host, w.version) for w in web.workloads] == [("web", "v1")]
    assert snap.identity == "spiffe://cluster.local/ns/shop/sa/web"


def test_replicas_with_a_host_port_are_refused(installed_home: Path) -> None:
    compose = "services:\n  web:\n    image: nginx\n    ports: ['8080:80']\n    deploy: {replicas: 2}\n"
    done = meshctl("inject", "-", home=installed_home, stdin=compose)
    assert done.code == ExitCode.INVALID_INPUT
    assert "publishes a host port with 2 replicas" in one_error_line(done.err)
