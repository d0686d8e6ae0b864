"""`meshctl rollout SERVICE --to v2`: progressive delivery, what Flagger or Argo Rollouts add to Istio.

`meshctl rollout reviews --to v2` starts and drives a rollout in the foreground; `status`, `pause`, `resume`,
`abort` and `promote` act on it from any terminal. Interrupted, it stays where it was until `resume`.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

import typer
from rich.live import Live
from rich.table import Table
from typer.core import TyperGroup

from meshctl.cli.flags import duration
from meshctl.context import Context
from meshctl.errors import Conflict, MeshError, UsageError
from meshctl.output import OutputFormat, OutputOption, Rows, emit, simple_table, stamped
from meshctl.rollout import control
from meshctl.rollout.driver import Driver
from meshctl.rollout.machine import ACTIVE, Event, Status
from meshctl.rollout.state import Gates, Rollout, RolloutStore
from meshctl.status import ExitCode


class StartByDefault(TyperGroup):
    """`meshctl rollout reviews --to v2` means `meshctl rollout start reviews --to v2`."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = ["start", *args]
        return super().parse_args(ctx, args)


app = typer.Typer(cls=StartByDefault, no_args_is_help=True,
                  help="Shift traffic to a new version in steps, gated on its success rate and p99 latency; "
                       "roll back by itself when a gate fails. `meshctl rollout SERVICE --to VERSION` starts one.")

Service = Annotated[str, typer.Argument(help="The service, by its `app` label.")]
Watch = Annotated[bool, typer.Option("--watch", "-w", help="Show a live table while it runs.")]


class RolloutFailed(MeshError):
    code = ExitCode.FAILED  # the rollout ran, and ended rolled back or aborted


def _table(r: Rollout) -> Rows:
    table = simple_table(["service", "stable", "canary", "status", "step", "weight", "last gate", "message"], [[
        r.service, r.stable, r.canary, r.status, f"{r.step + 1}/{len(r.steps)}", f"{r.weight}%",
        r.last_gate.get("reason", "-"), r.message]])
    return table


def _steps(text: str) -> list[int]:
    try:
        steps = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise UsageError(f"--steps {text!r}: give whole percentages, e.g. 10,25,50,100") from None
    if not steps or any(not 0 < s <= 100 for s in steps) or steps != sorted(set(steps)):
        raise UsageError(f"--steps {text!r}: percentages must rise, each from 1 to 100",
                         "e.g. --steps 10,25,50,100")
    return steps if steps[-1] == 100 else [*steps, 100]


def _drive(c: Context, store: RolloutStore, service: str, watch: bool) -> Rollout:
    with store.driving(service) as mine:
        if not mine:
            raise Conflict(f"the rollout of {service} is already being driven by another meshctl",
                           f"watch it with `meshctl rollout status {service} --watch`")
        seen: list[str] = []

        def report(r: Rollout) -> None:
            if r.message and (not seen or seen[-1] != r.message):
                seen.append(r.message)
                if not watch:
                    c.err.print(f"{service}: {r.message}", highlight=False, markup=False)

        try:
            if watch:
                with Live(_table(store.load(service)), console=c.out, refresh_per_second=2) as live:
                    def show(r: Rollout) -> None:
                        report(r)
                        live.update(_table(r))

                    final = Driver(c, store, service, show).run()
            else:
                final = Driver(c, store, service, report).run()
        except KeyboardInterrupt:
            r = store.load(service)
            c.err.print(f"{service}: interrupted; the rollout stays at {r.weight}% ({r.status}). "
                        f"`meshctl rollout resume {service}` continues it.", highlight=False)
            raise
    if final.status is not Status.SUCCEEDED:
        raise RolloutFailed(f"rollout of {service} to {final.canary} {final.status}: {final.message}")
    c.out.print(f"rollout of {service} to {final.canary} succeeded: {final.message}", highlight=False)
    return final


