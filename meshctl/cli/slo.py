"""`meshctl slo set|status|list|delete`: objectives teams set, watch and gate deploys on."""

from __future__ import annotations

from typing import Annotated

import typer

from meshctl.cli.flags import duration_field
from meshctl.config.kinds import find_kind
from meshctl.config.resources import Resource, key, namespace_of
from meshctl.context import Context
from meshctl.errors import UsageError
from meshctl.mesh import MeshedPods
from meshctl.output import OutputFormat, OutputOption, emit, simple_table, to_yaml
from meshctl.pilot import changes
from meshctl.status import ExitCode
from meshctl.telemetry import slo

app = typer.Typer(help="Service level objectives: error budgets and burn rates.", no_args_is_help=True)


@app.command("set")
def set_(
    ctx: typer.Context,
    service: Annotated[str, typer.Argument(help="The service (its app name).")],
    availability: Annotated[float | None, typer.Option(help="Percent of requests that must succeed (not 5xx), "
                                                       "e.g. 99.9.")] = None,
    latency: Annotated[str | None, typer.Option(help="A latency objective such as 'p99<300ms'.")] = None,
    window: Annotated[str, typer.Option(help="The period the objective covers, e.g. 1h, 7d.")] = "1h",
    project: Annotated[str | None, typer.Option("--project", "-p", help="Only the service in this compose project.")]
    = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the resource; change nothing.")] = False,
) -> None:
    """Define (or replace) the SLO of a service."""
    c: Context = ctx.obj
    resource = slo.resource(service, availability, latency, duration_field("--window", window), project)
    if dry_run:
        c.out.print(to_yaml(resource), end="", highlight=False)
        return
    meshed = {(i.project, i.pod.app) for i in MeshedPods.of(c.home)}
    if not any(app == service and project in (None, p) for p, app in meshed):
        where = f" in project {project!r}" if project else ""
        raise UsageError(f"no meshed service is called {service!r}{where}", "see `meshctl proxy-status`")

    def change(current: list[Resource]) -> list[Resource]:
        return [r for r in current if key(r) != key(resource)] + [resource]

    revision, _ = changes.edit(c, change, f"slo set {service}")
    c.err.print(f"SLO for {service} set (revision {revision.revision}); watch it with `meshctl slo status`",
                highlight=False)


@app.command("list")
def list_(ctx: typer.Context, output: OutputOption = OutputFormat.table) -> None:
    """The SLOs defined in this mesh."""
    c: Context = ctx.obj
    found = slo.objectives(c)
    rows = [{"service": r["spec"]["service"], "project": r["metadata"].get("namespace"),
             "availability": r["spec"].get("availability"), "latency": r["spec"].get("latency"),
             "window": r["spec"]["window"]} for r in found]
    emit(c.out, output, rows, lambda: simple_table(
        ["service", "project", "availability", "latency", "window"],
        [[r["service"], r["project"] or "-", f"{r['availability']:g}%" if r["availability"] else "-",
          f"p{r['latency']['percentile']:g}<{r['latency']['threshold']}" if r["latency"] else "-", r["window"]]
         for r in rows]))


@app.command("delete")
def delete(ctx: typer.Context, service: Annotated[str, typer.Argument(help="The service.")],
           project: Annotated[str | None, typer.Option("--project", "-p", help="The SLO of the service in this "
                                                       "compose project (when several projects have one).")]
           = None) -> None:
    """Remove a service's SLO."""
    c: Context = ctx.obj
    kind = find_kind(slo.KIND)
    assert kind is not None
    found = slo.objectives(c, service, project)
    if project is None:  # without -p, as before: the SLO with no project, when there is one
        found = [r for r in found if namespace_of(r) is None] or found
    if len(found) > 1:
        spaces = ", ".join(namespace_of(r) or "(none)" for r in found)
        raise UsageError(f"{service!r} has an SLO in several projects: {spaces}", "pick one with -p PROJECT")
    changes.delete(c, kind, found[0]["metadata"]["name"], namespace_of(found[0]))
    c.err.print(f"SLO for {service}{f' in project {project}' if project else ''} deleted", highlight=False)


@app.command("status")
def status(
    ctx: typer.Context,
    service: Annotated[str | None, typer.Argument(help="Only this service's SLO.")] = None,
    max_burn: Annotated[float, typer.Option("--max-burn", min=0.0, help="Exit 1 when an objective burns its "
                                            "budget at least this fast, over the window and its last twelfth "
                                            "(1: the budget runs out exactly at the window's end).")] = 1.0,
    output: OutputOption = OutputFormat.table,
) -> None:
    """Error budget left and burn rate per objective; exits 1 when one burns too fast, to gate a deploy."""
    c: Context = ctx.obj
    rows = slo.status_rows(c, service, max_burn)

    def pct(v: float | None, digits: int = 2) -> str:
        return "-" if v is None else f"{v:.{digits}f}%"

    emit(c.out, output, rows, lambda: simple_table(
        ["service", "objective", "target", "window", "actual", "budget left", "burn", "burn (short)", "requests",
         "state", "source"],
        [[r["service"], r["objective"], f"{r['target']:g}%", r["window"], pct(r["indicator"], 3),
          pct(r["budget_left"], 1), "-" if r["burn_rate"] is None else f"{r['burn_rate']:g}x",
          "-" if r["burn_rate_short"] is None else f"{r['burn_rate_short']:g}x", r["requests"], r["state"],
          r["source"]] for r in rows]))
    burning = [r for r in rows if r["state"] in ("BURNING", "EXHAUSTED")]
    if burning:
        c.err.print(f"[red]{len(burning)} objective(s) burning their error budget too fast:[/] "
                    + ", ".join(f"{r['service']} {r['objective']} ({r['burn_rate']:g}x)" for r in burning),
                    highlight=False)
        raise typer.Exit(ExitCode.FAILED)


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="slo")
