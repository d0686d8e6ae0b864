"""Routing decisions as pure functions: rule order, matches, weights, subsets."""

from __future__ import annotations

from collections import Counter

from hypothesis import given
from hypothesis import strategies as st

from sidecar.routes import pick_destination, request_matches, select_rule, subset_labels

VS = {"name": "reviews", "hosts": ["reviews"], "http": [
    {"match": [{"headers": {"end-user": {"exact": "jason"}}}], "route": [{"destination": {"host": "reviews",
                                                                                         "subset": "v2"}}]},
    {"match": [{"uri": {"prefix": "/admin"}, "method": {"exact": "POST"}}],
     "route": [{"destination": {"host": "reviews", "subset": "v3"}}]},
    {"route": [{"destination": {"host": "reviews", "subset": "v1"}, "weight": 90},
               {"destination": {"host": "reviews", "subset": "v2"}, "weight": 10}]},
]}


def rule_for(method: str = "GET", path: str = "/", headers: dict[str, str] | None = None) -> int:
    rule = select_rule(VS, method, path, headers or {}, {})
    assert rule is not None
    return VS["http"].index(rule)  # type: ignore[arg-type]


def test_first_matching_rule_wins() -> None:
    assert rule_for(headers={"end-user": "jason"}) == 0
    assert rule_for(headers={"end-user": "jason"}, method="POST", path="/admin/x") == 0  # order matters
    assert rule_for(method="POST", path="/admin/x") == 1
    assert rule_for(method="GET", path="/admin/x") == 2
    assert rule_for(headers={"end-user": "bob"}) == 2


def test_string_and_query_matches() -> None:
    assert request_matches({"uri": {"regex": "/books/[0-9]+"}}, "GET", "/books/12?x=1", {}, {})
    assert not request_matches({"uri": {"regex": "/books/[0-9]+"}}, "GET", "/books/12/x", {}, {})
    assert request_matches({"uri": {"exact": "/A"}, "ignoreUriCase": True}, "GET", "/a", {}, {})
    assert not request_matches({"uri": {"exact": "/A"}}, "GET", "/a", {}, {})
    assert request_matches({"queryParams": {"beta": {"exact": "1"}}}, "GET", "/", {}, {"beta": "1"})
    assert not request_matches({"queryParams": {"beta": {"exact": "1"}}}, "GET", "/", {}, {})


def test_weights_split_as_declared() -> None:
    rule = VS["http"][2]
    counts = Counter(pick_destination(rule, roll / 10)["subset"] for roll in range(1000))  # type: ignore[index]
    assert counts == {"v1": 900, "v2": 100}


@given(st.lists(st.integers(min_value=0, max_value=100), min_size=1, max_size=6), st.floats(0, 99.999))
def test_a_roll_picks_the_destination_whose_weight_band_holds_it(weights: list[int], roll: float) -> None:
    rule = {"route": [{"destination": {"host": "h", "subset": f"s{i}"}, "weight": w} for i, w in enumerate(weights)]}
    picked = pick_destination(rule, roll)
    bands, upto = [], 0
    for i, w in enumerate(weights):
        bands.append((upto, upto + w, f"s{i}"))
        upto += w
    expected = next((name for lo, hi, name in bands if lo <= roll < hi), None)
    assert (picked or {}).get("subset") == expected


def test_subsets_map_to_labels() -> None:
    drs = [{"host": "reviews", "subsets": [{"name": "canary", "labels": {"version": "v3", "track": "fast"}}]}]
    assert subset_labels(drs, "reviews", "canary") == {"version": "v3", "track": "fast"}
    assert subset_labels(drs, "reviews", "v2") == {"version": "v2"}  # undefined: named after its version
    assert subset_labels(drs, "reviews", None) == {}
