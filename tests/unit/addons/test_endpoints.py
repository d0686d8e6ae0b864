"""The endpoint table follows a new snapshot at once, not only at the next DNS refresh."""

from __future__ import annotations

import dataclasses

from addons.endpoints import Endpoint, Endpoints
from addons.snapshot import Service, Snapshot, Workload


def snapshot(mode: str) -> Snapshot:
    web = Service("web", "spiffe://cluster.local/ns/p/sa/web", (Workload("web", "v1", mode),))
    return Snapshot(revision=1, hash="h", name="p.client", service="client", app="client", version="v1",
                    identity="spiffe://cluster.local/ns/p/sa/client", trust_domain="cluster.local",
                    mode="PERMISSIVE", services=(web,))


def test_a_peer_that_turns_disable_gets_plaintext_from_the_moment_the_snapshot_applies() -> None:
    old = snapshot("STRICT")
    table = Endpoints(old.services)
    table.by_ip = {"10.0.0.5": Endpoint(old.services[0], old.services[0].workloads[0]),
                   "10.0.0.9": Endpoint(dataclasses.replace(old.services[0], name="gone"), Workload("gone", "v1"))}
    table.replace_services(snapshot("DISABLE"))
    assert not table.by_ip["10.0.0.5"].workload.accepts_mtls(8080)
    assert "10.0.0.9" not in table.by_ip  # its workload left the snapshot
