"""`meshctl telemetry set`: the tracing sampling rate and exporters, as an Istio Telemetry resource."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from meshctl.config.kinds import find_kind
from meshctl.config.resources import ROOT_NAMESPACES, Resource, check_document, key, namespace_of, qualified_name
from meshctl.context import Context
from meshctl.errors import UsageError
from meshctl.output import OutputFormat, OutputOption, emit, simple_table, to_yaml
from meshctl.pilot import changes
from meshctl.pilot.observability import DEFAULT_SAMPLING

app = typer.Typer(help="Tracing settings (Istio's Telemetry API).", no_args_is_help=True)


def telemetry_resource(service: str | None, project: str | None, sampling: float | None, zipkin: str | None,
                       otlp: str | None) -> Resource:
    for flag, url in (("--zipkin", zipkin), ("--otlp", otlp)):
        if url not in (None, "none") and not str(url).startswith(("http://", "https://")):
            raise UsageError(f"{flag} {url!r}: give an http(s) URL, e.g. http://zipkin:9411/api/v2/spans, or none")
    tracing: dict[str, Any] = {}
    if sampling is not None:
        tracing["randomSamplingPercentage"] = sampling
    providers = [{"name": "zipkin", "endpoint": zipkin}] if zipkin else []
    providers += [{"name": "opentelemetry", "endpoint": otlp}] if otlp else []
    if zipkin is not None or otlp is not None:
        tracing["providers"] = [p for p in providers if p["endpoint"] != "none"]
    if not tracing:
        raise UsageError("give --sampling, --zipkin or --otlp", "e.g. `meshctl telemetry set --sampling 10`")
    name = service or (project and f"{project}-default") or "mesh-default"
    metadata = {"name": name, "namespace": project or "istio-system"}
    spec: dict[str, Any] = {"tracing": [tracing]}
    if service:
        spec = {"selector": {"matchLabels": {"app": service}}, **spec}
    doc = {"apiVersion": "telemetry.istio.io/v1", "kind": "Telemetry", "metadata": metadata, "spec": spec}
    resource, problems = check_document(doc, "telemetry set")
    if problems or resource is None:
        raise UsageError(problems[0] if problems else "invalid Telemetry resource", details=problems)
    return resource


@app.command("set")
def set_(
    ctx: typer.Context,
    service: Annotated[str | None, typer.Argument(help="Only this service (default: the whole mesh, or -p's "
                                                  "project).")] = None,
    sampling: Annotated[float | None, typer.Option(min=0.0, max=100.0, help="Percent of new traces to record "
                                                   f"(default {DEFAULT_SAMPLING:g}).")] = None,
    zipkin: Annotated[str | None, typer.Option(help="Also send spans to this Zipkin v2 endpoint, e.g. "
                                               "http://zipkin:9411/api/v2/spans ('none' stops it).")] = None,
    otlp: Annotated[str | None, typer.Option(help="Also send spans to this OTLP/HTTP endpoint, e.g. "
                                             "http://otel-collector:4318/v1/traces ('none' stops it).")] = None,
    project: Annotated[str | None, typer.Option("--project", "-p", help="Only this compose project.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the resource; change nothing.")] = False,
) -> None:
    """Set the tracing sampling rate and where spans are exported; proxies pick it up live."""
    c: Context = ctx.obj
    resource = telemetry_resource(service, project, sampling, zipkin, otlp)
    if dry_run:
        c.out.print(to_yaml(resource), end="", highlight=False)
        return

    def change(current: list[Resource]) -> list[Resource]:
        old = next((r for r in current if key(r) == key(resource)), None)
        if old:  # keep what this call does not mention
            merged = {**(old["spec"].get("tracing") or [{}])[0], **resource["spec"]["tracing"][0]}
            resource["spec"]["tracing"] = [merged]
        return [r for r in current if key(r) != key(resource)] + [resource]

    revision, pushed = changes.edit(c, change, f"telemetry set {resource['metadata']['name']}")
    c.err.print(f"telemetry/{resource['metadata']['name']} set (revision {revision.revision}, pushed to "
                f"{pushed.proxies} proxies)", highlight=False)


@app.command("get")
def get(ctx: typer.Context, output: OutputOption = OutputFormat.table) -> None:
    """The Telemetry resources in force."""
    c: Context = ctx.obj
    found = [r for r in changes.current(c) if r["kind"] == "Telemetry"]
    rows = [{"name": r["metadata"]["name"], "namespace": r["metadata"].get("namespace"),
             "selector": (r["spec"].get("selector") or {}).get("matchLabels"), "tracing": r["spec"].get("tracing")}
            for r in found]
    emit(c.out, output, rows, lambda: simple_table(
        ["name", "namespace", "selector", "sampling", "providers"],
        [[r["name"], r["namespace"] or "-", r["selector"] or "-",
          next((f"{t['randomSamplingPercentage']:g}%" for t in r["tracing"] or [] if "randomSamplingPercentage" in t),
               "-"), ", ".join(f"{p['name']}={p.get('endpoint')}" for t in r["tracing"] or []
                               for p in t.get("providers", [])) or "-"] for r in rows]))


@app.command("delete")
def delete(ctx: typer.Context, name: Annotated[str, typer.Argument(help="The Telemetry resource's name.")],
           project: Annotated[str | None, typer.Option("--project", "-p", help="The one in this compose project "
                                                       "(default: the mesh-wide one, or the only one of that "
                                                       "name).")] = None) -> None:
    """Remove a Telemetry resource (the defaults apply again)."""
    c: Context = ctx.obj
    kind = find_kind("Telemetry")
    assert kind is not None
    found = changes.listing(c, kind, None, project or changes.ANY_NAMESPACE)
    named = [r for r in found if r["metadata"]["name"] == name]
    if project is None:  # as `telemetry set` without -p: the mesh-wide one first
        named = [r for r in named if namespace_of(r) in ROOT_NAMESPACES] or named
    if len(named) > 1:
        spaces = ", ".join(namespace_of(r) or "(none)" for r in named)
        raise UsageError(f"telemetry {name!r} exists in several projects: {spaces}", "pick one with -p PROJECT")
    _, _, gone = changes.delete(c, kind, name, namespace_of(named[0]) if named else project or changes.ANY_NAMESPACE)
    c.err.print(f"telemetry/{qualified_name(gone)} deleted", highlight=False)


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="telemetry")
