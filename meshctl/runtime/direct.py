"""HTTP to the mesh's own containers and published ports, never through a proxy from the environment."""

from __future__ import annotations

import urllib.request

from meshctl.runtime.reach import ExecHandler

# Sidecars sit on local bridges; an HTTP(S)_PROXY meant for the outside world must not carry these calls.
# In a cluster a sidecar's host is a route through its node's engine (runtime.reach), answered by ExecHandler.
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}), ExecHandler())
