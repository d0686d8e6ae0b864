"""`meshctl install` and `meshctl uninstall`."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Annotated

import typer
from rich.markup import escape
from rich.status import Status

from meshctl.cli.flags import duration_field
from meshctl.context import Context
from meshctl.errors import UsageError
from meshctl.extras import parse_addons
from meshctl.lifecycle import install as installer
from meshctl.lifecycle import uninstall as uninstaller
from meshctl.output import OutputFormat, OutputOption, emit, simple_table
from meshctl.pki import agent


def install(
    ctx: typer.Context,
    trust_domain: Annotated[str | None, typer.Option(help="SPIFFE trust domain of workload identities "
                                                          "(default: cluster.local).")] = None,
    network_subnet: Annotated[str | None, typer.Option(help="IPv4 subnet of the `meshctl` Docker network, "
                                                            "e.g. 172.30.0.0/24 (default: Docker picks).")] = None,
    base_image: Annotated[str | None, typer.Option(help="Base image for meshctl's images (needs python3 3.11 and "
                                                        "iptables) (default: meshctl/base:bookworm, built "
                                                        "from Debian packages).")] = None,
    cert_ttl: Annotated[str | None, typer.Option(help="Lifetime of workload certificates, e.g. 24h or 10m; "
                                                 "each is renewed at half of it (default: 24h).")] = None,
    addons: Annotated[str | None, typer.Option(help="Optional components to run, as a comma list: prometheus "
                                               "(a Prometheus server scraping every sidecar). `none` removes "
                                               "them. Remembered for later installs (default: what the last "
                                               "install chose; none at first).")] = None,
    prometheus_port: Annotated[int | None, typer.Option(help="Port on 127.0.0.1 for the prometheus addon's web UI "
                                                        "and API (default: 9090).")] = None,
    path_normalization: Annotated[str | None, typer.Option(
        help="How sidecars normalise request paths before any policy or route sees them (Istio's "
             "meshConfig.pathNormalization): NONE, BASE, MERGE_SLASHES or DECODE_AND_MERGE_SLASHES "
             "(default: MERGE_SLASHES).")] = None,
    num_trusted_proxies: Annotated[int | None, typer.Option(
        help="X-Forwarded-For hops in front of the mesh that are trusted to name the original client, for "
             "remoteIpBlocks (Istio's numTrustedProxies) (default: 0, the peer is the client).")] = None,
    outbound_traffic_policy: Annotated[str | None, typer.Option(
        help="What apps may call outside the mesh (Istio's meshConfig.outboundTrafficPolicy.mode): ALLOW_ANY, or "
             "REGISTRY_ONLY (only meshed services and ServiceEntry hosts; anything else gets 502 or is closed) "
             "(default: ALLOW_ANY).")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan and change nothing.")] = False,
    output: OutputOption = OutputFormat.table,
) -> None:
    """Create the mesh home, root CA, config store, Docker network and sidecar image, and run the addons chosen
    with --addons. Safe to re-run."""
    c: Context = ctx.obj
    cert_ttl = cert_ttl and duration_field("--cert-ttl", cert_ttl)  # 1d works as 24h does
    settings = installer.resolve_settings(c, trust_domain and installer.validate_trust_domain(trust_domain),
                                          installer.validate_subnet(network_subnet), base_image,
                                          cert_ttl and installer.validate_cert_ttl(cert_ttl),
                                          None if addons is None else parse_addons(addons),
                                          installer.validate_prometheus_port(prometheus_port),
                                          installer.validate_path_normalization(path_normalization),
                                          installer.validate_trusted_proxies(num_trusted_proxies),
                                          installer.validate_outbound_policy(outbound_traffic_policy))
    started = time.monotonic()
    steps = installer.plan(c, settings)
    # Ask every step first: an unreachable engine or a conflict stops us before anything is written.
    pending = [(step, step.pending()) for step in steps]
    if dry_run:
        rows = [{"step": s.title, "action": todo or "none (already in place)"} for s, todo in pending]
        emit(c.out, output, rows, lambda: simple_table(["step", "action"], [list(r.values()) for r in rows]))
        return
    changed = apply_plan(c, pending)
    agent.ensure_running(c.home)  # the certificate agent: renews workload certificates at half their life
    took = time.monotonic() - started
    if changed:
        c.err.print(f"[bold green]meshctl is installed[/] in {c.home.root} ({changed} steps, {took:.1f}s). "
                    "Next: `meshctl check`, then `meshctl inject compose.yaml`.", highlight=False)
    else:
        c.err.print(f"meshctl is already installed in {c.home.root}: nothing changed ({took:.1f}s).",
                    highlight=False)


def apply_plan(c: Context, pending: list[tuple[installer.Step, str | None]], quiet: bool = False) -> int:
    """Apply the steps that have something to do, with a spinner each; returns how many changed."""
    changed = 0
    for step, todo in pending:
        if todo is None:
            if not quiet:
                c.err.print(f"[green]✔[/] {step.title}: unchanged", highlight=False)
            continue
        with c.err.status(f"{step.title}: {escape(todo)}") as status:
            done = step.apply(progress_of(status, step.title))
        changed += 1
        c.err.print(f"[green]✔[/] {step.title}: {escape(done)}", highlight=False)
    return changed


def progress_of(status: Status, title: str) -> Callable[[str], None]:
    return lambda line: status.update(f"{escape(title)}: {escape(line)}")


def uninstall(
    ctx: typer.Context,
    purge: Annotated[bool, typer.Option("--purge", help="Also delete the mesh home: CA, config store and "
                                                        "certificates. This cannot be undone.")] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Remove the containers, networks and images meshctl created (found by label); --purge also the home."""
    c: Context = ctx.obj
    removal = uninstaller.find_removal(c, purge)
    for node, why in sorted(removal.unreachable.items()):
        c.err.print(f"warning: node {node} is left as it is: {why}", highlight=False, markup=False)
    if removal.is_empty():
        c.err.print("Nothing to remove: no meshctl containers, networks or images"
                    + (" and no mesh home." if purge else "."))
        return
    c.err.print(simple_table(["kind", "name"], removal.describe()))
    if not yes:
        if not sys.stdin.isatty():
            raise UsageError("uninstall needs confirmation and stdin is not a terminal", "pass --yes")
        typer.confirm("Remove all of the above?", abort=True, err=True)
    with c.err.status("removing"):
        if removal.home:
            agent.stop(c.home)
        uninstaller.remove(c, removal)
    c.err.print(f"[green]✔[/] removed {len(removal.describe())} items."
                + ("" if purge else f" The mesh home {c.home.root} was kept (use --purge to delete it)."),
                highlight=False)


def register(app: typer.Typer) -> None:
    app.command()(install)
    app.command()(uninstall)
