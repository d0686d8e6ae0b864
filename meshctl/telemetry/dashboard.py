"""`meshctl dashboard`: a live local web page of the mesh (a small Kiali), served from this process.

Two background threads poll the data plane and the config store: a fast one every interval (sidecar
metrics -> the service graph, golden metrics and their history, route weights) and a slow one (proxy
sync status, SLOs, which read every sidecar again). Each publishes into one state dict; GET /api/state
returns it as JSON and GET / the page (dashboard.html), which polls it. Every section carries its own
`error`, so one failing source never blanks the page.

Graph nodes are service versions (`reviews:v2`; `project/reviews:v2` when several compose projects are
shown), plus `unknown` for callers outside the mesh and, for calls leaving it, a ServiceEntry host by its name or
Istio's `PassthroughCluster` / `BlackHoleCluster` (REGISTRY_ONLY refused it).
Edges (`productpage:v1->reviews:v2`) are every pair that has ever talked, with the last interval's
RPS, error rate and p99, and whether that traffic was mutual TLS.
"""

from __future__ import annotations

import errno
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any

from meshctl.config.resources import Resource
from meshctl.config.routes import describe_match
from meshctl.context import Context
from meshctl.errors import Conflict
from meshctl.runtime.proxies import Proxy
from meshctl.telemetry import golden
from meshctl.telemetry.scrape import Sample

HISTORY_POINTS = 150
EXTERNAL = {"unknown": "outside the mesh", "PassthroughCluster": "outside the mesh (passthrough)",
            "BlackHoleCluster": "outside the mesh (refused: REGISTRY_ONLY)"}


@dataclass
class Sources:
    """Where the dashboard reads from; live ones talk to Docker and the sidecars, tests pass fakes."""
    proxies: Callable[[], list[Proxy]]
    metrics: Callable[[list[Proxy]], dict[str, list[Sample]]]
    resources: Callable[[], list[Resource]]
    statuses: Callable[[], list[dict[str, Any]]]
    slos: Callable[[], list[dict[str, Any]]]


def live_sources(ctx: Context, project: str | None) -> Sources:
    from meshctl.config import changes
    from meshctl.pilot.status import proxy_statuses
    from meshctl.telemetry import mesh, slo

    def statuses() -> list[dict[str, Any]]:
        rows = [s.as_dict() for s in proxy_statuses(ctx)]
        return [r for r in rows if project is None or r["name"].startswith(f"{project}.")]

    def slos() -> list[dict[str, Any]]:
        rows = slo.status_rows(ctx, None, 1.0)
        return [r for r in rows if project is None or r.get("project") in (None, project)]

    return Sources(proxies=lambda: mesh.running(ctx, project), metrics=lambda ps: mesh.metrics(ctx, ps),
                   resources=lambda: changes.current(ctx), statuses=statuses, slos=slos)


def _guarded(read: Callable[[], Any]) -> tuple[Any, str | None]:
    """(result, None), or (None, the error in one line): a failing section must not stop the others."""
    try:
        return read(), None
    except Exception as exc:  # MeshError has a one-line form; anything else is shown by type
        one_line = getattr(exc, "one_line", None)
        return None, one_line() if callable(one_line) else f"{type(exc).__name__}: {exc}"


# --- the graph ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Naming:
    """Node ids for workloads, from the running sidecars (the compose service is the workload)."""
    by_workload: dict[tuple[str, str], Proxy]
    multi: bool  # several compose projects on one page: ids carry the project

    @classmethod
    def of(cls, proxies: list[Proxy]) -> Naming:
        return cls({(p.project, p.service): p for p in proxies}, len({p.project for p in proxies}) > 1)

    def service(self, project: str, app: str, version: str) -> str:
        base = f"{app}:{version}" if version else app
        return f"{project}/{base}" if self.multi and project else base

    def workload(self, project: str, workload: str) -> tuple[str, dict[str, Any]]:
        """(node id, node fields) of a workload seen in metrics."""
        if workload in EXTERNAL or not project:  # a ServiceEntry host has no project: named as Istio does
            return workload, {"app": workload, "version": "", "project": "", "kind": "external",
                              "label": EXTERNAL.get(workload, f"outside the mesh: {workload}")}
        proxy = self.by_workload.get((project, workload))
        app, version = (proxy.app, proxy.version) if proxy else (workload, "")
        return self.service(project, app, version), {"app": app, "version": version, "project": project,
                                                     "kind": "service", "label": app}


