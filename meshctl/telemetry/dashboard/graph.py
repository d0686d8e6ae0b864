"""The service graph: nodes per service version (and callers or hosts outside the mesh), edges per pair that
has talked, each with the last interval's numbers; laid out in columns by call depth."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from meshctl.runtime.proxies import Proxy
from meshctl.telemetry import golden
from meshctl.telemetry.scrape import Sample

EXTERNAL = {"unknown": "outside the mesh", "PassthroughCluster": "outside the mesh (passthrough)",
            "BlackHoleCluster": "outside the mesh (refused: REGISTRY_ONLY)"}


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
