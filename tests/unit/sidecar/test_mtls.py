"""Mutual TLS between two real endpoints built by the sidecar's own contexts (sidecar.engine.certs), in memory."""

from __future__ import annotations

import datetime as dt
import ssl
from pathlib import Path

import pytest

from meshctl.pki import ca, workload
from sidecar.engine.certs import Certificates
from sidecar.engine.tls import identity_problem

NOW = dt.datetime.now(dt.UTC)


def proxy_dir(tmp: Path, name: str, root: ca.RootCA, identity: str, trust: list[ca.RootCA]) -> Path:
    d = tmp / name
    d.mkdir()
    cert = workload.issue(root, identity, NOW)
    (d / "cert.pem").write_bytes(cert.cert_pem())
    (d / "key.pem").write_bytes(cert.key_pem())
    (d / "bundle.pem").write_bytes(b"".join(r.cert_pem() for r in trust))
    return d


def handshake(client: ssl.SSLObject, server: ssl.SSLObject, bios: tuple[ssl.MemoryBIO, ...]) -> bool:
    """Drive both ends in memory until both are done; False on any TLS error."""
    c_in, c_out, s_in, s_out = bios
    done = {id(client): False, id(server): False}
    for _ in range(20):
        for end in (client, server):
            if done[id(end)]:
                continue
            try:
                end.do_handshake()
                done[id(end)] = True
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLError:
                return False
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if all(done.values()):
            return True
    return False


def pair(client_dir: Path, server_dir: Path, expected: str) -> bool:
    """The engine's contexts (sidecar.engine.certs) on both ends, and the caller's identity check after."""
    client_certs, server_certs = Certificates(client_dir), Certificates(server_dir)
    assert client_certs.reload() and server_certs.reload()
    bios = tuple(ssl.MemoryBIO() for _ in range(4))
    client_context, server_context = client_certs.l7_client(), server_certs.server()
    assert client_context is not None and server_context is not None
    client = client_context.wrap_bio(bios[0], bios[1], server_side=False)
    server = server_context.wrap_bio(bios[2], bios[3], server_side=True)
    return handshake(client, server, bios) and identity_problem(client, expected) is None


def test_certificates_reload_only_when_the_files_change_and_keep_the_old_on_a_broken_pair(tmp_path: Path) -> None:
    root = ca.create_root("cluster.local", NOW)
    a = proxy_dir(tmp_path, "a", root, "spiffe://cluster.local/ns/p/sa/a", [root])
    certs = Certificates(a)
    assert certs.reload() and not certs.reload()
    first = certs.contexts
    assert certs.cert_info["cert_serial"] and certs.cert_info["trust_bundle"][0]["subject"]
    (a / "key.pem").write_bytes(b"half a key")  # a rotation caught half-written
    with pytest.raises(ssl.SSLError):
        certs.reload()
    assert certs.contexts is first  # the certificate in force stays


def test_mesh_peers_with_the_expected_identity_connect(tmp_path: Path) -> None:
    root = ca.create_root("cluster.local", NOW)
    a = proxy_dir(tmp_path, "a", root, "spiffe://cluster.local/ns/p/sa/a", [root])
    b = proxy_dir(tmp_path, "b", root, "spiffe://cluster.local/ns/p/sa/b", [root])
    assert pair(a, b, "spiffe://cluster.local/ns/p/sa/b")


def test_caller_refuses_a_server_with_another_identity(tmp_path: Path) -> None:
    root = ca.create_root("cluster.local", NOW)
    a = proxy_dir(tmp_path, "a", root, "spiffe://cluster.local/ns/p/sa/a", [root])
    b = proxy_dir(tmp_path, "b", root, "spiffe://cluster.local/ns/p/sa/b", [root])
    assert not pair(a, b, "spiffe://cluster.local/ns/p/sa/payments")


def test_server_refuses_a_client_from_another_ca(tmp_path: Path) -> None:
    root, rogue = ca.create_root("cluster.local", NOW), ca.create_root("cluster.local", NOW)
    a = proxy_dir(tmp_path, "a", rogue, "spiffe://cluster.local/ns/p/sa/a", [root])
    b = proxy_dir(tmp_path, "b", root, "spiffe://cluster.local/ns/p/sa/b", [root])
    assert not pair(a, b, "spiffe://cluster.local/ns/p/sa/b")


def test_both_roots_in_the_bundle_are_trusted(tmp_path: Path) -> None:
    old, new = ca.create_root("cluster.local", NOW), ca.create_root("cluster.local", NOW)
    a = proxy_dir(tmp_path, "a", old, "spiffe://cluster.local/ns/p/sa/a", [old, new])
    b = proxy_dir(tmp_path, "b", new, "spiffe://cluster.local/ns/p/sa/b", [old, new])
    assert pair(a, b, "spiffe://cluster.local/ns/p/sa/b")
