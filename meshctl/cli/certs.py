"""`meshctl certs status|rotate`: workload certificates and the root, Citadel's job.

Renewal needs no command: the certificate agent (`meshctl certs agent`, started by install, inject and
demo) renews every certificate at half its life.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from typing import Annotated

import typer

from meshctl.cli.flags import duration
from meshctl.context import Context
from meshctl.errors import MeshError, UsageError
from meshctl.mesh import MeshedPods, account_of, read_proxy_info
from meshctl.output import OutputFormat, OutputOption, emit, rfc3339, simple_table
from meshctl.pilot.status import ProxyStatus, proxy_statuses
from meshctl.pki import agent, citadel
from meshctl.status import ExitCode

app = typer.Typer(help="Workload certificates and the root CA: status, rotation, renewal.", no_args_is_help=True)


class NotAcknowledged(MeshError):
    code = ExitCode.TIMEOUT


def _now(c: Context) -> dt.datetime:
    return dt.datetime.fromtimestamp(c.clock(), dt.UTC)


@app.command()
def status(ctx: typer.Context, output: OutputOption = OutputFormat.table) -> None:
    """One row per workload: identity, serial, issued, expires, issuer and state (VALID, EXPIRING, EXPIRED)."""
    c: Context = ctx.obj
    c.home.settings()
    now = _now(c)
    stamp = "%Y-%m-%d %H:%M:%S"
    certs = citadel.cert_states(c.home, now)
    rows = [{"proxy": i.proxy, "identity": i.identity, "serial": i.serial, "issued": rfc3339(i.issued),
             "expires": rfc3339(i.expires), "issuer": i.issuer_serial or i.issuer, "state": state}
            for i, state in certs]
    emit(c.out, output, rows, lambda: simple_table(
        ["proxy", "identity", "serial", "issued (utc)", "expires (utc)", "issuer", "state"],
        [[i.proxy, i.identity, i.serial, i.issued.strftime(stamp), i.expires.strftime(stamp),
          i.issuer_serial or i.issuer, state] for i, state in certs]))
    rotation = citadel.rotation_state(c.home)
    if rotation:
        c.err.print(f"a root rotation is in progress (stage {rotation['stage']}); `meshctl certs rotate --root` "
                    "finishes it", highlight=False)


def wait_for(c: Context, what: str, done: Callable[[ProxyStatus], bool], timeout: float) -> None:
    """Until every running sidecar reports `done` in its ack (stopped ones load the files when they start; one
    on a node that does not answer cannot be asked, and is not waited for)."""
    deadline = time.monotonic() + timeout
    while True:
        rows = [r for r in proxy_statuses(c) if r.status != "NOT RUNNING" and not r.node_down]
        behind = [r.name for r in rows if not done(r)]
        if not behind:
            c.err.print(f"  {what}: all {len(rows)} running sidecars", highlight=False)
            return
        if time.monotonic() >= deadline:
            raise NotAcknowledged(f"{len(behind)} sidecar(s) did not {what} within {timeout:g}s: "
                                  f"{', '.join(behind[:5])}", "see `meshctl proxy-status` and their logs; "
                                  "running the same command again resumes")
        time.sleep(0.5)  # each look asks the engine and every sidecar: keep it light under load


def _select(c: Context, services: list[str]) -> list[citadel.WorkloadCertInfo]:
    found = list(citadel.workload_certs(c.home))
    if not services:
        return found

    def names(i: citadel.WorkloadCertInfo) -> set[str]:  # project.service, compose service, app, account
        return {i.proxy, i.directory.name, read_proxy_info(i.directory).pod.app, account_of(i.identity) or i.identity}

    each = [(i, names(i)) for i in found]  # one read of each proxy.json
    chosen = [i for i, n in each if n & set(services)]
    named = set().union(*(n for _, n in each if n & set(services)))
    unknown = [s for s in services if s not in named]
    if unknown:
        raise UsageError(f"no meshed workload called {unknown[0]!r}", "see `meshctl certs status`")
    return chosen


@app.command()
def rotate(
    ctx: typer.Context,
    services: Annotated[list[str] | None, typer.Argument(help="Services (app or compose name, or project.service) "
                                                         "whose certificates to re-issue.")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Re-issue every workload certificate.")] = False,
    root: Annotated[bool, typer.Option("--root", help="Replace the root CA in stages: trust both, re-issue, "
                                       "retire the old one.")] = False,
    overlap: Annotated[str, typer.Option(help="With --root: how long both roots stay trusted before the "
                                         "old one is retired, at least.")] = "10s",
    timeout: Annotated[str, typer.Option("--timeout", help="How long to wait for every sidecar at each step, e.g. "
                                         "60s or 2m.")] = "60s",
) -> None:
    """Re-issue workload certificates now (or the root, with --root), and wait until every sidecar uses them."""
    c: Context = ctx.obj
    timeout_s = duration("--timeout", timeout, minimum=1)
    c.home.settings()
    if root:
        if services or all_:
            raise UsageError("--root re-issues every certificate; give no services and no --all")
        _rotate_root(c, duration("--overlap", overlap), timeout_s)
        return
    if not services and not all_:
        raise UsageError("name the services to rotate, or give --all", "e.g. `meshctl certs rotate reviews`")
    chosen = _select(c, services or [])
    serials = dict(zip((i.proxy for i in chosen),
                       citadel.reissue(c.home, [i.directory for i in chosen], _now(c)), strict=True))
    c.err.print(f"re-issued {len(serials)} workload certificate(s)", highlight=False)
    wait_for(c, "load the new certificate", lambda r: r.name not in serials or r.cert_serial == serials[r.name],
             timeout_s)
    c.out.print(simple_table(["proxy", "new serial"], sorted(serials.items())))


def _rotate_root(c: Context, overlap: float, timeout: float) -> None:
    state = citadel.rotation_state(c.home)
    start = citadel.STAGES.index(state["stage"]) if state else 0
    if state:
        c.err.print(f"resuming the root rotation at stage {state['stage']}", highlight=False)
    for stage in citadel.STAGES[start:]:
        state = citadel.root_stage(c.home, stage, _now(c))
        c.err.print(f"stage {citadel.STAGES.index(stage) + 1}/3 {stage}", highlight=False)
        _await_stage(c, stage, state.get("new", ""), state.get("old", ""), overlap, timeout)
    assert state is not None
    reissued = len(MeshedPods.of(c.home).directories())
    c.out.print(f"root rotated: {state.get('old')} -> {state.get('new')}; {reissued} workload certificates re-issued",
                highlight=False)


def _await_stage(c: Context, stage: str, new: str, old: str, overlap: float, timeout: float) -> None:
    """Every running sidecar must have taken a stage before the next one starts: that is what makes it safe."""
    if stage == "trust-both":
        wait_for(c, f"trust the new root {new}", lambda r: new in r.trusted_roots, timeout)
        time.sleep(overlap)
    elif stage == "reissue":
        want = {i.proxy: i.serial for i in citadel.workload_certs(c.home)}
        wait_for(c, "load a certificate from the new root", lambda r: r.cert_serial == want.get(r.name), timeout)
    else:
        wait_for(c, f"drop the old root {old}", lambda r: old not in r.trusted_roots, timeout)


@app.command("agent", hidden=True)
def agent_(ctx: typer.Context) -> None:
    """Run the certificate agent in the foreground (install, inject and demo start it in the background)."""
    c: Context = ctx.obj
    c.home.settings()
    raise typer.Exit(agent.run(c.home))


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="certs")
