"""Config stays in its project: compose projects are namespaces, as in Istio (issue 14, item 10).

Two projects, alpha and beta, each mesh `reviews` v1 and v2 (and a productpage calling it). Resources are
keyed by kind, namespace and name; a host resolves in its resource's namespace; a resource with no
namespace applies to every project. No engine: snapshots are compiled from proxy.json files on disk.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from meshctl.config.analyze import Inventory, analyze_resources
from meshctl.config.hosts import canonical, target
from meshctl.config.resources import key
from meshctl.config.store import Store
from meshctl.mesh import Pod, describe
from meshctl.pilot.snapshot import compile_snapshot
from meshctl.status import ExitCode
from tests.unit.fuzzing import FUZZ, make_home, one_line, run_cli, tree_state

PROJECTS = ("alpha", "beta")
APPS = {"productpage", "reviews"}


def pod(service: str, app: str, version: str = "v1") -> Pod:
    return Pod(service=service, sidecar=f"{service}-proxy", app=app, version=version, mode="PERMISSIVE",
               exclude_inbound=(), exclude_outbound=(), published=())


PODS = [pod("productpage", "productpage"), pod("reviews-v1", "reviews", "v1"), pod("reviews-v2", "reviews", "v2")]


def info(project: str, service: str = "productpage") -> dict[str, Any]:
    me = next(p for p in PODS if p.service == service)
    return describe(me, PODS, project, "cluster.local")


def vs(name: str, namespace: str | None, hosts: list[str], dest: str | None = None, subset: str = "v2",
       mirror: str | None = None) -> dict[str, Any]:
    rule: dict[str, Any] = {"route": [{"destination": {"host": dest or hosts[0], "subset": subset}}]}
    if mirror:
        rule["mirror"] = {"host": mirror, "subset": "v1"}
    meta = {"name": name, **({"namespace": namespace} if namespace else {})}
    return {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService", "metadata": meta,
            "spec": {"hosts": hosts, "http": [rule]}}


def dr(name: str, namespace: str | None, host: str = "reviews") -> dict[str, Any]:
    meta = {"name": name, **({"namespace": namespace} if namespace else {})}
    return {"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule", "metadata": meta,
            "spec": {"host": host, "subsets": [{"name": "v1", "labels": {"version": "v1"}},
                                               {"name": "v2", "labels": {"version": "v2"}}]}}


def routes_of(project: str, resources: list[dict[str, Any]], service: str = "productpage") -> list[dict[str, Any]]:
    return list(compile_snapshot(info(project, service), resources, 1)["routes"])


def destinations_of(project: str, resources: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return list(compile_snapshot(info(project), resources, 1)["destinations"])


# --- the snapshot: which project's proxies a resource reaches -------------------------------------------------

def test_a_namespaced_virtual_service_routes_only_its_projects_proxies() -> None:
    resources = [vs("reviews", "alpha", ["reviews"]), dr("reviews", "alpha")]
    for service in ("productpage", "reviews-v1"):
        [route] = routes_of("alpha", resources, service)
        assert route["hosts"] == ["reviews"] and route["name"] == "alpha/reviews"
        assert routes_of("beta", resources, service) == []
    assert [d["host"] for d in destinations_of("alpha", resources)] == ["reviews"]
    assert destinations_of("beta", resources) == []


@pytest.mark.parametrize("host", ["reviews.alpha", "reviews.alpha.svc.cluster.local", "REVIEWS.Alpha.",
                                  "reviews.alpha.svc.cluster.local."])
@pytest.mark.parametrize("namespace", ["beta", None, "alpha", "gamma"])
def test_a_qualified_host_names_that_project_from_any_namespace(host: str, namespace: str | None) -> None:
    resources = [vs("r", namespace, [host], mirror=host), dr("d", namespace, host)]
    [route] = routes_of("alpha", resources)
    assert route["hosts"] == ["reviews"]  # the short name the sidecar routes on
    assert route["http"][0]["route"][0]["destination"]["host"] == "reviews"
    assert route["http"][0]["mirror"]["host"] == "reviews"
    assert [d["host"] for d in destinations_of("alpha", resources)] == ["reviews"]
    assert routes_of("beta", resources) == [] and destinations_of("beta", resources) == []


@pytest.mark.parametrize("host", ["reviews", "reviews.beta", "reviews.beta.svc.cluster.local",
                                  "reviews.svc.cluster.local", "reviews.alpha.svc", "reviews.alpha.evil",
                                  "reviews.alpha.svc.cluster.local.evil",
                                  "alpha", "reviews.", "*", "reviews.alpha.svc.cluster", "reviews..alpha"])
def test_a_beta_resource_cannot_reach_alphas_proxies_without_naming_alpha(host: str) -> None:
    """What an attacker with apply rights in beta might try: none of these is alpha's reviews."""
    resources = [vs("r", "beta", [host], dest="reviews.alpha"), dr("d", "beta", host)]
    assert routes_of("alpha", resources) == [] and destinations_of("alpha", resources) == []


