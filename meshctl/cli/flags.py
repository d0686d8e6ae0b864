"""Flags every command spells alike: one meaning per flag, and one way to read a duration.

`-p/--project` chooses a compose project everywhere; `-w` is always `--watch`, a time window is
`-t/--time-window`. Every duration flag goes through `duration()`, which reads Go-style text (`1m30s`,
`500ms`, `7d`, or a bare number of seconds) by handing each part to the mesh's one duration parser, so a
flag and a resource field never disagree about what `1.5s` means.
"""

from __future__ import annotations

import re
from typing import Annotated

import typer

from meshctl.errors import UsageError
from sidecar.contract import MAX_DURATION_S, parse_duration

# a time window: linkerd viz stat's -t; --window, its old name, still works
TIME_WINDOW = ("--time-window", "-t", "--window")
ProjectOption = Annotated[str | None, typer.Option("--project", "-p", help="Only this compose project.")]

PART_RE = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
BARE_RE = re.compile(r"\d+(?:\.\d+)?")
DAY_H = 24
EXAMPLES = "e.g. 30s, 1m30s, 500ms or 2h"
TOO_LONG = "is longer than a duration can be (10,000 years)"


def parse_go_duration(text: str) -> float:
    """Seconds in `text`: '1m30s' -> 90.0, '7d' -> 604800.0, '500ms' -> 0.5, '4' -> 4.0.

    Raises ValueError saying what is wrong (without repeating the text)."""
    text = text.strip()
    parts = list(PART_RE.finditer(text))
    if BARE_RE.fullmatch(text):  # a bare number is seconds (`--timeout 30`, as these flags once took)
        total = float(text)
    elif not parts or "".join(p.group(0) for p in parts) != text:
        raise ValueError("is not a duration")
    else:
        total = 0.0
        try:
            for p in parts:  # days are Go's missing unit: 24h each, read by the same parser as the other parts
                number, unit = p.groups()
                total += parse_duration(f"{float(number) * DAY_H:f}h" if unit == "d" else p.group(0))
        except ValueError:
            raise ValueError(TOO_LONG) from None
    if not total <= MAX_DURATION_S:
        raise ValueError(TOO_LONG)
    return total


def duration(flag: str, text: str, minimum: float | None = None) -> float:
    """A duration flag's value in seconds, or a one-line UsageError naming the flag with an example."""
    try:
        value = parse_go_duration(text)
    except ValueError as exc:
        raise UsageError(f"{flag} {text!r} {exc}", f"write a duration, {EXAMPLES}") from None
    if minimum is not None and value < minimum:
        raise UsageError(f"{flag} {text!r} is too short", f"use at least {duration_text(minimum)}")
    return value


def duration_text(seconds: float) -> str:
    """The duration as Istio's one-unit text (90 -> '90s', 0.5 -> '500ms', 604800 -> '168h'), for resources."""
    for unit, size in (("h", 3600.0), ("m", 60.0), ("s", 1.0)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds * 1000:g}ms"


def duration_field(flag: str, text: str) -> str:
    """A duration flag that ends up in a resource: checked, and kept as given when Istio's schema reads it as it
    is (`1.5s`), else written in one unit (`1m30s` -> `90s`, `7d` -> `168h`)."""
    seconds = duration(flag, text)
    try:
        parse_duration(text.strip())
        return text.strip()
    except ValueError:
        return duration_text(seconds)
