"""Every regex config can carry is checked with RE2 at apply time, by the same engine and options as the sidecar."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from meshctl.config import routes
from meshctl.config.resources import check_document
from meshctl.config.schema import regex_problem
from meshctl.errors import UsageError
from meshctl.status import ExitCode
from sidecar import regex
from sidecar.routes import string_matches
from tests.unit.cli import meshctl
from tests.unit.fuzzing import FUZZ
from tests.unit.test_cli_errors import one_error_line
from tests.unit.test_inject import BOOKINFO, inject

VS: dict[str, Any] = {
    "apiVersion": "networking.istio.io/v1", "kind": "VirtualService", "metadata": {"name": "reviews"},
    "spec": {"hosts": ["reviews"], "http": [
        {"match": [{"uri": {"regex": "/ok/[0-9]+"}}], "route": [{"destination": {"host": "reviews"}}]}]}}

# (pattern, the reason named) for each Perl feature RE2 leaves out, which Python's re accepts
REFUSED = [
    ("(a)\\1", "backreferences are not supported"),
    ("(?P<u>a)(?P=u)", "backreferences are not supported"),
    ("(?=a)", "lookaround is not supported"),
    ("/x(?!/admin)", "lookaround is not supported"),
    ("(?<=/)admin", "lookaround is not supported"),
    ("(?<!/)admin", "lookaround is not supported"),
    ("a++b", "possessive quantifiers are not supported"),
    ("(?>a+)b", "atomic groups are not supported"),
    ("(?:a{1000}){1000}", "invalid repetition size"),
    ("\\pL{1000}", "too large"),
    ("[a-z]{900}", "more than the 2048 allowed"),
    ("(jason", "missing )"),
]

FIELDS = [  # where a StringMatch regex can sit in a VirtualService, and how the error names it
    (lambda m, p: m.__setitem__("uri", {"regex": p}), "spec.http[0].match[0].uri.regex"),
    (lambda m, p: m.__setitem__("method", {"regex": p}), "spec.http[0].match[0].method.regex"),
    (lambda m, p: m.__setitem__("headers", {"x-user": {"regex": p}}), "spec.http[0].match[0].headers.x-user.regex"),
    (lambda m, p: m.__setitem__("queryParams", {"v": {"regex": p}}), "spec.http[0].match[0].queryParams.v.regex"),
]


def with_regex(put: Any, pattern: str) -> dict[str, Any]:
    doc = copy.deepcopy(VS)
    put(doc["spec"]["http"][0]["match"][0], pattern)
    return doc


def test_the_refusal_is_one_line_naming_the_field_and_re2() -> None:
    _, problems = check_document(with_regex(FIELDS[0][0], "(?=a)"), "vs.yaml")
    assert problems == ["vs.yaml: VirtualService reviews: spec.http[0].match[0].uri.regex: '(?=a)' is not an RE2 "
                        "regular expression (lookaround is not supported); Envoy and meshctl use RE2"]


@pytest.mark.parametrize(("pattern", "reason"), REFUSED)
@pytest.mark.parametrize(("put", "where"), FIELDS)
def test_apply_refuses_what_re2_cannot_run_in_every_field(put: Any, where: str, pattern: str, reason: str) -> None:
    resource, problems = check_document(with_regex(put, pattern), "vs.yaml")
    assert resource is None
    assert len(problems) == 1 and f" {where}: " in problems[0] and reason in problems[0], problems
    assert "is not an RE2 regular expression" in problems[0]


@pytest.mark.parametrize(("put", "where"), FIELDS)
def test_apply_takes_backtracking_bombs_because_re2_runs_them_linearly(put: Any, where: str) -> None:
    for pattern in ("(a+)+b", "(x+x+)+y", "(a|aa)+$"):
        resource, problems = check_document(with_regex(put, pattern), "vs.yaml")
        assert resource is not None and problems == []


@pytest.mark.parametrize(("pattern", "reason"), REFUSED)
@pytest.mark.parametrize("flag", ["path~=", "uri~=", "method~=", "header:x-user~=", "query:v~="])
def test_route_set_match_refuses_the_same_patterns(flag: str, pattern: str, reason: str) -> None:
    with pytest.raises(UsageError, match="is not an RE2 regular expression") as caught:
        routes.parse_match([flag + pattern])
    assert reason in caught.value.one_line() and f"--match {flag + pattern!r}" in caught.value.one_line()


def test_route_set_cli_refuses_with_one_line(installed_home: Path, tmp_path: Path) -> None:
    inject(installed_home, BOOKINFO, tmp_path / "meshed.yaml")  # reviews is meshed
    done = meshctl("route", "set", "reviews", "--match", "path~=(a)\\1", "--to", "v2", home=installed_home)
    assert done.code == ExitCode.USAGE  # a bad --match value
    line = one_error_line(done.err)
    assert "'(a)\\\\1' is not an RE2 regular expression (backreferences are not supported)" in line, line


def test_apply_cli_refuses_with_one_line_and_stores_nothing(installed_home: Path, tmp_path: Path) -> None:
    path = tmp_path / "vs.yaml"
    path.write_text(yaml.safe_dump(with_regex(FIELDS[2][0], "(?<!/)admin")))
    done = meshctl("apply", "-f", str(path), home=installed_home)
    assert done.code == ExitCode.INVALID_INPUT
    line = one_error_line(done.err)
    assert "spec.http[0].match[0].headers.x-user.regex: '(?<!/)admin' is not an RE2 regular expression" in line
    assert meshctl("get", "virtualservice", "-o", "json", home=installed_home).out.strip() in ("", "[]")


# --- parity: what apply accepts is what the sidecar runs, and the other way round ------------------------------

ATOMS = st.sampled_from(["a", "b", ".", "\\d", "\\w", "[a-z]", "[^/]", "/", "\\1", "\\Z", "\\C", "é", "\\pL", "x"])
QUANTIFIERS = st.sampled_from(["", "*", "+", "?", "{2}", "{1,3}", "*?", "++", "*+", "{1001}", "{99999999999}"])
GROUPS = st.sampled_from(["(", "(?:", "(?i)(", "(?=", "(?!", "(?<=", "(?<!", "(?>", "(?P<n>", "(?P=n", "(?#"])


@st.composite
def patterns(draw: st.DrawFn, depth: int = 0) -> str:
    parts = []
    for _ in range(draw(st.integers(1, 4))):
        if depth < 3 and draw(st.booleans()):
            inner = draw(patterns(depth + 1))
            parts.append(draw(GROUPS) + inner + draw(st.sampled_from([")", ")", ")", ""])))
        else:
            parts.append(draw(ATOMS))
        parts.append(draw(QUANTIFIERS))
        if draw(st.integers(0, 5)) == 0:
            parts.append("|")
    return "".join(parts)


@FUZZ
@given(st.one_of(patterns(), st.text(max_size=40)), st.text(max_size=60))
def test_apply_and_the_sidecar_agree_on_every_pattern(pattern: str, value: str) -> None:
    accepted = regex_problem(pattern) is None
    runs = [not isinstance(regex.compiled(pattern, fold), str) for fold in (False, True)]
    assert accepted == all(runs), (pattern, regex_problem(pattern))
    if accepted:  # and it runs without raising, on any text, either case mode
        assert isinstance(string_matches({"regex": pattern}, value), bool)
        assert isinstance(string_matches({"regex": pattern}, value, ignore_case=True), bool)
        assert string_matches({"regex": pattern}, value) == regex.fullmatch(pattern, value)
    else:  # fail closed: a refused pattern that reaches a sidecar anyway matches nothing
        assert not string_matches({"regex": pattern}, value)
    doc = with_regex(FIELDS[0][0], pattern)
    assert (check_document(doc, "vs.yaml")[0] is not None) == accepted
