"""`meshctl cluster init|join|status|leave`: one mesh over several Docker engines (Docker Swarm's overlay)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated

import typer
from rich.console import Group
from rich.markup import escape

from meshctl.cli.install import progress_of
from meshctl.context import Context
from meshctl.lifecycle import cluster
from meshctl.output import OutputFormat, OutputOption, emit, simple_table
from meshctl.status import ExitCode

app = typer.Typer(help="Span several Docker hosts: a swarm, its attachable overlay, and nodes named by Docker "
                       "context.", no_args_is_help=True)

ContextsArg = Annotated[list[str], typer.Argument(metavar="CONTEXT...", help="Docker context names of the engines "
                                                  "(`docker context ls`).", show_default=False)]


def _done(c: Context, line: str) -> None:
    c.err.print(f"[green]✔[/] {escape(line)}", highlight=False)


@app.command()
def init(
    ctx: typer.Context,
    advertise_addr: Annotated[str | None, typer.Option(
        help="Address other nodes reach this engine at, for `docker swarm init` (default: Docker picks; needed "
             "when the engine has several).")] = None,
) -> None:
    """Make this Docker engine a swarm manager and the mesh network an attachable overlay. Safe to re-run."""
    c: Context = ctx.obj
    with c.err.status("cluster init") as spinner:
        done = cluster.init(c, advertise_addr, progress_of(spinner, "cluster init"))
    for item in done:
        _done(c, f"{item.title}: {item.text}")
    if any(item.changed for item in done):
        c.err.print("The mesh can span hosts. Next: `meshctl cluster join CONTEXT...`.", highlight=False)
    else:
        c.err.print("This mesh is already a cluster: nothing changed.", highlight=False)


@app.command()
def join(ctx: typer.Context, contexts: ContextsArg) -> None:
    """Join the engines of these Docker contexts to the swarm and load meshctl's images on them."""
    c: Context = ctx.obj
    with c.err.status("cluster join") as spinner:
        cluster.join(c, contexts, progress_of(spinner, "cluster join"), lambda line: _done(c, line))


@app.command()
def leave(
    ctx: typer.Context,
    contexts: ContextsArg,
    force: Annotated[bool, typer.Option("--force", help="Forget a node whose engine does not answer.")] = False,
) -> None:
    """Take these nodes out of the mesh and the swarm; refused while meshctl pods run on them."""
    c: Context = ctx.obj
    cluster.leave(c, contexts, force, lambda line: _done(c, line))


@app.command()
def status(ctx: typer.Context, output: OutputOption = OutputFormat.table) -> int:
    """The swarm's nodes, the context reaching each, their sidecars, and whether sidecars reach each other.
    Exits 1 when a node is down or unreachable, or a probe fails."""
    c: Context = ctx.obj
    with c.err.status("reading the cluster"):
        found = cluster.status(c)
    data = {"healthy": found.healthy, "nodes": [asdict(n) | {"status": n.status} for n in found.nodes],
            "reachability": [asdict(r) for r in found.reach]}
    emit(c.out, output, data, lambda: _tables(found))
    return ExitCode.OK if found.healthy else ExitCode.FAILED


def _tables(found: cluster.ClusterStatus) -> Group:
    nodes = simple_table(
        ["node", "hostname", "role", "status", "availability", "address", "engine", "sidecars"],
        [[n.node or "-", n.hostname or "-", n.role or "-", n.status, n.availability or "-", n.address or "-",
          n.engine or "-", "-" if n.sidecars is None else n.sidecars] for n in found.nodes])
    if not found.reach:
        return Group(nodes, "", "reachability: fewer than two nodes run a sidecar; nothing to probe")
    reach = simple_table(["from", "to", "reach"],
                         [[r.source, r.target, f"{r.detail} {r.ms:g} ms" if r.ok and r.ms is not None else r.detail]
                          for r in found.reach])
    return Group(nodes, "", reach)


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="cluster")
