"""`meshctl proxy-status`: istioctl's view of whether every proxy runs the current config."""

from __future__ import annotations

import difflib
import json
import time
from enum import StrEnum
from typing import Annotated, Any

import typer
from rich.console import Group
from rich.text import Text

from meshctl import watch as watching
from meshctl.cli.flags import duration, duration_text
from meshctl.cli.watching import IntervalOption, WatchOption, interval_of, until_interrupted
from meshctl.context import Context
from meshctl.errors import Timeout, UsageError
from meshctl.mesh import proxy_dir
from meshctl.output import OutputFormat, OutputOption, emit, simple_table, stamped
from meshctl.pilot import proxyconfig
from meshctl.pilot.push import desired
from meshctl.pilot.status import ProxyStatus, age, proxy_statuses, until
from meshctl.runtime.nodes import shown
from meshctl.status import ExitCode

COLUMNS = ["name", "service", "version", "status", "revision", "last ack", "cert expires", "proxy version"]
NODE_COLUMN = "node"  # after the version, in a mesh that spans hosts


def _columns(clustered: bool) -> list[str]:
    return [*COLUMNS[:3], NODE_COLUMN, *COLUMNS[3:]] if clustered else COLUMNS


def _row(s: ProxyStatus, now: float, clustered: bool = False) -> list[object]:
    return [s.name, s.service, s.version, *([shown(s.node)] if clustered else []), s.status,
            s.revision if s.revision is not None else "-", age(s.last_ack, now), until(s.cert_expires),
            s.proxy_version or "-"]


def proxy_status(
    ctx: typer.Context,
    proxy: Annotated[str | None, typer.Argument(help="Only this proxy (project.service, service or container).")]
    = None,
    wait: Annotated[bool, typer.Option("--wait", help="Return once every proxy is SYNCED; fail at the timeout.")]
    = False,
    timeout: Annotated[str, typer.Option("--timeout", help="How long --wait waits, e.g. 30s or 2m.")] = "30s",
    project: Annotated[str | None, typer.Option("--project", "-p", help="Only the proxies of this compose "
                                                "project (like istioctl's -n).")] = None,
    watch: WatchOption = False,
    interval: IntervalOption = None,
    output: OutputOption = OutputFormat.table,
) -> int:
    """One row per proxy: SYNCED, STALE (applied N, current M), REJECTED (reason) or NOT RUNNING; in a mesh that
    spans hosts, its NODE, and NODE DOWN (node: why) for a pod whose node does not answer. With -w, the table
    redrawn as it changes, as `watch istioctl proxy-status` shows it."""
    c: Context = ctx.obj
    timeout_s = duration("--timeout", timeout, minimum=0.1)
    every = interval_of(watch, interval)
    if watch and wait:
        raise UsageError("--watch and --wait do not go together", "--wait returns once all are SYNCED; -w never")
    deadline = time.monotonic() + timeout_s
    while True:
        rows = proxy_statuses(c, proxy, project)
        if (proxy or project) and not rows:
            what = f"named {proxy!r}" if proxy else f"in project {project!r}"
            raise UsageError(f"no proxy {what} in this mesh", "see `meshctl proxy-status`")
        done = all(r.synced for r in rows)
        if not wait or done or time.monotonic() >= deadline:
            break
        time.sleep(0.1)
    if watch:  # the table, not one proxy's diff: what a terminal left open on the mesh wants to see
        until_interrupted(lambda: watching.refreshing(
            c.out, lambda: proxy_statuses(c, proxy, project), lambda seen: _table(c, output, seen), every,
            changed_on=lambda seen: [r.as_dict() for r in seen],
            live=c.out.is_terminal and output is OutputFormat.table))
        return ExitCode.OK
    now = c.clock()
    if proxy and len(rows) == 1:
        _one(c, rows[0], output, now)
    else:
        emit(c.out, output, [_json(r) for r in rows], lambda: _table(c, output, rows))
    if wait and not done:
        behind = sum(not r.synced for r in rows)
        raise Timeout(f"{behind} of {len(rows)} proxies not SYNCED after {duration_text(timeout_s)}",
                      "see their STATUS above and their logs (docker compose -p PROJECT logs SERVICE-proxy)")
    return ExitCode.OK




