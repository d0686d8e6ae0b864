"""Data goes to stdout as a table, JSON or YAML; every command that prints data takes `-o`."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from enum import StrEnum
from typing import Annotated, Any

import typer
import yaml
from rich.console import Console, RenderableType
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


def emit(out: Console, fmt: OutputFormat, data: Any, table: Callable[[], RenderableType]) -> None:
    if fmt is OutputFormat.json:
        out.print_json(json.dumps(data, default=str))
    elif fmt is OutputFormat.yaml:
        out.print(Text(to_yaml(data).rstrip()))
    else:
        out.print(table())


def simple_table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> Table:
    """kubectl-style: upper-case headers, no box, so it greps and reads like istioctl's tables."""
    table = Table(box=None, pad_edge=False, show_edge=False, header_style="bold")
    for col in columns:
        table.add_column(col.upper(), overflow="fold")
    for row in rows:
        table.add_row(*[("" if v is None else str(v)) for v in row])
    return table
