"""`--watch`: read a view every `--interval` and print it again when it changes, until Ctrl-C.

Two habits, each where users expect it:
- `rows` (`get -w`), kubectl's: the table once, then each row as it changes (a deleted one once more,
  marked), in the table's columns. Config changes are events, worth keeping in the scrollback, and
  `kubectl get -w` users know them so. It prints the same on a terminal and in a pipe (no control codes).
- `refreshing` (`proxy-status -w`, `stat -w`), the `watch` command's: the whole table redrawn in place on a
  terminal. istioctl has no watch, so its users run `watch istioctl proxy-status`; and in these views every
  row moves at once (ages, rates), so kubectl's changed rows would reprint the whole table anyway.
  Not on a terminal, or with -o json/yaml: each snapshot that changed, a blank line between, no control codes.

The loop takes its clock (`sleep`) and an iteration limit, so tests run it without waiting; Ctrl-C ends it by
KeyboardInterrupt, which the CLI turns into exit 130.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

from rich.console import Console, RenderableType
from rich.json import JSON
from rich.live import Live
from rich.text import Text

from meshctl.aligned import Aligned
from meshctl.output import OutputFormat, to_yaml

T = TypeVar("T")
K = TypeVar("K", bound=Hashable)
Sleep = Callable[[float], None]


def structured(fmt: OutputFormat, data: Any) -> RenderableType:
    """JSON or YAML as something a console prints (emit's formats, as one renderable)."""
    if fmt is OutputFormat.json:
        return JSON(json.dumps(data, default=str))
    return Text(to_yaml(data).rstrip())


def _ticks(max_iterations: int | None) -> Iterable[int]:
    """Iterations after the first read: endless unless tests bound them."""
    return range(max_iterations - 1) if max_iterations is not None else itertools.count()


def refreshing(out: Console, read: Callable[[], T], render: Callable[[T], RenderableType], interval_s: float, *,
               changed_on: Callable[[T], object] = lambda data: data, live: bool | None = None,
               sleep: Sleep | None = None, max_iterations: int | None = None) -> None:
    """Redraw `render(read())` every interval on a terminal (`live`, default: `out` is one); otherwise print it
    each time `changed_on` of the data differs from the last printed (ages in a table change; the data not)."""
    live = out.is_terminal if live is None else live
    sleep = sleep or time.sleep  # looked up now, so a test can stand in for it
    data = read()
    if live:
        with Live(render(data), console=out, auto_refresh=False, transient=False) as screen:
            for _ in _ticks(max_iterations):
                sleep(interval_s)
                screen.update(render(read()), refresh=True)
        return
    out.print(render(data))
    last = changed_on(data)
    for _ in _ticks(max_iterations):
        sleep(interval_s)
        data = read()
        if changed_on(data) != last:
            last = changed_on(data)
            out.print()
            out.print(render(data))


def rows(out: Console, read: Callable[[], Mapping[K, T]], columns: Sequence[str], cells: Callable[[T], list[Any]],
         interval_s: float, *, fmt: OutputFormat = OutputFormat.table, sleep: Sleep | None = None,
         max_iterations: int | None = None) -> None:
    """kubectl's `get -w`: every item once, then each item that was added, changed or deleted. With -o json or
    yaml, each as kubectl's watch event, {"type": ADDED|MODIFIED|DELETED, "object": item}."""
    sleep = sleep or time.sleep
    before = dict(read())
    aligned = Aligned(columns, [cells(item) for item in before.values()])

    def show(kind: str, item: T) -> None:
        if fmt is not OutputFormat.table:
            out.print(structured(fmt, {"type": kind, "object": item}))
        else:
            out.print(aligned.line(cells(item)) + ("  (deleted)" if kind == "DELETED" else ""),
                      highlight=False, markup=False, soft_wrap=True)

    if fmt is OutputFormat.table:
        out.print(aligned.header(), style="bold", highlight=False, markup=False, soft_wrap=True)
    for key in sorted(before, key=str):
        show("ADDED", before[key])
    for _ in _ticks(max_iterations):
        sleep(interval_s)
        now = dict(read())
        for key in sorted(set(before) | set(now), key=str):
            if key not in now:
                show("DELETED", before[key])
            elif key not in before:
                show("ADDED", now[key])
            elif now[key] != before[key]:
                show("MODIFIED", now[key])
        before = now
