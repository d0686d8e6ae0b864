"""`meshctl prune`: remove the proxy files and config of compose projects that no longer exist."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from meshctl.context import Context
from meshctl.errors import UsageError
from meshctl.lifecycle import prune as lib
from meshctl.output import simple_table


def prune(
    ctx: typer.Context,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List what would be removed and remove nothing.")] = False,
) -> None:
    """Remove proxy directories (certificates, keys, snapshots) and stored config of compose projects that have no
    container left, running or stopped. Asks first unless --yes."""
    c: Context = ctx.obj
    found = lib.find(c)
    rows = [row for leftovers in found for row in leftovers.describe()]
    if not found:
        c.err.print("Nothing to prune: every meshed project still has containers.")
        return
    table = simple_table(["project", "kind", "item"], rows)
    if dry_run:
        c.out.print(table)
        c.err.print(f"would remove the leftovers of {len(found)} gone projects (--dry-run: nothing removed)",
                    highlight=False)
        return
    if not yes and not sys.stdin.isatty():
        raise UsageError("prune needs confirmation and stdin is not a terminal",
                         "pass --yes (see what it would remove with --dry-run)")
    c.err.print(table)
    if not yes:
        typer.confirm(f"Remove the leftovers of {len(found)} gone projects?", abort=True, err=True)
    removed = lib.remove(c, found)
    kept = sorted({f.project for f in found} - {f.project for f in removed})
    note = f"; kept {', '.join(kept)}: it has containers again" if kept else ""
    c.err.print(f"[green]✔[/] removed the leftovers of {len(removed)} projects "
                f"({', '.join(f.project for f in removed) or 'none'}){note}.", highlight=False)


def register(app: typer.Typer) -> None:
    app.command()(prune)
