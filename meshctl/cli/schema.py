"""`meshctl schema [KIND]`: the JSON Schema of a resource kind, for editors to check YAML as it is written."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from meshctl.config.json_schema import document
from meshctl.config.kinds import KINDS, find_kind, refused_kind
from meshctl.context import Context
from meshctl.errors import UsageError
from meshctl.output import OutputFormat, OutputOption, emit, simple_table, to_yaml


def schema(
    ctx: typer.Context,
    kind: Annotated[str | None, typer.Argument(help="The kind (VirtualService, or an alias such as vs); without "
                                               "it, the kinds meshctl accepts.", show_default=False)] = None,
    output: OutputOption = OutputFormat.table,
) -> None:
    """Print the JSON Schema of a resource kind, made from the checks `meshctl apply` runs. Point your editor
    at it, e.g. `meshctl schema VirtualService > vs.schema.json` and a `# yaml-language-server: $schema=`
    line."""
    c: Context = ctx.obj
    if kind is None:
        rows = [{"kind": k.name, "apiVersions": list(k.api_versions), "aliases": list(k.aliases)} for k in KINDS]
        emit(c.out, output, rows, lambda: simple_table(
            ["kind", "api versions", "aliases"],
            [[r["kind"], ", ".join(r["apiVersions"]), ", ".join(r["aliases"])] for r in rows]))
        return
    found = find_kind(kind)
    if found is None:
        why = refused_kind(kind)
        known = ", ".join(k.name for k in KINDS)
        raise UsageError(f"kind {kind!r} is not supported by meshctl: {why}" if why else f"unknown kind {kind!r}",
                         f"use one of {known}")
    data = document(found)
    if output is OutputFormat.yaml:
        c.out.print(to_yaml(data).rstrip(), markup=False, highlight=False)
    else:  # the schema is JSON whatever the table default says; plain, so a redirect saves a valid file
        c.out.print(json.dumps(data, indent=2), markup=False, highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.command()(schema)
