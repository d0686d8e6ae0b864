"""`--watch/-w` and `--interval`, the same on `get`, `proxy-status` and `stat` (the loop is meshctl.watch)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

import typer

from meshctl.cli.flags import duration
from meshctl.errors import UsageError
from meshctl.status import ExitCode

DEFAULT_INTERVAL_S = 2.0
MIN_INTERVAL_S = 0.1  # a read of every sidecar takes about that: faster only loads them
WatchOption = Annotated[bool, typer.Option("--watch", "-w", help="Keep watching: print again when it changes, "
                                           "until Ctrl-C.")]
IntervalOption = Annotated[str | None, typer.Option("--interval", help="How often --watch reads, e.g. 500ms or "
                                                    "5s (default 2s).")]


def interval_of(watch: bool, text: str | None) -> float:
    """--interval in seconds; only with --watch, and more than nothing."""
    if text is None:
        return DEFAULT_INTERVAL_S
    if not watch:
        raise UsageError("--interval applies only with --watch", "add -w, or leave --interval out")
    return duration("--interval", text, minimum=MIN_INTERVAL_S)


def until_interrupted(run: Callable[[], None]) -> None:
    """Ctrl-C is how a watch ends: exit 130, no traceback and no "aborted" line."""
    try:
        run()
    except KeyboardInterrupt:
        raise typer.Exit(ExitCode.INTERRUPTED) from None