def test_a_resource_with_no_namespace_applies_to_every_project_after_the_projects_own() -> None:
    mesh = vs("mesh-wide", None, ["reviews"], subset="v1")
    own = vs("own", "alpha", ["reviews"], subset="v2")
    for resources in ([mesh, own], [own, mesh]):
        assert [r["name"] for r in routes_of("alpha", resources)] == ["alpha/own", "mesh-wide"]  # sidecar: first
        assert [r["name"] for r in routes_of("beta", resources)] == ["mesh-wide"]


def test_a_short_destination_resolves_in_the_resources_namespace() -> None:
    """beta's VS for alpha's reviews routing to `reviews` means beta's reviews (Istio): alpha's sidecars must not
    send it to their own reviews, so it keeps its project and matches no service there."""
    [route] = routes_of("alpha", [vs("r", "beta", ["reviews.alpha"], dest="reviews", mirror="reviews")])
    assert route["http"][0]["route"][0]["destination"]["host"] == "reviews.beta"
    assert route["http"][0]["mirror"]["host"] == "reviews.beta"


def test_a_host_that_names_several_services_keeps_only_this_projects() -> None:
    [route] = routes_of("alpha", [vs("r", "beta", ["reviews.alpha", "productpage.beta", "reviews"],
                                     dest="reviews.alpha")])
    assert route["hosts"] == ["reviews"]
    [route] = routes_of("beta", [vs("r", "beta", ["reviews.alpha", "productpage.beta", "reviews"],
                                    dest="reviews.alpha")])
    assert route["hosts"] == ["productpage", "reviews"]
    assert route["http"][0]["route"][0]["destination"]["host"] == "reviews.alpha"


LABELS = st.sampled_from(["reviews", "REVIEWS", "alpha", "beta", "svc", "cluster", "local", "", "productpage", "x"])


@FUZZ
@given(labels=st.lists(LABELS, min_size=1, max_size=6), dot=st.booleans(),
       namespace=st.sampled_from([None, "alpha", "beta", "gamma"]))
def test_only_a_host_naming_the_project_crosses_namespaces(labels: list[str], dot: bool,
                                                            namespace: str | None) -> None:
    """Property: a resource reaches a project other than its own only when a host names that project."""
    host = ".".join(labels) + ("." if dot else "")
    for project in PROJECTS:
        app = target(host, namespace, project, APPS)
        if app is not None and namespace not in (None, project):
            assert project in host.lower().split("."), (host, namespace, project)
        if app is not None:
            assert app in APPS and app.lower() in host.lower()
        routed = routes_of(project, [vs("r", namespace, [host], dest=host)])
        assert bool(routed) == (app is not None)


def test_canonical_forms() -> None:
    assert canonical("reviews", "alpha") == ("alpha", "reviews")
    assert canonical("reviews", None) == (None, "reviews")
    assert canonical("Reviews.Beta.svc.cluster.local.", "alpha") == ("beta", "reviews")
    assert canonical("reviews.svc.cluster.local", "alpha")[0] == ""  # names no namespace: matches none


# --- the CLI on a mesh home with both projects ------------------------------------------------------------------

@pytest.fixture
def home(tmp_path: Path) -> Path:
    root = make_home(tmp_path / "home")
    for project in PROJECTS:
        for p in PODS:
            directory = root / "proxies" / project / p.service
            directory.mkdir(parents=True)
            (directory / "proxy.json").write_text(json.dumps(info(project, p.service)))
    return root


def snap(home: Path, project: str, service: str = "productpage") -> dict[str, Any]:
    return dict(json.loads((home / "proxies" / project / service / "snapshot.json").read_text()))


def ok(home: Path, *argv: str) -> str:
    done = run_cli(home, *argv)
    assert done.code == 0, done.err
    return done.out


