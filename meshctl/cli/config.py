"""`meshctl apply / get / delete / history / rollback`: Istio-shaped config, kubectl's habits."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from meshctl import watch as watching
from meshctl.cli.watching import IntervalOption, WatchOption, interval_of, until_interrupted
from meshctl.config.kinds import KINDS, Kind, find_kind
from meshctl.config.resources import load, namespace_of
from meshctl.config.store import Store
from meshctl.context import Context
from meshctl.errors import UsageError
from meshctl.output import OutputFormat, OutputOption, emit, rfc3339, simple_table
from meshctl.pilot import changes

KIND_HELP = "Resource kind: " + ", ".join(f"{k.name.lower()} ({'/'.join(k.aliases[1:])})" for k in KINDS) + "."


def _kind(name: str) -> Kind:
    kind = find_kind(name)
    if kind is None:
        raise UsageError(f"unknown kind {name!r}", f"use one of {', '.join(k.name.lower() for k in KINDS)}")
    return kind


def _ref(kind: str, name: str, namespace: str | None = None) -> str:
    k = find_kind(kind)
    return f"{kind.lower()}.{k.group if k else ''}/{name}" + (f" (namespace {namespace})" if namespace else "")


def _namespace(value: str | None) -> str | None:
    """-p for get/delete: absent, any namespace; '' the resources without one."""
    return changes.ANY_NAMESPACE if value is None else value or None


# -p/--project as every other command; --namespace is kubectl's and istioctl's name for it (-n is a count
# everywhere in meshctl: a user's `-n ns` is refused with a hint, cli.NAMESPACED)
PROJECT = ("--project", "-p", "--namespace")
NamespaceOption = Annotated[str | None, typer.Option(*PROJECT, help="The compose project the resource is in ('' for "
                                                     "one without a namespace; default: any). --namespace "
                                                     "works too.")]


def apply(
    ctx: typer.Context,
    files: Annotated[list[str], typer.Option("--filename", "-f", help="A YAML file, a directory of them, or - "
                                                                       "for stdin. Repeatable.")],
    namespace: Annotated[str | None, typer.Option(*PROJECT, help="Put resources without a namespace in this "
                                                  "compose project (kubectl's -n/--namespace work too); one whose "
                                                  "namespace differs is an error.")] = None,
) -> None:
    """Validate and store resources (all or nothing), then push the new config to every proxy."""
    c: Context = ctx.obj
    revision, outcome, pushed = changes.apply(c, load(files, namespace=namespace))
    for resource, action in outcome:
        c.out.print(f"{_ref(resource['kind'], resource['metadata']['name'], namespace_of(resource))} {action}",
                    highlight=False)
    c.err.print(f"revision {revision.revision}; pushed to {pushed.proxies} proxies "
                "(`meshctl proxy-status --wait` to see them apply it)", highlight=False)


def _target(r: dict[str, Any]) -> str:
    """What a resource is about, whatever its kind: hosts, a host, a service or its selector."""
    spec = r["spec"]
    labels = (spec.get("selector") or {}).get("matchLabels") or {}
    return (", ".join(spec.get("hosts", [])) or spec.get("host") or spec.get("service")
            or ", ".join(f"{k}={v}" for k, v in labels.items()) or "every workload in scope")


COLUMNS = ["name", "namespace", "applies to"]


def _cells(r: dict[str, Any]) -> list[Any]:
    return [r["metadata"]["name"], r["metadata"].get("namespace") or "-", _target(r)]


def _by_name(c: Context, kind: Kind, name: str | None, namespace: str | None) -> dict[tuple[str, str], Any]:
    """What `get -w` compares between reads: the resources by namespace and name (a named one may come and go)."""
    return {(namespace_of(r) or "", r["metadata"]["name"]): r
            for r in changes.listing(c, kind, None, _namespace(namespace))
            if name is None or r["metadata"]["name"] == name}


def get(
    ctx: typer.Context,
    kind: Annotated[str, typer.Argument(help=KIND_HELP)],
    name: Annotated[str | None, typer.Argument(help="Only this resource.")] = None,
    namespace: NamespaceOption = None,
    watch: WatchOption = False,
    interval: IntervalOption = None,
    output: OutputOption = OutputFormat.table,
) -> None:
    """List stored resources of a kind, or show one (-o yaml gives YAML you can apply again). With -w, then each
    one that is added, changed or deleted, as `kubectl get -w` prints them."""
    c: Context = ctx.obj
    k = _kind(kind)
    every = interval_of(watch, interval)
    found = changes.listing(c, k, name, _namespace(namespace))
    if watch:
        until_interrupted(lambda: watching.rows(
            c.out, lambda: _by_name(c, k, name, namespace), COLUMNS, _cells, every, fmt=output))
        return

    def table() -> object:
        return simple_table(COLUMNS, [_cells(r) for r in found])

    data: object = found[0] if name is not None and output is not OutputFormat.table else found
    emit(c.out, output, data, table)  # type: ignore[arg-type]


def delete(
    ctx: typer.Context,
    kind: Annotated[str, typer.Argument(help=KIND_HELP)],
    name: Annotated[str, typer.Argument(help="The resource to delete.")],
    namespace: NamespaceOption = None,
) -> None:
    """Delete a stored resource and push the change to every proxy."""
    c: Context = ctx.obj
    k = _kind(kind)
    revision, pushed, gone = changes.delete(c, k, name, _namespace(namespace))
    c.out.print(f"{_ref(k.name, name, namespace_of(gone))} deleted", highlight=False)
    c.err.print(f"revision {revision.revision}; pushed to {pushed.proxies} proxies", highlight=False)


def _when(stamp: str) -> str:
    """An RFC 3339 moment as the table shows it: 2026-12-01 07:21:26."""
    return stamp[:19].replace("T", " ")


def history(ctx: typer.Context, output: OutputOption = OutputFormat.table) -> None:
    """List the stored revisions, newest first."""
    c: Context = ctx.obj
    c.home.settings()
    revisions = list(reversed(Store(c.home.config_dir).history()))
    current = Store(c.home.config_dir).current_number()
    rows = [{"revision": r.revision, "current": r.revision == current,
             "time": rfc3339(r.time),
             "resources": len(r.resources), "change": r.message} for r in revisions]
    emit(c.out, output, rows, lambda: simple_table(
        ["revision", "time (utc)", "resources", "change"],
        [[f"{r['revision']}{' *' if r['current'] else ''}", _when(str(r["time"])), r["resources"], r["change"]]
         for r in rows]))


def rollback(
    ctx: typer.Context,
    revision: Annotated[int, typer.Argument(help="The revision whose config to restore (see `meshctl history`).")],
) -> None:
    """Restore the config of an earlier revision, as a new revision, and push it."""
    c: Context = ctx.obj
    new, pushed = changes.rollback(c, revision)
    c.err.print(f"restored revision {revision} as revision {new.revision}; pushed to {pushed.proxies} proxies",
                highlight=False)


def register(app: typer.Typer) -> None:
    for command in (apply, get, delete, history, rollback):
        app.command()(command)
