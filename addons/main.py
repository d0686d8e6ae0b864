"""The proxy process's entry point (`python -O -m addons.main`, started by addons.sidecar).

It runs the engine (addons.engine.main: uvloop, llhttp, pooled mTLS). MESHCTL_PROXY_ENGINE=mitmproxy runs
the previous proxy, on mitmproxy (addons.proxy), instead: kept while the engine is new, as a way back.

Before mitmproxy is imported, `mitmproxy.addons` is registered as a bare package, so importing one of
its modules (Proxyserver, TermLog) no longer runs its `__init__`, which imports all ~30 default addons:
a Flask app, LDAP, and more. That was over half of the proxy's start-up and several MB of memory that
a sidecar never uses. Only this process does it; the tests import mitmproxy as usual.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import types
from pathlib import Path


def skip_default_addons() -> None:
    if "mitmproxy.addons" in sys.modules:
        return
    spec = importlib.util.find_spec("mitmproxy")
    assert spec is not None and spec.origin is not None
    package = types.ModuleType("mitmproxy.addons")
    package.__path__ = [str(Path(spec.origin).parent / "addons")]
    sys.modules["mitmproxy.addons"] = package


if __name__ == "__main__":
    if os.environ.get("MESHCTL_PROXY_ENGINE", "engine") == "mitmproxy":
        skip_default_addons()
        from addons import proxy

        proxy.run()
    else:
        from addons.engine import main

        main.run()
