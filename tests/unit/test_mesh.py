"""meshctl.mesh (the mesh's model: pods, identities, the proxies/ tree, proxy.json) and sidecar.contract (what the
two planes share): one typed read of proxy.json, SPIFFE IDs built and parsed in one place, one definition of each
contract constant, and pilot writing only snapshots the sidecar's own parser accepts."""

from __future__ import annotations

import ast
import json
import string
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import sidecar
from meshctl import const, mesh
from meshctl.config import kinds, schema
from meshctl.config.store import Store
from meshctl.errors import InvalidInput, MeshError
from meshctl.home import MeshHome
from meshctl.inject import protocols, rewrite
from meshctl.mesh import MeshedPods, Pod, ProxyInfo, describe, read_proxy_info
from meshctl.pilot import push, security
from meshctl.pilot import snapshot as pilot_snapshot
from meshctl.status import ExitCode
from sidecar import capture, contract, policy, supervisor
from sidecar import snapshot as sidecar_snapshot
from sidecar.contract import Identity, IdentityError, parse_principal, parse_spiffe, spiffe_id
from sidecar.engine import plan

REVIEWS = Pod(service="reviews-v1", sidecar="reviews-v1-proxy", app="reviews", version="v1", mode="PERMISSIVE",
              exclude_inbound=(9000,), exclude_outbound=(), published=(9080,), port_protocols=((6379, "tcp"),),
              labels=(("app", "reviews"), ("team", "books")), account="bookinfo-reviews")
RATINGS = Pod(service="ratings", sidecar="ratings-proxy", app="ratings", version="v1", mode="STRICT",
              exclude_inbound=(), exclude_outbound=(), published=())
PODS = [REVIEWS, RATINGS]


def _write(root: Path, project: str, pod: Pod, data: Any = None) -> Path:
    directory = mesh.proxy_dir(root, project, pod.service)
    directory.mkdir(parents=True, exist_ok=True)
    content = describe(pod, PODS, project, "cluster.local") if data is None else data
    (directory / mesh.PROXY_JSON).write_text(content if isinstance(content, str) else json.dumps(content))
    return directory


# proxy.json: one typed read


def test_proxy_json_as_inject_writes_it_reads_back_typed(tmp_path: Path) -> None:
    directory = _write(tmp_path, "shop", REVIEWS)
    info = read_proxy_info(directory)
    assert info == ProxyInfo("shop", "cluster.local", REVIEWS, (REVIEWS, RATINGS))
    assert info.pod.exclude_inbound == (9000,) and info.pod.port_protocols == ((6379, "tcp"),)  # tuples, not lists
    assert info.directory == directory and info.name == "shop.reviews-v1"
    assert info.identity == "spiffe://cluster.local/ns/shop/sa/bookinfo-reviews"  # its account, not its app
    assert info.identity_of(RATINGS) == "spiffe://cluster.local/ns/shop/sa/ratings"
    with pytest.raises(AttributeError):
        info.project = "other"  # type: ignore[misc]  # frozen


def test_a_proxy_json_from_an_older_meshctl_reads_with_the_defaults(tmp_path: Path) -> None:
    old = describe(RATINGS, PODS, "shop", "cluster.local")
    for pod in (old["pod"], *old["pods"]):
        for later in ("workload", "instance", "port_protocols", "labels", "account"):
            del pod[later]
    info = read_proxy_info(_write(tmp_path, "shop", RATINGS, old))
    assert info.pod == RATINGS and info.pods[0].account == "" and info.pods[0].service_account == "reviews"


def test_a_missing_proxy_json_is_one_line_naming_the_file(tmp_path: Path) -> None:
    with pytest.raises(MeshError) as raised:
        read_proxy_info(tmp_path / "shop" / "gone")
    assert str(tmp_path / "shop" / "gone" / "proxy.json") in raised.value.one_line()
    assert "\n" not in raised.value.one_line()


@pytest.mark.parametrize("text", ["", "{", "[1, 2", "\"text\"", "1" * 5000, "[" * 100_000])
def test_malformed_proxy_json_is_invalid_input_naming_the_file(tmp_path: Path, text: str) -> None:
    directory = _write(tmp_path, "shop", REVIEWS, text)
    with pytest.raises(InvalidInput) as raised:
        read_proxy_info(directory)
    line = raised.value.one_line()
    assert str(directory / "proxy.json") in line and "\n" not in line and len(line) < 400
    assert raised.value.code == ExitCode.INVALID_INPUT


def _broken(change: str) -> dict[str, Any]:
    data = describe(REVIEWS, PODS, "shop", "cluster.local")
    exec(change, {"data": data, "pod": data["pod"]})  # a one-line edit of the JSON form
    return data


