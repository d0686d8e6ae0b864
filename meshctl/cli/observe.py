"""`meshctl stat`, `top`, `edges`, `logs` and `trace`: the views Linkerd's viz and Istio's tools made familiar.

They read the data plane directly: metrics from each sidecar's Prometheus endpoint, spans from its
embedded collector, access logs from its container's output.
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
from collections.abc import Callable
from typing import Annotated, Any

import typer
from rich.console import Group
from rich.live import Live
from rich.text import Text
from rich.tree import Tree

from meshctl import watch as watching
from meshctl.cli.flags import TIME_WINDOW, ProjectOption
from meshctl.cli.flags import duration as seconds
from meshctl.cli.watching import IntervalOption, WatchOption, interval_of, until_interrupted
from meshctl.context import Context
from meshctl.output import OutputFormat, OutputOption, emit, simple_table, stamped
from meshctl.telemetry import golden, logtail, lookback, mesh, traces
from meshctl.telemetry.logs import LogFilter, top_routes


def _fmt(value: float | None, unit: str = "", digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}{unit}"


def _bytes(n: float) -> str:
    if n < 1024:
        return f"{n:.0f}B"
    for unit in ("KiB", "MiB"):
        n /= 1024
        if n < 1024:
            return f"{n:.1f}{unit}"
    return f"{n / 1024:.1f}GiB"


def _tcp(r: dict[str, Any]) -> list[str]:
    """The TCP columns (connections relayed at L4, bytes in from the client / out to it); '-' when none."""
    if not (r["tcp_connections"] or r["tcp_received_bytes"] or r["tcp_sent_bytes"]):
        return ["-", "-"]
    return [str(r["tcp_connections"]), f"{_bytes(r['tcp_received_bytes'])} / {_bytes(r['tcp_sent_bytes'])}"]


# --- stat ---------------------------------------------------------------------------------------------------

def stat_rows(c: Context, service: str | None, project: str | None,
              window_s: float) -> tuple[list[dict[str, Any]], list[str]]:
    """The rows, and footnotes on sidecars whose numbers cover less than the window."""
    proxies = mesh.running(c, project, service)
    measured = lookback.measure(c, proxies, window_s, golden.by_service_version)
    tallied = measured.tallied
    pods: dict[tuple[str, ...], int] = {}
    for p in proxies:  # every running version gets a row, busy or not
        pods[(p.project, p.app, p.version)] = pods.get((p.project, p.app, p.version), 0) + 1
    rows = []
    for key in sorted(set(pods) | set(tallied)):
        rows.append({"project": key[0], "service": key[1], "version": key[2], "pods": pods.get(key, 0),
                     "window_s": window_s or None, **golden.summary(tallied.get(key, golden.Golden()), window_s)})
    return rows, measured.notes


def _noted(c: Context, output: OutputFormat, data: Any, table: Callable[[], Any], notes: list[str]) -> Any:
    """The data as -o asks; footnotes under a table, on stderr otherwise (JSON stays JSON)."""
    if output is not OutputFormat.table:
        for note in notes:
            c.err.print(f"note: {note}", highlight=False)
        return watching.structured(output, data)
    return Group(table(), *[Text(f"* {note}", style="dim") for note in notes]) if notes else table()


def stat(
    ctx: typer.Context,
    service: Annotated[str | None, typer.Argument(help="Only this service (its app name).")] = None,
    window: Annotated[str, typer.Option(*TIME_WINDOW, help="Look back this long, e.g. 30s or 1m30s (the sidecars "
                                        "remember 15m); 0 shows the totals since each proxy started.")] = "5s",
    watch: WatchOption = False,
    interval: IntervalOption = None,
    project: ProjectOption = None,
    output: OutputOption = OutputFormat.table,
) -> None:
    """Golden metrics per service and version: RPS, success rate, p50/p95/p99, and TCP connections and bytes
    relayed at L4 (like `linkerd viz stat`), over the last window."""
    c: Context = ctx.obj
    window_s = seconds("--time-window", window)
    every = interval_of(watch, interval)
    if watch:  # redrawn in place on a terminal, like `top` (every rate moves at each read)
        until_interrupted(lambda: watching.refreshing(
            c.out, lambda: stat_rows(c, service, project, window_s), lambda seen: _stat_view(c, output, *seen),
            every, changed_on=lambda seen: seen[0], live=c.out.is_terminal and output is OutputFormat.table))
        return
    c.out.print(_stat_view(c, output, *stat_rows(c, service, project, window_s)))


def _stat_view(c: Context, output: OutputFormat, rows: list[dict[str, Any]], notes: list[str]) -> Any:
    def table() -> Any:
        return simple_table(["service", "version", "project", "pods", "success", "rps", "p50", "p95", "p99",
                             "requests", "tcp conn", "tcp in / out"],
                            [[r["service"], r["version"], r["project"], r["pods"], _fmt(r["success_rate"], "%", 2),
                              _fmt(r["rps"], "", 1), _fmt(r["p50_ms"], "ms"), _fmt(r["p95_ms"], "ms"),
                              _fmt(r["p99_ms"], "ms"), r["requests"], *_tcp(r)] for r in rows])
    return _noted(c, output, rows, table, notes)


# --- edges --------------------------------------------------------------------------------------------------

def edge_rows(c: Context, project: str | None, window_s: float) -> tuple[list[dict[str, Any]], list[str]]:
    measured = lookback.measure(c, mesh.running(c, project), window_s, golden.by_edge)
    rows = []
    for key, g in sorted(measured.tallied.items()):
        if window_s and not g.busy:
            continue
        src_ns, src, dst_ns, dst, src_id, dst_id, security = key
        rows.append({"source": src, "source_namespace": src_ns, "destination": dst, "destination_namespace": dst_ns,
                     "source_identity": src_id, "destination_identity": dst_id,
                     "secured": security == "mutual_tls", **golden.summary(g, window_s)})
    return rows, measured.notes


def edges(
    ctx: typer.Context,
    window: Annotated[str, typer.Option(*TIME_WINDOW, help="Only calls made in the last window, e.g. 10s; 0 (the "
                                        "default) counts since each proxy started.")] = "0",
    project: ProjectOption = None,
    output: OutputOption = OutputFormat.table,
) -> None:
    """Who calls whom (HTTP, gRPC and TCP), with the mTLS identities on each side (like `linkerd viz edges`)."""
    c: Context = ctx.obj
    window_s = seconds("--time-window", window)
    rows, notes = edge_rows(c, project, window_s)

    def table() -> Any:
        return simple_table(["src", "dst", "src identity", "dst identity", "secured", "requests", "success",
                             "tcp conn", "tcp in / out"],
                            [[f"{r['source_namespace']}/{r['source']}" if r["source_namespace"] not in ("", "unknown")
                              else r["source"], f"{r['destination_namespace']}/{r['destination']}"
                              if r["destination_namespace"] else r["destination"], r["source_identity"],
                              r["destination_identity"], "✔ mTLS" if r["secured"] else "✘ plaintext",
                              r["requests"], _fmt(r["success_rate"], "%", 2), *_tcp(r)] for r in rows])
    c.out.print(_noted(c, output, rows, table, notes))


# --- logs ---------------------------------------------------------------------------------------------------

def logs(
    ctx: typer.Context,
    service: Annotated[str, typer.Argument(help="The service (app name, compose service or project.service).")],
    status: Annotated[str | None, typer.Option("--status", help="Only these statuses: 503, 5xx, 4xx, or a "
                                               "comma list such as 500,503.")] = None,
    path: Annotated[str | None, typer.Option("--path", help="Only request paths that start with this.")] = None,
    peer: Annotated[str | None, typer.Option("--peer", help="Only calls from or to this service or identity.")]
    = None,
    direction: Annotated[str | None, typer.Option("--direction", help="inbound or outbound (default: both).")]
    = None,
    since: Annotated[str | None, typer.Option("--since", help="Only entries newer than this, e.g. 10m.")] = None,
    tail: Annotated[int, typer.Option("--tail", "-n", min=0, help="At most this many entries (the newest); with "
                                      "-f, these first, then the new ones.")] = 100,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new entries, until Ctrl-C.")]
    = False,
    project: ProjectOption = None,
    output: OutputOption = OutputFormat.table,
) -> None:
    """The service's access log from all its sidecars: one line per request, with identities and flags."""
    c: Context = ctx.obj
    wanted = LogFilter.parse(status, path, peer, direction)
    since_ts = time.time() - seconds("--since", since) if since else None
    proxies = mesh.running(c, project, service)
    if follow:
        live = _stream(c, proxies, time.time())  # before the history is read: nothing falls in between
        _follow(c, proxies, since_ts, tail, live, wanted, output)  # until Ctrl-C: the CLI's handler exits 130
        return
    entries = logtail.last((e for p in proxies for e in mesh.access_log(c, p, since=since_ts)), wanted, tail)
    if output is OutputFormat.table:
        c.out.print(_log_table(entries))
    else:
        emit(c.out, output, [stamped(e, "time") for e in entries], lambda: _log_table(entries))


