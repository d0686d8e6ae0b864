"""One bench run: every mode under the same loads (the C reference, an nginx mTLS pair, among them), each
proxy's cost from the engine's stats, config propagation to a fleet of proxies, and mesh start-up; all in one
run so the ratios compare like with like."""

from __future__ import annotations

import platform
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from docker.models.containers import Container

from meshctl.bench import cgroup, grpc_server, workload
from meshctl.bench.workload import Load
from meshctl.context import Context
from meshctl.errors import MeshError, UsageError
from meshctl.mesh import principal
from meshctl.pilot import changes
from meshctl.pilot.status import proxy_statuses
from meshctl.runtime.engine import engine_errors

Progress = Callable[[str], None]
IDLE_CORES = 0.02  # below this a sidecar carried none of a load (its own polling costs about 0.005)
NGINX = "nginx-mtls"
MODES = ("direct", NGINX, "mesh-plaintext", "mesh-mtls", "mesh-mtls-l7")
MESH_MODES = MODES[2:]
GRPC_LOAD = Load("1k", 16, False, "grpc", streams=16)  # unary calls, h2c, 16 connections x 16 streams
LOADS = (*(Load(size, c, new) for new in (False, True) for size in ("1k", "64k") for c in (1, 16)),
         *(Load("64k", c, False, "tcp") for c in (1, 16)), GRPC_LOAD)
QUICK_LOADS = ("keep-alive 1k c1", "keep-alive 1k c16", "new-conn 1k c16", "tcp-echo 64k c1", GRPC_LOAD.name)
BENCH_RESOURCES = ("bench-server", "bench-grpc", "bench-fleet")  # the config the bench applies, and removes


def pick(text: str, valid: tuple[str, ...], option: str) -> tuple[str, ...]:
    """A comma-separated subset of `valid`, in `valid`'s order; an unknown name is a usage error naming them all."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in valid]
    if unknown or not names:
        what = f"unknown name {unknown[0]!r}" if unknown else "no name"
        raise UsageError(f"{option}: {what}; valid: {', '.join(valid)}", f"e.g. {option} '{valid[0]},{valid[-1]}'")
    return tuple(v for v in valid if v in names)


@dataclass(frozen=True)
class Plan:
    seconds: float
    loads: tuple[Load, ...]
    fleets: tuple[int, ...]  # proxies to measure config propagation at
    modes: tuple[str, ...] = MODES

    @classmethod
    def full(cls, seconds: float = 5.0) -> Plan:
        return cls(seconds, LOADS, (10, 50))

    @classmethod
    def quick(cls) -> Plan:
        return cls(1.0, tuple(ld for ld in LOADS if ld.name in QUICK_LOADS), (3,))

    @property
    def grpc(self) -> bool:
        return any(ld.protocol == "grpc" for ld in self.loads)

    def only(self, modes: str | None = None, loads: str | None = None) -> Plan:
        """The plan for `--modes`/`--loads` (names as in the JSON); a mesh-free plan measures no fleet."""
        chosen = pick(modes, MODES, "--modes") if modes is not None else self.modes
        names = pick(loads, tuple(ld.name for ld in LOADS), "--loads") if loads is not None else None
        picked = tuple(ld for ld in LOADS if ld.name in names) if names is not None else self.loads
        fleets = self.fleets if any(m in MESH_MODES for m in chosen) else ()
        return Plan(self.seconds, picked, fleets, chosen)


# --- sidecar cost from the engine -----------------------------------------------------------------------

def _stats(c: Container) -> tuple[float, float]:
    """(CPU seconds used so far, resident memory in MB) of one container: its cgroup files when the engine is
    local (instant), else the engine's stats (about a second a read)."""
    if (local := cgroup.usage(c.id)) is not None:
        return local
    with engine_errors(f"read the stats of {c.name}"):
        s = c.stats(stream=False, one_shot=True)
    cpu = s.get("cpu_stats", {}).get("cpu_usage", {}).get("total_usage", 0) / 1e9
    mem = s.get("memory_stats", {}).get("stats", {})
    rss = mem.get("rss", mem.get("anon", s.get("memory_stats", {}).get("usage", 0)))
    return cpu, rss / 2**20