def _rates(g: golden.Golden | None, seconds: float | None) -> dict[str, Any]:
    """The numbers a node or an edge shows for one interval (None: not measured yet)."""
    if seconds is None:
        return {"rps": None, "requests": None, "error_rate": None, "success_rate": None, "p50_ms": None,
                "p99_ms": None, "tcp_connections": None, "tcp_bytes_per_s": None}
    g = g or golden.Golden()
    s = golden.summary(g, seconds)
    return {"rps": s["rps"], "requests": s["requests"], "success_rate": s["success_rate"],
            "error_rate": None if s["success_rate"] is None else round(100.0 - s["success_rate"], 3),
            "p50_ms": s["p50_ms"], "p99_ms": s["p99_ms"],
            # TCP relayed at L4: connections opened and bytes both ways per second in the interval
            "tcp_connections": s["tcp_connections"],
            "tcp_bytes_per_s": round((g.tcp_received + g.tcp_sent) / seconds, 1) if seconds else None}


def build_graph(proxies: list[Proxy], now: dict[str, list[Sample]], before: dict[str, list[Sample]] | None,
                seconds: float | None) -> dict[str, Any]:
    """Nodes and edges, with the interval's numbers (between `before` and `now`, `seconds` apart)."""
    naming = Naming.of(proxies)
    nodes: dict[str, dict[str, Any]] = {}
    for p in proxies:
        nid = naming.service(p.project, p.app, p.version)
        node = nodes.setdefault(nid, {"id": nid, "app": p.app, "version": p.version, "project": p.project,
                                      "kind": "service", "label": p.app, "pods": 0})
        node["pods"] += 1
    served = golden.window(now, before, golden.by_service_version) if before is not None else {}
    for (project, app, version), g in golden.window(now, None, golden.by_service_version).items():
        nid = naming.service(project, app, version)
        nodes.setdefault(nid, {"id": nid, "app": app, "version": version, "project": project, "kind": "service",
                               "label": app, "pods": 0})
        nodes[nid]["requests_total"] = nodes[nid].get("requests_total", 0) + round(g.requests)
    merged: dict[tuple[str, str], dict[str, golden.Golden]] = {}  # (src, dst) -> {"total", "window"}
    secure: dict[tuple[str, str], dict[str, set[bool]]] = {}
    windowed = golden.window(now, before, golden.by_edge) if before is not None else {}
    for key, total in golden.window(now, None, golden.by_edge).items():
        src_ns, src_wl, dst_ns, dst_wl, _, _, policy = key
        src, src_fields = naming.workload(src_ns, src_wl)
        dst, dst_fields = naming.workload(dst_ns, dst_wl)
        for nid, fields in ((src, src_fields), (dst, dst_fields)):
            nodes.setdefault(nid, {"id": nid, "pods": 0, **fields})
        pair = merged.setdefault((src, dst), {"total": golden.Golden(), "window": golden.Golden()})
        pair["total"].add(total)
        mtls = secure.setdefault((src, dst), {"total": set(), "window": set()})
        if total.busy:
            mtls["total"].add(policy == "mutual_tls")
        if key in windowed:
            pair["window"].add(windowed[key])
            if windowed[key].busy:
                mtls["window"].add(policy == "mutual_tls")
    edges = []
    for (src, dst), pair in sorted(merged.items()):
        seen = secure[(src, dst)]["window"] or secure[(src, dst)]["total"]
        edges.append({"id": f"{src}->{dst}", "source": src, "target": dst, "mtls": bool(seen) and all(seen),
                      "requests_total": round(pair["total"].requests),
                      "tcp_connections_total": round(pair["total"].tcp_opened),
                      **_rates(pair["window"], seconds)})
    for nid, node in nodes.items():
        key = (node["project"], node["app"], node["version"])
        node.setdefault("requests_total", 0)
        node.update(_rates(served.get(key), seconds) if node["kind"] == "service" else _rates(None, None))
        node["id"] = nid
    layout(list(nodes.values()), edges)
    return {"nodes": sorted(nodes.values(), key=lambda n: (n["column"], n["row"])), "edges": edges}


