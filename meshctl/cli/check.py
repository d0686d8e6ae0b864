"""`meshctl check`: one √, × or ‼ line per check, with a hint; non-zero exit when any check fails."""

from __future__ import annotations

from dataclasses import asdict

import typer
from rich.markup import escape

from meshctl.context import Context
from meshctl.lifecycle.check import State, run_checks
from meshctl.output import OutputFormat, OutputOption, emit
from meshctl.status import ExitCode

MARKS = {State.OK: "[green]√[/]", State.WARN: "[yellow]‼[/]", State.FAIL: "[red]×[/]"}


def check(ctx: typer.Context, output: OutputOption = OutputFormat.table) -> int:
    """Verify the engine, compose, iptables, images, network and CA; say how to fix what is wrong."""
    c: Context = ctx.obj
    results = run_checks(c)
    failed = [r for r in results if r.state is State.FAIL]
    if output is not OutputFormat.table:
        emit(c.out, output, [asdict(r) | {"state": r.state.value} for r in results], lambda: "")
    else:
        for r in results:
            hint = f"\n    [dim]hint: {escape(r.hint)}[/]" if r.hint else ""
            c.out.print(f"{MARKS[r.state]} {r.name}: {escape(r.detail)}{hint}", highlight=False)
        warned = sum(r.state is State.WARN for r in results)
        summary = (f"[red]{len(failed)} of {len(results)} checks failed[/]" if failed
                   else f"[green]all {len(results)} checks passed[/]" + (f" ({warned} warnings)" if warned else ""))
        c.err.print(summary)
    return ExitCode.FAILED if failed else ExitCode.OK


def register(app: typer.Typer) -> None:
    app.command()(check)