def _log_table(entries: list[dict[str, Any]]) -> Any:
    return simple_table(logtail.COLUMNS, [logtail.row(e) for e in entries])


def _stream(c: Context, proxies: list[Any], since: float) -> queue.Queue[dict[str, Any]]:
    """Follow every proxy's access log in a background thread each; entries arrive on one queue."""
    out: queue.Queue[dict[str, Any]] = queue.Queue(maxsize=100_000)

    def pump(proxy: Any) -> None:
        for entry in mesh.access_log(c, proxy, since=since, follow=True):
            out.put(entry)

    for p in proxies:
        threading.Thread(target=pump, args=(p,), daemon=True).start()
    return out


def _follow(c: Context, proxies: list[Any], since: float | None, tail: int, live: queue.Queue[dict[str, Any]],
            wanted: LogFilter, output: OutputFormat) -> None:
    """The last `tail` entries, then each new one, in fixed columns (a table cannot know later rows' widths)."""
    shown = logtail.last((e for p in proxies for e in mesh.access_log(c, p, since=since)), wanted, tail)
    columns = logtail.columns([p.name for p in proxies], shown)
    if output is OutputFormat.table:
        c.out.print(columns.header(), style="bold", highlight=False, markup=False)
    for e in itertools.chain(shown, logtail.followed(shown, iter(live.get, None), wanted)):
        if output is OutputFormat.table:
            c.out.print(columns.line(logtail.row(e)), highlight=False, markup=False, soft_wrap=True)
        else:
            c.out.print_json(data=stamped(e, "time"))