def layout(nodes: list[dict[str, Any]], edges: list[dict[str, Any]]) -> None:
    """Deterministic columns by call depth (breadth first from the nodes nobody calls), rows by name.

    A version nobody called sits in its service's column; a lone node in the first column."""
    callers: dict[str, set[str]] = {n["id"]: set() for n in nodes}
    callees: dict[str, set[str]] = {n["id"]: set() for n in nodes}
    for e in edges:
        if e["source"] != e["target"]:
            callees[e["source"]].add(e["target"])
            callers[e["target"]].add(e["source"])
    connected = [n for n in sorted(callers) if callers[n] or callees[n]]
    roots = [n for n in connected if not callers[n]] or connected[:1]
    column: dict[str, int] = dict.fromkeys(roots, 0)
    frontier = roots
    while frontier:
        nxt = []
        for nid in frontier:
            for callee in sorted(callees[nid]):
                if callee not in column:
                    column[callee] = column[nid] + 1
                    nxt.append(callee)
        frontier = nxt
        if not frontier:  # a cycle nobody enters from outside: start again from its first node
            frontier = [n for n in connected if n not in column][:1]
            column.update(dict.fromkeys(frontier, 0))
    by_app: dict[tuple[str, str], int] = {}
    for n in nodes:
        if n["id"] in column:
            by_app.setdefault((n["project"], n["app"]), column[n["id"]])
    for n in nodes:
        n["column"] = column.get(n["id"], by_app.get((n["project"], n["app"]), 0))
    for col in {n["column"] for n in nodes}:
        for row, n in enumerate(sorted((n for n in nodes if n["column"] == col),
                                       key=lambda n: (n["kind"] != "service", n["project"], n["app"],
                                                      n["version"], n["id"]))):
            n["row"] = row


# --- routes -------------------------------------------------------------------------------------------------

def route_rows(resources: list[Resource], project: str | None = None) -> list[dict[str, Any]]:
    """One row per VirtualService rule: its match and where it sends traffic, with weights."""
    rows = []
    for vs in sorted((r for r in resources if r["kind"] == "VirtualService"), key=lambda r: r["metadata"]["name"]):
        namespace = vs["metadata"].get("namespace")
        if project and namespace not in (None, project):
            continue
        rules = vs["spec"].get("http", [])
        for i, rule in enumerate(rules):
            routes = rule.get("route", [])
            destinations = [{"host": d["destination"]["host"], "subset": d["destination"].get("subset"),
                             "weight": d.get("weight", 100 if len(routes) == 1 else None)} for d in routes]
            rows.append({"virtual_service": vs["metadata"]["name"], "hosts": vs["spec"].get("hosts", []),
                         "rule": i, "match": describe_match(rule), "destinations": destinations,
                         "mirror": (rule.get("mirror") or {}).get("subset") or (rule.get("mirror") or {}).get("host"),
                         "fault": sorted(rule.get("fault") or {}), "timeout": rule.get("timeout")})
    return rows


# --- the state ----------------------------------------------------------------------------------------------

class History:
    """The last N points of each service version's RPS, success rate and p99, on one shared time axis."""

    FIELDS = ("rps", "success_rate", "p99_ms")

    def __init__(self, points: int = HISTORY_POINTS) -> None:
        self.points = points
        self.t: list[float] = []
        self.series: dict[str, dict[str, Any]] = {}

    def add(self, when: float, nodes: list[dict[str, Any]]) -> None:
        self.t.append(round(when, 3))
        for n in nodes:
            if n["kind"] != "service" or n["id"] in self.series:
                continue
            self.series[n["id"]] = {"id": n["id"], "app": n["app"], "version": n["version"],
                                    "project": n["project"],
                                    **{f: [None] * (len(self.t) - 1) for f in self.FIELDS}}
        current = {n["id"]: n for n in nodes}
        for nid, s in self.series.items():
            for f in self.FIELDS:
                s[f].append(current[nid].get(f) if nid in current else None)
        drop = max(0, len(self.t) - self.points)
        if drop:
            del self.t[:drop]
            for s in self.series.values():
                for f in self.FIELDS:
                    del s[f][:drop]
        for nid in [nid for nid, s in self.series.items() if all(s[f] == [None] * len(s[f]) for f in self.FIELDS)
                    and nid not in current]:
            del self.series[nid]

    def as_dict(self) -> dict[str, Any]:
        return {"t": list(self.t), "series": [{**s, **{f: list(s[f]) for f in self.FIELDS}}
                                               for _, s in sorted(self.series.items())]}


def _section(rows: Any, error: str | None, when: float | None) -> dict[str, Any]:
    return {"rows": rows if rows is not None else [], "error": error, "updated_at": when}


