"""The mesh's root CA: ECDSA P-256, ten years, key readable by its owner only.

The CA key lives in <home>/ca and is never mounted into a container: sidecars get only their own
certificate and key plus the trust bundle (the root certificates they trust). The key file carries its
certificate too, so the pair is replaced in one rename: a writer killed between the two files cannot
leave a key that does not match its certificate. The certificate file is the public copy.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from meshctl import const
from meshctl.errors import InvalidInput
from meshctl.fsutil import atomic_write, ensure_dir, os_error

CERT_FILE = "root-cert.pem"
KEY_FILE = "root-key.pem"


@dataclass(frozen=True)
class RootCA:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def not_after(self) -> dt.datetime:
        return self.cert.not_valid_after_utc

    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)


def create_root(trust_domain: str, now: dt.datetime, days: int = const.CA_VALIDITY_DAYS) -> RootCA:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, trust_domain),
        x509.NameAttribute(NameOID.COMMON_NAME, f"meshctl root CA ({trust_domain})"),
    ])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))  # tolerate small clock skew between containers
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                          key_encipherment=False, data_encipherment=False, key_agreement=False,
                          encipher_only=False, decipher_only=False),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return RootCA(cert=cert, key=key)


def _files(ca_dir: Path, prefix: str) -> tuple[Path, Path]:
    """root-cert.pem/root-key.pem, or next-cert.pem/... for the incoming root of a rotation."""
    return ca_dir / CERT_FILE.replace("root", prefix), ca_dir / KEY_FILE.replace("root", prefix)


def save_root(ca: RootCA, ca_dir: Path, prefix: str = "root") -> None:
    ensure_dir(ca_dir, 0o700)
    cert_path, key_path = _files(ca_dir, prefix)
    key_pem = ca.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                   serialization.NoEncryption())
    atomic_write(key_path, key_pem + ca.cert_pem(), mode=0o600)  # the pair, in one rename
    atomic_write(cert_path, ca.cert_pem(), mode=0o644)


def has_root(ca_dir: Path) -> bool:
    return (ca_dir / CERT_FILE).is_file() and (ca_dir / KEY_FILE).is_file()


def load_root(ca_dir: Path, prefix: str = "root") -> RootCA:
    cert_path, key_path = _files(ca_dir, prefix)
    try:
        key_pem = key_path.read_bytes()
        # The key file's own certificate is the one that matches it; homes made before it carried one, don't.
        cert_pem = key_pem if b"-----BEGIN CERTIFICATE-----" in key_pem else cert_path.read_bytes()
        cert = x509.load_pem_x509_certificate(cert_pem)
        key = serialization.load_pem_private_key(key_pem, password=None)
    except OSError as exc:
        raise os_error(exc, exc.filename or ca_dir, "read the CA from") from exc
    except ValueError as exc:
        raise InvalidInput(f"the CA in {ca_dir} is not valid PEM: {exc}",
                           "restore it, or `meshctl uninstall --purge` and install again") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise InvalidInput(f"{key_path} is not an ECDSA key", "restore the CA key meshctl created")
    return RootCA(cert=cert, key=key)


def verify_root(ca: RootCA, now: dt.datetime) -> list[str]:
    """Problems that make this CA unusable; empty when it is sound."""
    problems = []
    cert_key = ca.cert.public_key()
    if not isinstance(cert_key, ec.EllipticCurvePublicKey) or \
            cert_key.public_numbers() != ca.key.public_key().public_numbers():
        problems.append("the CA key does not match the CA certificate")
    try:
        pub = ca.cert.public_key()
        assert isinstance(pub, ec.EllipticCurvePublicKey)
        sig_hash = ca.cert.signature_hash_algorithm
        assert sig_hash is not None
        pub.verify(ca.cert.signature, ca.cert.tbs_certificate_bytes, ec.ECDSA(sig_hash))
    except (InvalidSignature, AssertionError):
        problems.append("the CA certificate's signature is invalid")
    if now > ca.not_after:
        problems.append(f"the CA certificate expired on {ca.not_after:%Y-%m-%d}")
    elif now < ca.cert.not_valid_before_utc:
        problems.append("the CA certificate is not valid yet (check the clock)")
    return problems