# --- top ----------------------------------------------------------------------------------------------------

def top(
    ctx: typer.Context,
    duration: Annotated[str | None, typer.Option("--duration", "-d", help="Watch this long, then print and exit "
                                                 "(default with -o json: 5s; otherwise until Ctrl-C).")] = None,
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, help="Show the N busiest routes.")] = 20,
    project: ProjectOption = None,
    output: OutputOption = OutputFormat.table,
) -> None:
    """A live view of the busiest routes (source, destination, method, path), from the access logs."""
    c: Context = ctx.obj
    until = seconds("--duration", duration) if duration else (5.0 if output is not OutputFormat.table else None)
    started = time.time()
    entries = _stream(c, mesh.running(c, project), started)
    seen: list[dict[str, Any]] = []

    def drain() -> None:
        while True:
            try:
                seen.append(entries.get_nowait())
            except queue.Empty:
                return

    def rows() -> list[dict[str, Any]]:
        return top_routes(seen, time.time() - started)[:limit]

    def table() -> Any:
        return Group(Text(f"busiest routes over the last {time.time() - started:.0f}s (Ctrl-C to stop)",
                          style="dim"),
                     simple_table(["source", "destination", "method", "path", "count", "rps", "success",
                                   "p50", "max"],
                                  [[r["source"], r["destination"], r["method"], r["path"], r["count"],
                                    _fmt(r["rps"], "", 1), _fmt(r["success_rate"], "%", 1),
                                    _fmt(r["p50_ms"], "ms"), _fmt(r["max_ms"], "ms")] for r in rows()]))

    if output is not OutputFormat.table:
        time.sleep(until or 5.0)
        drain()
        emit(c.out, output, rows(), table)
        return
    with Live(table(), console=c.out, refresh_per_second=2, transient=False) as live:  # Ctrl-C: exit 130
        while until is None or time.time() - started < until:
            time.sleep(0.5)
            drain()
            live.update(table())


