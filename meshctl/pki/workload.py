"""Workload certificates: one short-lived ECDSA key pair per proxy, its SPIFFE ID as the only URI SAN."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from meshctl.pki.ca import RootCA
from sidecar.contract import spiffe_id

DEFAULT_TTL = dt.timedelta(hours=24)


@dataclass(frozen=True)
class WorkloadCert:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def key_pem(self) -> bytes:
        return self.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption())


def issue(root: RootCA, identity: str, now: dt.datetime, ttl: dt.timedelta = DEFAULT_TTL,
          dns_names: Sequence[str] = ()) -> WorkloadCert:
    """`dns_names`: extra SANs for peers that cannot check a URI SAN (the bench's nginx reference)."""
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(identity), *(x509.DNSName(d) for d in dns_names)]
    not_after = min(now + ttl, root.not_after)  # never outlive the issuer
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(root.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName(names), critical=True)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=False, content_commitment=False,
                                     data_encipherment=False, key_agreement=True, key_cert_sign=False,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                       critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(root.key.public_key()), critical=False)
        .sign(root.key, hashes.SHA256())
    )
    return WorkloadCert(cert, key)


def issuance_problem(root: RootCA, trust_domain: str, now: dt.datetime) -> str | None:
    """Issue a throwaway workload certificate and verify it the way a peer will; None when it passes.

    Catches a root that looks valid but whose certificates peers would refuse (e.g. an unusable name
    constraint), which no amount of inspecting the root alone reveals.
    """
    from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

    leaf = issue(root, spiffe_id(trust_domain, "meshctl-check", "probe"), now, dt.timedelta(minutes=5))
    try:
        PolicyBuilder().store(Store([root.cert])).time(now).build_client_verifier().verify(leaf.cert, [])
    except VerificationError as exc:
        return f"certificates it issues fail verification ({exc})"
    return None
