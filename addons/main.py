"""The proxy process's entry point (`python -O -m addons.main`, started by addons.sidecar): the engine."""

from __future__ import annotations

if __name__ == "__main__":
    from addons.engine import main

    main.run()