# --- trace --------------------------------------------------------------------------------------------------

def trace(
    ctx: typer.Context,
    trace_id: Annotated[str | None, typer.Argument(metavar="[TRACE_ID]", help="Show this trace as a tree (a "
                                                   "unique prefix of its id is enough).")] = None,
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, help="List at most this many traces.")] = 20,
    service: Annotated[str | None, typer.Option("--service", "-s", help="Only traces that touch this service.")]
    = None,
    project: ProjectOption = None,
    output: OutputOption = OutputFormat.table,
) -> None:
    """Recent traces, newest first; with an id, one trace as a tree of spans with timings."""
    c: Context = ctx.obj
    spans = mesh.spans(c, mesh.running(c, project))
    if trace_id is None:
        rows = traces.summaries(spans, service)[:limit]
        emit(c.out, output, [stamped(r, "start") for r in rows], lambda: simple_table(
            ["trace id", "root", "services", "spans", "duration", "errors", "age"],
            [[r["trace_id"], r["root"], ",".join(r["services"]), r["spans"], _fmt(r["duration_ms"], "ms"),
              r["errors"], f"{time.time() - r['start']:.0f}s"] for r in rows]))
        return
    found = traces.find(spans, trace_id)
    emit(c.out, output, found, lambda: render_tree(found))


def render_tree(spans: list[dict[str, Any]]) -> Any:
    roots, children = traces.tree(spans)
    start = min(s["timestamp"] for s in spans)
    total = max(s["timestamp"] + s["duration"] for s in spans) - start

    def label(s: dict[str, Any]) -> Text:
        tags = s.get("tags", {})
        offset, width = (s["timestamp"] - start) / max(total, 1), s["duration"] / max(total, 1)
        bar = " " * int(offset * 20) + "█" * max(1, int(width * 20))
        text = Text(f"{bar:<21} ", style="cyan")
        text.append(f"{s['localEndpoint']['serviceName']} ", style="bold")
        remote = (s.get("remoteEndpoint") or {}).get("serviceName", "?")
        text.append(f"{s['name']} → {remote} " if s["kind"] == "CLIENT" else f"{s['name']} ")
        code = tags.get("http.status_code", "")
        text.append(code, style="red" if "error" in tags else "green")
        text.append(f"  {s['duration'] / 1000:.2f}ms  +{(s['timestamp'] - start) / 1000:.2f}ms", style="dim")
        if "route" in tags:
            text.append(f"  route {tags['route']}", style="dim")
        text.append(f"  peer {tags.get('peer.identity', '?')}", style="dim")
        return text

    tree = Tree(Text(f"trace {spans[0]['traceId']}  {len(spans)} spans  {total / 1000:.2f}ms", style="bold"))

    def grow(node: Tree, span: dict[str, Any]) -> None:
        branch = node.add(label(span))
        for child in children.get(span["id"], []):
            grow(branch, child)

    for root in roots:
        grow(tree, root)
    return tree


def register(app: typer.Typer) -> None:
    commands: list[tuple[str, Callable[..., Any]]] = [("stat", stat), ("top", top), ("edges", edges),
                                                        ("logs", logs), ("trace", trace)]
    for name, command in commands:
        app.command(name)(command)
