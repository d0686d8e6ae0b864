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
