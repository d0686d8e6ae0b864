"""`meshctl route set` as pure edits of VirtualService/DestinationRule, and its CLI on a mesh home."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from meshctl.config.routes import RouteEdit, delete_route, parse_match, parse_targets, set_route
from meshctl.errors import UsageError
from meshctl.status import ExitCode
from tests.unit.cli import meshctl
from tests.unit.test_cli_errors import one_error_line
from tests.unit.test_inject import BOOKINFO, inject

VERSIONS = {"v1", "v2", "v3"}


def rules(resources: list[dict]) -> list[dict]:
    return next(r for r in resources if r["kind"] == "VirtualService")["spec"]["http"]


def test_match_syntax_maps_to_istio_match_requests() -> None:
    assert parse_match(["header:End-User=jason", "path^=/api", "method=get", "query:v~=[0-9]+"]) == {
        "headers": {"end-user": {"exact": "jason"}}, "uri": {"prefix": "/api"}, "method": {"exact": "GET"},
        "queryParams": {"v": {"regex": "[0-9]+"}}}
    for bad in ("header=jason", "colour=red", "path:x=/a", "path~=(oops"):
        with pytest.raises(UsageError):
            parse_match([bad])


def test_weights_take_the_remainder_and_must_add_up() -> None:
    assert parse_targets(["v1=90", "v2"]) == [("v1", 90), ("v2", 10)]
    assert parse_targets(["v2"]) == [("v2", None)]
    for bad in (["v1=90", "v2=20"], ["v1", "v2"], ["v1=x"], ["v1=150"], ["v1=50", "v1=50"]):
        with pytest.raises(UsageError):
            parse_targets(bad)


def test_set_builds_ordered_rules_and_subsets() -> None:
    out = set_route([], "reviews", RouteEdit(to=["v1=90", "v2"]), VERSIONS)
    out = set_route(out, "reviews", RouteEdit(match=["header:end-user=jason"], to=["v3"], timeout="2s",
                                              retries=3, retry_on="5xx,reset", delay="1s", delay_percent=50,
                                              set_response_headers=["x-canary=yes"]), VERSIONS)
    http = rules(out)
    assert [r.get("match") for r in http] == [[{"headers": {"end-user": {"exact": "jason"}}}], None]  # catch-all last
    assert http[0]["route"] == [{"destination": {"host": "reviews", "subset": "v3"}}]
    assert http[0]["timeout"] == "2s" and http[0]["retries"] == {"attempts": 3, "retryOn": "5xx,reset"}
    assert http[0]["fault"] == {"delay": {"fixedDelay": "1s", "percentage": {"value": 50}}}
    assert http[0]["headers"] == {"response": {"set": {"x-canary": "yes"}}}
    assert [d["weight"] for d in http[1]["route"]] == [90, 10]
    dr = next(r for r in out if r["kind"] == "DestinationRule")
    assert sorted(s["name"] for s in dr["spec"]["subsets"]) == ["v1", "v2", "v3"]
    # flags left out keep what the rule had; --reset starts afresh
    kept = set_route(out, "reviews", RouteEdit(match=["header:end-user=jason"], timeout="5s"), VERSIONS)
    assert rules(kept)[0]["route"] == http[0]["route"] and rules(kept)[0]["timeout"] == "5s"
    fresh = set_route(out, "reviews", RouteEdit(match=["header:end-user=jason"], to=["v1"], reset=True), VERSIONS)
    assert "timeout" not in rules(fresh)[0]


def test_set_refuses_unknown_versions_and_bad_values_naming_the_flag() -> None:
    cases = [(RouteEdit(to=["v9"]), "--to v9"), (RouteEdit(timeout="soon"), "--timeout"),
             (RouteEdit(abort=700), "--abort 700"), (RouteEdit(abort=503, abort_percent=120), "--abort-percent"),
             (RouteEdit(retry_on="sometimes"), "--retry-on"), (RouteEdit(mirror="v9"), "--mirror v9"),
             (RouteEdit(set_headers=["novalue"]), "--set-header"),
             (RouteEdit(set_headers=["x y=1"]), "--set-header 'x y=1': 'x y' is not an HTTP header name"),
             (RouteEdit(add_response_headers=["x-a=1\r\nset-cookie: a=b"]), "--add-response-header .*control char"),
             (RouteEdit(remove_headers=["x:y"]), "--remove-header 'x:y'")]
    for edit, flag in cases:
        with pytest.raises(UsageError, match=flag):
            set_route([], "reviews", edit, VERSIONS)
    with pytest.raises(UsageError, match="no meshed service"):
        set_route([], "nope", RouteEdit(to=["v1"]), set())


def test_delete_a_rule_or_the_whole_route() -> None:
    out = set_route([], "reviews", RouteEdit(to=["v1"]), VERSIONS)
    out = set_route(out, "reviews", RouteEdit(match=["method=POST"], to=["v2"]), VERSIONS)
    one = delete_route(out, "reviews", ["method=POST"])
    assert len(rules(one)) == 1
    assert not any(r["kind"] == "VirtualService" for r in delete_route(out, "reviews", []))
    with pytest.raises(UsageError, match="no rule matching"):
        delete_route(out, "reviews", ["method=PUT"])


def test_route_cli_set_get_dry_run_and_errors(installed_home: Path, tmp_path: Path) -> None:
    inject(installed_home, BOOKINFO, tmp_path / "meshed.yaml")  # reviews v1, v2 and v3 are meshed
    dry = meshctl("route", "set", "reviews", "--to", "v1=80", "--to", "v2", "--dry-run", home=installed_home)
    assert dry.code == 0, dry.err
    docs = list(yaml.safe_load_all(dry.out))
    assert [d["kind"] for d in docs] == ["VirtualService", "DestinationRule"]
    assert not (installed_home / "config" / "revisions" / "000001.json").exists()  # dry run stored nothing
    assert meshctl("route", "set", "reviews", "--to", "v1=80", "--to", "v2", home=installed_home).code == 0
    same = meshctl("route", "set", "reviews", "--to", "v1=80", "--to", "v2=20", home=installed_home)
    assert same.code == 0 and "unchanged (revision 1)" in same.out
    got = json.loads(meshctl("route", "get", "reviews", "-o", "json", home=installed_home).out)
    assert got == [{"rule": 0, "match": "*", "route": "v1 80%, v2 20%", "timeout": "-", "retries": "-",
                    "fault": "-", "mirror": "-"}]
    bad = meshctl("route", "set", "reviews", "--to", "v4", home=installed_home)
    assert bad.code == ExitCode.USAGE
    assert "reviews has no version 'v4' (its versions: v1, v2, v3)" in one_error_line(bad.err)
    listed = json.loads(meshctl("route", "list", "-o", "json", home=installed_home).out)
    assert listed == [{"service": "reviews", "project": None, "virtualservice": "reviews", "rules": 1,
                       "default_route": "v1 80%, v2 20%"}]
