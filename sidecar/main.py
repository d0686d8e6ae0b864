"""The proxy process's entry point (`python -O -m sidecar.main`, started by sidecar.supervisor): the engine."""

from __future__ import annotations

if __name__ == "__main__":
    from sidecar.engine import main

    main.run()
