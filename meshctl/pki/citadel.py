"""Citadel: issue, renew and rotate workload certificates, and rotate the root in stages.

    ca/root-cert.pem, root-key.pem   the issuing root (key 0600, never mounted into a container)
    ca/trust-bundle.pem              the roots every sidecar trusts; both roots while one replaces the other
    ca/next-*.pem                    the incoming root during a root rotation
    ca/rotation.json                 the stage a root rotation reached, so an interrupted one resumes
    ca/.lock                         held around every issuance and every stage

A sidecar reads its cert.pem, key.pem and bundle.pem from its own directory and reloads them when they
change: in-flight connections keep their session, new ones use the new files.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from meshctl.config.schema import parse_duration
from meshctl.fsutil import atomic_write, locked, own_by_proxy, read_text
from meshctl.home import MeshHome
from meshctl.mesh import BUNDLE_PEM, CERT_PEM, KEY_PEM, MeshedPods, read_proxy_info
from meshctl.pki import ca as pki
from meshctl.pki import workload
from meshctl.runtime import delivery

log = logging.getLogger(__name__)

BUNDLE_FILE = "trust-bundle.pem"
RENEW_AT = 0.5  # of a certificate's life, as Istio's agent does


@dataclass(frozen=True)
class WorkloadCertInfo:
    proxy: str  # project.service
    directory: Path
    identity: str
    serial: str
    issued: dt.datetime
    expires: dt.datetime
    issuer: str
    issuer_serial: str | None

    def state(self, now: dt.datetime, trusted: set[str]) -> str:
        if now >= self.expires:
            return "EXPIRED"
        if self.issuer_serial is not None and self.issuer_serial not in trusted:
            return "UNTRUSTED ISSUER"
        life = (self.expires - self.issued).total_seconds()
        if (self.expires - now).total_seconds() < 0.25 * life:
            return "EXPIRING"
        return "VALID"


def cert_ttl(home: MeshHome) -> dt.timedelta:
    return dt.timedelta(seconds=parse_duration(home.settings().cert_ttl))


def trust_bundle(home: MeshHome) -> bytes:
    path = home.ca_dir / BUNDLE_FILE
    return path.read_bytes() if path.is_file() else pki.load_root(home.ca_dir).cert_pem()


def trusted_serials(bundle: bytes) -> set[str]:
    return {f"{c.serial_number:x}" for c in x509.load_pem_x509_certificates(bundle)}


def read_info(directory: Path, roots: dict[bytes, str]) -> WorkloadCertInfo | None:
    try:
        cert = x509.load_pem_x509_certificate((directory / CERT_PEM).read_bytes())
    except (OSError, ValueError):
        return None
    try:
        aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier
    except x509.ExtensionNotFound:
        aki = None
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    uris = sans.get_values_for_type(x509.UniformResourceIdentifier)
    return WorkloadCertInfo(
        proxy=f"{directory.parent.name}.{directory.name}", directory=directory, identity=uris[0] if uris else "?",
        serial=f"{cert.serial_number:x}", issued=cert.not_valid_before_utc + dt.timedelta(minutes=5),
        expires=cert.not_valid_after_utc, issuer=cert.issuer.rfc4514_string(),
        issuer_serial=roots.get(aki) if aki else None)


def _roots_by_key_id(bundle: bytes) -> dict[bytes, str]:
    out = {}
    for c in x509.load_pem_x509_certificates(bundle):
        ski = x509.SubjectKeyIdentifier.from_public_key(c.public_key()).digest
        out[ski] = f"{c.serial_number:x}"
    return out


def workload_certs(home: MeshHome) -> Iterator[WorkloadCertInfo]:
    roots = _roots_by_key_id(trust_bundle(home) + _next_root_pem(home))
    for directory in MeshedPods.of(home).directories():
        info = read_info(directory, roots)
        if info is not None:
            yield info


def cert_states(home: MeshHome, now: dt.datetime) -> list[tuple[WorkloadCertInfo, str]]:
    """Every workload certificate with its state (VALID, EXPIRING, EXPIRED, UNTRUSTED ISSUER)."""
    trusted = trusted_serials(trust_bundle(home))
    return [(i, i.state(now, trusted)) for i in workload_certs(home)]


def _next_root_pem(home: MeshHome) -> bytes:
    path = home.ca_dir / "next-cert.pem"
    return path.read_bytes() if path.is_file() else b""


def _identity(directory: Path) -> str:
    return read_proxy_info(directory).identity


def write_cert(directory: Path, cert: workload.WorkloadCert) -> None:
    """Key first, then certificate: a sidecar that reads the pair in between finds them mismatched, keeps
    the pair in force and loads the new one a second later."""
    atomic_write(directory / KEY_PEM, cert.key_pem(), mode=0o600)
    own_by_proxy(directory / KEY_PEM)
    atomic_write(directory / CERT_PEM, cert.cert_pem(), mode=0o644)
    own_by_proxy(directory / CERT_PEM)


def write_bundle(directory: Path, bundle: bytes) -> None:
    atomic_write(directory / BUNDLE_PEM, bundle, mode=0o644)
    own_by_proxy(directory / BUNDLE_PEM)


def reissue(home: MeshHome, directories: list[Path], now: dt.datetime) -> list[str]:
    """New certificates for these proxies from the issuing root; returns the new serials."""
    with locked(home.ca_dir / ".lock"):
        serials = _reissue(home, directories, now)
    _deliver(home, directories)  # outside the CA's lock: a node that does not answer holds up no issuance
    return serials


def _reissue(home: MeshHome, directories: list[Path], now: dt.datetime) -> list[str]:
    serials = []
    root, ttl, bundle = pki.load_root(home.ca_dir), cert_ttl(home), trust_bundle(home)
    for directory in directories:
        cert = workload.issue(root, _identity(directory), now, ttl)
        write_cert(directory, cert)
        if (directory / BUNDLE_PEM).read_bytes() != bundle:
            write_bundle(directory, bundle)
        serials.append(f"{cert.cert.serial_number:x}")
    return serials


def pair_matches(directory: Path) -> bool:
    """Whether key.pem is the key of cert.pem: not so after a writer was killed between the two files."""
    try:
        key = serialization.load_pem_private_key((directory / KEY_PEM).read_bytes(), password=None)
        cert = x509.load_pem_x509_certificate((directory / CERT_PEM).read_bytes())
    except (OSError, ValueError, TypeError):
        return False
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    return key.public_key().public_bytes(*spki) == cert.public_key().public_bytes(*spki)


def renewal_time(info: WorkloadCertInfo) -> dt.datetime:
    life = (info.expires - info.issued).total_seconds()
    return info.issued + dt.timedelta(seconds=RENEW_AT * life)


def due_for_renewal(info: WorkloadCertInfo, now: dt.datetime) -> bool:
    return now >= renewal_time(info)


def renew_due(home: MeshHome, now: dt.datetime) -> list[str]:
    """Renew every certificate past half its life (the agent's job), and any pair a killed writer left
    mismatched (a new key.pem, the old cert.pem); returns the proxies renewed."""
    with locked(home.ca_dir / ".lock"):  # decided under the lock: a re-issue half done elsewhere is no mismatch
        due = [i for i in workload_certs(home) if due_for_renewal(i, now) or not pair_matches(i.directory)]
        _reissue(home, [i.directory for i in due], now)
    _deliver(home, [i.directory for i in due])
    return [i.proxy for i in due]


# --- root rotation ---------------------------------------------------------------------------------------

STAGES = ("trust-both", "reissue", "retire")


def rotation_state(home: MeshHome) -> dict[str, str] | None:
    path = home.ca_dir / "rotation.json"
    return dict(json.loads(read_text(path))) if path.is_file() else None


def _save_state(home: MeshHome, state: dict[str, str] | None) -> None:
    path = home.ca_dir / "rotation.json"
    if state is None:
        path.unlink(missing_ok=True)
    else:
        atomic_write(path, json.dumps(state), mode=0o600)


def _deliver(home: MeshHome, directories: list[Path]) -> None:
    """Across hosts, new files travel to each pod's volume; a node that is down gets them from the agent's
    next round (delivery remembers what each pod has)."""
    report = delivery.deliver(home, directories)
    for warning in report.warnings():
        log.warning("%s", warning)


def _distribute_bundle(home: MeshHome, bundle: bytes) -> None:
    atomic_write(home.ca_dir / BUNDLE_FILE, bundle, mode=0o644)
    directories = MeshedPods.of(home).directories()
    for directory in directories:
        write_bundle(directory, bundle)


def root_stage(home: MeshHome, stage: str, now: dt.datetime) -> dict[str, str]:
    """Carry out one stage of a root rotation (idempotent, so a resumed rotation repeats it safely).

    trust-both: issue the new root; every sidecar trusts old and new.
    reissue:    the new root becomes the issuer; every workload certificate is issued again under it.
    retire:     the old root leaves the trust bundle; its key is deleted.
    """
    ca_dir = home.ca_dir
    with locked(ca_dir / ".lock"):
        state = rotation_state(home) or {}
        if stage == "trust-both":
            if not (ca_dir / "next-cert.pem").is_file():
                pki.save_root(pki.create_root(home.settings().trust_domain, now), ca_dir, prefix="next")
            # From the files, not the saved state: a stage killed before it saved its state resumes here.
            old, new = pki.load_root(ca_dir), pki.load_root(ca_dir, prefix="next")
            state = {"stage": stage, "old": f"{old.cert.serial_number:x}", "new": f"{new.cert.serial_number:x}"}
            _distribute_bundle(home, old.cert_pem() + new.cert_pem())
        elif stage == "reissue":
            if (ca_dir / "next-cert.pem").is_file():
                old, new = pki.load_root(ca_dir), pki.load_root(ca_dir, prefix="next")
                if old.cert.serial_number != new.cert.serial_number:  # else a killed stage made the swap already
                    pki.save_root(old, ca_dir / "retired", prefix=f"{old.cert.serial_number:x}")
                pki.save_root(new, ca_dir)
                (ca_dir / "next-cert.pem").unlink()
            (ca_dir / "next-key.pem").unlink(missing_ok=True)
            state["stage"] = stage
        elif stage == "retire":
            _distribute_bundle(home, pki.load_root(ca_dir).cert_pem())
            for key in (ca_dir / "retired").glob("*-key.pem"):
                key.unlink()  # a retired root signs nothing ever again
            state["stage"] = "done"
        _save_state(home, None if state.get("stage") == "done" else state)
    if stage == "reissue":
        reissue(home, MeshedPods.of(home).directories(), now)
    elif stage in ("trust-both", "retire"):  # the new bundle, outside the lock (a dead node's timeout holds none)
        _deliver(home, MeshedPods.of(home).directories())
    return state
