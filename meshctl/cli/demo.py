"""`meshctl demo`: the main job on the bundled sample, from nothing to a meshed, verified bookinfo."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.console import Group
from rich.markup import escape
from rich.text import Text

from meshctl.cli.install import apply_plan
from meshctl.context import Context
from meshctl.errors import Conflict, MeshError
from meshctl.lifecycle import demo as lib
from meshctl.lifecycle import install as installer
from meshctl.output import OutputFormat, OutputOption, emit, simple_table
from meshctl.status import ExitCode
from sidecar.contract import spiffe_id


def demo(
    ctx: typer.Context,
    down: Annotated[bool, typer.Option("--down", help="Stop the demo and remove its containers.")] = False,
    requests: Annotated[int, typer.Option(min=1, max=10_000, help="Requests to send to productpage.")] = 100,
    output: OutputOption = OutputFormat.table,
) -> int:
    """Install the mesh if needed, mesh and start bookinfo, send traffic, and show proxies, mTLS edges and counts."""
    c: Context = ctx.obj
    if down:
        removed = lib.down(c) if c.home.is_installed() else False
        c.err.print("demo stopped and removed." if removed else "no demo is running.")
        return ExitCode.OK
    settings = installer.resolve_settings(c, None, None, None)
    if settings.cluster:  # the demo calls bookinfo on this machine's published port: one host's setup
        raise Conflict("meshctl demo runs on one host, and this mesh spans several",
                       "mesh bookinfo with `meshctl inject meshctl/samples/bookinfo/compose.yaml --place …` and "
                       "`meshctl up` (see the README's Several hosts)")
    pending = [(step, step.pending()) for step in installer.plan(c, settings)]
    if any(todo for _, todo in pending):
        c.err.print("Installing the mesh first:")
        apply_plan(c, pending, quiet=True)
    with c.err.status("meshing bookinfo") as status:
        def progress(line: str) -> None:
            status.update(escape(line))
        lib.up(c, progress)
        proxies = lib.wait_ready(c, progress)
        progress(f"sending {requests} requests to productpage")
        codes = lib.send_traffic(requests)
        edges = lib.edges(proxies, settings.network)
    ok = codes.get(200, 0)
    proxy_rows: list[dict[str, Any]] = [{"name": p.name, "app": p.app, "version": p.version, "ready": p.ready,
                     "identity": spiffe_id(settings.trust_domain, p.project, p.service_account)} for p in proxies]
    data = {
        "proxies": proxy_rows,
        "edges": [{"source": e.source, "destination": e.destination, "mtls": e.mtls, "requests": e.requests,
                   "codes": e.codes} for e in edges],
        "traffic": {"sent": requests, "ok": ok, "codes": {str(k): v for k, v in codes.items()}},
    }

    def tables() -> Group:
        return Group(
            Text("Proxies (one sidecar per service, each with its own SPIFFE identity):", style="bold"),
            simple_table(["proxy", "app", "version", "ready", "identity"],
                         [[d["name"], d["app"], d["version"], "yes" if d["ready"] else "no", d["identity"]]
                          for d in proxy_rows]),
            Text("\nEdges, as the receiving sidecars saw them:", style="bold"),
            simple_table(["caller identity", "→ service", "mtls", "requests", "codes"],
                         [[e.source if e.source != "unknown" else "(no identity: ingress from the host)",
                           e.destination, "✔ mutual TLS" if e.mtls else "✘ plaintext", e.requests,
                           " ".join(f"{k}×{v}" for k, v in sorted(e.codes.items()))] for e in edges]),
            Text(f"\nTraffic: {ok}/{requests} requests to http://127.0.0.1:{lib.PORT}/productpage answered 200.",
                 style="bold"),
        )

    emit(c.out, output, data, tables)
    c.err.print(f"\nbookinfo runs meshed: try `curl http://127.0.0.1:{lib.PORT}/productpage`. "
                "Stop it with `meshctl demo --down`.", highlight=False)
    if ok != requests:
        # the container's name as the engine has it: compose v1 names it bookinfo_productpage-proxy_1, v2 with dashes
        entry = next((p.container for p in proxies if p.name == f"{lib.PROJECT}.productpage"), None)
        raise MeshError(f"only {ok} of {requests} requests succeeded", "see the sidecars' logs: docker logs "
                        f"{entry or '$(docker ps -qf label=io.meshctl.service=productpage)'}")
    return ExitCode.OK


def register(app: typer.Typer) -> None:
    app.command()(demo)
