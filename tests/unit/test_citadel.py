"""Citadel on disk: renewal at half life, re-issue, and the three stages of a root rotation."""

from __future__ import annotations

import datetime as dt
import stat
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from meshctl.home import MeshHome
from meshctl.mesh import MeshedPods
from meshctl.pki import ca, citadel
from tests.unit.test_inject import BOOKINFO, inject


def meshed(installed_home: Path, tmp_path: Path) -> MeshHome:
    inject(installed_home, BOOKINFO, tmp_path / "meshed.yaml")
    return MeshHome(installed_home)


def issued_by(cert_file: Path, root: ca.RootCA) -> bool:
    cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    try:
        root.cert.public_key().verify(cert.signature, cert.tbs_certificate_bytes,  # type: ignore[call-arg,union-attr]
                                      ec.ECDSA(cert.signature_hash_algorithm))  # type: ignore[arg-type]
    except Exception:
        return False
    return True


def test_renewal_happens_at_half_life_only(installed_home: Path, tmp_path: Path) -> None:
    home = meshed(installed_home, tmp_path)
    certs = {i.proxy: i for i in citadel.workload_certs(home)}
    assert len(certs) == 8 and all((i.expires - i.issued) == dt.timedelta(hours=24) for i in certs.values())
    start = min(i.issued for i in certs.values())
    assert citadel.renew_due(home, start + dt.timedelta(hours=11)) == []
    renewed = citadel.renew_due(home, start + dt.timedelta(hours=12, minutes=1))
    assert sorted(renewed) == sorted(certs)
    after = {i.proxy: i.serial for i in citadel.workload_certs(home)}
    assert all(after[p] != certs[p].serial for p in certs)
    for d in MeshedPods.of(home).directories():  # the key stays the proxy's own, 0600
        assert stat.S_IMODE((d / "key.pem").stat().st_mode) == 0o600


def test_root_rotation_stages(installed_home: Path, tmp_path: Path) -> None:
    home = meshed(installed_home, tmp_path)
    old = ca.load_root(home.ca_dir)
    now = dt.datetime.now(dt.UTC)
    state = citadel.root_stage(home, "trust-both", now)
    assert citadel.rotation_state(home) == state and state["old"] == f"{old.cert.serial_number:x}"
    for d in MeshedPods.of(home).directories():
        assert len(x509.load_pem_x509_certificates((d / "bundle.pem").read_bytes())) == 2
        assert issued_by(d / "cert.pem", old)  # certificates do not change yet
    assert citadel.root_stage(home, "trust-both", now) == state  # a resumed stage changes nothing more
    citadel.root_stage(home, "reissue", now)
    new = ca.load_root(home.ca_dir)
    assert f"{new.cert.serial_number:x}" == state["new"]
    assert all(issued_by(d / "cert.pem", new) for d in MeshedPods.of(home).directories())
    assert not (home.ca_dir / "next-key.pem").exists()
    citadel.root_stage(home, "retire", now)
    for d in MeshedPods.of(home).directories():
        roots = x509.load_pem_x509_certificates((d / "bundle.pem").read_bytes())
        assert [r.serial_number for r in roots] == [new.cert.serial_number]
    assert citadel.rotation_state(home) is None and not list((home.ca_dir / "retired").glob("*-key.pem"))