class Sampler:
    """CPU used by each proxy over a load, and the largest RSS seen while it ran (read every half second)."""

    def __init__(self, sidecars: list[Container]) -> None:
        self.sidecars = sidecars
        self.peak: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        while not self._stop.wait(0.5):
            for c in self.sidecars:
                self.peak[c.name] = max(self.peak.get(c.name, 0.0), _stats(c)[1])

    def __enter__(self) -> Sampler:
        self.before = {c.name: _stats(c)[0] for c in self.sidecars}
        self.started = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        took = time.monotonic() - self.started
        self.cores = {c.name: (_stats(c)[0] - self.before[c.name]) / took for c in self.sidecars}


# --- the run --------------------------------------------------------------------------------------------

@dataclass
class Report:
    started: float
    machine: dict[str, Any]
    plan: dict[str, Any]
    results: list[dict[str, Any]] = field(default_factory=list)  # one per (mode, load)
    sidecars: list[dict[str, Any]] = field(default_factory=list)
    propagation: list[dict[str, Any]] = field(default_factory=list)
    startup_s: float | None = None
    startup_pods: int | None = None
    cleanup_error: MeshError | None = None  # the figures stand; the CLI prints them, then fails with this

    def as_dict(self) -> dict[str, Any]:
        out = {"started": self.started, "machine": self.machine, "plan": self.plan, "results": self.results,
               "sidecars": self.sidecars, "propagation": self.propagation, "startup_s": self.startup_s,
               "startup_pods": self.startup_pods}
        if self.cleanup_error is not None:
            out["cleanup_error"] = self.cleanup_error.one_line()
        return out


def machine(ctx: Context) -> dict[str, Any]:
    info = ctx.docker().info()
    return {"cpus": info.get("NCPU"), "memory_gb": round(info.get("MemTotal", 0) / 2**30, 1),
            "kernel": info.get("KernelVersion"), "engine": info.get("ServerVersion"),
            "python": platform.python_version()}


def compare(results: list[dict[str, Any]]) -> None:
    """Each proxied figure next to direct's for the same load (throughput ratio, added latency), and each
    mesh figure next to nginx-mtls's: throughput ratio, added p50 as a ratio and as a difference."""
    direct = {r["load"]: r for r in results if r["mode"] == "direct"}
    for r in results:
        base = direct.get(r["load"])
        if base is None or r["mode"] == "direct":
            continue
        r["throughput_ratio"] = round(r["rps"] / base["rps"], 4) if base["rps"] else None
        for p in ("p50_ms", "p90_ms", "p99_ms"):
            if p in r and p in base:
                r[f"added_{p}"] = round(r[p] - base[p], 3)
    reference = {r["load"]: r for r in results if r["mode"] == NGINX}
    for r in results:
        ref = reference.get(r["load"])
        if ref is None or r["mode"] in ("direct", NGINX):
            continue
        r["throughput_ratio_nginx"] = round(r["rps"] / ref["rps"], 4) if ref["rps"] else None
        if "p50_ms" in r and "p50_ms" in ref:
            r["added_p50_over_nginx_ms"] = round(r["p50_ms"] - ref["p50_ms"], 3)
        added, ref_added = r.get("added_p50_ms"), ref.get("added_p50_ms")
        if added is not None and ref_added is not None:  # a ratio only over an added latency nginx really has
            r["added_p50_ratio_nginx"] = round(added / ref_added, 2) if ref_added > 0 else None


