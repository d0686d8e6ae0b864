"""The proxy process's entry point (`python -O -m addons.main`, started by addons.sidecar).

Before mitmproxy is imported, `mitmproxy.addons` is registered as a bare package, so importing one of
its modules (Proxyserver, TermLog) no longer runs its `__init__`, which imports all ~30 default addons:
a Flask app, LDAP, and more. That was over half of the proxy's start-up and several MB of memory that
a sidecar never uses. Only this process does it; the tests import mitmproxy as usual.
"""

from __future__ import annotations

import importlib.util
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
    skip_default_addons()
    from addons import proxy

    proxy.run()
