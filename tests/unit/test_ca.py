from __future__ import annotations

import datetime as dt
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec

from meshctl.pki import ca

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def test_root_is_p256_for_ten_years_with_private_key(tmp_path: Path) -> None:
    root = ca.create_root("cluster.local", NOW)
    assert isinstance(root.key.curve, ec.SECP256R1)
    assert (root.not_after - NOW).days == 3650
    ca.save_root(root, tmp_path / "ca")
    assert (tmp_path / "ca" / ca.KEY_FILE).stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "ca").stat().st_mode & 0o777 == 0o700
    loaded = ca.load_root(tmp_path / "ca")
    assert loaded.cert == root.cert
    assert ca.verify_root(loaded, NOW) == []


def test_verify_root_reports_expiry_and_mismatched_key() -> None:
    root = ca.create_root("cluster.local", NOW, days=1)
    assert any("expired" in p for p in ca.verify_root(root, NOW + dt.timedelta(days=2)))
    other = ca.create_root("cluster.local", NOW)
    mixed = ca.RootCA(cert=root.cert, key=other.key)
    assert any("does not match" in p for p in ca.verify_root(mixed, NOW))


def test_issuance_probe_passes_for_a_sound_root_and_fails_for_a_constrained_one() -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    from meshctl.pki import workload

    good = ca.create_root("cluster.local", NOW)
    assert workload.issuance_problem(good, "cluster.local", NOW) is None
    # A URI name constraint written as a SPIFFE URI is not a valid constraint: peers refuse its leaves.
    builder = x509.CertificateBuilder().subject_name(good.cert.subject).issuer_name(good.cert.subject) \
        .public_key(good.key.public_key()).serial_number(1).not_valid_before(good.cert.not_valid_before_utc) \
        .not_valid_after(good.not_after).add_extension(x509.BasicConstraints(ca=True, path_length=None), True) \
        .add_extension(x509.NameConstraints([x509.UniformResourceIdentifier("spiffe://cluster.local")], None), True)
    bad = ca.RootCA(builder.sign(good.key, hashes.SHA256()), good.key)
    assert "fail verification" in (workload.issuance_problem(bad, "cluster.local", NOW) or "")