def fail(home: Path, *argv: str, code: ExitCode = ExitCode.INVALID_INPUT) -> str:
    before = tree_state(home)
    done = run_cli(home, *argv)
    assert done.code == code, (done.code, done.out, done.err)
    assert tree_state(home) == before  # nothing changed
    return one_line(done.err)


def write(path: Path, *docs: dict[str, Any]) -> str:
    path.write_text(yaml.safe_dump_all(docs))
    return str(path)


def subsets_routed(snapshot: dict[str, Any]) -> list[str]:
    return [d["destination"]["subset"] for r in snapshot["routes"] for d in r["http"][0]["route"]]


def test_same_named_resources_in_two_projects_coexist(home: Path, tmp_path: Path) -> None:
    file = write(tmp_path / "both.yaml", vs("reviews", "alpha", ["reviews"], subset="v1"), dr("reviews", "alpha"),
                 vs("reviews", "beta", ["reviews"], subset="v2"), dr("reviews", "beta"))
    out = ok(home, "apply", "-f", file)
    assert out.count("created") == 4 and "(namespace alpha)" in out and "(namespace beta)" in out
    stored = Store(home / "config").read().resources
    assert sorted(key(r) for r in stored) == [("DestinationRule", "alpha", "reviews"),
                                              ("DestinationRule", "beta", "reviews"),
                                              ("VirtualService", "alpha", "reviews"),
                                              ("VirtualService", "beta", "reviews")]
    assert subsets_routed(snap(home, "alpha")) == ["v1"] and subsets_routed(snap(home, "beta")) == ["v2"]
    assert "unchanged" in ok(home, "apply", "-f", file) and Store(home / "config").current_number() == 1
    listed = json.loads(ok(home, "get", "vs", "-o", "json"))
    assert sorted(r["metadata"]["namespace"] for r in listed) == ["alpha", "beta"]
    table = ok(home, "get", "vs")
    assert "NAMESPACE" in table.upper() and "alpha" in table and "beta" in table
    only = json.loads(ok(home, "get", "vs", "-p", "beta", "-o", "json"))
    assert [r["metadata"]["namespace"] for r in only] == ["beta"]


def test_get_and_delete_ask_which_namespace(home: Path, tmp_path: Path) -> None:
    ok(home, "apply", "-f", write(tmp_path / "a.yaml", vs("reviews", "alpha", ["reviews"], subset="v1"),
                                  vs("reviews", "beta", ["reviews"], subset="v1"),
                                  vs("reviews", None, ["reviews"], subset="v1"), dr("reviews", None)))
    line = fail(home, "get", "vs", "reviews", code=ExitCode.USAGE)
    assert "several namespaces: alpha, beta, (none)" in line and "-p PROJECT" in line
    line = fail(home, "delete", "vs", "reviews", code=ExitCode.USAGE)
    assert "several namespaces" in line and "-p PROJECT" in line
    got = yaml.safe_load(ok(home, "get", "vs", "reviews", "-p", "beta", "-o", "yaml"))
    assert got["metadata"] == {"name": "reviews", "namespace": "beta"}
    assert "not found in namespace 'gamma'" in fail(home, "get", "vs", "reviews", "-p", "gamma", code=ExitCode.USAGE)
    assert "deleted" in ok(home, "delete", "vs", "reviews", "-p", "alpha")
    assert "deleted" in ok(home, "delete", "vs", "reviews", "-p", "")  # the one with no namespace
    assert [r["name"] for r in snap(home, "alpha")["routes"]] == []
    assert [r["name"] for r in snap(home, "beta")["routes"]] == ["beta/reviews"]
    assert "(namespace beta) deleted" in ok(home, "delete", "vs", "reviews")  # only one left: no -n needed
    assert "not found" in fail(home, "delete", "vs", "reviews", code=ExitCode.USAGE)
    history = json.loads(ok(home, "history", "-o", "json"))
    assert [h["change"] for h in history[:3]] == ["delete VirtualService/beta/reviews", "delete VirtualService/reviews",
                                                  "delete VirtualService/alpha/reviews"]


