"""Issue 18's JSON habit, command by command: `-o json` prints one JSON document on stdout, and every moment in it is
RFC 3339 in UTC, on non-empty data (proxy-status, proxy-config secrets, certs status, rollout status and its
events, the trace list; history and logs are in test_cli_habits). A trace's spans stay Zipkin's, epoch µs.

Each runs in process through the CLI's entry (`meshctl.cli.run`) on the fake engine, one sidecar (shop.details)
of an injected bookinfo; what the sidecar would answer over the network (its ack, its spans) is a fake read."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest

from meshctl.home import MeshHome
from meshctl.mesh import SNAPSHOT_JSON, proxy_dir
from meshctl.pilot import status as pilot_status
from meshctl.rollout.state import Gates, Rollout, RolloutStore
from meshctl.telemetry import mesh
from tests.unit.fuzzing import Ran, make_home
from tests.unit.test_cli_habits import cli, sidecar
from tests.unit.test_inject import BOOKINFO, inject

NOW = 1_796_109_686.123  # 2026-12-01T07:21:26.123Z
TRACE = "463ac35c9f6413ad48485a3953bb6124"
SECRET = {"identity": "spiffe://cluster.local/ns/shop/sa/bookinfo-details", "cert_serial": "1a",
          "cert_not_after": NOW + 86_400, "cert_not_before": NOW - 60,
          "trust_bundle": [{"serial": "1", "subject": "O=meshctl", "not_after": NOW + 3_650 * 86_400}]}
SPANS = [{"traceId": TRACE, "id": "a1", "name": "get /details", "kind": "SERVER", "timestamp": int(NOW * 1e6),
          "duration": 1500, "localEndpoint": {"serviceName": "details.shop"}, "tags": {"http.status_code": "200"}}]


def moment(value: Any) -> dt.datetime:
    """`value` as RFC 3339 UTC: text that Python parses (Z as +00:00), in UTC, saying so."""
    assert isinstance(value, str) and value.endswith(("Z", "+00:00")), value
    parsed = dt.datetime.fromisoformat(value.removesuffix("Z") + ("+00:00" if value.endswith("Z") else ""))
    assert parsed.utcoffset() == dt.timedelta(0), value
    return parsed


def document(ran: Ran) -> Any:
    """All of stdout as one JSON document (json.loads refuses anything before or after it)."""
    assert ran.code == 0, ran.err
    return json.loads(ran.out)


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """bookinfo injected as project shop (its certificates and snapshots), and one rollout with events."""
    root = make_home(tmp_path_factory.mktemp("moments") / "home")
    inject(root, BOOKINFO, root.parent / "meshed.yaml")
    rollout = Rollout("reviews", "v1", "v2", [10, 100], 30.0, Gates(), weight=10, step_started=NOW)
    rollout.note(NOW, "step 1/2: v2 at 10%")
    rollout.note(NOW + 30, "gate passed at 10%: 40 requests, 100.00% success")
    RolloutStore(MeshHome(root)).save(rollout)
    return root


@pytest.fixture
def details(home: Path, monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The running shop.details sidecar: its admin endpoint's config dump (the snapshot it applied and its
    certificate), its ack (SYNCED) and its spans."""
    want = json.loads((proxy_dir(MeshHome(home).proxies_dir, "shop", "details") / SNAPSHOT_JSON).read_text())
    ack = {"revision": want["revision"], "hash": want["hash"], "applied_at": NOW, "proxy_version": "1.2",
           "cert_not_after": SECRET["cert_not_after"]}
    monkeypatch.setattr(pilot_status, "fetch_status", lambda address, timeout=1.5: ack)
    monkeypatch.setattr(mesh, "spans_of", lambda address, timeout=3.0: SPANS)
    container = sidecar("shop", "details", [])
    container.exec_output = json.dumps({"secrets": SECRET, "snapshot": want}).encode()
    return [container]


def test_proxy_status_json_moments(home: Path, details: list[Any]) -> None:
    rows = document(cli(home, "proxy-status", "-o", "json", containers=details))
    assert [r["status"] for r in rows] == ["SYNCED"]
    assert moment(rows[0]["last_ack"]).timestamp() == pytest.approx(NOW, abs=0.001)
    assert moment(rows[0]["cert_expires"]).timestamp() == pytest.approx(NOW + 86_400, abs=0.001)
    one = document(cli(home, "proxy-status", "shop.details", "-o", "json", containers=details))  # row and diff
    assert moment(one["last_ack"]) == moment(rows[0]["last_ack"]) and one["diff"] == []


def test_proxy_config_secrets_json_moments(home: Path, details: list[Any]) -> None:
    secret = document(cli(home, "proxy-config", "shop.details", "secrets", "-o", "json", containers=details))
    assert secret["identity"] == SECRET["identity"] and len(secret["trust_bundle"]) == 1
    assert moment(secret["cert_not_after"]).timestamp() == pytest.approx(NOW + 86_400, abs=0.001)
    assert moment(secret["cert_not_before"]).timestamp() == pytest.approx(NOW - 60, abs=0.001)
    assert moment(secret["trust_bundle"][0]["not_after"]).year == 2036


def test_certs_status_json_moments(home: Path) -> None:
    rows = document(cli(home, "certs", "status", "-o", "json"))
    assert len(rows) == 8  # bookinfo's pods
    for row in rows:
        assert moment(row["issued"]) < moment(row["expires"]), row


def test_rollout_status_and_events_json_moments(home: Path) -> None:
    listed = document(cli(home, "rollout", "status", "-o", "json"))
    one = document(cli(home, "rollout", "status", "reviews", "-o", "json"))
    assert [r["service"] for r in listed] == ["reviews"] and listed[0] == one
    assert [moment(e["time"]).timestamp() for e in one["events"]] == pytest.approx([NOW, NOW + 30], abs=0.001)


def test_trace_list_json_moments_and_a_traces_spans_stay_zipkins(home: Path, details: list[Any]) -> None:
    listed = document(cli(home, "trace", "-o", "json", containers=details))
    assert [t["trace_id"] for t in listed] == [TRACE]
    assert moment(listed[0]["start"]).timestamp() == pytest.approx(NOW, abs=0.001)
    spans = document(cli(home, "trace", TRACE[:8], "-o", "json", containers=details))
    assert spans[0]["timestamp"] == int(NOW * 1e6)  # Zipkin v2's epoch microseconds, for Zipkin's own tools
