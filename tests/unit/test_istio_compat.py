"""Istio YAML on compose (issue 17, part 4): DestinationRule tls, VirtualService match.port, serviceAccounts,
selectors and subsets on any compose label, the `mesh.service-account` label, `apply -n` of `namespace: default`
YAML, kinds refused with their reason, and analyze's MSH0113."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from meshctl.config.analyze import Inventory, analyze_resources
from meshctl.config.resources import check_document, load
from meshctl.errors import InvalidInput
from meshctl.inject.load import load as load_compose
from meshctl.inject.rewrite import plan_pods
from meshctl.mesh import Pod, describe
from meshctl.pilot.security import authorization, selects
from meshctl.pilot.snapshot import compile_snapshot
from sidecar import snapshot as contract
from sidecar.rbac import Subject, decide
from sidecar.routes import request_matches, select_rule


def doc(kind: str, spec: dict[str, Any], namespace: str | None = None) -> dict[str, Any]:
    group = "security.istio.io" if kind.endswith(("Policy", "Authentication")) else "networking.istio.io"
    meta = {"name": "x", **({"namespace": namespace} if namespace else {})}
    return {"apiVersion": f"{group}/v1", "kind": kind, "metadata": meta, "spec": spec}


def problems(kind: str, spec: dict[str, Any]) -> list[str]:
    return check_document(doc(kind, spec), "f.yaml")[1]


# --- 1. DestinationRule trafficPolicy.tls ---------------------------------------------------------------------

def test_istios_destination_rule_all_mtls_is_accepted() -> None:
    # samples/bookinfo/networking/destination-rule-all-mtls.yaml (istio/istio), the reviews entry
    spec = {"host": "reviews", "trafficPolicy": {"tls": {"mode": "ISTIO_MUTUAL"}},
            "subsets": [{"name": "v1", "labels": {"version": "v1"}}, {"name": "v2", "labels": {"version": "v2"}}]}
    assert problems("DestinationRule", spec) == []


@pytest.mark.parametrize("policy", [
    {"tls": {"mode": "DISABLE"}},
    {"portLevelSettings": [{"port": {"number": 9080}, "tls": {"mode": "DISABLE"}}]},
    {"tls": {"mode": "ISTIO_MUTUAL"}, "portLevelSettings": [{"port": {"number": 9080}, "tls": {"mode": "DISABLE"}}]},
])
def test_disable_is_accepted_per_host_port_and_subset(policy: dict[str, Any]) -> None:
    assert problems("DestinationRule", {"host": "reviews", "trafficPolicy": policy}) == []
    subset = {"host": "reviews", "subsets": [{"name": "v1", "labels": {"version": "v1"}, "trafficPolicy": policy}]}
    assert problems("DestinationRule", subset) == []


@pytest.mark.parametrize(("policy", "wanted"), [
    ({"tls": {"mode": "MUTUAL"}}, "spec.trafficPolicy.tls.mode: MUTUAL (TLS origination with client certificates)"),
    ({"tls": {"mode": "ISTIO_MUTUAL", "sni": "a"}}, "spec.trafficPolicy.tls.sni: applies only with mode SIMPLE"),
    ({"portLevelSettings": [{"tls": {"mode": "DISABLE"}}]}, "portLevelSettings[0].port.number: required"),
    ({"portLevelSettings": [{"port": {"number": 80}, "loadBalancer": {"simple": "RANDOM"}}]},
     "portLevelSettings[0].loadBalancer is not supported by meshctl: per-port settings carry only `tls`"),
    ({"tls": {"mode": "BOGUS"}}, "must be one of DISABLE, SIMPLE, MUTUAL, ISTIO_MUTUAL"),
])
def test_what_does_not_apply_inside_the_mesh_is_refused_with_its_reason(policy: dict[str, Any], wanted: str) -> None:
    found = problems("DestinationRule", {"host": "reviews", "trafficPolicy": policy})
    assert len(found) == 1 and wanted in found[0], found


# --- 2. VirtualService match.port ----------------------------------------------------------------------------

def test_match_port_is_the_port_the_app_called() -> None:
    to_a, to_b = [{"destination": {"host": "a"}}], [{"destination": {"host": "b"}}]
    vs: dict[str, Any] = {"hosts": ["reviews"], "http": [{"match": [{"port": 9080}], "route": to_a}, {"route": to_b}]}
    assert problems("VirtualService", vs) == []
    assert "is not a port number" in problems("VirtualService", {**vs, "http": [
        {"match": [{"port": 0}], "route": [{"destination": {"host": "a"}}]}]})[0]
    assert request_matches({"port": 9080}, "GET", "/", {}, {}, 9080)
    assert not request_matches({"port": 9080}, "GET", "/", {}, {}, 9081)
    assert not request_matches({"port": 9080}, "GET", "/", {}, {})  # no port known: no match (fail closed)
    assert select_rule(vs, "GET", "/", {}, {}, 9080) == vs["http"][0]
    assert select_rule(vs, "GET", "/", {}, {}, 9090) == vs["http"][1]


# --- 3. AuthorizationPolicy serviceAccounts, trustDomains, remoteIpBlocks ------------------------------------

def source_problems(source: dict[str, Any]) -> list[str]:
    return problems("AuthorizationPolicy", {"rules": [{"from": [{"source": source}]}]})


def test_service_accounts_follow_istios_rules() -> None:
    assert source_problems({"serviceAccounts": ["bookinfo/bookinfo-productpage"],
                            "notServiceAccounts": ["bookinfo/evil"]}) == []
    assert "must be NAMESPACE/ACCOUNT" in source_problems({"serviceAccounts": ["productpage"]})[0]
    assert "must be NAMESPACE/ACCOUNT" in source_problems({"serviceAccounts": ["bookinfo/*"]})[0]
    mixed = source_problems({"serviceAccounts": ["a/b"], "principals": ["x"]})
    assert "serviceAccounts cannot be combined with principals" in mixed[0]


def test_service_accounts_match_any_trust_domain() -> None:
    allow = {"name": "p", "action": "ALLOW", "rules": [{"from": [{"source": {"serviceAccounts": ["shop/web"]}}]}]}
    assert decide([allow], Subject(principal="cluster.local/ns/shop/sa/web", port=80)).allowed
    assert decide([allow], Subject(principal="other.example/ns/shop/sa/web", port=80)).allowed
    assert not decide([allow], Subject(principal="cluster.local/ns/shop/sa/webx", port=80)).allowed
    assert not decide([allow], Subject(principal=None, port=80)).allowed  # plaintext: no account (fail closed)


def test_trust_domains_is_refused_naming_istios_way() -> None:
    [problem] = source_problems({"trustDomains": ["cluster.local"]})
    assert "trustDomains is not supported by meshctl: Istio's AuthorizationPolicy has no such field" in problem


def test_remote_ip_blocks_from_istios_docs_are_accepted() -> None:
    assert source_problems({"remoteIpBlocks": ["1.2.3.4", "5.6.7.0/24"]}) == []
    assert source_problems({"notRemoteIpBlocks": ["2001:db8::/32"]}) == []


# --- apply -n PROJECT of Istio's `namespace: default` YAML ----------------------------------------------------

def test_apply_n_reads_the_default_namespace_as_the_project(tmp_path: Path) -> None:
    policy = doc("AuthorizationPolicy", {"rules": [{"from": [{"source": {
        "principals": ["cluster.local/ns/default/sa/bookinfo-productpage", "cluster.local/ns/other/sa/x"],
        "namespaces": ["default", "other"]}}], "when": [{"key": "source.namespace", "values": ["default"]}]}]},
        namespace="default")
    other = doc("AuthorizationPolicy", {"rules": [{"from": [{"source": {"serviceAccounts": [
        "default/bookinfo-reviews"]}}]}]}, namespace="default") | {"metadata": {"name": "y", "namespace": "default"}}
    file = tmp_path / "p.yaml"
    file.write_text(json.dumps(policy) + "\n---\n" + json.dumps(other))
    first, second = load([str(file)], namespace="bookinfo")
    assert first["metadata"]["namespace"] == "bookinfo"
    src = first["spec"]["rules"][0]["from"][0]["source"]
    assert src["principals"] == ["cluster.local/ns/bookinfo/sa/bookinfo-productpage", "cluster.local/ns/other/sa/x"]
    assert src["namespaces"] == ["bookinfo", "other"]
    assert first["spec"]["rules"][0]["when"][0]["values"] == ["bookinfo"]
    assert second["spec"]["rules"][0]["from"][0]["source"]["serviceAccounts"] == ["bookinfo/bookinfo-reviews"]
    assert load([str(file)])[0]["metadata"]["namespace"] == "default"  # without -n: as written
    mismatch = tmp_path / "q.yaml"
    mismatch.write_text(json.dumps(doc("PeerAuthentication", {}, namespace="alpha")))
    with pytest.raises(InvalidInput, match="does not match the namespace sent on the request"):
        load([str(mismatch)], namespace="bookinfo")  # any other namespace is the user's own choice


# --- 4 and 5. labels: selectors, subsets and service accounts -------------------------------------------------

COMPOSE = """
services:
  productpage:
    image: x
    labels: {app: productpage, tier: front, mesh.service-account: bookinfo-productpage}
  reviews-v1:
    image: x
    labels: {app: reviews, version: v1, track: stable, mesh.service-account: bookinfo-reviews}
  reviews-v2:
    image: x
    labels: [app=reviews, version=v2, track=canary, mesh.service-account=bookinfo-reviews]
  details:
    image: x
