"""The data plane's pure parts: the snapshot contract, capture rules, listener helpers."""

from __future__ import annotations

import copy
import ipaddress
from typing import Any

import pytest

from sidecar import capture, snapshot
from sidecar.engine.plan import classify, local_networks

GOOD: dict[str, Any] = {
    "format": 1, "revision": 3, "hash": "abc", "trust_domain": "cluster.local",
    "proxy": {"name": "p.web", "project": "p", "service": "web", "app": "web", "version": "v1",
              "identity": "spiffe://cluster.local/ns/p/sa/web"},
    "inbound": {"mode": "STRICT", "exclude_ports": [9000], "published_ports": [8080]},
    "outbound": {"exclude_ports": []},
    "services": [{"name": "web", "identity": "spiffe://cluster.local/ns/p/sa/web",
                  "workloads": [{"host": "web", "version": "v1"}]}],
}


def test_good_snapshot_parses() -> None:
    snap = snapshot.parse(GOOD)
    assert snap.mode == "STRICT" and snap.exclude_inbound_ports == {9000} and snap.published_ports == {8080}
    assert snap.services[0].workloads[0].host == "web"


@pytest.mark.parametrize(("path", "value", "message"), [
    (("format",), 2, "unsupported snapshot format"),
    (("inbound", "mode"), "LOOSE", "inbound.mode must be one of"),
    (("inbound", "exclude_ports"), [0], "inbound.exclude_ports"),
    (("revision",), "3", "field revision must be int"),
    (("revision",), True, "field revision must be int"),
    (("services",), [{"name": "x", "workloads": []}], "missing field services[0].identity"),
])
def test_bad_snapshots_are_rejected_with_a_reason(path: tuple[str, ...], value: Any, message: str) -> None:
    data = copy.deepcopy(GOOD)
    target = data
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(snapshot.SnapshotError, match=message.replace("[", r"\[").replace("]", r"\]")):
        snapshot.parse(data)


def test_snapshot_must_be_an_object() -> None:
    with pytest.raises(snapshot.SnapshotError):
        snapshot.parse([1, 2])


def test_capture_rules_exempt_the_proxy_loopback_and_excluded_ports() -> None:
    rules = capture.rules(1337, exclude_inbound=[9000], exclude_outbound=[5432]).splitlines()
    assert "-A MESH_INBOUND -p tcp --dport 15021 -j RETURN" in rules
    assert "-A MESH_INBOUND -p tcp --dport 15090 -j RETURN" in rules
    assert not any("15001" in r and "RETURN" in r for r in rules)
    assert "-A MESH_INBOUND -p tcp --dport 9000 -j RETURN" in rules
    assert rules.index("-A MESH_INBOUND -p tcp --dport 9000 -j RETURN") < rules.index(
        "-A MESH_INBOUND -p tcp -j REDIRECT --to-ports 15006")
    assert "-A MESH_OUTPUT -m owner --uid-owner 1337 -j RETURN" in rules
    assert "-A MESH_OUTPUT -d 127.0.0.0/8 -j RETURN" in rules
    assert "-A MESH_OUTPUT -p tcp --dport 5432 -j RETURN" in rules
    assert rules[-1] == "COMMIT" and not any("udp" in r for r in rules)


ROUTES = """Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
eth0\t00000000\t010014AC\t0003\t0\t0\t0\t00000000\t0\t0\t0
eth0\t000014AC\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0
eth1\t000012AC\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0
"""


def test_local_networks_from_the_route_table() -> None:
    found = local_networks(ROUTES)
    assert list(found.nets) == [ipaddress.IPv4Network("172.20.0.0/16"), ipaddress.IPv4Network("172.18.0.0/16")]
    assert found.gateways == {"172.20.0.1", "172.18.0.1"}


@pytest.mark.parametrize(("data", "http"), [
    (b"GET / HTTP/1.1\r\n", True), (b"POST /x HTTP/1.1\r\nHost: a\r\n", True),
    (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", False), (b"*1\r\n$4\r\nPING\r\n", False), (b"\x16\x03\x01", False),
])
def test_http1_detection(data: bytes, http: bool) -> None:
    assert (classify(data) == "http") is http


def test_port_protocols_are_optional_and_parsed_per_workload() -> None:
    assert snapshot.parse(GOOD).services[0].workloads[0].port_protocols == ()  # older snapshots: none
    data = copy.deepcopy(GOOD)
    data["services"][0]["workloads"][0]["port_protocols"] = {"3306": "tcp", "8080": "http"}
    workload = snapshot.parse(data).services[0].workloads[0]
    assert workload.port_protocols == ((3306, "tcp"), (8080, "http"))
    assert workload.protocol(3306) == "tcp" and workload.protocol(8080) == "http" and workload.protocol(9) is None


@pytest.mark.parametrize("value", [{"3306": "mysql"}, {"3306": "TCP"}, {"0": "tcp"}, {"65536": "tcp"}, {"²": "tcp"},
                                   {"3306": ["tcp"]}, {"3306": None}, ["3306"], "3306=tcp", {"": "tcp"}])
def test_bad_port_protocols_are_refused_naming_the_field(value: Any) -> None:
    data = copy.deepcopy(GOOD)
    data["services"][0]["workloads"][0]["port_protocols"] = value
    with pytest.raises(snapshot.SnapshotError, match=r"services\[0\]\.workloads\[0\]\.port_protocols must map"):
        snapshot.parse(data)
