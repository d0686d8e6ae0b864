"""Fuzzing the engine's HTTP/1.1 readers: whatever the bytes and however they are split, a reader ends in its
own ProtocolError or in messages; it never holds more of a head than its limit; and how the bytes were split
never changes what it reads (an attacker must not be able to choose a parse by choosing TCP segments)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

from hypothesis import example, given
from hypothesis import strategies as st

from sidecar.engine.http1 import ProtocolError, RequestReader, ResponseReader, normal_target
from sidecar.normalize import MODES, Refused, normalize_target
from tests.unit.fuzzing import FUZZ

SMALL = {"max_line": 64, "max_head": 256, "max_fields": 6}  # small limits, so the limit paths run often


@dataclass
class Log:
    events: list[Any] = field(default_factory=list)

    def on_head(self, head: Any) -> None:
        self.events.append(head)

    def on_body(self, data: bytes) -> None:
        if self.events and isinstance(self.events[-1], bytes):
            self.events[-1] += data
        else:
            self.events.append(bytes(data))

    def on_end(self) -> None:
        self.events.append("end")


def feed(reader_type: type, data: bytes, cuts: list[int], **limits: int) -> tuple[list[Any], Any, int]:
    """(events, outcome, peak held): outcome is the refusal's status, or the bytes after an upgrade, or None."""
    log = Log()
    reader = reader_type(log, **limits)
    bounds = [0, *sorted({c % (len(data) + 1) for c in cuts}), len(data)]
    outcome: Any = None
    try:
        for a, b in itertools.pairwise(bounds):
            reader.feed(data[a:b])
            assert reader.held <= limits.get("max_head", reader.max_head)
        if reader_type is ResponseReader:
            reader.feed_eof()
    except ProtocolError as exc:
        outcome = exc.status
    if outcome is None and reader.upgraded is not None:
        outcome = reader.upgraded
    return log.events, outcome, reader.peak_held


PARTS = [
    b"GET ", b"POST ", b"HEAD ", b"CONNECT ", b"/", b"/a/../b", b"http://h/x", b"*", b" HTTP/1.1", b" HTTP/1.0",
    b"\r\n", b"\n", b"\r", b"host: a\r\n", b"host: b\r\n", b"content-length: 3\r\n", b"content-length: 0\r\n",
    b"transfer-encoding: chunked\r\n", b"connection: close\r\n", b"connection: upgrade\r\nupgrade: ws\r\n",
    b"3\r\nabc\r\n", b"0\r\n\r\n", b"abc", b"x: \x00\r\n", b"x:\x0b\r\n", b" folded\r\n", b"%2f", b"%", b"\xff",
    b"HTTP/1.1 200 OK\r\n", b"HTTP/1.1 101 S\r\n", b"HTTP/1.1 100 C\r\n\r\n", b"a" * 70, b":", b"; ext\r\n",
]
REQUESTISH = st.lists(st.sampled_from(PARTS), max_size=24).map(b"".join)
NOISE = st.one_of(st.binary(max_size=400), REQUESTISH, st.tuples(REQUESTISH, st.binary(max_size=40)).map(b"".join))
CUTS = st.lists(st.integers(0, 10_000), max_size=8)


@given(data=NOISE, cuts=CUTS)
@example(data=b"GET /a HTTP/1.1\r\nhost: a\r\n\r\n" * 3, cuts=[1, 30, 31])
@example(data=b"POST / HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", cuts=[60])
@FUZZ
def test_request_reader_never_raises_anything_else_and_split_does_not_matter(data: bytes, cuts: list[int]) -> None:
    whole = feed(RequestReader, data, [])
    split = feed(RequestReader, data, cuts)
    assert whole[:2] == split[:2]


@given(data=NOISE, cuts=CUTS)
@FUZZ
def test_request_reader_with_small_limits_stays_within_them(data: bytes, cuts: list[int]) -> None:
    _, _, peak = feed(RequestReader, data, cuts, **SMALL)
    assert peak <= SMALL["max_head"]


@given(data=NOISE, cuts=CUTS, head_request=st.booleans())
@FUZZ
def test_response_reader_never_raises_anything_else(data: bytes, cuts: list[int], head_request: bool) -> None:
    log = Log()
    reader = ResponseReader(log, max_head=256, max_fields=6)
    reader.expect(head_request)
    bounds = [0, *sorted({c % (len(data) + 1) for c in cuts}), len(data)]
    try:
        for a, b in itertools.pairwise(bounds):
            reader.feed(data[a:b])
            assert reader.held <= 256
        reader.feed_eof()
    except ProtocolError:
        pass
    assert reader.peak_held <= 256


TARGET_CHARS = st.sampled_from([*"/abc.~-_%2F5c?#=&:@!$'()*+,; \\", "%2e", "%41", "..", "//", "\x7f", "é"])


@given(target=st.lists(TARGET_CHARS, max_size=20).map(lambda p: "/" + "".join(p)), mode=st.sampled_from(MODES))
@example(target="/a/./b?x=/../", mode="MERGE_SLASHES")
@example(target="/.well-known/x", mode="BASE")
@FUZZ
def test_the_fast_path_normalises_as_addons_normalize_does(target: str, mode: str) -> None:
    raw = target.encode()
    try:
        expected: bytes | None = normalize_target(raw.decode("latin-1"), mode).encode("latin-1")
    except Refused:
        expected = None
    try:
        got: bytes | None = normal_target(raw, mode)
    except Refused:
        got = None
    assert got == expected
