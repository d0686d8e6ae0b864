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

The package splits it by concern: `sources` (where the numbers come from), `graph` (nodes, edges and their
layout), `routes` (the VirtualService rules shown), `history` (the series behind the sparklines), `state`
(the pollers' shared state) and `server` (the HTTP side).
"""

from __future__ import annotations

from meshctl.telemetry.dashboard.graph import build_graph, layout
from meshctl.telemetry.dashboard.history import History
from meshctl.telemetry.dashboard.routes import route_rows
from meshctl.telemetry.dashboard.server import Server, page
from meshctl.telemetry.dashboard.sources import Sources, live_sources
from meshctl.telemetry.dashboard.state import Dashboard

__all__ = ["Dashboard", "History", "Server", "Sources", "build_graph", "layout", "live_sources", "page",
           "route_rows"]