class Dashboard:
    """The state builder: `poll_fast` and `poll_slow` refresh their sections; `state()` is what the page gets."""

    def __init__(self, sources: Sources, clock: Callable[[], float] = time.time, project: str | None = None,
                 interval_s: float = 2.0, history: int = HISTORY_POINTS) -> None:
        self.sources, self.clock, self.project, self.interval_s = sources, clock, project, interval_s
        self.history = History(history)
        self._lock = threading.Lock()
        self._before: tuple[float, dict[str, list[Sample]]] | None = None
        self._seq = 0
        self._state: dict[str, Any] = {
            "seq": 0, "generated_at": clock(), "project": project, "interval_s": interval_s, "window_s": None,
            "graph": {"nodes": [], "edges": [], "error": None, "updated_at": None},
            "history": self.history.as_dict(),
            "routes": _section(None, None, None), "proxies": _section(None, None, None),
            "slos": _section(None, None, None),
        }
        self._json = json.dumps(self._state).encode()

    def _publish(self, update: dict[str, Any]) -> None:
        with self._lock:
            self._seq += 1
            self._state = {**self._state, **update, "seq": self._seq, "generated_at": self.clock()}
            self._json = json.dumps(self._state, default=str).encode()

    def state(self) -> dict[str, Any]:
        with self._lock:
            return dict(self._state)

    def state_json(self) -> bytes:
        with self._lock:
            return self._json

    def poll_fast(self) -> None:
        """Scrape every sidecar: the graph, golden metrics and history for the interval; the route weights."""
        update: dict[str, Any] = {}

        def scrape() -> dict[str, Any]:
            proxies = self.sources.proxies()
            when, now = self.clock(), self.sources.metrics(proxies)
            before = self._before
            seconds = max(when - before[0], 1e-6) if before else None
            # A sidecar not read last time (new, or its scrape failed) starts from now: no spike of all it
            # ever counted in one interval.
            base = {name: before[1].get(name) or samples for name, samples in now.items()} if before else None
            graph = build_graph(proxies, now, base, seconds)
            self._before = (when, now)
            update["window_s"] = None if seconds is None else round(seconds, 3)
            if seconds is not None:
                self.history.add(when, graph["nodes"])
            return graph

        graph, error = _guarded(scrape)
        when = self.clock()
        update["graph"] = {**(graph or {"nodes": [], "edges": []}), "error": error, "updated_at": when}
        update["history"] = self.history.as_dict()
        rows, error = _guarded(lambda: route_rows(self.sources.resources(), self.project))
        update["routes"] = _section(rows, error, when)
        self._publish(update)

    def poll_slow(self) -> None:
        """Proxy sync status and SLOs (each reads every sidecar again, so less often)."""
        statuses, status_error = _guarded(self.sources.statuses)
        slos, slo_error = _guarded(self.sources.slos)
        when = self.clock()
        self._publish({"proxies": _section(statuses, status_error, when),
                       "slos": _section(slos, slo_error, when)})


# --- serving it ---------------------------------------------------------------------------------------------

def page() -> bytes:
    return resources.files("meshctl.telemetry").joinpath("dashboard.html").read_bytes()


class Server:
    """The HTTP server on 127.0.0.1 and the two pollers; `serve()` blocks until `stop()` or Ctrl-C."""

    def __init__(self, board: Dashboard, port: int, interval_s: float, slow_every_s: float | None = None) -> None:
        self.board, self.interval_s = board, interval_s
        self.slow_every_s = slow_every_s or max(5.0, interval_s)
        self._stop = threading.Event()
        html = page()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path in ("/", "/index.html"):
                    self._send(200, "text/html; charset=utf-8", html)
                elif path == "/api/state":
                    self._send(200, "application/json", board.state_json())
                else:
                    self._send(404, "text/plain; charset=utf-8", b"not found\n")

            def _send(self, code: int, kind: str, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # quiet: the terminal shows the URL only
                pass

        try:
            self.httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                raise Conflict(f"cannot listen on 127.0.0.1:{port} ({exc.strerror})",
                               "choose another port with --port") from None
            raise
        self.httpd.daemon_threads = True

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/"

    def _loop(self, every: float, poll: Callable[[], None]) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            poll()
            self._stop.wait(max(0.0, every - (time.monotonic() - started)))

    def serve(self) -> None:
        for every, poll in ((self.interval_s, self.board.poll_fast), (self.slow_every_s, self.board.poll_slow)):
            threading.Thread(target=self._loop, args=(every, poll), daemon=True, name="dashboard-poll").start()
        try:
            self.httpd.serve_forever(poll_interval=0.2)
        finally:
            self._stop.set()
            self.httpd.server_close()

    def stop(self) -> None:
        self._stop.set()
        self.httpd.shutdown()
