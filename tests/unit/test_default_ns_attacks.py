"""`apply -n PROJECT` of YAML in Kubernetes' `default` namespace (config.default_ns), from an attacker's side:
only what names `default` itself becomes the project; `default-x`, `xdefault`, `default.svc` and other
namespaces stay exactly as written, so a mapped policy never reaches another project's proxies."""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshctl.config.default_ns import map_default
from tests.unit.fuzzing import FUZZ

PROJECT = "shop"


def policy(source: dict[str, Any], when: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    rule: dict[str, Any] = {"from": [{"source": source}]}
    if when is not None:
        rule["when"] = when
    return {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
            "metadata": {"name": "p", "namespace": "default"}, "spec": {"rules": [rule]}}


def mapped_source(source: dict[str, Any]) -> dict[str, Any]:
    return dict(map_default(policy(source), PROJECT)["spec"]["rules"][0]["from"][0]["source"])


@pytest.mark.parametrize(("principal", "expected"), [
    ("cluster.local/ns/default/sa/x", "cluster.local/ns/shop/sa/x"),
    ("*/ns/default/sa/x", "*/ns/shop/sa/x"),
    ("ns/default/sa/x", "ns/shop/sa/x"),
    ("cluster.local/ns/default/sa/*", "cluster.local/ns/shop/sa/*"),
    ("cluster.local/ns/default/*", "cluster.local/ns/shop/*"),  # the whole namespace, as Istio's docs write it
    ("cluster.local/ns/default-x/sa/x", "cluster.local/ns/default-x/sa/x"),
    ("cluster.local/ns/xdefault/sa/x", "cluster.local/ns/xdefault/sa/x"),
    ("cluster.local/ns/default.svc/sa/x", "cluster.local/ns/default.svc/sa/x"),
    ("cluster.local/xns/default/sa/x", "cluster.local/xns/default/sa/x"),
    ("cluster.local/ns/other/sa/default", "cluster.local/ns/other/sa/default"),
    ("*", "*"),
])
def test_principals_map_only_the_default_namespace(principal: str, expected: str) -> None:
    assert mapped_source({"principals": [principal], "notPrincipals": [principal]}) == {
        "principals": [expected], "notPrincipals": [expected]}


@pytest.mark.parametrize(("account", "expected"), [("default/x", "shop/x"), ("default-x/y", "default-x/y"),
                                                   ("other/default", "other/default"), ("xdefault/y", "xdefault/y")])
def test_service_accounts_map_only_the_default_namespace(account: str, expected: str) -> None:
    assert mapped_source({"serviceAccounts": [account], "notServiceAccounts": [account]}) == {
        "serviceAccounts": [expected], "notServiceAccounts": [expected]}


@pytest.mark.parametrize(("namespace", "expected"), [("default", "shop"), ("default-x", "default-x"),
                                                     ("default*", "default*"), ("*", "*"), ("Default", "Default")])
def test_namespaces_map_only_default_itself(namespace: str, expected: str) -> None:
    assert mapped_source({"namespaces": [namespace], "notNamespaces": [namespace]}) == {
        "namespaces": [expected], "notNamespaces": [expected]}


def test_when_conditions_map_as_sources_do() -> None:
    when = [{"key": "source.principal", "values": ["cluster.local/ns/default/sa/x"],
             "notValues": ["cluster.local/ns/default-x/sa/x"]},
            {"key": "source.namespace", "values": ["default"], "notValues": ["default-x"]},
            {"key": "request.headers[x-ns]", "values": ["default"]}]
    out = map_default(policy({}, when), PROJECT)["spec"]["rules"][0]["when"]
    assert out == [{"key": "source.principal", "values": ["cluster.local/ns/shop/sa/x"],
                    "notValues": ["cluster.local/ns/default-x/sa/x"]},
                   {"key": "source.namespace", "values": ["shop"], "notValues": ["default-x"]},
                   {"key": "request.headers[x-ns]", "values": ["default"]}]  # a header's value is the client's


# A namespace segment of a principal: NS in .../ns/NS/... (or at its start), and whether a `/` follows it;
# only `ns/` is consumed, so `ns/ns/default/` also finds `default`.
SEGMENT = re.compile(r"(?<![^/])ns/(?=([^/]*)(/?))")
names = st.sampled_from(["default", "default-x", "xdefault", "default.svc", "shop", "other", "*", "default*", "sa",
                         "ns", ""])


@FUZZ
@given(st.lists(names, min_size=1, max_size=7).map("/".join))
def test_mapping_changes_no_namespace_but_default(principal: str) -> None:
    """Whatever the principal, a namespace segment that is exactly `default` (and more follows) becomes the
    project, and nothing else changes."""
    out = mapped_source({"principals": [principal]})["principals"][0]
    before = SEGMENT.findall(principal)
    expected = [(PROJECT if ns == "default" and slash else ns, slash) for ns, slash in before]
    assert SEGMENT.findall(out) == expected
    mapped = sum(1 for ns, slash in before if ns == "default" and slash)
    assert len(out) == len(principal) + mapped * (len(PROJECT) - len("default"))
