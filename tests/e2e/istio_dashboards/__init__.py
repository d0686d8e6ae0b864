"""Read Istio's Grafana dashboards (the JSON in this folder) as Grafana would: panels with their PromQL, template
variables resolved by running their queries, values substituted as Grafana formats them for Prometheus."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
DASHBOARDS = ("istio-mesh-dashboard.gen.json", "istio-service-dashboard.json", "istio-workload-dashboard.json")
# Grafana's built-in intervals, for a 5s scrape: irate/rate need at least two samples in the window
BUILTIN = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "5m"}
Query = Callable[[str], list[dict[str, Any]]]  # PromQL -> Prometheus's instant-query result


@dataclass(frozen=True)
class Panel:
    dashboard: str
    title: str
    exprs: tuple[str, ...]


def load(name: str) -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads((HERE / name).read_text())
    return dashboard


def panels(dashboard: dict[str, Any], name: str) -> list[Panel]:
    """Every panel (rows' nested panels too) that has PromQL; rows and text panels have none."""
    def walk(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for item in items:
            yield item
            yield from walk(item.get("panels") or [])
    found = []
    for p in walk(dashboard.get("panels") or []):
        exprs = tuple(t["expr"] for t in p.get("targets") or [] if (t.get("expr") or "").strip())
        if exprs:
            found.append(Panel(name, p.get("title") or f"panel {p.get('id')}", exprs))
    return found


def substitute(expr: str, values: dict[str, str]) -> str:
    """Grafana's interpolation: $name and ${name}, longest names first so $srcwl is not read as $srcns' prefix."""
    for key, value in sorted(BUILTIN.items(), key=lambda kv: -len(kv[0])):
        expr = expr.replace(key, value)
    for name in sorted(values, key=len, reverse=True):
        expr = expr.replace("${" + name + "}", values[name]).replace("$" + name, values[name])
    return expr


def _escape(value: str) -> str:
    """Grafana's prometheusRegularEscape: regex metacharacters behind a backslash, doubled inside PromQL's string."""
    return re.sub(r"([$^*{}\[\]'+?.()|])", r"\\\\\1", value.replace("\\", "\\\\\\\\"))


def _format(values: list[str], multi: bool) -> str:
    """A multi-value variable becomes a regex alternation (Grafana's Prometheus formatting), one value stays."""
    if multi or len(values) != 1:
        return "(" + "|".join(_escape(v) for v in values) + ")"
    return values[0]


def query_result(query: Query, text: str, regex: str) -> list[str]:
    """Grafana's query_result(EXPR) variable: each series as `{k="v", ...} value ts`, then the regex's group."""
    match = re.fullmatch(r"query_result\((.*)\)", text.strip(), re.S)
    assert match, text
    pattern = re.compile(regex.strip("/"))
    found: list[str] = []
    for series in query(match.group(1)):
        line = "{" + ", ".join(f'{k}="{v}"' for k, v in sorted(series["metric"].items())) + "} " + \
            " ".join(str(x) for x in series["value"][::-1])
        m = pattern.match(line)
        if m and m.group(1) not in found:
            found.append(m.group(1))
    return found


def resolve(dashboard: dict[str, Any], query: Query, chosen: dict[str, str]) -> tuple[dict[str, str],
                                                                                      dict[str, list[str]]]:
    """The variables in order, as Grafana resolves them: a query variable runs its query (with the variables
    before it), then takes the chosen value (which must be among the results), or all of them ("All"); a custom
    variable takes every option. Returns (substitutions, every variable's options)."""
    values: dict[str, str] = {}
    options: dict[str, list[str]] = {}
    for var in dashboard.get("templating", {}).get("list", []):
        name, kind = var["name"], var.get("type")
        if kind == "datasource":
            continue
        if kind == "custom":
            found = [o.strip() for o in str(var.get("query", "")).split(",") if o.strip()]
        else:
            text = var.get("query")
            text = text.get("query", "") if isinstance(text, dict) else text
            found = query_result(query, substitute(text, values), var.get("regex") or "/(.*)/")
        options[name] = found
        if name in chosen:
            assert chosen[name] in found, f"{name}: {chosen[name]!r} is not among the options {found}"
            values[name] = chosen[name]
        else:
            assert found, f"variable {name} has no options (query: {var.get('query')})"
            values[name] = _format(found, bool(var.get("multi")))
    return values, options
