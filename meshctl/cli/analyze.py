"""`meshctl analyze`: istioctl analyze for compose meshes."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

import typer
from rich.markup import escape

from meshctl.config import analyze as lib
from meshctl.config.resources import Key, Resource, key, load
from meshctl.config.store import Store
from meshctl.context import Context
from meshctl.errors import InvalidInput
from meshctl.output import OutputFormat, OutputOption, emit
from meshctl.pilot import inventory
from meshctl.status import ExitCode

COLORS = {"Error": "red", "Warning": "yellow", "Info": "cyan"}


def _load(files: list[str]) -> tuple[list[Resource], list[lib.Message]]:
    """The resources of each file that loads, and one MSH0100 message per problem in those that do not (apply
    would refuse them): analyze reports every problem instead of stopping at the first."""
    resources: list[Resource] = []
    messages: list[lib.Message] = []
    for file in files:
        try:
            resources += load([file], semantic=False)
        except InvalidInput as exc:
            messages += [lib.invalid_file(problem) for problem in exc.details or [exc.message]]
    return resources, messages


def analyze(
    ctx: typer.Context,
    files: Annotated[list[str] | None, typer.Option("--filename", "-f", help="Also analyze these resource files "
                                                                             "(they override stored ones).")] = None,
    files_only: Annotated[bool, typer.Option("--files-only", help="Analyze the files alone: no store, no engine.")]
    = False,
    project: Annotated[str | None, typer.Option("--project", "-p", help="Only this compose project.")] = None,
    output: OutputOption = OutputFormat.table,
) -> int:
    """Find problems in config and in the live mesh, each with a code, a level and a hint. Exit 1 on errors."""
    c: Context = ctx.obj
    from_files, unreadable = _load(files or [])
    resources: dict[Key, Resource] = {}
    inv = None
    if not files_only:
        c.home.settings()
        resources = {key(r): r for r in Store(c.home.config_dir).read().resources}
        inv = inventory.build(c, project)
    resources.update({key(r): r for r in from_files})
    messages = unreadable + lib.analyze_resources(list(resources.values()), inv)
    if inv is not None:
        messages += lib.analyze_mesh(inv, dt.datetime.fromtimestamp(c.clock(), dt.UTC))
    if output is not OutputFormat.table:
        emit(c.out, output, [m.as_dict() for m in messages], lambda: "")
    elif not messages:
        c.out.print("✔ No validation issues found when analyzing "
                    + ("the given files." if files_only else "the mesh."))
    else:
        for m in messages:
            c.out.print(f"[{COLORS[m.level]}]{m.level}[/] [{m.code}] ({escape(m.resource)}) {escape(m.text)}",
                        highlight=False)
            c.out.print(f"    [dim]hint: {escape(m.hint)}[/]", highlight=False)
    return ExitCode.FAILED if any(m.level == "Error" for m in messages) else ExitCode.OK


def register(app: typer.Typer) -> None:
    app.command()(analyze)
