"""`meshctl route set|get|list|delete`: traffic rules for a service without writing YAML.

The result is ordinary Istio VirtualService and DestinationRule resources in the store, so `get vs -o yaml`
shows what was written and `history`/`rollback` undo it.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from meshctl.cli.flags import duration_field
from meshctl.config import routes
from meshctl.config.resources import Resource, namespace_of
from meshctl.config.store import Store
from meshctl.context import Context
from meshctl.mesh import MeshedPods
from meshctl.output import OutputFormat, OutputOption, emit, simple_table, to_yaml
from meshctl.pilot import changes

app = typer.Typer(help="Route a service's traffic: weights, matches, timeouts, retries, faults, mirroring.",
                  no_args_is_help=True)

Service = Annotated[str, typer.Argument(help="The service, by its `app` label (e.g. reviews).")]
Match = Annotated[list[str] | None, typer.Option("--match", "-m", help=f"Condition of the rule to set: "
                                                 f"{routes.MATCH_HELP}. Repeat to AND conditions.")]
DryRun = Annotated[bool, typer.Option("--dry-run", help="Print the resulting YAML; change nothing.")]
Project = Annotated[str | None, typer.Option("--project", "-p", help="Only in this compose project: its own "
                                             "(namespaced) resources. Default: those with no namespace, which "
                                             "apply to the service in every project.")]


def _service_resources(resources: list[Resource], service: str, project: str | None) -> list[Resource]:
    return [r for r in (routes.find_virtual_service(resources, service, project),
                        routes.find_destination_rule(resources, service, project)) if r is not None]


def _changed(before: list[Resource], after: list[Resource], service: str, project: str | None) -> list[Resource]:
    return [r for r in _service_resources(after, service, project) if r not in before]


def _versions(c: Context, service: str, project: str | None) -> set[str]:
    """The versions of `service` that are meshed (in `project`, when given)."""
    return {i.pod.version for i in MeshedPods.of(c.home) if project in (None, i.project) and i.pod.app == service}


def _in(project: str | None) -> str:
    return f" -p {project}" if project else ""


def _commit(c: Context, service: str, change: Any, message: str, dry_run: bool, project: str | None) -> None:
    if dry_run:
        before = changes.current(c)
        after = change(before)
        shown = _changed(before, after, service, project) or _service_resources(after, service, project)
        c.out.print("---\n".join(to_yaml(r) for r in shown).rstrip() or f"# {service}: no route", highlight=False,
                    markup=False)
        return
    previous = Store(c.home.config_dir).current_number()
    revision, pushed = changes.edit(c, change, message)
    if revision.revision == previous:  # the store writes nothing for a change that changes nothing: say so
        c.out.print(f"{message}: unchanged (revision {revision.revision})", highlight=False, markup=False)
        return
    c.out.print(f"{message}: revision {revision.revision}", highlight=False, markup=False)
    c.err.print(f"pushed to {pushed.proxies} proxies (`meshctl proxy-status --wait` to see them apply it)",
                highlight=False)


def _duration(flag: str, text: str | None) -> str | None:
    """A Go-style duration flag (1m30s) as the resource's one-unit duration (90s)."""
    return None if text is None else duration_field(flag, text)


@app.command("set")
def set_(
    ctx: typer.Context,
    service: Service,
    to: Annotated[list[str] | None, typer.Option("--to", help="Subset (version) and weight, e.g. --to v1=90 "
                                                 "--to v2=10; one without a weight takes the rest.")] = None,
    match: Match = None,
    timeout: Annotated[str | None, typer.Option(help="Request timeout, e.g. 2s or 1m30s; a late answer becomes "
                                                "504.")] = None,
    retries: Annotated[int | None, typer.Option(min=0, max=100, help="Retry attempts (Istio's default: 2).")] = None,
    per_try_timeout: Annotated[str | None, typer.Option(help="Timeout of each try, e.g. 500ms.")] = None,
    retry_on: Annotated[str | None, typer.Option(help="When to retry: 5xx, gateway-error, connect-failure, "
                                                 "reset, retriable-4xx, or status codes, comma-separated.")] = None,
    delay: Annotated[str | None, typer.Option(help="Fault: delay requests by this long, e.g. 5s.")] = None,
    delay_percent: Annotated[float, typer.Option(help="Share of requests delayed.")] = 100.0,
    abort: Annotated[int | None, typer.Option(help="Fault: answer with this HTTP status instead.")] = None,
    abort_percent: Annotated[float, typer.Option(help="Share of requests aborted.")] = 100.0,
    mirror: Annotated[str | None, typer.Option(help="Mirror requests to this subset; its answers are "
                                               "dropped.")] = None,
    mirror_percent: Annotated[float, typer.Option(help="Share of requests mirrored.")] = 100.0,
    set_header: Annotated[list[str] | None, typer.Option(help="Request header NAME=VALUE to set.")] = None,
    add_header: Annotated[list[str] | None, typer.Option(help="Request header NAME=VALUE to add.")] = None,
    remove_header: Annotated[list[str] | None, typer.Option(help="Request header to remove.")] = None,
    set_response_header: Annotated[list[str] | None, typer.Option(help="Response header NAME=VALUE to set.")] = None,
    add_response_header: Annotated[list[str] | None, typer.Option(help="Response header NAME=VALUE to add.")] = None,
    remove_response_header: Annotated[list[str] | None, typer.Option(help="Response header to remove.")] = None,
    reset: Annotated[bool, typer.Option("--reset", help="Start the rule afresh instead of changing it.")] = False,
    project: Project = None,
    dry_run: DryRun = False,
) -> None:
    """Set the rule for SERVICE (the catch-all, or the one with --match); flags left out keep their value."""
    c: Context = ctx.obj
    edit = routes.RouteEdit(
        match=match or [], to=to or [], timeout=_duration("--timeout", timeout), retries=retries,
        per_try_timeout=_duration("--per-try-timeout", per_try_timeout), retry_on=retry_on,
        delay=_duration("--delay", delay), delay_percent=delay_percent, abort=abort, abort_percent=abort_percent,
        mirror=mirror, mirror_percent=mirror_percent, set_headers=set_header or [], add_headers=add_header or [],
        remove_headers=remove_header or [], set_response_headers=set_response_header or [],
        add_response_headers=add_response_header or [], remove_response_headers=remove_response_header or [],
        reset=reset)
    versions = _versions(c, service, project)
    c.home.settings()
    _commit(c, service, lambda current: routes.set_route(current, service, edit, versions, project),
            f"route set {service}{_in(project)}", dry_run, project)



