"""`meshctl up FILE` / `meshctl down FILE`: run a meshed project, on each host its pods are placed on."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from meshctl.context import Context
from meshctl.lifecycle import deploy

FILE = Annotated[Path, typer.Argument(help="The meshed compose file (`meshctl inject -o FILE`).")]


def up(ctx: typer.Context, file: FILE) -> None:
    """Start a meshed project: `docker compose up -d` on one host; across hosts, each pod on its node (through
    its Docker context), after its files reached its volume there."""
    c: Context = ctx.obj
    done = deploy.up(c, file)
    for warning in done.warnings:
        c.err.print(f"warning: {warning}", highlight=False, markup=False)
    where = "; ".join(f"{node}: {len(names)} services" for node, names in sorted(done.nodes.items()))
    c.err.print(f"[green]✔[/] project {done.project!r} is up ({where})", highlight=False)


def down(ctx: typer.Context, file: FILE) -> None:
    """Stop and remove a meshed project on every host, with its networks and its pods' file volumes."""
    c: Context = ctx.obj
    done = deploy.down(c, file)
    for warning in done.warnings:
        c.err.print(f"warning: {warning}", highlight=False, markup=False)
    c.err.print(f"[green]✔[/] project {done.project!r} is down", highlight=False)


def register(app: typer.Typer) -> None:
    app.command()(up)
    app.command()(down)