def test_apply_n_sets_the_namespace_of_resources_without_one(home: Path, tmp_path: Path) -> None:
    file = write(tmp_path / "plain.yaml", vs("reviews", None, ["reviews"], subset="v2"), dr("reviews", None))
    assert "created" in ok(home, "apply", "-f", file, "--namespace", "alpha")
    assert {key(r) for r in Store(home / "config").read().resources} == {("VirtualService", "alpha", "reviews"),
                                                                         ("DestinationRule", "alpha", "reviews")}
    assert subsets_routed(snap(home, "alpha")) == ["v2"] and snap(home, "beta")["routes"] == []
    assert ok(home, "apply", "-f", file, "-p", "alpha").count("unchanged") == 2
    assert ok(home, "apply", "-f", file, "-p", "beta").count("created") == 2  # another project: its own copy
    assert len(Store(home / "config").read().resources) == 4


@pytest.mark.parametrize("flag", ["-p", "--project", "--namespace"])
def test_apply_n_refuses_a_resource_of_another_namespace(home: Path, tmp_path: Path, flag: str) -> None:
    file = write(tmp_path / "x.yaml", dr("reviews", None), vs("reviews", "beta", ["reviews"]))
    line = fail(home, "apply", "-f", file, flag, "alpha")
    assert "the namespace from the provided object ('beta') does not match the namespace sent on the request " \
           "('alpha')" in line and "x.yaml" in line
    assert "compose project name" in fail(home, "apply", "-f", file, flag, "Alpha", code=ExitCode.USAGE)
    bad = write(tmp_path / "bad.yaml", vs("reviews", "al.pha", ["reviews"]))
    assert "metadata.namespace 'al.pha'" in fail(home, "apply", "-f", bad)


def test_a_subset_must_be_defined_for_the_same_project(home: Path, tmp_path: Path) -> None:
    line = fail(home, "apply", "-f", write(tmp_path / "x.yaml", vs("reviews", "alpha", ["reviews"]),
                                           dr("reviews", "beta")))
    assert "VirtualService alpha/reviews" in line and "'v2' is not a subset" in line
    ok(home, "apply", "-f", write(tmp_path / "y.yaml", vs("reviews", "alpha", ["reviews"]), dr("reviews", "alpha",
                                                                                                 "reviews.alpha")))


def test_route_set_p_writes_the_projects_own_resources(home: Path) -> None:
    ok(home, "route", "set", "reviews", "--to", "v2", "-p", "alpha")
    assert {key(r) for r in Store(home / "config").read().resources} == {("VirtualService", "alpha", "reviews"),
                                                                         ("DestinationRule", "alpha", "reviews")}
    assert subsets_routed(snap(home, "alpha")) == ["v2"] and snap(home, "beta")["routes"] == []
    ok(home, "route", "set", "reviews", "--to", "v1", "--project", "beta")
    ok(home, "route", "set", "reviews", "--to", "v1=50", "--to", "v2", "-p", "alpha")
    assert subsets_routed(snap(home, "alpha")) == ["v1", "v2"] and subsets_routed(snap(home, "beta")) == ["v1"]
    rows = json.loads(ok(home, "route", "get", "reviews", "-p", "alpha", "-o", "json"))
    assert rows[0]["route"] == "v1 50%, v2 50%"
    assert json.loads(ok(home, "route", "get", "reviews", "-o", "json")) == []  # no route without a project
    listed = json.loads(ok(home, "route", "list", "-o", "json"))
    assert sorted((r["project"], r["default_route"]) for r in listed) == [("alpha", "v1 50%, v2 50%"),
                                                                         ("beta", "v1")]
    assert "no meshed service is called 'reviews' in project 'gamma'" in fail(
        home, "route", "set", "reviews", "--to", "v1", "-p", "gamma", code=ExitCode.USAGE)
    assert "no route in project 'gamma'" in fail(home, "route", "delete", "reviews", "-p", "gamma",
                                                 code=ExitCode.USAGE)
    ok(home, "route", "delete", "reviews", "-p", "alpha")
    assert snap(home, "alpha")["routes"] == [] and subsets_routed(snap(home, "beta")) == ["v1"]
    ok(home, "route", "set", "reviews", "--to", "v2")  # without -p, as before: no namespace, every project
    assert subsets_routed(snap(home, "alpha")) == ["v2"]
    assert subsets_routed(snap(home, "beta")) == ["v1", "v2"]  # beta's own first, then the mesh-wide one


