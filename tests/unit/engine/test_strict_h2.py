"""A plaintext connection opened while its port took plaintext, once a PeerAuthentication makes it STRICT
(issue 17): on HTTP/2 as on HTTP/1.1, its next request is refused and the connection closed (GOAWAY), so a
client cannot keep a plaintext channel to the app open past the change."""

from __future__ import annotations

import dataclasses

from tests.unit.engine.test_h2_attacks import Harness, h, refused  # noqa: F401  (h: the HTTP/2 fixture)

STRICT = {"mode": "STRICT", "published_ports": [], "port_modes": {}}


def test_a_plaintext_h2_connection_is_refused_and_closed_once_its_port_turns_strict(h: Harness) -> None:  # noqa: F811
    opened = h._info
    h._info = lambda: dataclasses.replace(opened(), tls_peer=None)  # type: ignore[method-assign]
    h.authorize(inbound=STRICT)
    client = h.client()
    answer = client.wait(client.request())
    assert refused(answer) and b"requires mutual TLS" in str(answer.headers).encode()
    assert client.wait_closed() and client.goaway is not None
    assert not h.app.seen


def test_a_mutual_tls_h2_connection_goes_on(h: Harness) -> None:  # noqa: F811
    h.authorize(inbound=STRICT)
    client = h.client()
    answer = client.wait(client.request())
    assert not refused(answer) and not client.closed