@pytest.mark.parametrize(("change", "field"), [
    ("data['project'] = 7", "project"),
    ("data['trust_domain'] = ''", "trust_domain"),
    ("del data['pods']", "pods"),
    ("data['pods'] = {'a': 1}", "pods"),
    ("data['pod'] = ['reviews']", "pod"),
    ("data['pods'][1] = None", "pods[1]"),
    ("del pod['app']", "pod.app"),
    ("pod['surprise'] = 1", "pod.surprise"),
    ("pod['mode'] = 1", "pod.mode"),
    ("pod['instance'] = True", "pod.instance"),
    ("pod['instance'] = 0", "pod.instance"),
    ("pod['exclude_inbound'] = ['9000']", "pod.exclude_inbound"),
    ("pod['published'] = [70000]", "pod.published"),
    ("pod['exclude_outbound'] = 15001", "pod.exclude_outbound"),
    ("pod['port_protocols'] = [[6379]]", "pod.port_protocols"),
    ("pod['port_protocols'] = [['6379', 'tcp']]", "pod.port_protocols"),
    ("pod['labels'] = [[1, 'x']]", "pod.labels"),
    ("pod['labels'] = {'app': 'reviews'}", "pod.labels"),
])
def test_wrong_types_name_the_file_and_the_field(tmp_path: Path, change: str, field: str) -> None:
    directory = _write(tmp_path, "shop", REVIEWS, _broken(change))
    with pytest.raises(InvalidInput) as raised:
        read_proxy_info(directory)
    line = raised.value.one_line()
    assert str(directory / "proxy.json") in line and f"field {field}" in line and "\n" not in line


def test_every_pod_field_has_a_check() -> None:
    assert set(mesh._FIELDS) == set(Pod.__dataclass_fields__)


def test_meshed_pods_lists_finds_and_reads_the_tree(tmp_path: Path) -> None:
    for project in ("shop", "alpha"):
        for pod in PODS:
            _write(tmp_path, project, pod)
    (tmp_path / "shop" / "half-made").mkdir()  # no proxy.json: not a proxy
    pods = MeshedPods(tmp_path)
    assert [d.relative_to(tmp_path).as_posix() for d in pods.directories()] == [
        "alpha/ratings", "alpha/reviews-v1", "shop/ratings", "shop/reviews-v1"]
    assert [i.name for i in pods] == ["alpha.ratings", "alpha.reviews-v1", "shop.ratings", "shop.reviews-v1"]
    found = pods.find("shop.reviews-v1")
    assert found is not None and found.pod == REVIEWS and found.project == "shop"
    for name in ("shop.nope", "reviews-v1", "shop", ".", "../shop.ratings", "shop/ratings.x", ""):
        assert pods.find(name) is None, name
    assert pods.versions() == {"reviews": {"v1"}, "ratings": {"v1"}}
    assert MeshedPods.of(MeshHome(tmp_path / "home")).root == tmp_path / "home" / "proxies"


# identities: one builder, one parser, in the sidecar's contract


SEGMENT = st.text(alphabet=string.ascii_lowercase + string.digits + "-._", min_size=1, max_size=40)


@given(SEGMENT, SEGMENT, SEGMENT)
def test_spiffe_ids_round_trip(domain: str, namespace: str, account: str) -> None:
    uri = spiffe_id(domain, namespace, account)
    assert uri == f"spiffe://{domain}/ns/{namespace}/sa/{account}"
    assert parse_spiffe(uri) == Identity(domain, namespace, account)
    assert parse_principal(uri.removeprefix("spiffe://")) == Identity(domain, namespace, account)
    assert mesh.account_of(uri) == account and mesh.parse_identity(uri).namespace == namespace


HOSTILE = st.one_of(
    st.text(max_size=200),
    st.builds("spiffe://{}/ns/{}/sa/{}".format, st.text(max_size=30), st.text(max_size=30), st.text(max_size=30)),
    st.sampled_from(["spiffe://", "spiffe://td/ns/a/sa/", "spiffe://td/ns//sa/b", "spiffe://td/ns/a/sa/b/c",
                     "spiffe://td/ns/a/b/sa/c", "spiffe://td/sa/b/ns/a", "SPIFFE://td/ns/a/sa/b", "td/ns/a/sa/b",
                     "spiffe://td/ns/a/sa/b\n", "spiffe://td/ns/a/sa/b c", "spiffe://td/ns/a/sa/b\x00",
                     "spiffe:///ns/a/sa/b", "spiffe://td/ns/a/sa/b/"]))


@settings(max_examples=300)
@given(HOSTILE)
def test_hostile_identities_raise_only_identity_error(text: str) -> None:
    try:
        parsed = parse_spiffe(text)
    except IdentityError:
        assert mesh.account_of(text) is None
        return
    assert parsed.uri == text  # accepted only when it is exactly what the builder writes


@given(st.text(max_size=40), st.text(max_size=40), st.text(max_size=40))
def test_building_from_hostile_parts_raises_only_identity_error(domain: str, namespace: str, account: str) -> None:
    try:
        uri = spiffe_id(domain, namespace, account)
    except IdentityError:
        return
    assert parse_spiffe(uri) == Identity(domain, namespace, account)


@pytest.mark.parametrize("value", [None, 7, b"spiffe://td/ns/a/sa/b", ["spiffe://td/ns/a/sa/b"]])
def test_non_text_is_not_an_identity(value: Any) -> None:
    with pytest.raises(IdentityError):
        parse_spiffe(value)