def test_authz_allow_p_writes_a_policy_in_that_project(home: Path) -> None:
    ok(home, "authz", "allow", "--from", "productpage", "--to", "reviews", "-p", "alpha")
    [policy] = Store(home / "config").read().resources
    assert policy["metadata"]["namespace"] == "alpha"
    assert policy["spec"]["rules"][0]["from"][0]["source"]["principals"] == ["cluster.local/ns/alpha/sa/productpage"]
    assert [a["name"] for a in snap(home, "alpha", "reviews-v1")["authorization"]] == [
        "alpha/allow-productpage-to-reviews"]
    assert snap(home, "beta", "reviews-v1")["authorization"] == []
    assert "in project 'gamma'" in fail(home, "authz", "allow", "--from", "productpage", "--to", "reviews",
                                        "-p", "gamma", code=ExitCode.USAGE)


def test_mtls_and_slo_and_telemetry_p(home: Path) -> None:
    ok(home, "mtls", "set", "reviews", "--mode", "strict", "-p", "beta")
    assert snap(home, "beta", "reviews-v1")["inbound"]["mode"] == "STRICT"
    assert snap(home, "alpha", "reviews-v1")["inbound"]["mode"] == "PERMISSIVE"
    run_slo = ("slo", "set", "reviews", "--availability", "99")
    ok(home, *run_slo, "-p", "alpha")
    ok(home, *run_slo, "-p", "beta")
    ok(home, *run_slo)
    slos = {key(r) for r in Store(home / "config").read().resources if r["kind"] == "ServiceLevelObjective"}
    assert slos == {("ServiceLevelObjective", ns, "reviews") for ns in ("alpha", "beta", None)}
    ok(home, "slo", "delete", "reviews", "-p", "beta")
    ok(home, "slo", "delete", "reviews")  # without -p: the one with no project, as before
    slos = {key(r) for r in Store(home / "config").read().resources if r["kind"] == "ServiceLevelObjective"}
    assert slos == {("ServiceLevelObjective", "alpha", "reviews")}
    ok(home, "telemetry", "set", "reviews", "--sampling", "5", "-p", "alpha")
    ok(home, "telemetry", "set", "reviews", "--sampling", "7")
    assert snap(home, "alpha", "reviews-v1")["tracing"]["sampling"] == 5.0
    assert snap(home, "beta", "reviews-v1")["tracing"]["sampling"] == 7.0
    ok(home, "telemetry", "delete", "reviews")  # the mesh-wide one
    assert snap(home, "beta", "reviews-v1")["tracing"]["sampling"] == 100.0
    assert snap(home, "alpha", "reviews-v1")["tracing"]["sampling"] == 5.0


# --- a store written before namespaces were part of the key -----------------------------------------------------

def test_an_old_store_upgrades_in_place(home: Path, tmp_path: Path) -> None:
    """Revisions written by the older meshctl (kind+name keys; an empty namespace was possible) read and keep
    working; re-applying the same resource is not a duplicate; rollback to them works."""
    old = [vs("reviews", None, ["reviews"], subset="v1"), dr("reviews", None),
           {**vs("ratings-route", None, ["reviews"]), "metadata": {"name": "ratings-route", "namespace": ""}},
           vs("bookinfo-only", "alpha", ["reviews"], subset="v2")]
    revisions = home / "config" / "revisions"
    (revisions / "000001.json").write_text(json.dumps({"revision": 1, "time": 1.0, "message": "apply (old meshctl)",
                                                       "resources": old}))
    (home / "config" / "current").write_text("1\n")
    assert "unchanged" in ok(home, "apply", "-f", write(tmp_path / "same.yaml", old[0]))
    same_empty = write(tmp_path / "e.yaml", vs("ratings-route", None, ["reviews"]))
    assert "configured" in ok(home, "apply", "-f", same_empty)  # its empty namespace is no namespace
    assert len(Store(home / "config").read().resources) == 4
    assert "unchanged" in ok(home, "apply", "-f", same_empty)
    assert "created" in ok(home, "apply", "-f", write(tmp_path / "b.yaml", vs("bookinfo-only", "beta", ["reviews"],
                                                                               subset="v1")))
    resources = Store(home / "config").read().resources
    assert len(resources) == 5
    assert [r["name"] for r in snap(home, "alpha")["routes"]] == ["alpha/bookinfo-only", "reviews", "ratings-route"]
    assert [r["name"] for r in snap(home, "beta")["routes"]] == ["beta/bookinfo-only", "reviews", "ratings-route"]
    ok(home, "rollback", "1")
    assert Store(home / "config").read().resources == old
    assert [r["name"] for r in snap(home, "beta")["routes"]] == ["reviews", "ratings-route"]
    assert "deleted" in ok(home, "delete", "vs", "ratings-route")  # the empty namespace counts as none
    assert "deleted" in ok(home, "delete", "vs", "bookinfo-only")