"""


def pods(tmp_path: Path, text: str = COMPOSE) -> list[Pod]:
    file = tmp_path / "compose.yaml"
    file.write_text(text)
    found, _, errors = plan_pods(load_compose(str(file)), "PERMISSIVE")
    assert errors == []
    return found


def test_selectors_match_any_compose_label_and_fail_closed(tmp_path: Path) -> None:
    by_name = {p.service: p for p in pods(tmp_path)}
    assert problems("AuthorizationPolicy", {"selector": {"matchLabels": {"tier": "front"}}}) == []
    for labels, selected in (({"tier": "front"}, {"productpage"}), ({"track": "canary"}, {"reviews-v2"}),
                             ({"app": "reviews"}, {"reviews-v1", "reviews-v2"}), ({"version": "v1"},
                                                                                   {"productpage", "reviews-v1",
                                                                                    "details"}),
                             ({"tier": "back"}, set()), ({"nosuch": "x"}, set())):
        policy = {"kind": "AuthorizationPolicy", "metadata": {"name": "p"}, "spec": {"selector": {
            "matchLabels": labels}, "action": "DENY", "rules": [{}]}}
        assert {s for s, p in by_name.items() if selects(policy, "shop", p)} == selected, labels
        assert bool(authorization([policy], "shop", by_name["productpage"])) is ("productpage" in selected)


def test_subsets_select_workloads_by_any_label(tmp_path: Path) -> None:
    found = pods(tmp_path)
    me = next(p for p in found if p.service == "productpage")
    body = compile_snapshot(describe(me, found, "shop", "cluster.local"), [], 1)
    reviews = next(s for s in contract.parse(body).services if s.name == "reviews")
    chosen = {w.host for w in reviews.workloads if w.selected_by({"track": "canary"})}
    assert chosen == {"reviews-v2"}
    assert {w.host for w in reviews.workloads if w.selected_by({"track": "gone"})} == set()
    assert {w.host for w in reviews.workloads if w.selected_by({})} == {"reviews-v1", "reviews-v2"}
    assert problems("DestinationRule", {"host": "reviews", "subsets": [{"name": "c", "labels": {"track": "x"}}]}) \
        == []
    old = contract.Workload("reviews-v1", "v1")  # a snapshot from before labels: by version only
    assert old.selected_by({"version": "v1"}) and not old.selected_by({"track": "stable"})


def test_service_account_label_names_the_identity(tmp_path: Path) -> None:
    found = pods(tmp_path)
    me = next(p for p in found if p.service == "productpage")
    body = compile_snapshot(describe(me, found, "bookinfo", "cluster.local"), [], 1)
    assert body["proxy"]["identity"] == "spiffe://cluster.local/ns/bookinfo/sa/bookinfo-productpage"
    identities = {s["name"]: s["identity"] for s in body["services"]}
    assert identities == {"productpage": "spiffe://cluster.local/ns/bookinfo/sa/bookinfo-productpage",
                          "reviews": "spiffe://cluster.local/ns/bookinfo/sa/bookinfo-reviews",
                          "details": "spiffe://cluster.local/ns/bookinfo/sa/details"}  # no label: the app
    # Istio's docs' principal, applied with -n bookinfo, now names productpage's sidecar
    allow = {"name": "p", "action": "ALLOW", "rules": [{"from": [{"source": {
        "principals": ["cluster.local/ns/bookinfo/sa/bookinfo-productpage"]}}]}]}
    assert decide([allow], Subject(principal=body["proxy"]["identity"].removeprefix("spiffe://"), port=1)).allowed


def test_versions_of_one_app_share_one_account(tmp_path: Path) -> None:
    file = tmp_path / "compose.yaml"
    file.write_text(COMPOSE.replace("track=canary, mesh.service-account=bookinfo-reviews", "track=canary"))
    _, _, errors = plan_pods(load_compose(str(file)), "PERMISSIVE")
    assert errors == ["app 'reviews': services reviews-v1, reviews-v2 run as different service accounts "
                      "(bookinfo-reviews, reviews); give them the same `mesh.service-account` label"]
    file.write_text(COMPOSE.replace("bookinfo-productpage", "Bad_Name"))
    assert "label `mesh.service-account: Bad_Name`" in plan_pods(load_compose(str(file)), "PERMISSIVE")[2][0]


# --- 6. analyze ----------------------------------------------------------------------------------------------

INV = Inventory(projects={"bookinfo": {"productpage", "reviews"}},
                accounts={"bookinfo": {"bookinfo-productpage", "reviews"}},
                labels={"bookinfo": [{"app": "productpage", "version": "v1"}, {"app": "reviews", "version": "v2"}]})


def findings(*resources: dict[str, Any]) -> list[tuple[str, str]]:
    return [(m.code, m.text) for m in analyze_resources(list(resources), INV)]


def test_msh0104_only_for_kinds_with_hosts() -> None:
    assert findings(doc("PeerAuthentication", {"mtls": {"mode": "STRICT"}}),
                    doc("AuthorizationPolicy", {}, "bookinfo"), doc("RequestAuthentication", {}, "bookinfo")) == []


def test_msh0113_policies_that_match_no_workload() -> None:
    docs_policy = doc("AuthorizationPolicy", {"rules": [{"from": [{"source": {
        "principals": ["cluster.local/ns/default/sa/bookinfo-productpage"]}}]}]}, "default")
    assert findings(docs_policy) == [("MSH0113", "its namespace 'default' is no meshed compose project, so it "
                                                 "applies to no workload")]
    good = doc("AuthorizationPolicy", {"selector": {"matchLabels": {"app": "reviews"}}, "rules": [{"from": [{
        "source": {"principals": ["cluster.local/ns/bookinfo/sa/bookinfo-productpage", "*/ns/x/sa/*"]}}, {
        "source": {"serviceAccounts": ["bookinfo/reviews"]}}, {"source": {"namespaces": ["bookinfo", "*"]}}]}]},
        "bookinfo")
    assert findings(good) == []
    bad = doc("AuthorizationPolicy", {"selector": {"matchLabels": {"app": "ratings"}}, "rules": [{"from": [{
        "source": {"principals": ["cluster.local/ns/bookinfo/sa/productpage"]}}, {
        "source": {"serviceAccounts": ["default/bookinfo-reviews"]}}, {"source": {"namespaces": ["default"]}}]}]})
    texts = [t for code, t in findings(bad) if code == "MSH0113"]
    assert len(texts) == 4 and "selector {'app': 'ratings'} matches no meshed workload" in texts[0]
    assert "source bookinfo/productpage is no meshed workload's service account" in texts[1]
    assert "source default/bookinfo-reviews" in texts[2] and "namespace 'default'" in texts[3]


# --- 7. kinds that do not apply on compose -------------------------------------------------------------------

@pytest.mark.parametrize(("kind", "why"), [("Gateway", "the edge of a compose mesh is a published port"),
                                           ("EnvoyFilter", "not Envoy"), ("Sidecar", "own project's services"),
                                           ("WorkloadEntry", "ServiceEntry")])
def test_refused_kinds_say_why(kind: str, why: str) -> None:
    [problem] = check_document(doc(kind, {}), "f.yaml")[1]
    assert problem.startswith(f"f.yaml: kind {kind} is not supported by meshctl: ") and why in problem