def _rows(resources: list[Resource], service: str, project: str | None) -> list[dict[str, Any]]:
    vs = routes.find_virtual_service(resources, service, project)
    rows = []
    for i, rule in enumerate((vs or {}).get("spec", {}).get("http", [])):
        retries = rule.get("retries")
        fault = rule.get("fault") or {}
        faults = [f"delay {fault['delay']['fixedDelay']} {fault['delay'].get('percentage', {}).get('value', 100):g}%"
                  if "delay" in fault else "",
                  f"abort {fault['abort']['httpStatus']} {fault['abort'].get('percentage', {}).get('value', 100):g}%"
                  if "abort" in fault else ""]
        rows.append({"rule": i, "match": routes.describe_match(rule), "route": routes.describe_destinations(rule),
                     "timeout": rule.get("timeout", "-"),
                     "retries": f"{retries.get('attempts', 2)}×{retries.get('retryOn', '')}".rstrip("×")
                     if retries else "-",
                     "fault": " ".join(f for f in faults if f) or "-",
                     "mirror": f"{rule['mirror'].get('subset') or rule['mirror']['host']} "
                               f"{(rule.get('mirrorPercentage') or {}).get('value', 100):g}%"
                     if rule.get("mirror") else "-"})
    return rows


@app.command("get")
def get(ctx: typer.Context, service: Service, project: Project = None,
        output: OutputOption = OutputFormat.table) -> None:
    """Show SERVICE's rules in the order they are tried (-o yaml: its VirtualService and DestinationRule)."""
    c: Context = ctx.obj
    resources = changes.current(c)
    mine = _service_resources(resources, service, project)
    if output is OutputFormat.yaml:
        c.out.print("---\n".join(to_yaml(r) for r in mine).rstrip() or f"# {service}: no route", markup=False,
                    highlight=False)
        return
    rows = _rows(resources, service, project)
    if not rows and output is OutputFormat.table:
        c.out.print(f"{service}{_in(project)} has no route: plain mutual-TLS passthrough to any of its instances",
                    highlight=False)
        return
    emit(c.out, output, rows, lambda: simple_table(list(rows[0]), [list(r.values()) for r in rows]))


@app.command("list")
def list_(ctx: typer.Context, output: OutputOption = OutputFormat.table) -> None:
    """One line per routed service: its rules and where its catch-all rule sends traffic."""
    c: Context = ctx.obj
    resources = changes.current(c)
    rows = []
    for vs in (r for r in resources if r["kind"] == "VirtualService"):
        rules = vs["spec"].get("http", [])
        default = next((r for r in rules if not r.get("match")), None)
        for host in vs["spec"].get("hosts", []):
            rows.append({"service": host, "project": namespace_of(vs), "virtualservice": vs["metadata"]["name"],
                         "rules": len(rules),
                         "default_route": routes.describe_destinations(default) if default else "-"})
    emit(c.out, output, rows, lambda: simple_table(
        ["service", "project", "virtualservice", "rules", "default route"],
        [[r["service"], r["project"] or "-", *list(r.values())[2:]] for r in rows]))


@app.command("delete")
def delete(ctx: typer.Context, service: Service, match: Match = None, project: Project = None,
           dry_run: DryRun = False) -> None:
    """Delete SERVICE's route (its VirtualService), or with --match only that rule."""
    c: Context = ctx.obj
    _commit(c, service, lambda current: routes.delete_route(current, service, match or [], project),
            f"route delete {service}{_in(project)}", dry_run, project)


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="route")
