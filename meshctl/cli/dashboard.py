"""`meshctl dashboard`: the mesh as a live local web page (graph, golden metrics, routes, sync, SLOs)."""

from __future__ import annotations

import webbrowser
from typing import Annotated

import typer
from rich.markup import escape

from meshctl.cli.flags import duration
from meshctl.context import Context
from meshctl.status import ExitCode
from meshctl.telemetry.dashboard import Dashboard, Server, live_sources

MIN_INTERVAL_S = 0.5


def dashboard(
    ctx: typer.Context,
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="Serve on this port of 127.0.0.1 "
                                      "(0: any free port).")] = 15999,
    no_browser: Annotated[bool, typer.Option("--no-browser", help="Only print the URL; do not open a browser.")]
    = False,
    interval: Annotated[str, typer.Option("--interval", help="Scrape the sidecars this often, e.g. 1s, 2s.")]
    = "2s",
    project: Annotated[str | None, typer.Option("--project", "-p", help="Only this compose project.")] = None,
) -> int:
    """Open a live web page of the mesh: service graph, golden metrics, route weights, proxy sync and SLOs."""
    c: Context = ctx.obj
    interval_s = duration("--interval", interval, minimum=MIN_INTERVAL_S)
    c.home.settings()  # not installed: say so now, not on the page
    server = Server(Dashboard(live_sources(c, project), c.clock, project, interval_s), port, interval_s)
    c.out.print(server.url, highlight=False, soft_wrap=True)
    c.err.print(f"serving the dashboard{f' of {escape(project)}' if project else ''} on {server.url} "
                "(Ctrl-C to stop)", highlight=False)
    if not no_browser and not webbrowser.open(server.url):
        c.err.print("no browser could be opened here: open the URL above yourself", highlight=False)
    try:
        server.serve()
    except KeyboardInterrupt:
        c.err.print("dashboard stopped", highlight=False)
        raise  # Ctrl-C exits 130, as everywhere
    return ExitCode.OK


def register(app: typer.Typer) -> None:
    app.command("dashboard")(dashboard)