def _mode_config(ctx: Context, mode: str) -> None:
    """The mesh's config for a mode: nothing, peer mTLS off, or a 90/10 route plus an ALLOW policy (and a route
    for the gRPC service's method prefix)."""
    ns, domain = workload.PROJECT, ctx.home.settings().trust_domain
    wanted: list[dict[str, Any]] = []
    if mode == "mesh-plaintext":
        wanted += [{"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
                    "metadata": {"name": f"bench-{app}", "namespace": ns},
                    "spec": {"selector": {"matchLabels": {"app": app}}, "mtls": {"mode": "DISABLE"}}}
                   for app in ("server", workload.GRPC)]
    if mode == "mesh-mtls-l7":
        dest = [{"destination": {"host": "server", "subset": s}, "weight": w} for s, w in (("v1", 90), ("v2", 10))]
        wanted += [
            {"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule", "metadata": {"name": "bench-server"},
             "spec": {"host": "server", "subsets": [{"name": v, "labels": {"version": v}} for v in ("v1", "v2")]}},
            {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService", "metadata": {"name": "bench-server"},
             "spec": {"hosts": ["server"], "http": [{"route": dest}]}},
            {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
             "metadata": {"name": "bench-server", "namespace": ns},
             "spec": {"selector": {"matchLabels": {"app": "server"}}, "action": "ALLOW",
                      "rules": [{"from": [{"source": {"principals": [principal(domain, ns, "client")]}}]}]}},
            {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService", "metadata": {"name": "bench-grpc"},
             "spec": {"hosts": [workload.GRPC], "http": [{
                 "match": [{"uri": {"prefix": f"/{grpc_server.SERVICE}/"}}],
                 "route": [{"destination": {"host": workload.GRPC}}]}]}},
        ]

    def change(current: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [r for r in current if r["metadata"]["name"] not in BENCH_RESOURCES[:2]] + wanted

    changes.edit(ctx, change, f"bench: {mode}")
    wait_synced(ctx, ns)


def wait_synced(ctx: Context, project: str, timeout: float = 60) -> float:
    """Seconds until every proxy of the project acknowledged the current config."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        rows = proxy_statuses(ctx, project=project)
        if rows and all(r.synced for r in rows):
            return time.monotonic() - started
        time.sleep(0.02)
    raise TimeoutError(f"{project}'s proxies did not sync within {timeout:.0f}s")


def propagation(ctx: Context, size: int, progress: Progress) -> dict[str, Any]:
    project = f"{workload.PROJECT}-fleet"
    progress(f"starting {size} meshed pods for the propagation measure")
    fleet = workload.up_meshed(ctx, project, workload.compose_text(fleet=size))
    wait_synced(ctx, project)
    time.sleep(min(10.0, 0.2 * size))  # freshly started proxies are still warming up on shared cores
    timings = []
    for i in range(5):  # a change that reaches every proxy of the fleet: its own VirtualService
        resource = {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
                    "metadata": {"name": "bench-fleet"},
                    "spec": {"hosts": ["idle"], "http": [{"timeout": f"{i + 1}s",
                                                          "route": [{"destination": {"host": "idle"}}]}]}}
        started = time.monotonic()
        changes.apply(ctx, [resource])
        wait_synced(ctx, project)
        timings.append(time.monotonic() - started)
    changes.edit(ctx, lambda current: [r for r in current if r["metadata"]["name"] != "bench-fleet"], "bench: done")
    return {"proxies": size, "startup_s": round(fleet.started_s, 2),
            "propagation_s": round(sorted(timings)[len(timings) // 2], 3), "propagation_max_s": round(max(timings), 3),
            "propagation_runs_s": [round(t, 3) for t in timings]}


class Costs:
    """Per proxy container: RSS idle, the largest RSS under load, and cores per 1000 req/s of each load it carried."""

    def __init__(self) -> None:
        self.proxies: list[Container] = []
        self.idle: dict[str, float] = {}
        self.peak: dict[str, float] = {}
        self.cost: dict[str, list[float]] = {}

    def watch(self, proxies: list[Container]) -> None:
        for c in proxies:
            self.proxies.append(c)
            self.idle[c.name], self.cost[c.name] = _stats(c)[1], []

    def measure(self, proxies: list[Container], run_load: Callable[[], dict[str, float]]) -> dict[str, Any]:
        with Sampler(proxies) as sampler:
            result = run_load()
        for name, cores in sampler.cores.items():
            self.peak[name] = max(self.peak.get(name, 0.0), sampler.peak.get(name, 0.0))
            if result["rps"] > 0 and cores > IDLE_CORES:  # a proxy this load did not pass through
                self.cost[name].append(cores / (result["rps"] / 1000))
        return {**result, "sidecar_cores": {k: round(v, 3) for k, v in sampler.cores.items()}}

    def rows(self) -> list[dict[str, Any]]:
        return [{"sidecar": c.name, "rss_idle_mb": round(self.idle[c.name], 1),
                 "rss_load_mb": round(self.peak.get(c.name, 0.0), 1),
                 "cores_per_1000_rps": round(min(self.cost[c.name]), 3) if self.cost[c.name] else None,
                 "cores_per_1000_rps_worst": round(max(self.cost[c.name]), 3) if self.cost[c.name] else None}
                for c in self.proxies]


def _unmeshed(ctx: Context, plan: Plan, report: Report, costs: Costs, progress: Progress) -> None:
    """direct and nginx-mtls: the same client and server containers on one network, no sidecars."""
    progress("direct: client and server with no mesh")
    caller, _ = workload.start_direct(ctx)
    if "direct" in plan.modes:
        for load in plan.loads:
            progress(f"direct: {load.name}")
            host = workload.DIRECT_GRPC if load.protocol == "grpc" else workload.DIRECT_SERVER
            report.results.append({"mode": "direct", "load": load.name,
                                   **workload.run_load(caller, host, load, plan.seconds)})
    if NGINX in plan.modes:
        progress(f"{NGINX}: starting the nginx pair (mutual TLS between them)")
        proxies = workload.start_nginx(ctx, caller)
        costs.watch(proxies)
        for load in plan.loads:
            progress(f"{NGINX}: {load.name}")
            result = costs.measure(proxies, partial(workload.run_load, caller, workload.NGINX_CLIENT, load,
                                                    plan.seconds))
            report.results.append({"mode": NGINX, "load": load.name, **result})
    workload.stop_direct(ctx)


def _meshed(ctx: Context, plan: Plan, report: Report, costs: Costs, progress: Progress) -> None:
    progress("meshing client -> server (inject, up, until every sidecar is ready)")
    meshed = workload.up_meshed(ctx, workload.PROJECT, workload.compose_text(grpc=plan.grpc))
    report.startup_s = round(meshed.started_s, 2)
    report.startup_pods = 4 if plan.grpc else 3
    caller = workload.container(ctx, workload.PROJECT, "client")
    pods = ("client", "server-v1", "server-v2", *((workload.GRPC,) if plan.grpc else ()))
    sidecars = {pod: workload.container(ctx, workload.PROJECT, f"{pod}-proxy") for pod in pods}
    costs.watch(list(sidecars.values()))
    # the sidecars a load passes, the only ones sampled during it (an engine stats read takes a second, if the
    # cgroup files are not at hand):
    # both server pods, as a passthrough connection goes to whichever one Docker's DNS answered
    http = [sidecars[pod] for pod in ("client", "server-v1", "server-v2")]
    grpc = [sidecars[pod] for pod in ("client", workload.GRPC) if pod in sidecars]
    for mode in (m for m in MESH_MODES if m in plan.modes):
        progress(f"{mode}: configuring")
        _mode_config(ctx, mode)
        workload.wait_serving(caller, "server")
        if plan.grpc:
            workload.wait_grpc(caller, workload.GRPC)
        for load in plan.loads:
            progress(f"{mode}: {load.name}")
            host, through = (workload.GRPC, grpc) if load.protocol == "grpc" else ("server", http)
            result = costs.measure(through, partial(workload.run_load, caller, host, load, plan.seconds))
            report.results.append({"mode": mode, "load": load.name, **result})
    _mode_config(ctx, "mesh-mtls")  # leave no bench policy behind
    workload.down_meshed(ctx, workload.PROJECT)


def run(ctx: Context, plan: Plan, progress: Progress) -> Report:
    report = Report(time.time(), machine(ctx), {"seconds": plan.seconds, "modes": list(plan.modes),
                                                   "loads": [ld.name for ld in plan.loads],
                                                   "fleets": list(plan.fleets)})
    progress("building the bench image (wrk, h2load, nginx, a one-send HTTP server, a TCP echo, a gRPC server)")
    workload.ensure_image(ctx, progress)
    costs = Costs()
    try:
        if "direct" in plan.modes or NGINX in plan.modes:
            _unmeshed(ctx, plan, report, costs, progress)
        if any(m in MESH_MODES for m in plan.modes):
            _meshed(ctx, plan, report, costs, progress)
        report.sidecars = costs.rows()
        for size in plan.fleets:
            report.propagation.append(propagation(ctx, size, progress))
    except BaseException:
        clean_up(ctx, progress)  # the measurement's own error is the one to show
        raise
    report.cleanup_error = clean_up(ctx, progress)  # minutes of figures are not lost to a failed `down`
    compare(report.results)
    return report


def clean_up(ctx: Context, progress: Progress) -> MeshError | None:
    """Every step is tried, whatever the others did; the first failure is returned."""
    progress("cleaning up the bench's containers")
    steps: list[Callable[[], object]] = [
        partial(workload.stop_direct, ctx),
        *(partial(workload.down_meshed, ctx, project) for project in (workload.PROJECT, f"{workload.PROJECT}-fleet")),
        partial(changes.edit, ctx, lambda current: [r for r in current
                                                    if r["metadata"]["name"] not in BENCH_RESOURCES],
                "bench: clean up")]
    first: MeshError | None = None
    for step in steps:
        try:
            step()
        except MeshError as exc:
            first = first or exc
    return first
