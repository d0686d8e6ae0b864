"""Route regexes in the sidecar run on RE2: hostile patterns on hostile input finish, with Istio's semantics."""

from __future__ import annotations

import re
from typing import Any

import pytest

from sidecar import regex
from sidecar.routes import request_matches, string_matches

LONG = 10_000  # far past the ~30 characters at which a backtracking engine stalls on these patterns

# (pattern, input that a backtracking engine explores exponentially, whether it fully matches)
HOSTILE = [
    ("(a+)+b", "a" * LONG, False),
    ("(a+)+b", "a" * LONG + "b", True),
    ("(x+x+)+y", "x" * LONG, False),
    ("(a|aa)+$", "a" * LONG + "!", False),
    ("(a|aa)+$", "a" * LONG, True),
    ("(a|a?)+b", "a" * LONG, False),
    ("(.*a){12}", "a" * LONG + "b", False),
    ("(\\w+\\s?)*$", "word " * (LONG // 5) + "!", False),
    ("/api/(([a-z]+)*)+/x", "/api/" + "a" * LONG + "/y", False),
    ("([0-9]+)*:", "1" * LONG, False),
]


@pytest.mark.parametrize(("pattern", "value", "expected"), HOSTILE)
def test_catastrophic_patterns_answer_on_long_hostile_input(pattern: str, value: str, expected: bool) -> None:
    # with Python's re each of these would run for longer than the universe's age; reaching the assert is the test
    assert regex.problem(pattern) is None  # `analyze` and `apply` accept them: RE2 runs them in linear time
    assert regex.fullmatch(pattern, value) is expected


@pytest.mark.parametrize(("pattern", "value", "expected"), HOSTILE[:4])
def test_every_match_field_evaluates_with_re2(pattern: str, value: str, expected: bool) -> None:
    spec = {"regex": pattern}
    assert request_matches({"uri": spec}, "GET", value + "?q=1", {}, {}) is expected
    assert request_matches({"headers": {"x-user": spec}}, "GET", "/", {"x-user": value}, {}) is expected
    assert request_matches({"queryParams": {"q": spec}}, "GET", "/", {}, {"q": value}) is expected
    assert request_matches({"method": spec}, value, "/", {}, {}) is expected


def test_python_re_never_evaluates_a_config_regex(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"Python re used for {args[:1]}")

    for name in ("compile", "fullmatch", "match", "search"):
        monkeypatch.setattr(re, name, refuse)
    regex.compiled.cache_clear()
    assert request_matches({"uri": {"regex": "/books/[0-9]+"}, "ignoreUriCase": True,
                            "headers": {"x": {"regex": "a|b"}}, "queryParams": {"v": {"regex": "[0-9]*"}}},
                           "GET", "/BOOKS/12", {"x": "b"}, {"v": "7"})


def test_full_match_semantics_as_istio() -> None:
    assert regex.fullmatch("/books/[0-9]+", "/books/12")
    assert not regex.fullmatch("/books/[0-9]+", "/books/12/x")  # the whole value, not a prefix
    assert not regex.fullmatch("[0-9]+", "x12")  # nor a search
    assert regex.fullmatch("abc|abcd", "abcd")  # alternation is tried for a full match, not leftmost-first
    assert not regex.fullmatch("a$", "a\n")  # `$` is the end of text, not before a final newline
    assert not regex.fullmatch("a.c", "a\nc")  # `.` stops at a newline, as in Python and Envoy
    assert regex.fullmatch("a.c", "aéc")  # one character, not one byte
    assert regex.fullmatch("a{99999999999}", "a{99999999999}")  # RE2 reads an out-of-range count as literal text
    assert not regex.fullmatch("a{99999999999}", "aa")


def test_ignore_uri_case_folds_the_regex_only_when_asked() -> None:
    assert request_matches({"uri": {"regex": "/API/v[0-9]"}, "ignoreUriCase": True}, "GET", "/api/V2", {}, {})
    assert not request_matches({"uri": {"regex": "/API/v[0-9]"}}, "GET", "/api/V2", {}, {})
    assert not request_matches({"headers": {"x": {"regex": "A"}}, "ignoreUriCase": True}, "GET", "/", {"x": "a"}, {})
    assert regex.fullmatch("(?i)/API", "/api")  # the inline flag works too
    assert string_matches({"regex": "/ABC"}, "/abc", ignore_case=True)


@pytest.mark.parametrize("pattern", ["(a)\\1", "(?=a)a", "a(?!b)", "(?<=a)b", "(?<!a)b", "a++", "(?>a)",
                                     "(?P<n>a)(?P=n)", "[", "(", "\\Z", "x" * 5000, "\\pL{1000}", "\ud800"])
def test_a_pattern_re2_refuses_matches_nothing_in_the_sidecar(pattern: str) -> None:
    # a snapshot from an older control plane may still carry one: the rule is skipped, the request not stalled
    assert regex.problem(pattern) is not None
    for value in ("", "a", "ab", "b", "aa", "x" * 5000, pattern):
        assert not string_matches({"regex": pattern}, value)


def test_undecodable_bytes_in_a_path_are_matched_as_bytes_not_raised() -> None:
    # mitmproxy keeps invalid UTF-8 as surrogate escapes; RE2 then sees the raw bytes, as Envoy would
    assert not regex.fullmatch("/a.*", "/a\udcff")  # `.` is a character, and 0xff starts none
    assert regex.fullmatch("/a\\C", "/a\udcff")  # `\C` is any byte
    assert not string_matches({"regex": "/b.*"}, "/a\udcff")


def test_each_pattern_is_compiled_once_per_case_mode() -> None:
    regex.compiled.cache_clear()
    for _ in range(50):
        regex.fullmatch("/once/[0-9]+", "/once/1")
        regex.fullmatch("/once/[0-9]+", "/ONCE/1", ignore_case=True)
    info = regex.compiled.cache_info()
    assert info.misses == 2 and info.hits == 98
    assert regex.compiled("/once/[0-9]+") is regex.compiled("/once/[0-9]+")


def test_program_size_and_memory_are_capped() -> None:
    assert regex.problem("[a-z]{300}") is None
    assert "more than the 2048 allowed" in (regex.problem("[a-z]{600}") or "")
    assert "too large" in (regex.problem("\\pL{1000}") or "")  # RE2's own max_mem refuses it before compiling
    message = regex.problem("(" * 20_000 + ")" * 20_000) or ""
    assert "(40000 characters)" in message and len(message) < 300  # a giant pattern is not echoed whole
    options = regex.compiled("x").options
    assert options.max_mem == regex.MAX_MEM and options.case_sensitive
    assert not regex.compiled("x", True).options.case_sensitive
