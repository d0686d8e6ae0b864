"""Compile Telemetry resources into one proxy's tracing settings (part of its snapshot).

Scope as for the security resources: mesh-wide, then the project (namespace), then a selector; the most
specific resource that sets a field wins, as in Istio's Telemetry API.
"""

from __future__ import annotations

from typing import Any

from meshctl.config.resources import ROOT_NAMESPACES
from meshctl.mesh import Pod
from meshctl.pilot.security import Resource, selects

DEFAULT_SAMPLING = 100.0  # Istio's demo profile: every trace, so `meshctl trace` shows something at once
ENDPOINT_KEYS = {"zipkin": "zipkin", "opentelemetry": "otlp"}


def _specificity(r: Resource) -> int:
    ns = r["metadata"].get("namespace") or None  # older versions could store an empty one: no namespace
    return (0 if ns in ROOT_NAMESPACES else 1) + (2 if r["spec"].get("selector") else 0)


def tracing(resources: list[Resource], project: str, pod: Pod) -> dict[str, Any]:
    out: dict[str, Any] = {"sampling": DEFAULT_SAMPLING, "zipkin": None, "otlp": None}
    found = sorted((r for r in resources if r["kind"] == "Telemetry" and selects(r, project, pod)),
                   key=lambda r: (_specificity(r), r["metadata"]["name"]))
    for r in found:
        for entry in r["spec"].get("tracing") or []:
            if "randomSamplingPercentage" in entry:
                out["sampling"] = float(entry["randomSamplingPercentage"])
            if "providers" in entry:  # a resource that lists providers replaces the inherited ones
                out["zipkin"] = out["otlp"] = None
                for provider in entry["providers"]:
                    out[ENDPOINT_KEYS[provider["name"]]] = provider.get("endpoint")
            if entry.get("disableSpanReporting"):
                out["sampling"] = 0.0
    return out
