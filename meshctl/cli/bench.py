"""`meshctl bench`: meshed vs direct and vs an nginx mTLS pair, measured in one run on the real engine with the
bench's own containers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Group
from rich.text import Text

from meshctl.bench.run import LOADS, MODES, Plan, run
from meshctl.cli import flags
from meshctl.context import Context
from meshctl.errors import UsageError
from meshctl.output import OutputFormat, OutputOption, emit, simple_table, stamped

MAX_LOAD_S = 60.0


def _f(value: Any, digits: int = 2, unit: str = "") -> str:
    return "-" if value is None else f"{value:.{digits}f}{unit}"


def render(report: dict[str, Any]) -> Group:
    """Throughput as ratios to direct and to nginx-mtls; added p50 over direct, and as a ratio to nginx's."""
    results = simple_table(
        ["mode", "load", "req/s", "vs direct", "vs nginx", "p50", "p90", "p99", "+p50", "+p50 vs nginx", "+p90",
         "errors"],
        [[r["mode"], r["load"], _f(r["rps"], 0), _f(r.get("throughput_ratio"), 3),
          _f(r.get("throughput_ratio_nginx"), 3), _f(r.get("p50_ms"), 3, "ms"), _f(r.get("p90_ms"), 3, "ms"),
          _f(r.get("p99_ms"), 3, "ms"), _f(r.get("added_p50_ms"), 3, "ms"), _f(r.get("added_p50_ratio_nginx"), 1, "x"),
          _f(r.get("added_p90_ms"), 3, "ms"), int(r["errors"] + r["socket_errors"])] for r in report["results"]])
    m = report["machine"]
    parts: list[Any] = [Text(f"meshctl bench: {m['cpus']} CPUs, {m['memory_gb']} GB, engine {m['engine']}, "
                             f"{report['plan']['seconds']:g}s per load", style="bold"), results]
    if report["sidecars"]:
        parts += [Text(""), simple_table(
            ["proxy", "rss idle", "rss under load", "cores per 1000 req/s (best-worst)"],
            [[s["sidecar"], _f(s["rss_idle_mb"], 1, " MB"), _f(s["rss_load_mb"], 1, " MB"),
              f"{_f(s['cores_per_1000_rps'], 3)}-{_f(s['cores_per_1000_rps_worst'], 3)}"] for s in report["sidecars"]])]
    if report["propagation"]:
        parts += [Text(""), simple_table(
            ["proxies", "start-up (inject to ready)", "config change to all SYNCED (median, max)"],
            [[p["proxies"], _f(p["startup_s"], 1, " s"),
              f"{_f(p['propagation_s'], 3, ' s')}, {_f(p['propagation_max_s'], 3, ' s')}"]
             for p in report["propagation"]])]
    if report["startup_s"] is not None:
        pods = report.get("startup_pods") or 3
        parts.append(Text(f"\nmesh start-up, client -> server ({pods} pods): {_f(report['startup_s'], 1)} s"))
    return Group(*parts)


def _load_seconds(text: str) -> float:
    seconds = flags.duration("--duration", text, minimum=1)
    if seconds > MAX_LOAD_S:
        raise UsageError(f"--duration {text!r} is too long", "use at most 1m")
    return seconds


def bench(
    ctx: typer.Context,
    quick: Annotated[bool, typer.Option("--quick", help="A short smoke run (1 s loads: 3 HTTP, 1 TCP, 1 gRPC; 3 "
                                        "proxies); it asserts nothing about speed.")] = False,
    duration: Annotated[str, typer.Option("--duration", "-d", help="How long each load runs (full run), from 1s "
                                          "to 1m, e.g. 5s.")] = "5s",
    modes: Annotated[str | None, typer.Option("--modes", help=f"Only these modes, comma-separated: "
                                              f"{', '.join(MODES)}.", show_default=False)] = None,
    loads: Annotated[str | None, typer.Option("--loads", help="Only these loads, comma-separated, named as in the "
                                              f"JSON: {', '.join(ld.name for ld in LOADS)}.",
                                              show_default=False)] = None,
    save: Annotated[Path | None, typer.Option("--save", help="Also write the JSON report to this file.")] = None,
    output: OutputOption = OutputFormat.table,
) -> None:
    """Direct, an nginx mutual-TLS pair (the C reference), meshed plaintext, meshed mTLS and mTLS with an L7 route
    and policy, over HTTP, gRPC (h2c, h2load) and a raw TCP echo: throughput, latency, proxy CPU and memory, config
    propagation and start-up. Every load is bounded and goes to the bench's own containers."""
    c: Context = ctx.obj
    seconds = 0.0 if quick else _load_seconds(duration)
    plan = (Plan.quick() if quick else Plan.full(seconds)).only(modes, loads)  # bad names fail before any work
    c.home.settings()
    with c.err.status("bench") as status:
        done = run(c, plan, lambda text: status.update(f"bench: {text}"))
    report = stamped(done.as_dict(), "started")  # saved and printed JSON write moments in RFC 3339
    if save:
        save.write_text(json.dumps(report, indent=1) + "\n")
    emit(c.out, output, report, lambda: render(report))
    if done.cleanup_error is not None:  # after the figures: they are valid, but something of the bench was left
        raise done.cleanup_error


def register(app: typer.Typer) -> None:
    app.command("bench")(bench)