@app.command()
def start(
    ctx: typer.Context,
    service: Service,
    to: Annotated[str, typer.Option("--to", help="The version to roll out (a subset / `version` label).")],
    from_: Annotated[str | None, typer.Option("--from", help="The stable version (default: where the service's "
                                              "traffic goes now).")] = None,
    steps: Annotated[str, typer.Option(help="Canary weights to go through, in percent.")] = "10,25,50,100",
    interval: Annotated[str, typer.Option(help="How long each step runs before its gate is judged.")] = "30s",
    success_rate: Annotated[float, typer.Option(min=0, max=100, help="Gate: minimum share of the canary's "
                                                "requests that are not 5xx, in percent.")] = 99.0,
    max_p99: Annotated[str, typer.Option(help="Gate: highest p99 latency of the canary.")] = "500ms",
    min_requests: Annotated[int, typer.Option(min=1, help="Gate: requests the canary must have served in a "
                                              "step to judge it.")] = 20,
    watch: Watch = False,
) -> None:
    """Start a rollout of SERVICE to a new version and drive it to the end (Ctrl-C leaves it resumable)."""
    c: Context = ctx.obj
    c.home.settings()
    interval_s, p99 = duration("--interval", interval), duration("--max-p99", max_p99) * 1000
    control.start(c, service, to, from_, _steps(steps), interval_s, Gates(success_rate, p99, min_requests))
    _drive(c, RolloutStore(c.home), service, watch)


@app.command()
def status(ctx: typer.Context, service: Annotated[str | None, typer.Argument(help="Only this service.")] = None,
           output: OutputOption = OutputFormat.table, watch: Watch = False) -> None:
    """Show rollouts: status, step, weight, the last gate and what happened."""
    c: Context = ctx.obj
    store = RolloutStore(c.home)
    if watch and service:
        import time

        with Live(_table(store.load(service)), console=c.out, refresh_per_second=2) as live:
            while (r := store.load(service)).status in ACTIVE:
                live.update(_table(r))
                time.sleep(0.5)
            live.update(_table(r))
        return
    found = [store.load(service)] if service else store.all()
    rows = [{"service": r.service, "stable": r.stable, "canary": r.canary, "status": r.status.value,
             "step": f"{r.step + 1}/{len(r.steps)}", "weight": r.weight, "last_gate": r.last_gate,
             "message": r.message, "events": [stamped(e, "time") for e in r.events]} for r in found]
    if output is not OutputFormat.table:
        emit(c.out, output, rows[0] if service else rows, lambda: Table())
        return
    if not found:
        c.out.print("no rollouts")
        return
    c.out.print(simple_table(["service", "stable", "canary", "status", "step", "weight", "message"], [
        [r["service"], r["stable"], r["canary"], r["status"], r["step"], f"{r['weight']}%", r["message"]]
        for r in rows]))
    if service:
        for e in found[0].events[-10:]:
            when = dt.datetime.fromtimestamp(e["time"], dt.UTC).strftime("%H:%M:%S")
            c.out.print(f"  {when}  {e['weight']:>3}%  {e['event']}", highlight=False, markup=False)


@app.command()
def pause(ctx: typer.Context, service: Service) -> None:
    """Hold the rollout at its current weight."""
    r = control.request(ctx.obj, service, Event.PAUSE)
    ctx.obj.out.print(f"{service}: paused at {r.weight}%", highlight=False)


@app.command()
def resume(ctx: typer.Context, service: Service, watch: Watch = False) -> None:
    """Continue a paused or interrupted rollout; drives it here unless another meshctl already does."""
    c: Context = ctx.obj
    r = control.request(c, service, Event.RESUME)
    store = RolloutStore(c.home)
    with store.driving(service) as nobody_drives:
        pass
    if not nobody_drives:
        c.out.print(f"{service}: resumed at {r.weight}%; another meshctl drives it", highlight=False)
        return
    _drive(c, store, service, watch)


@app.command()
def abort(ctx: typer.Context, service: Service) -> None:
    """Stop the rollout and send all traffic back to the stable version."""
    r = control.request(ctx.obj, service, Event.ABORT)
    ctx.obj.out.print(f"{service}: abort requested" if r.status in ACTIVE else f"{service}: {r.message}",
                      highlight=False)


@app.command()
def promote(ctx: typer.Context, service: Service) -> None:
    """Skip the remaining steps: the canary takes all traffic now."""
    r = control.request(ctx.obj, service, Event.PROMOTE)
    ctx.obj.out.print(f"{service}: promote requested" if r.status in ACTIVE else f"{service}: {r.message}",
                      highlight=False)


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="rollout")
