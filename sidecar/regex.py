"""Config regexes run on RE2, as in Envoy: matching takes time linear in the input, never backtracking.

One engine with one set of options serves both sides: the control plane refuses at apply time what
`problem()` names, and the sidecar's `fullmatch()` compiles with the same `compiled()`, so a pattern
accepted by `meshctl apply` is exactly one the sidecar can run.
"""

from __future__ import annotations

import functools
from typing import Any

import re2

# RE2's own memory budget per pattern (program + lazily built DFA); RE2's default is 8 MiB. A sidecar holds
# every route's patterns, so 1 MiB each keeps them small; matching speed is the same for real patterns.
MAX_MEM = 1 << 20
# Matching costs up to (program size × input length) when RE2's DFA gives up, so a huge program over a long
# path could still stall the event loop (~0.3 s per 1000 instructions on 64 KiB). Route patterns are tens of
# instructions (`/api/v[0-9]+/users/[^/]+(/.*)?` is 40); 2048 leaves room (`[a-z]{300}` with ignoreUriCase is
# 1804) and bounds the worst case. Envoy refuses above 100 by default; Istio raises that to 32768.
MAX_PROGRAM_SIZE = 2048
SHOWN = 80  # characters of a refused pattern quoted back
CACHED = 4096  # compiled patterns kept; a snapshot with more just recompiles the least recently used

# RE2's message for a Perl feature it leaves out -> what the user wrote, in words.
_UNSUPPORTED = (
    ("invalid perl operator: (?=", "lookaround is not supported"),
    ("invalid perl operator: (?!", "lookaround is not supported"),
    ("invalid perl operator: (?<=", "lookaround is not supported"),
    ("invalid perl operator: (?<!", "lookaround is not supported"),
    ("invalid perl operator: (?>", "atomic groups are not supported"),
    ("bad repetition operator: ++", "possessive quantifiers are not supported"),
    ("bad repetition operator: *+", "possessive quantifiers are not supported"),
    ("bad repetition operator: ?+", "possessive quantifiers are not supported"),
    ("invalid perl operator: (?P=", "backreferences are not supported"),
    ("invalid perl operator: (?P>", "recursion is not supported"),
    ("pattern too large", f"the pattern is too large for RE2's {MAX_MEM >> 20} MiB budget"),
)


def _reason(pattern: str, message: str) -> str:
    """Envoy-style words for RE2's error; backreferences come out as 'invalid escape sequence: \\1'."""
    if message.startswith("invalid escape sequence: \\") and message[-1:].isdigit():
        return "backreferences are not supported"
    if message == "invalid perl operator: (?P" and "(?P=" in pattern:
        return "backreferences are not supported"
    for prefix, reason in _UNSUPPORTED:
        if message.startswith(prefix):
            return reason
    return message


def _options(ignore_case: bool) -> Any:
    options = re2.Options()
    options.max_mem = MAX_MEM
    options.case_sensitive = not ignore_case  # Istio's ignoreUriCase
    options.log_errors = False  # RE2 would print each refused pattern to stderr
    return options


@functools.lru_cache(maxsize=CACHED)
def compiled(pattern: str, ignore_case: bool = False) -> Any:
    """The RE2 program for `pattern`, or a str saying why there is none (cached either way)."""
    try:
        program = re2.compile(pattern, _options(ignore_case))
    except re2.error as exc:
        raw = exc.args[0] if exc.args else exc
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
        return _reason(pattern, text)
    except UnicodeEncodeError:  # a lone surrogate (JSON's "\ud800") is no UTF-8 text
        return "it holds a lone surrogate, which is not text"
    if program.programsize > MAX_PROGRAM_SIZE:
        return f"its RE2 program has {program.programsize} instructions, more than the {MAX_PROGRAM_SIZE} allowed"
    return program


def problem(pattern: str) -> str | None:
    """Why `pattern` cannot be a route regex, in one line naming RE2, or None."""
    why = compiled(pattern)
    if not isinstance(why, str):
        why = compiled(pattern, True)  # case folding can grow the program past the limit
    if not isinstance(why, str):
        return None
    shown = repr(pattern) if len(pattern) <= SHOWN else f"{pattern[:SHOWN]!r}… ({len(pattern)} characters)"
    return f"{shown} is not an RE2 regular expression ({why}); Envoy and meshctl use RE2"


def fullmatch(pattern: str, value: str, ignore_case: bool = False) -> bool:
    """Istio's `regex` StringMatch: the whole value matches. A pattern RE2 refuses matches nothing."""
    program = compiled(pattern, ignore_case)
    if isinstance(program, str):
        return False
    try:
        return program.fullmatch(value) is not None
    except UnicodeEncodeError:  # undecodable bytes kept as surrogates: match the raw bytes, as Envoy does
        return program.fullmatch(value.encode("utf-8", "surrogateescape")) is not None