def _table(c: Context, output: OutputFormat, rows: list[ProxyStatus]) -> Any:
    """The rows as -o asks; ages counted from now (a watched table's ages move on every redraw)."""
    if output is not OutputFormat.table:
        return watching.structured(output, [_json(r) for r in rows])
    now, clustered = c.clock(), c.clustered()
    return simple_table(_columns(clustered), [_row(r, now, clustered) for r in rows])


class Section(StrEnum):
    routes = "routes"
    clusters = "clusters"
    endpoints = "endpoints"
    listeners = "listeners"
    secrets = "secrets"
    all = "all"


def proxy_config(
    ctx: typer.Context,
    proxy: Annotated[str, typer.Argument(help="The proxy: project.service, service or container name.")],
    section: Annotated[Section, typer.Argument(help="What to show.")] = Section.all,
    output: OutputOption = OutputFormat.table,
) -> None:
    """What a running sidecar actually uses, read from the sidecar itself (its admin endpoint)."""
    c: Context = ctx.obj
    found = proxyconfig.find_proxy(c, proxy)
    dump = proxyconfig.config_dump(c, found)
    names = proxyconfig.SECTIONS if section is Section.all else (section.value,)
    if "secrets" in names:  # its moments as every JSON output writes them (the table shows them so too)
        dump = {**dump, "secrets": _secret(dump["secrets"])}
    data = {name: dump[name] for name in names} if section is Section.all else dump[section.value]

    def tables() -> Group:
        parts: list[Any] = []
        for name in names:
            columns, body = proxyconfig.rows(name, dump)
            parts += [Text(f"{name.upper()}", style="bold") if len(names) > 1 else Text(""),
                      simple_table(columns, body), Text("")]
        return Group(*parts)

    emit(c.out, output, data, tables)


def _secret(secret: dict[str, Any]) -> dict[str, Any]:
    """The sidecar's certificate record (sidecar.engine.certs) with its Unix-seconds moments in RFC 3339."""
    out = stamped(secret, "cert_not_after", "cert_not_before")
    if isinstance(secret.get("trust_bundle"), list):
        out["trust_bundle"] = [stamped(root, "not_after") if isinstance(root, dict) else root
                               for root in secret["trust_bundle"]]
    return out


def _json(row: ProxyStatus) -> dict[str, Any]:
    return stamped(row.as_dict(), "last_ack", "cert_expires")


def _one(c: Context, row: ProxyStatus, output: OutputFormat, now: float) -> None:
    """One proxy: its row, then what the control plane wants against what the proxy applied (istioctl's diff)."""
    clustered = c.clustered()
    if row.node_down:  # nothing to ask it: the row says why
        emit(c.out, output, _json(row), lambda: simple_table(_columns(clustered), [_row(row, now, clustered)]))
        return
    found = proxyconfig.find_proxy(c, row.name)
    want = desired(proxy_dir(c.home.proxies_dir, found.project, found.service)) or {}
    applied = proxyconfig.config_dump(c, found)["snapshot"] if found.state == "running" else {}
    diff = list(difflib.unified_diff(json.dumps(want, indent=1, sort_keys=True).splitlines(),
                                     json.dumps(applied, indent=1, sort_keys=True).splitlines(),
                                     "control plane wants", f"{row.name} applied", lineterm=""))
    if output is not OutputFormat.table:
        emit(c.out, output, {**_json(row), "diff": diff}, lambda: "")
        return
    c.out.print(simple_table(_columns(clustered), [_row(row, now, clustered)]))
    c.out.print()
    if not diff:
        c.out.print(f"Clusters, listeners and routes match: {row.name} runs revision {want.get('revision')} "
                    f"({want.get('hash')}).", highlight=False)
    for line in diff:
        style = "green" if line.startswith("+") else "red" if line.startswith("-") else ""
        c.out.print(Text(line, style=style))


def register(app: typer.Typer) -> None:
    app.command("proxy-status")(proxy_status)
    app.command("proxy-config")(proxy_config)
