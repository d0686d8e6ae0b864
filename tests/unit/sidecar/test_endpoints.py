"""The endpoint table follows a new snapshot at once, not only at the next DNS refresh."""

from __future__ import annotations

import asyncio
import dataclasses

from sidecar.endpoints import Endpoint, Endpoints
from sidecar.snapshot import Service, Snapshot, Workload


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


def test_an_address_whose_pod_left_is_still_known_as_its_service_until_it_is_reused(monkeypatch) -> None:
    snap = snapshot("STRICT")
    web = snap.services[0]
    table = Endpoints(snap.services)
    answers = {"web": {"10.0.0.5", "10.0.0.6"}}

    async def resolve(host: str) -> set[str]:
        return answers.get(host, set())

    monkeypatch.setattr(table, "_resolve", resolve)
    asyncio.run(table._refresh())
    assert set(table.by_ip) == {"10.0.0.5", "10.0.0.6"} and table.departed_endpoint("10.0.0.5") is None
    answers["web"] = {"10.0.0.6"}  # the pod at .5 was killed
    asyncio.run(table._refresh())
    assert "10.0.0.5" not in table.by_ip
    gone = table.departed_endpoint("10.0.0.5")
    assert gone is not None and gone.service == web and table.departed_endpoint("10.0.0.7") is None
    answers["web"] = {"10.0.0.5", "10.0.0.6"}  # the address is live again: no longer departed
    asyncio.run(table._refresh())
    assert table.departed_endpoint("10.0.0.5") is None and "10.0.0.5" in table.by_ip
    answers["web"] = {"10.0.0.6"}
    asyncio.run(table._refresh())
    monkeypatch.setattr("sidecar.endpoints.time.monotonic", lambda: 10**9)  # long after: forgotten
    assert table.departed_endpoint("10.0.0.5") is None
    table.replace_services(dataclasses.replace(snap, services=()))  # the service left the mesh
    monkeypatch.undo()
    assert table.departed_endpoint("10.0.0.5") is None
