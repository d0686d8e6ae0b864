"""Mutual TLS between two real pyOpenSSL endpoints built by the sidecar's own contexts, in memory."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from OpenSSL import SSL

from addons.mtls import build_contexts
from meshctl.pki import ca, workload

NOW = dt.datetime.now(dt.UTC)


def proxy_dir(tmp: Path, name: str, root: ca.RootCA, identity: str, trust: list[ca.RootCA]) -> Path:
    d = tmp / name
    d.mkdir()
    cert = workload.issue(root, identity, NOW)
    (d / "cert.pem").write_bytes(cert.cert_pem())
    (d / "key.pem").write_bytes(cert.key_pem())
    (d / "bundle.pem").write_bytes(b"".join(r.cert_pem() for r in trust))
    return d


def handshake(client: SSL.Connection, server: SSL.Connection) -> bool:
    client.set_connect_state()
    server.set_accept_state()
    for _ in range(20):
        for a, b in ((client, server), (server, client)):
            try:
                a.do_handshake()
            except SSL.WantReadError:
                pass
            except SSL.Error:
                return False
            while True:
                try:
                    data = a.bio_read(65536)
                except SSL.WantReadError:
                    break
                b.bio_write(data)
        if client.get_peer_certificate() and server.get_peer_certificate():
            try:
                client.do_handshake()
                server.do_handshake()
                return True
            except SSL.WantReadError:
                continue
            except SSL.Error:
                return False
    return False


def pair(client_dir: Path, server_dir: Path, expected: str) -> bool:
    client = SSL.Connection(build_contexts(client_dir).client)
    client.set_app_data(expected)
    server = SSL.Connection(build_contexts(server_dir).server)
    return handshake(client, server)


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