# --- analyze --------------------------------------------------------------------------------------------------

INVENTORY = Inventory(versions={"reviews": {"v1", "v2"}, "productpage": {"v1"}, "ratings": {"v1"}},
                      running={"reviews": {"v1", "v2"}, "productpage": {"v1"}, "ratings": {"v1"}},
                      projects={"alpha": set(APPS), "beta": set(APPS), "solo": {"ratings"}})


def codes(*resources: dict[str, Any]) -> list[tuple[str, str]]:
    return [(m.code, m.resource) for m in analyze_resources(list(resources), INVENTORY)]


def test_analyze_warns_when_a_resource_without_namespace_reaches_several_projects() -> None:
    [message] = analyze_resources([vs("reviews", None, ["reviews"]), dr("reviews", "alpha")], INVENTORY)
    assert (message.code, message.level, message.resource) == ("MSH0112", "Warning", "VirtualService reviews")
    assert "2 projects: alpha, beta" in message.text
    assert message.hint == "set metadata.namespace (or apply -p PROJECT) so it applies to one project"
    assert codes(dr("reviews", None)) == [("MSH0112", "DestinationRule reviews")]
    assert codes(vs("r", None, ["ratings"], subset="v1"), dr("d", "solo", "ratings")) == []  # one project only
    assert codes(vs("r", None, ["reviews.alpha"]), dr("reviews", "alpha")) == []  # names one project
    assert codes(vs("r", "alpha", ["reviews"]), dr("reviews", "alpha")) == []


def test_analyze_msh0104_understands_namespaced_hosts() -> None:
    assert codes(vs("r", "beta", ["reviews.alpha"]), dr("d", "alpha")) == []
    assert codes(vs("r", "gamma", ["reviews.alpha.svc.cluster.local"]), dr("d", "alpha")) == []
    assert codes(vs("r", "gamma", ["reviews"]), dr("d", "gamma")) == [("MSH0104", "VirtualService gamma/r"),
                                                                       ("MSH0104", "DestinationRule gamma/d")]
    assert codes(vs("r", "alpha", ["reviews.gamma"]), dr("d", "gamma")) == [
        ("MSH0104", "VirtualService alpha/r"), ("MSH0104", "DestinationRule gamma/d")]
    assert codes(vs("r", "solo", ["reviews"]), dr("d", "solo"))[0] == ("MSH0104", "VirtualService solo/r")
    policy = {"kind": "AuthorizationPolicy", "metadata": {"name": "p"}, "spec": {"action": "DENY"}}
    assert codes(policy) == []  # no hosts: nothing to match


def test_analyze_conflicts_and_subsets_are_per_project() -> None:
    assert codes(vs("a", "alpha", ["reviews"]), vs("b", "beta", ["reviews"]), dr("d", "alpha"), dr("e", "beta")) == []
    assert codes(vs("a", "alpha", ["reviews"]), vs("b", "beta", ["reviews.alpha"]), dr("d", "alpha"))[0] == \
        ("MSH0109", "VirtualService beta/b")
    assert codes(vs("a", "alpha", ["reviews"]), dr("d", "beta")) == [("MSH0101", "VirtualService alpha/a")]


def test_authz_allow_names_the_callers_service_account(home: Path) -> None:
    """A caller labelled `mesh.service-account` is allowed by that account, not its app name (which would match
    nobody); a project where the caller has no label keeps the app name."""
    accounted = [pod("productpage", "productpage")]
    accounted[0] = Pod(**{**accounted[0].__dict__, "account": "bookinfo-productpage"})
    (home / "proxies" / "alpha" / "productpage" / "proxy.json").write_text(
        json.dumps(describe(accounted[0], [*accounted, *PODS[1:]], "alpha", "cluster.local")))
    ok(home, "authz", "allow", "--from", "productpage", "--to", "reviews")
    [policy] = Store(home / "config").read().resources
    assert policy["spec"]["rules"][0]["from"][0]["source"]["principals"] == [
        "cluster.local/ns/alpha/sa/bookinfo-productpage", "cluster.local/ns/beta/sa/productpage"]
