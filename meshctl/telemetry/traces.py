"""Assemble spans gathered from every sidecar into traces (Zipkin v2 span dicts)."""

from __future__ import annotations

from typing import Any

from meshctl.errors import UsageError

Span = dict[str, Any]


def by_trace(spans: list[Span]) -> dict[str, list[Span]]:
    out: dict[str, dict[str, Span]] = {}
    for s in spans:
        if isinstance(s.get("traceId"), str) and isinstance(s.get("id"), str):
            out.setdefault(s["traceId"], {})[s["id"]] = s  # the same span read twice counts once
    return {t: sorted(found.values(), key=lambda s: s.get("timestamp", 0)) for t, found in out.items()}


def tree(spans: list[Span]) -> tuple[list[Span], dict[str, list[Span]]]:
    """Roots (no parent, or a parent we never saw) and each span's children, in start order."""
    ids = {s["id"] for s in spans}
    children: dict[str, list[Span]] = {}
    roots = []
    for s in sorted(spans, key=lambda s: s.get("timestamp", 0)):
        parent = s.get("parentId")
        if parent and parent in ids and parent != s["id"]:
            children.setdefault(parent, []).append(s)
        else:
            roots.append(s)
    return roots, children


def summaries(spans: list[Span], service: str | None = None) -> list[dict[str, Any]]:
    rows = []
    for trace_id, items in by_trace(spans).items():
        services = sorted({s["localEndpoint"]["serviceName"].split(".", 1)[0] for s in items})
        if service and service not in services:
            continue
        roots, _ = tree(items)
        start = min(s["timestamp"] for s in items)
        end = max(s["timestamp"] + s["duration"] for s in items)
        rows.append({"trace_id": trace_id, "root": f"{roots[0]['localEndpoint']['serviceName']} {roots[0]['name']}",
                     "services": services, "spans": len(items), "duration_ms": round((end - start) / 1000, 3),
                     "errors": sum(1 for s in items if "error" in s.get("tags", {})), "start": start / 1_000_000})
    return sorted(rows, key=lambda r: -r["start"])


def find(spans: list[Span], trace_id: str) -> list[Span]:
    wanted = trace_id.lower()
    grouped = by_trace(spans)
    matches = [t for t in grouped if t == wanted or t.startswith(wanted) or t.lstrip("0").startswith(wanted)]
    if not matches:
        raise UsageError(f"no trace {trace_id!r} among the sidecars' recent spans",
                         "list recent traces with `meshctl trace`")
    if len(matches) > 1:
        raise UsageError(f"{trace_id!r} matches {len(matches)} traces", "give more of the trace id")
    return grouped[matches[0]]
