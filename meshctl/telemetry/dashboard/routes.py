"""The route weights panel: one row per VirtualService rule."""

from __future__ import annotations

from typing import Any

from meshctl.config.resources import Resource
from meshctl.config.routes import describe_match


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