def test_the_sidecars_metrics_read_identities_with_the_same_parser() -> None:
    from sidecar.meters import app_of, namespace_of
    assert (app_of("spiffe://td/ns/shop/sa/reviews"), namespace_of("spiffe://td/ns/shop/sa/reviews")) == (
        "reviews", "shop")
    assert (app_of("spiffe://td/ns/shop/sa/a/b"), namespace_of(None)) == ("unknown", "unknown")


# the contract: defined once, in the sidecar package


def test_meshctl_uses_the_sidecars_contract_objects() -> None:
    for name in ("PORT_ADMIN", "PORT_OUTBOUND", "PORT_INBOUND", "PORT_HEALTH", "PORT_METRICS", "PROXY_PORTS",
                 "PROXY_UID"):
        assert getattr(const, name) is getattr(contract, name), name
    assert rewrite.MODES is contract.MTLS_MODES and sidecar_snapshot.MODES is contract.MTLS_MODES
    assert kinds.MTLS_MODE == "enum:STRICT|PERMISSIVE|DISABLE|UNSET"  # PeerAuthentication's: the modes and UNSET
    assert sidecar_snapshot.FORMAT_VERSION is contract.FORMAT_VERSION
    assert schema.parse_duration is contract.parse_duration
    assert protocols.PROXY_PORTS is contract.PROXY_PORTS and plan.PROXY_PORTS is contract.PROXY_PORTS
    assert (capture.INBOUND_PORT, capture.OUTBOUND_PORT) == (contract.PORT_INBOUND, contract.PORT_OUTBOUND)
    assert supervisor.PROXY_UID is contract.PROXY_UID
    assert policy.seconds("1.5s") == contract.parse_duration("1.5s") and policy.seconds("1d", 3.0) == 3.0


CONTRACT_VALUES = {*contract.PROXY_PORTS, contract.PROXY_UID}


def _literal_definitions(path: Path) -> list[str]:
    """`NAME = <a contract number or the mTLS modes>` at a module's top level, or a FORMAT = <n>."""
    found = []
    for node in ast.parse(path.read_text()).body:
        if not isinstance(node, ast.Assign | ast.AnnAssign) or node.value is None:
            continue
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        names = [t.id for t in targets if isinstance(t, ast.Name)]
        try:
            value = ast.literal_eval(node.value)
        except ValueError:
            continue
        numbers = value if isinstance(value, tuple) else (value,)
        if (any(isinstance(n, int) and n in CONTRACT_VALUES for n in numbers) or value == contract.MTLS_MODES
                or any("FORMAT" in n for n in names)):
            found.append(f"{path}:{node.lineno} {', '.join(names)}")
    return found


def test_no_module_defines_a_contract_value_again() -> None:
    """Only sidecar/contract.py writes the ports, the proxy uid, the modes and the snapshot format down."""
    roots = [Path(mesh.__file__).parent, Path(sidecar.__file__).parent]
    found = [hit for root in roots for path in sorted(root.rglob("*.py")) if path.name != "contract.py"
             for hit in _literal_definitions(path)]
    assert found == []


# pilot: a snapshot the sidecar would refuse is never written


@pytest.fixture
def meshed(installed_home: Path) -> MeshHome:
    home = MeshHome(installed_home)
    revision = Store(home.config_dir).read()
    for pod in PODS:
        directory = _write(home.proxies_dir, "shop", pod)
        snap = pilot_snapshot.compile_snapshot(read_proxy_info(directory), revision.resources, revision.revision)
        (directory / mesh.SNAPSHOT_JSON).write_text(json.dumps(snap))
    return home


def test_push_writes_snapshots_the_sidecar_reads(meshed: MeshHome) -> None:
    (meshed.proxies_dir / "shop" / "ratings" / "snapshot.json").unlink()
    assert push.push(meshed).written == 1
    sidecar_snapshot.load(meshed.proxies_dir / "shop" / "ratings" / "snapshot.json")


def test_a_snapshot_the_sidecar_refuses_is_never_written(meshed: MeshHome, monkeypatch: pytest.MonkeyPatch) -> None:
    before = {d: (d / "snapshot.json").read_bytes() for d in MeshedPods.of(meshed).directories()}
    real = security.peer_modes

    def disagreeing(resources: list[dict[str, Any]], project: str, pod: Pod) -> tuple[str, dict[str, str]]:
        mode, ports = real(resources, project, pod)
        return ("MUTUAL" if pod.service == "ratings" else mode), ports  # a mode meshctl knows, the sidecar not

    monkeypatch.setattr(security, "peer_modes", disagreeing)
    with pytest.raises(pilot_snapshot.SnapshotRefused) as raised:
        push.push(meshed)
    line = raised.value.one_line()
    assert raised.value.code == ExitCode.CONFLICT and "\n" not in line
    assert "proxy shop." in line and "mode" in line and "MUTUAL" in line
    assert {d: (d / "snapshot.json").read_bytes() for d in before} == before  # every proxy keeps its snapshot
