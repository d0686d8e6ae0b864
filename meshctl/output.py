"""Data goes to stdout as a table, JSON or YAML; every command that prints data takes `-o`."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Sequence
from enum import StrEnum
from typing import Annotated, Any

import typer
import yaml
from rich.console import Console, ConsoleOptions, RenderableType, RenderResult
from rich.measure import Measurement
from rich.segment import Segment
from rich.table import Table
from rich.text import Text


class OutputFormat(StrEnum):
    table = "table"
    json = "json"
    yaml = "yaml"


OutputOption = Annotated[
    OutputFormat, typer.Option("--output", "-o", help="How to print the data: table, json or yaml.",
                               case_sensitive=False),
]


class _NoAliasDumper(yaml.SafeDumper):
    """Shared objects are written out in full: anchors and aliases confuse people reading compose files."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def to_yaml(data: Any) -> str:
    return yaml.dump(data, Dumper=_NoAliasDumper, sort_keys=False, default_flow_style=False)


def rfc3339(moment: float | dt.datetime | None) -> str | None:
    """How every JSON output writes a moment: RFC 3339 in UTC, to the millisecond (2026-12-01T07:21:26.123Z).

    `moment` is Unix seconds or an aware datetime; None (never happened) stays None."""
    if moment is None:
        return None
    when = moment if isinstance(moment, dt.datetime) else dt.datetime.fromtimestamp(moment, dt.UTC)
    return when.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def stamped(record: dict[str, Any], *fields: str) -> dict[str, Any]:
    """`record` with its Unix-seconds `fields` written as RFC 3339 (the ones it has)."""
    return {k: rfc3339(v) if k in fields and isinstance(v, int | float) and not isinstance(v, bool) else v
            for k, v in record.items()}


def _json_default(value: Any) -> Any:
    return rfc3339(value) if isinstance(value, dt.datetime) else str(value)


def emit(out: Console, fmt: OutputFormat, data: Any, table: Callable[[], RenderableType]) -> None:
    if fmt is OutputFormat.json:
        out.print_json(json.dumps(data, default=_json_default))
    elif fmt is OutputFormat.yaml:
        out.print(Text(to_yaml(data).rstrip()))
    else:
        out.print(table())


class Rows:
    """A table printed kubectl's way: each line ends at its last character, no padding after the last column,
    so piped rows compare and `cut` cleanly. Rich pads every cell to its column's width; this drops the tail."""

    def __init__(self, table: Table) -> None:
        self.table = table

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        for line in console.render_lines(self.table, options, pad=False):
            yield from _rstrip(line)
            yield Segment.line()

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        return Measurement.get(console, options, self.table)


def _rstrip(line: list[Segment]) -> list[Segment]:
    line = list(line)
    while line and not line[-1].control and not line[-1].text.rstrip(" "):
        line.pop()
    if line and not line[-1].control:
        last = line[-1]
        line[-1] = Segment(last.text.rstrip(" "), last.style)
    return line


def simple_table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> Rows:
    """kubectl-style: upper-case headers, no box, so it greps and reads like istioctl's tables.

    When the terminal is too narrow, cells wrap between words; a word longer than its column ends in '…'
    rather than being cut in two."""
    table = Table(box=None, pad_edge=False, show_edge=False, header_style="bold")
    for col in columns:
        table.add_column(col.upper(), overflow="ellipsis")
    for row in rows:
        table.add_row(*[("" if v is None else str(v)) for v in row])
    return Rows(table)
