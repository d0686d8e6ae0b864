"""HTTP to the mesh's own containers and published ports, never through a proxy from the environment."""

from __future__ import annotations

import urllib.request

# Sidecars sit on local bridges; an HTTP(S)_PROXY meant for the outside world must not carry these calls.
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
